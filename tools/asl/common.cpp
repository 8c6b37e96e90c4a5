// Helpers shared by the subcommands.
#include <thread>

#include <ATen/Parallel.h>

#include "commands.h"

namespace asl::cli {

void set_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

}  // namespace asl::cli
