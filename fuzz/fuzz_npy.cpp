// libFuzzer target: the .npy parser, then writing the tensor back and parsing it again.
#include <cstddef>
#include <cstdint>
#include <string>

#include <torch/types.h>

#include "asl/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  torch::Tensor t;
  try {
    t = asl::io::parse_npy(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const std::runtime_error&) {
    return 0;
  }
  const torch::Tensor back = asl::io::parse_npy(asl::io::npy_bytes(t), "fuzz-again");
  if (back.sizes() != t.sizes() || back.scalar_type() != t.scalar_type()) __builtin_trap();
  return 0;
}
