// PyTorch .pth checkpoints without Python: read (zip and legacy formats), write (zip), state dicts.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/ordered_dict.h>
#include <torch/types.h>

#include "asl/io/pickle.h"

namespace asl::io {

/// Parameter and buffer name → tensor, in the module's registration order.
using StateDict = torch::OrderedDict<std::string, torch::Tensor>;

/// A checkpoint file read by load_checkpoint.
struct LoadedCheckpoint {
  /// "zip" (torch.save since PyTorch 1.6) or "legacy" (the older stream format).
  std::string format;
  /// root["model"], else root["state_dict"], else the root itself if it is a dict of tensors; else empty.
  StateDict model;
  /// root["num_classes"] when present.
  c10::optional<int64_t> num_classes;
  /// root["idx_to_class"] when present (int, or decimal-string, keys with str values).
  std::map<int64_t, std::string> idx_to_class;
  /// The whole unpickled object.
  PyValue root;
};

/// Reads any value torch.save wrote (zip or legacy format). `format`, when given, receives
/// "zip" or "legacy". Throws std::runtime_error naming the file and the cause for anything unsafe,
/// corrupt, truncated or unsupported.
PyValue load(const std::string& path, std::string* format = nullptr);

/// Reads a checkpoint and extracts its state dict and metadata (see LoadedCheckpoint).
LoadedCheckpoint load_checkpoint(const std::string& path);

/// Writes `value` in the zip format that Python's torch.load (1.13) reads: each storage once,
/// views kept as views. Atomic: a temporary file renamed into place.
void save(const std::string& path, const PyValue& value);

/// Writes {"model": OrderedDict state dict, "num_classes": int, "idx_to_class": {int: str}}, the
/// layout of the published ASL checkpoints, with save().
void save_checkpoint(const std::string& path, const StateDict& model, int64_t num_classes,
                     const std::map<int64_t, std::string>& idx_to_class);

/// A state dict as an OrderedDict value (tensors are shared, not copied).
PyValue state_dict_value(const StateDict& state);

/// Extracts a state dict from a dict value of str → tensor; throws naming the first bad entry.
StateDict state_dict_from_value(const PyValue& dict, const std::string& what = "state dict");

/// A module's state dict in PyTorch's order: per module its own parameters, then its own buffers,
/// then its children recursively; names joined with '.'. Tensors alias the module's.
StateDict module_state_dict(const torch::nn::Module& module);

/// How load_state_dict matches a checkpoint to a module.
struct LoadStateDictOptions {
  /// Throw when any key is missing, unexpected or shape-mismatched.
  TORCH_ARG(bool, strict) = true;
  /// Returns false for a key to leave out on both sides (neither loaded nor reported), e.g.
  /// `head.fc.*` when fine-tuning from a pretrain with another number of classes.
  TORCH_ARG(std::function<bool(const std::string&)>, key_filter) = nullptr;
};

/// What load_state_dict did not load.
struct LoadStateDictReport {
  /// Module keys absent from the checkpoint.
  std::vector<std::string> missing;
  /// Checkpoint keys the module does not have.
  std::vector<std::string> unexpected;
  /// "key: checkpoint [a, b] vs module [c, d]" for keys present on both sides with other shapes.
  std::vector<std::string> mismatched;
};

/// Copies `state` into the module's parameters and buffers under NoGradGuard, converting dtype
/// and device. `num_batches_tracked` keys are accepted and never reported. Strict mode throws
/// ONE std::runtime_error listing every missing, unexpected and mismatched key (nothing is
/// copied then); non-strict mode loads what matches and reports the rest.
LoadStateDictReport load_state_dict(torch::nn::Module& module, const StateDict& state,
                                    const LoadStateDictOptions& options = {});

}  // namespace asl::io
