// Subcommand hooks of the `asl` executable: each cmd_<sub>.cpp registers its subcommand here.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

#include "asl/models/pretrained.h"
#include "asl/runtime.h"

namespace asl::cli {

/// The chosen subcommand's body, set by its parse callback and run by main() after parsing;
/// returns the exit code. It may throw: main() prints the message and exits with 1.
using Runner = std::function<int()>;

/// `asl ckpt info FILE` and `asl ckpt convert IN OUT`.
void register_ckpt(CLI::App& app, Runner& run);

/// `asl validate DIR|--annotations FILE --images DIR --model-path FILE ...`.
void register_validate(CLI::App& app, Runner& run);

/// `asl infer IMAGE... --model-path FILE ...`.
void register_infer(CLI::App& app, Runner& run);

/// Sets LibTorch's intra-op threads: `threads` when positive, else every core.
void set_threads(int threads);

/// --precision auto|fp32|bf16 and an older flag that means bf16 (--bf16, --amp).
struct PrecisionFlags {
  std::string precision;
  bool legacy_bf16 = false;
  CLI::Option* option = nullptr;  // set by add_precision_flags: tells a default from a choice
};
void add_precision_flags(CLI::App* cmd, PrecisionFlags& flags, const std::string& legacy_flag,
                         const std::string& legacy_help);

/// The weights flags of infer and validate: --model-path, --model-name, --use-ema, --class-names.
struct WeightsFlags {
  std::string path;
  std::string name = "auto";
  bool use_ema = false;
  std::string class_names;
};
/// `positional`: the weights are the first positional argument instead of --model-path.
void add_weights_flags(CLI::App* cmd, WeightsFlags& flags, bool positional = false);

/// "tresnet_m|tresnet_l|..." (the registered names), with "|auto" first when `with_auto`.
std::string model_name_choices(bool with_auto);

/// load_classifier with the flags; class names from the checkpoint, else --class-names, else `fallback`
/// (e.g. the dataset's; used only when its count matches), else class_<i>. Says on stderr which were used
/// when they are not the checkpoint's.
models::Classifier load_model(const std::string& command, const WeightsFlags& flags, models::ClassifierOptions options,
                              const std::vector<std::string>& fallback = {}, const std::string& fallback_source = "");

/// Resolves the flags on this CPU and prints the run's first line, "asl <command>: precision <why>", on
/// stderr (a warning where bf16 is asked for but not native).
PrecisionChoice announce_precision(const std::string& command, const PrecisionFlags& flags);

/// Creates an output folder and removes the temporaries a killed run left there (io/file.h), with a line
/// on stderr naming them.
void prepare_output_folder(const std::string& command, const std::string& folder);

/// `asl train DIR …`: ASL training with the reference's recipe (cmd_train.cpp).
void register_train(CLI::App& app, Runner& run);

/// `asl data fashion-mosaic OUT …`: dataset builders (cmd_data.cpp).
void register_data(CLI::App& app, Runner& run);

/// `asl export WEIGHTS OUT.onnx ...`.
void register_export(CLI::App& app, Runner& run);

}  // namespace asl::cli
