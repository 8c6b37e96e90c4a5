// Helpers shared by the subcommands.
#include <filesystem>
#include <iostream>
#include <thread>

#include <ATen/Parallel.h>

#include "asl/io/file.h"
#include "commands.h"

namespace asl::cli {

void set_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
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
