// TResNet -> ONNX, built with Debian's ONNX library (protobuf classes, checker, shape inference).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "asl/models/tresnet.h"

namespace asl::exporter {

/// Options of export_onnx.
struct OnnxExportOptions {
  /// Side of the square input (a multiple of 32).
  TORCH_ARG(int64_t, image_size) = 448;
  /// ai.onnx opset, 13 to 17 (what ONNX 1.12, Debian's, checks).
  TORCH_ARG(int64_t, opset) = 17;
  /// Batch size of the graph; 0: a dynamic batch axis named "N".
  TORCH_ARG(int64_t, batch) = 0;
  /// Fold the norms into the convolutions; false: BatchNormalization nodes (the norm's scale as weight).
  TORCH_ARG(bool, fuse) = true;
  /// Weights and activations in float16 (the input and output stay float32, cast at the graph's ends).
  TORCH_ARG(bool, float16) = false;
  /// Output "scores" (sigmoid of the logits) instead of "logits".
  TORCH_ARG(bool, with_sigmoid) = false;
  /// Recorded in the metadata as the default decision threshold.
  TORCH_ARG(double, threshold) = 0.7;
  /// Recorded in the metadata: the architecture's name and the weights' layout.
  TORCH_ARG(std::string, architecture) = "";
  TORCH_ARG(std::string, layout) = "";
};

/// What export_onnx wrote.
struct OnnxExportInfo {
  int64_t nodes = 0;
  int64_t initializers = 0;
  /// Bytes of the weights in the file.
  int64_t weight_bytes = 0;
  int64_t file_bytes = 0;
  /// metadata_props as written.
  std::map<std::string, std::string> metadata;
};

/// Writes `model` (unfused, as loaded) as an ONNX model: input "input" (N x in_chans x S x S float32, RGB in
/// [0, 1], no normalisation), output "logits" or "scores" (N x classes float32); space-to-depth as
/// Reshape/Transpose/Reshape, the blur pool as a reflect Pad and a depthwise Conv, squeeze-excite as
/// GlobalAveragePool/Conv/Relu/Conv/Sigmoid/Mul, the head as GlobalAveragePool/Flatten/Gemm. Metadata:
/// architecture, layout, image size, preprocessing, class names (JSON list), default threshold, output.
/// The model passes onnx::checker and strict shape inference before it is written atomically; any failure
/// throws std::runtime_error naming `path` and writes nothing.
OnnxExportInfo export_onnx(const models::TResNet& model, const std::vector<std::string>& class_names,
                           const std::string& path, const OnnxExportOptions& options = {});

}  // namespace asl::exporter
