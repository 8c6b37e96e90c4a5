// libFuzzer target: whole checkpoint files (zip through PyTorchStreamReader, and legacy), via a file in /dev/shm.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "asl/io/checkpoint.h"

// LibTorch 1.13's PyTorchStreamReader leaks its miniz state when its constructor throws; not ours.
extern "C" const char* __lsan_default_suppressions() { return "leak:libtorch_cpu.so\n"; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/dev/shm/asl_fuzz_ckpt_" + std::to_string(::getpid()) + ".pth";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const auto ck = asl::io::load_checkpoint(path);
    for (const auto& item : ck.model) {
      if (item.value().numel() > 0) (void)item.value().to(torch::kFloat64).sum().item<double>();
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
