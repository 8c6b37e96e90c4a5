// Subcommand hooks of the `asl` executable: each cmd_<sub>.cpp registers its subcommand here.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

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

/// `asl train DIR …`: ASL training with the reference's recipe (cmd_train.cpp).
void register_train(CLI::App& app, Runner& run);

/// `asl data fashion-mosaic OUT …`: dataset builders (cmd_data.cpp).
void register_data(CLI::App& app, Runner& run);

}  // namespace asl::cli
