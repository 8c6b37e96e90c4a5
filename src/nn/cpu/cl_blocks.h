// Raw-pointer loops over channels-last activations (each pixel's C values contiguous), compiled once per
// instruction set like asl_loss_blocks.h (no torch headers). Element type float32 or bfloat16 (held as
// its 16 bits); every sum is accumulated in float32, bfloat16 results are rounded to nearest even once.
// They serve the fused inference path (squeeze-excite, blur pool, the Winograd convolutions' output) and
// the training path's batch norm with its activation (cl_kernels.h wraps them for tensors and threads).
#pragma once

#include <cstdint>

namespace asl::nn::cpu {

/// Element types of the loops.
enum class ClType { F32, BF16 };

struct ClKernels {
  const char* isa;
  /// sum[c] += x[p * c_count + c] over pixels p in [0, pixels).
  void (*channel_sum)(ClType t, const void* x, int64_t pixels, int64_t c_count, float* sum);
  /// x = act(x) in place (act as in unblock16) and sum[c] += the stored x[p * c_count + c].
  void (*channel_act_sum)(ClType t, void* x, int64_t pixels, int64_t c_count, int act, float slope, float* sum);
  /// x[i] = act(x[i]) for i in [0, count), in place.
  void (*act_inplace)(ClType t, void* x, int64_t count, int act, float slope);
  /// x[p * c_count + c] *= gate[c] over pixels p in [0, pixels) (in place); with `residual` (same layout,
  /// or null) x = max(x * gate[c] + residual, 0) instead (one rounding).
  void (*channel_scale)(ClType t, void* x, int64_t pixels, int64_t c_count, const float* gate, const void* residual);
  /// out[r] = bias[r] + sum_c w[r * c_count + c] * in[c] for r in [0, rows); w and bias of type t
  /// (bias may be null), then relu (act 1) or sigmoid (act 2) or nothing (act 0).
  void (*gemv)(ClType t, const void* w, const void* bias, const float* in, int64_t rows, int64_t c_count,
               int act, float* out);
  /// Rows [row_begin, row_end) of the 3x3 binomial blur ([1 2 1] x [1 2 1] / 16) with stride 2 over one
  /// h x w x c image, reflect padding 1; out is oh x ow x c with oh = (h - 1) / 2 + 1, ow likewise.
  /// tmp holds w * c floats.
  void (*blur2)(ClType t, const void* x, int64_t h, int64_t w, int64_t c_count, void* out, int64_t row_begin,
                int64_t row_end, float* tmp);
  /// nChw16c -> nhwc for one image's pixels [p_begin, p_end) (ceil(c_count / 16) blocks of hw pixels
  /// x 16 values, the last one's padding ignored), applying leaky ReLU with `slope` (act 1), ELU with alpha `slope` (act 2) or nothing.
  void (*unblock16)(ClType t, const void* src, void* dst, int64_t hw, int64_t c_count, int64_t p_begin,
                    int64_t p_end, int act, float slope);
  /// The adjoint of blur2 for one image (float32): dx (h x w x c) from dy (oh x ow x c); tmp holds
  /// oh * w * c floats.
  void (*blur2_backward)(const float* dy, int64_t h, int64_t w, int64_t c_count, float* dx, float* tmp);

  // Batch norm with its activation, training; x, y, dy, dx of type t (float32 or bfloat16), statistics
  // and per-channel values float32. Per channel c: z = x * scale[c] + shift[c],
  // y = act(z) (act 0 identity, 1 leaky ReLU with slope >= 0, 2 ELU with alpha `slope`); dz = dy * act'(z).
  // "cl" loops take `pixels` channels-last pixels of c_count channels; "plane" loops one channel's hw
  // contiguous values (NCHW) with that channel's scalars.
  /// mean[c] and m2[c] = sum (x - mean[c])^2 over the pixels (two passes over this chunk).
  void (*bn_stats_cl)(ClType t, const void* x, int64_t pixels, int64_t c_count, float* mean, float* m2);
  void (*bn_stats_plane)(ClType t, const void* x, int64_t hw, float* mean, float* m2);
  void (*bn_act_cl)(ClType t, const void* x, void* y, int64_t pixels, int64_t c_count, const float* scale,
                    const float* shift, int act, float slope);
  void (*bn_act_plane)(ClType t, const void* x, void* y, int64_t hw, float scale, float shift, int act, float slope);
  /// sum_dz[c] += dz, sum_dzx[c] += dz * (x - mean[c]).
  void (*bn_backward_sums_cl)(ClType t, const void* x, const void* dy, int64_t pixels, int64_t c_count,
                              const float* scale, const float* shift, const float* mean, int act, float slope,
                              float* sum_dz, float* sum_dzx);
  void (*bn_backward_sums_plane)(ClType t, const void* x, const void* dy, int64_t hw, float scale, float shift,
                                 float mean, int act, float slope, float* sum_dz, float* sum_dzx);
  /// dx = (dz - a[c] - (x - mean[c]) * b[c]) * k[c].
  void (*bn_backward_dx_cl)(ClType t, const void* x, const void* dy, void* dx, int64_t pixels, int64_t c_count,
                            const float* scale, const float* shift, const float* mean, const float* a, const float* b,
                            const float* k, int act, float slope);
  void (*bn_backward_dx_plane)(ClType t, const void* x, const void* dy, void* dx, int64_t hw, float scale,
                               float shift, float mean, float a, float b, float k, int act, float slope);
};

namespace isa_avx512 { ClKernels cl_kernels(); }
namespace isa_avx2 { ClKernels cl_kernels(); }
namespace isa_base { ClKernels cl_kernels(); }

/// The loops for the best instruction set this CPU supports (chosen once).
const ClKernels& cl_kernels();

}  // namespace asl::nn::cpu
