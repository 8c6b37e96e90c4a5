// The instruction set the per-ISA loops (asl_loss_blocks, cl_blocks) run with on this CPU.
#pragma once

namespace asl::nn::cpu {

enum class Isa { Avx512, Avx2, Base };

/// AVX-512 (F, DQ, BW, VL), else AVX2 with FMA, else baseline x86-64; decided once.
inline Isa best_isa() {
  static const Isa chosen = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
      return Isa::Avx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Base;
  }();
  return chosen;
}

}  // namespace asl::nn::cpu
