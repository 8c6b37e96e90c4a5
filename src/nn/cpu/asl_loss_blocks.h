// Raw-pointer block loops of the fused ASL, compiled once per instruction set (no torch headers, so
// nothing built with AVX-512 can leak into code shared with the rest of the program).
#pragma once

#include <cstdint>

namespace asl::nn::cpu {

/// Loop-invariant scalars of one evaluation.
struct BlockParams {
  double clip = 0.05;
  double eps = 1e-8;
  double gamma_pos = 1;
  double gamma_neg = 4;
  bool use_clip = true;
  bool ignore_unknown = false;
  bool focal = true;
  bool detach = false;
};

/// out[i] = -loss_i (0 for unknown labels). With out null nothing is written and the return value is the
/// sum of -loss_i over the n elements, in a fixed order (the same for any caller); otherwise it is 0.
using ForwardF32 = double (*)(const float* x, const float* y, float* out, int64_t n, const BlockParams& p);
using ForwardF64 = double (*)(const double* x, const double* y, double* out, int64_t n, const BlockParams& p);
/// out[i] = g_i * d(-loss_i)/dx_i with g_i = gout[i], or gscale when gout is null.
using BackwardF32 = void (*)(const float* x, const float* y, const float* gout, float gscale, float* out, int64_t n,
                             const BlockParams& p);
using BackwardF64 = void (*)(const double* x, const double* y, const double* gout, double gscale, double* out,
                             int64_t n, const BlockParams& p);

struct BlockKernels {
  const char* isa;
  ForwardF32 forward_f32;
  ForwardF64 forward_f64;
  BackwardF32 backward_f32;
  BackwardF64 backward_f64;
};

namespace isa_avx512 { BlockKernels kernels(); }
namespace isa_avx2 { BlockKernels kernels(); }
namespace isa_base { BlockKernels kernels(); }

/// The kernels for the best instruction set this CPU supports (chosen once).
const BlockKernels& block_kernels();

}  // namespace asl::nn::cpu
