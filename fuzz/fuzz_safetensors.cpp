// libFuzzer target: whole .safetensors files, via a file in /dev/shm.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include <torch/torch.h>

#include "asl/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/dev/shm/asl_fuzz_st_" + std::to_string(::getpid()) + ".safetensors";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const auto f = asl::io::load_safetensors(path);
    for (const auto& item : f.tensors) {
      if (item.value().numel() > 0 && item.value().is_floating_point()) {
        (void)item.value().to(torch::kFloat64).sum().item<double>();
      }
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
