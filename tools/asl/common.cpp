// Helpers shared by the subcommands.
#include <filesystem>
#include <iostream>
#include <thread>

#include <ATen/Parallel.h>

#include "asl/io/file.h"
#include "asl/models/registry.h"
#include "asl/models/weights.h"
#include "asl/runtime.h"
#include "commands.h"

namespace asl::cli {

void set_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  asl::set_compute_threads(n);
}

void add_precision_flags(CLI::App* cmd, PrecisionFlags& flags, const std::string& legacy_flag,
                         const std::string& legacy_help) {
  flags.option = cmd->add_option("--precision", flags.precision,
                  "compute precision: auto (bf16 where the CPU has native bfloat16, else fp32), fp32 or bf16")
      ->check(CLI::IsMember({"auto", "fp32", "float32", "bf16", "bfloat16"}))
      ->capture_default_str();
  cmd->add_flag(legacy_flag, flags.legacy_bf16, legacy_help + " (the same as --precision bf16)");
}

void prepare_output_folder(const std::string& command, const std::string& folder) {
  std::filesystem::create_directories(folder);
  const std::vector<std::string> stale = io::remove_stale_temp_files(folder);
  if (stale.empty()) return;
  std::string names;
  for (const auto& n : stale) names += (names.empty() ? "" : ", ") + n;
  std::cerr << "asl " << command << ": removed " << stale.size() << " temporary file(s) of an interrupted run from "
            << folder << ": " << names << "\n";
}

std::string model_name_choices(bool with_auto) {
  std::string out = with_auto ? "auto" : "";
  for (const auto& name : models::model_names()) out += (out.empty() ? "" : "|") + name;
  return out;
}

void add_weights_flags(CLI::App* cmd, WeightsFlags& flags, bool positional) {
  cmd->add_option(positional ? "weights" : "--model-path,--model_path", flags.path,
                  "weights: .pth (published checkpoint, bare state dict or timm training checkpoint) or .safetensors, "
                  "in asl's (published) or timm's layout")
      ->required();
  cmd->add_option("--model-name,--model_name", flags.name,
                  model_name_choices(true) + " (auto: the architecture of the weights)")
      ->capture_default_str();
  cmd->add_flag("--use-ema,--use_ema", flags.use_ema, "timm training checkpoints: use the EMA weights (state_dict_ema)");
  cmd->add_option("--class-names,--class_names", flags.class_names,
                  "class names, one per line, for weights that do not name their classes");
}

models::Classifier load_model(const std::string& command, const WeightsFlags& flags, models::ClassifierOptions options,
                              const std::vector<std::string>& fallback, const std::string& fallback_source) {
  options.model_name = flags.name;
  options.use_ema = flags.use_ema;
  models::Classifier model = models::load_classifier(flags.path, options);
  const auto n = static_cast<size_t>(model.num_classes());
  if (model.has_class_names) {
    if (!flags.class_names.empty()) {
      std::cerr << "asl " << command << ": --class-names " << flags.class_names << " not used: " << flags.path
                << " names its classes\n";
    }
  } else if (!flags.class_names.empty()) {
    model.class_names = models::read_class_names(flags.class_names, model.num_classes());
    model.has_class_names = true;
  } else if (!fallback.empty() && fallback.size() == n) {
    model.class_names = fallback;
    std::cerr << "asl " << command << ": " << flags.path << " does not name its classes; using those of "
              << fallback_source << "\n";
  }
  return model;
}

PrecisionChoice announce_precision(const std::string& command, const PrecisionFlags& flags) {
  const Precision requested = flags.legacy_bf16 ? Precision::BFloat16 : parse_precision(flags.precision);
  PrecisionChoice choice = resolve_precision(requested);
  const bool given = (flags.option != nullptr && flags.option->count() > 0) || flags.legacy_bf16;
  const std::string requested_word = "(requested";
  if (!given && choice.reason.find(requested_word) != std::string::npos) {
    choice.reason.replace(choice.reason.find(requested_word), requested_word.size(), "(the default");
  }
  std::cerr << "asl " << command << ": precision " << choice.reason << "\n";
  return choice;
}

}  // namespace asl::cli
