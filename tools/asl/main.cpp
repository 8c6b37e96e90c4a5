// The `asl` command line: dispatches to one handler per subcommand.
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "asl/runtime.h"
#include "asl/version.h"
#include "commands.h"

int main(int argc, char** argv) {
  asl::tune_allocator();  // large tensors reuse freed heap memory instead of faulting in fresh pages
  CLI::App app{"asl — multi-label image classification with the Asymmetric Loss (C++ / LibTorch)"};
  app.set_version_flag("--version", [] {
    return std::string("asl ") + asl::version() + "\nCPU: " + asl::describe(asl::cpu_info()) +
           "\nprecision auto: " + asl::resolve_precision(asl::Precision::Auto).reason;
  });
  app.require_subcommand(0, 1);
  asl::cli::Runner run;
  asl::cli::register_ckpt(app, run);
  asl::cli::register_validate(app, run);
  asl::cli::register_infer(app, run);
  asl::cli::register_train(app, run);
  asl::cli::register_data(app, run);
  asl::cli::register_export(app, run);
  app.footer("Run `asl <subcommand> --help` for a subcommand's flags; README.md has examples.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (app.get_subcommands().empty()) {
    std::cout << app.help();
    return 0;
  }
  if (!run) return 0;
  try {
    return run();
  } catch (const std::exception& e) {
    std::cerr << "asl: error: " << e.what() << "\n";
    return 1;
  }
}
