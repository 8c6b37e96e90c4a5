// `asl export`: any weights asl loads -> an ONNX model (ONNX Runtime, OpenVINO, TensorRT) with the same logits.
#include <iomanip>
#include <iostream>
#include <memory>

#include "asl/export/onnx.h"
#include "asl/models/pretrained.h"
#include "commands.h"

namespace asl::cli {
namespace {

struct ExportParams {
  WeightsFlags weights;
  std::string output;
  int64_t image_size = 448;
  int64_t opset = 17;
  std::string batch = "dynamic";
  bool fuse = true;
  bool with_sigmoid = false;
  double threshold = -1;
  std::string precision = "fp32";
};

int run_export(const ExportParams& p) {
  int64_t batch = 0;
  if (p.batch != "dynamic") {
    char* end = nullptr;
    const long long b = std::strtoll(p.batch.c_str(), &end, 10);
    if (p.batch.empty() || *end != '\0' || b < 1) {
      throw std::runtime_error("--batch must be 'dynamic' or a positive batch size, got '" + p.batch + "'");
    }
    batch = b;
  }
  models::ClassifierOptions co;
  co.fuse = false;  // the exporter folds the norms itself (or writes BatchNormalization with --no-fuse)
  models::Classifier c = load_model("export", p.weights, co);
  // The published Open Images model (bottleneck head) is used at 0.995, the COCO ones at 0.7.
  const double threshold = p.threshold >= 0 ? p.threshold : (c.options.do_bottleneck_head() ? 0.995 : 0.7);
  const auto info = exporter::export_onnx(c.model, c.class_names, p.output,
                                          exporter::OnnxExportOptions()
                                              .image_size(p.image_size)
                                              .opset(p.opset)
                                              .batch(batch)
                                              .fuse(p.fuse)
                                              .with_sigmoid(p.with_sigmoid)
                                              .float16(p.precision == "fp16")
                                              .threshold(threshold)
                                              .architecture(c.model_name)
                                              .layout(models::to_string(c.layout)));
  std::cerr << "asl export: " << p.weights.path << " (" << c.model_name << ", " << models::to_string(c.layout)
            << " layout, " << c.num_classes() << " classes) -> " << p.output << ": " << p.precision << ", opset " << p.opset << ", input "
            << (batch == 0 ? std::string("N") : std::to_string(batch)) << "x" << c.options.in_chans() << "x"
            << p.image_size << "x" << p.image_size << ", " << info.nodes << " nodes, " << std::fixed
            << std::setprecision(1) << static_cast<double>(info.file_bytes) / 1e6 << " MB\n";
  return 0;
}

}  // namespace

void register_export(CLI::App& app, Runner& run) {
  auto p = std::make_shared<ExportParams>();
  CLI::App* cmd = app.add_subcommand("export", "Write the model as ONNX (checked and shape-inferred before it is written)");
  add_weights_flags(cmd, p->weights, /*positional=*/true);
  cmd->add_option("output", p->output, "ONNX file to write (replaced atomically)")->required();
  cmd->add_option("--image-size,--image_size", p->image_size, "input resolution of the graph (multiple of 32)")
      ->capture_default_str();
  cmd->add_option("--opset", p->opset, "ai.onnx opset, 13 to 17")->capture_default_str();
  cmd->add_option("--batch", p->batch, "dynamic (a batch axis N) or a fixed batch size")->capture_default_str();
  cmd->add_flag("--fuse,!--no-fuse", p->fuse, "fold the norms into the convolutions (else BatchNormalization nodes)")
      ->capture_default_str();
  cmd->add_option("--precision", p->precision, "fp32, or fp16 (weights and activations; float32 input and output)")
      ->check(CLI::IsMember({"fp32", "fp16"}))
      ->capture_default_str();
  cmd->add_flag("--with-sigmoid,--with_sigmoid", p->with_sigmoid, "output 'scores' (sigmoid) instead of 'logits'");
  cmd->add_option("--threshold", p->threshold,
                  "default decision threshold recorded in the metadata (default 0.7, 0.995 for the Open Images head)");
  cmd->callback([p, &run] { run = [p] { return run_export(*p); }; });
}

}  // namespace asl::cli
