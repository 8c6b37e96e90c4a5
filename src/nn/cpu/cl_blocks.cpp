// Per-ISA channels-last loops (cl_blocks.h). Built three times (ASL_ISA = isa_avx512, isa_avx2, isa_base)
// with matching -march flags; the inner loops run over contiguous channels and vectorise as written.
#include "cl_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifndef ASL_ISA
#error "ASL_ISA must name the instruction-set namespace"
#endif

extern "C" {
float expf(float) noexcept __attribute__((simd("notinbranch")));
}

namespace asl::nn::cpu::ASL_ISA {
namespace {

#define ASL_INLINE inline __attribute__((always_inline))

ASL_INLINE float load(const float* p, int64_t i) { return p[i]; }
ASL_INLINE float load(const uint16_t* p, int64_t i) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(p[i]) << 16);
}
ASL_INLINE void store(float* p, int64_t i, float v) { p[i] = v; }
// Round to nearest even, as c10::BFloat16 does; NaN stays a quiet NaN.
ASL_INLINE void store(uint16_t* p, int64_t i, float v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, v);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  p[i] = static_cast<uint16_t>(v != v ? 0x7fc0u : rounded);
}

ASL_INLINE float activate(float v, int act, float slope) {
  if (act == 1) return v < 0 ? v * slope : v;
  if (act == 2) return v < 0 ? slope * (expf(v) - 1.0f) : v;
  return v;
}

template <typename T>
void channel_sum(const T* __restrict__ x, int64_t pixels, int64_t c, float* __restrict__ sum) {
  for (int64_t p = 0; p < pixels; ++p) {
    const T* row = x + p * c;
    for (int64_t k = 0; k < c; ++k) sum[k] += load(row, k);
  }
}

template <typename T>
void channel_scale(T* __restrict__ x, int64_t pixels, int64_t c, const float* __restrict__ gate) {
  for (int64_t p = 0; p < pixels; ++p) {
    T* row = x + p * c;
    for (int64_t k = 0; k < c; ++k) store(row, k, load(row, k) * gate[k]);
  }
}

template <typename T>
void channel_scale_residual_relu(T* __restrict__ x, const T* __restrict__ residual, int64_t pixels, int64_t c,
                                 const float* __restrict__ gate) {
  for (int64_t p = 0; p < pixels; ++p) {
    T* row = x + p * c;
    const T* r = residual + p * c;
    for (int64_t k = 0; k < c; ++k) store(row, k, std::max(load(row, k) * gate[k] + load(r, k), 0.0f));
  }
}

template <typename T>
void gemv(const T* w, const T* bias, const float* in, int64_t rows, int64_t c, int act, float* out) {
  constexpr int kLanes = 16;
  for (int64_t r = 0; r < rows; ++r) {
    const T* wr = w + r * c;
    float acc[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= c; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) acc[j] += load(wr, k + j) * in[k + j];
    }
    float s = 0;
    for (; k < c; ++k) s += load(wr, k) * in[k];
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    if (bias != nullptr) s += load(bias, r);
    if (act == 1) s = s > 0 ? s : 0;
    if (act == 2) s = 1.0f / (1.0f + std::exp(-s));
    out[r] = s;
  }
}

template <typename T>
void blur2(const T* x, int64_t h, int64_t w, int64_t c, T* out, int64_t row_begin, int64_t row_end, float* tmp) {
  const int64_t ow = (w - 1) / 2 + 1;
  const auto reflect = [](int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); };
  for (int64_t o = row_begin; o < row_end; ++o) {
    // Vertical [1 2 1] over input rows 2o - 1, 2o, 2o + 1 (reflected) into tmp (w x c).
    const T* r0 = x + reflect(2 * o - 1, h) * w * c;
    const T* r1 = x + reflect(2 * o, h) * w * c;
    const T* r2 = x + reflect(2 * o + 1, h) * w * c;
    for (int64_t i = 0; i < w * c; ++i) tmp[i] = load(r0, i) + 2.0f * load(r1, i) + load(r2, i);
    // Horizontal [1 2 1] at columns 2q - 1, 2q, 2q + 1 (reflected), / 16.
    T* dst = out + o * ow * c;
    for (int64_t q = 0; q < ow; ++q) {
      const float* a = tmp + reflect(2 * q - 1, w) * c;
      const float* b = tmp + reflect(2 * q, w) * c;
      const float* d = tmp + reflect(2 * q + 1, w) * c;
      T* y = dst + q * c;
      for (int64_t k = 0; k < c; ++k) store(y, k, (a[k] + 2.0f * b[k] + d[k]) * 0.0625f);
    }
  }
}

// For each index s in [0, n) of a reflect-padded stride-2 [1 2 1] filter with m outputs, the outputs that
// read s and the tap weights they read it with (at most 4: a reflected border adds one).
struct Taps {
  int64_t count = 0;
  int64_t out[4];
  float weight[4];
};

void reverse_taps(int64_t n, int64_t m, Taps* taps) {
  const float w[3] = {1.0f, 2.0f, 1.0f};
  for (int64_t s = 0; s < n; ++s) taps[s].count = 0;
  for (int64_t o = 0; o < m; ++o)
    for (int i = 0; i < 3; ++i) {
      int64_t p = 2 * o - 1 + i;
      p = p < 0 ? -p : (p >= n ? 2 * (n - 1) - p : p);
      Taps& t = taps[p];
      t.out[t.count] = o;
      t.weight[t.count] = w[i];
      ++t.count;
    }
}

void blur2_backward(const float* __restrict__ dy, int64_t h, int64_t w, int64_t c, float* __restrict__ dx,
                    float* __restrict__ tmp) {
  const int64_t oh = (h - 1) / 2 + 1, ow = (w - 1) / 2 + 1;
  std::vector<Taps> rows(static_cast<size_t>(h)), cols(static_cast<size_t>(w));
  reverse_taps(h, oh, rows.data());
  reverse_taps(w, ow, cols.data());
  // Horizontal adjoint of every output row into tmp (oh x w x c), then the vertical one into dx, / 16.
  for (int64_t o = 0; o < oh; ++o)
    for (int64_t s = 0; s < w; ++s) {
      float* t = tmp + (o * w + s) * c;
      const Taps& tp = cols[s];
      for (int64_t k = 0; k < c; ++k) t[k] = 0.0f;
      for (int64_t j = 0; j < tp.count; ++j) {
        const float* src = dy + (o * ow + tp.out[j]) * c;
        const float wt = tp.weight[j];
        for (int64_t k = 0; k < c; ++k) t[k] += wt * src[k];
      }
    }
  for (int64_t r = 0; r < h; ++r) {
    const Taps& tp = rows[r];
    float* dst = dx + r * w * c;
    for (int64_t i = 0; i < w * c; ++i) dst[i] = 0.0f;
    for (int64_t j = 0; j < tp.count; ++j) {
      const float* src = tmp + tp.out[j] * w * c;
      const float wt = tp.weight[j] * 0.0625f;
      for (int64_t i = 0; i < w * c; ++i) dst[i] += wt * src[i];
    }
  }
}

template <typename T, int Act>
void unblock16_act(const T* __restrict__ src, T* __restrict__ dst, int64_t hw, int64_t c, int64_t p_begin, int64_t p_end, float slope) {
  const int64_t full = c / 16, tail = c % 16;  // a last, partly used block when c % 16 != 0
  for (int64_t p = p_begin; p < p_end; ++p) {
    T* out = dst + p * c;
    for (int64_t b = 0; b < full; ++b) {
      const T* in = src + (b * hw + p) * 16;
      for (int j = 0; j < 16; ++j) store(out, b * 16 + j, activate(load(in, j), Act, slope));
    }
    if (tail != 0) {
      const T* in = src + (full * hw + p) * 16;
      for (int j = 0; j < tail; ++j) store(out, full * 16 + j, activate(load(in, j), Act, slope));
    }
  }
}

template <typename T>
void unblock16(const T* src, T* dst, int64_t hw, int64_t c, int64_t p_begin, int64_t p_end, int act, float slope) {
  if (act == 1) unblock16_act<T, 1>(src, dst, hw, c, p_begin, p_end, slope);
  else if (act == 2) unblock16_act<T, 2>(src, dst, hw, c, p_begin, p_end, slope);
  else unblock16_act<T, 0>(src, dst, hw, c, p_begin, p_end, slope);
}

// ---- batch norm + activation (float32, training) ----

// dz / dy at the pre-activation z.
ASL_INLINE float act_grad(float z, int act, float slope) {
  if (act == 1) return z < 0 ? slope : 1.0f;
  if (act == 2) return z < 0 ? slope * expf(z) : 1.0f;
  return 1.0f;
}

template <typename T>
void bn_stats_cl(const T* __restrict__ x, int64_t pixels, int64_t c, float* __restrict__ mean, float* __restrict__ m2) {
  for (int64_t k = 0; k < c; ++k) mean[k] = 0, m2[k] = 0;
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t k = 0; k < c; ++k) mean[k] += load(x, p * c + k);
  const float inv = 1.0f / static_cast<float>(pixels);
  for (int64_t k = 0; k < c; ++k) mean[k] *= inv;
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t k = 0; k < c; ++k) {
      const float d = load(x, p * c + k) - mean[k];
      m2[k] += d * d;
    }
}

template <typename T>
void bn_stats_plane(const T* __restrict__ x, int64_t hw, float* __restrict__ mean, float* __restrict__ m2) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= hw; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += load(x, i + j);
  float s = 0;
  for (; i < hw; ++i) s += load(x, i);
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  const float m = s / static_cast<float>(hw);
  float acc2[kLanes] = {};
  for (i = 0; i + kLanes <= hw; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float d = load(x, i + j) - m;
      acc2[j] += d * d;
    }
  float q = 0;
  for (; i < hw; ++i) q += (load(x, i) - m) * (load(x, i) - m);
  for (int j = 0; j < kLanes; ++j) q += acc2[j];
  *mean = m;
  *m2 = q;
}

template <int Act, typename T>
void bn_act_cl_t(const T* __restrict__ x, T* __restrict__ y, int64_t pixels, int64_t c, const float* __restrict__ scale,
                 const float* __restrict__ shift, float slope) {
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t k = 0; k < c; ++k) store(y, p * c + k, activate(load(x, p * c + k) * scale[k] + shift[k], Act, slope));
}

// x = act(x) in place, and sum[c] += the stored values (what a later channel_sum would read).
template <int Act, typename T>
void channel_act_sum_t(T* __restrict__ x, int64_t pixels, int64_t c, float slope, float* __restrict__ sum) {
  for (int64_t p = 0; p < pixels; ++p) {
    T* row = x + p * c;
    for (int64_t k = 0; k < c; ++k) {
      store(row, k, activate(load(row, k), Act, slope));
      sum[k] += load(row, k);
    }
  }
}

template <int Act, typename T>
void act_inplace_t(T* __restrict__ x, int64_t count, float slope) {
  for (int64_t i = 0; i < count; ++i) store(x, i, activate(load(x, i), Act, slope));
}

template <int Act, typename T>
void bn_act_plane_t(const T* __restrict__ x, T* __restrict__ y, int64_t hw, float scale, float shift, float slope) {
  for (int64_t i = 0; i < hw; ++i) store(y, i, activate(load(x, i) * scale + shift, Act, slope));
}

template <int Act, typename T>
void bn_backward_sums_cl_t(const T* __restrict__ x, const T* __restrict__ dy, int64_t pixels, int64_t c,
                           const float* __restrict__ scale, const float* __restrict__ shift,
                           const float* __restrict__ mean, float slope, float* __restrict__ sum_dz,
                           float* __restrict__ sum_dzx) {
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t k = 0; k < c; ++k) {
      const float v = load(x, p * c + k);
      const float dz = load(dy, p * c + k) * act_grad(v * scale[k] + shift[k], Act, slope);
      sum_dz[k] += dz;
      sum_dzx[k] += dz * (v - mean[k]);
    }
}

template <int Act, typename T>
void bn_backward_sums_plane_t(const T* __restrict__ x, const T* __restrict__ dy, int64_t hw, float scale, float shift,
                              float mean, float slope, float* __restrict__ sum_dz, float* __restrict__ sum_dzx) {
  constexpr int kLanes = 16;
  float a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= hw; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float v = load(x, i + j);
      const float dz = load(dy, i + j) * act_grad(v * scale + shift, Act, slope);
      a[j] += dz;
      b[j] += dz * (v - mean);
    }
  float sa = 0, sb = 0;
  for (; i < hw; ++i) {
    const float v = load(x, i);
    const float dz = load(dy, i) * act_grad(v * scale + shift, Act, slope);
    sa += dz;
    sb += dz * (v - mean);
  }
  for (int j = 0; j < kLanes; ++j) sa += a[j], sb += b[j];
  *sum_dz += sa;
  *sum_dzx += sb;
}

template <int Act, typename T>
void bn_backward_dx_cl_t(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t pixels,
                         int64_t c, const float* __restrict__ scale, const float* __restrict__ shift,
                         const float* __restrict__ mean, const float* __restrict__ a, const float* __restrict__ b,
                         const float* __restrict__ k, float slope) {
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t q = 0; q < c; ++q) {
      const float v = load(x, p * c + q);
      const float dz = load(dy, p * c + q) * act_grad(v * scale[q] + shift[q], Act, slope);
      store(dx, p * c + q, (dz - a[q] - (v - mean[q]) * b[q]) * k[q]);
    }
}

template <int Act, typename T>
void bn_backward_dx_plane_t(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t hw,
                            float scale, float shift, float mean, float a, float b, float k, float slope) {
  for (int64_t i = 0; i < hw; ++i) {
    const float v = load(x, i);
    const float dz = load(dy, i) * act_grad(v * scale + shift, Act, slope);
    store(dx, i, (dz - a - (v - mean) * b) * k);
  }
}

// act (0, 1, 2) as a template argument, so that each loop body is branch-free.
#define ASL_BY_ACT(fn, T, ...)                     \
  do {                                             \
    if (act == 1) fn<1, T>(__VA_ARGS__);           \
    else if (act == 2) fn<2, T>(__VA_ARGS__);      \
    else fn<0, T>(__VA_ARGS__);                    \
  } while (0)

// Calls body with T = float or uint16_t (bfloat16's bits) as t says.
template <typename Body>
ASL_INLINE void by_type(ClType t, Body&& body) {
  if (t == ClType::F32) body(float{});
  else body(uint16_t{});
}

#define ASL_STR2(s) #s
#define ASL_STR(s) ASL_STR2(s)

}  // namespace

ClKernels cl_kernels() {
  ClKernels k;
  k.isa = ASL_STR(ASL_ISA);
  k.channel_sum = [](ClType t, const void* x, int64_t pixels, int64_t c, float* sum) {
    if (t == ClType::F32) channel_sum(static_cast<const float*>(x), pixels, c, sum);
    else channel_sum(static_cast<const uint16_t*>(x), pixels, c, sum);
  };
  k.channel_act_sum = [](ClType t, void* x, int64_t pixels, int64_t c, int act, float slope, float* sum) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(channel_act_sum_t, T, static_cast<T*>(x), pixels, c, slope, sum);
    });
  };
  k.act_inplace = [](ClType t, void* x, int64_t count, int act, float slope) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(act_inplace_t, T, static_cast<T*>(x), count, slope);
    });
  };
  k.channel_scale = [](ClType t, void* x, int64_t pixels, int64_t c, const float* gate, const void* residual) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      if (residual == nullptr) channel_scale(static_cast<T*>(x), pixels, c, gate);
      else channel_scale_residual_relu(static_cast<T*>(x), static_cast<const T*>(residual), pixels, c, gate);
    });
  };
  k.gemv = [](ClType t, const void* w, const void* bias, const float* in, int64_t rows, int64_t c, int act,
              float* out) {
    if (t == ClType::F32) {
      gemv(static_cast<const float*>(w), static_cast<const float*>(bias), in, rows, c, act, out);
    } else {
      gemv(static_cast<const uint16_t*>(w), static_cast<const uint16_t*>(bias), in, rows, c, act, out);
    }
  };
  k.blur2 = [](ClType t, const void* x, int64_t h, int64_t w, int64_t c, void* out, int64_t row_begin,
               int64_t row_end, float* tmp) {
    if (t == ClType::F32) {
      blur2(static_cast<const float*>(x), h, w, c, static_cast<float*>(out), row_begin, row_end, tmp);
    } else {
      blur2(static_cast<const uint16_t*>(x), h, w, c, static_cast<uint16_t*>(out), row_begin, row_end, tmp);
    }
  };
  k.unblock16 = [](ClType t, const void* src, void* dst, int64_t hw, int64_t c, int64_t p_begin, int64_t p_end,
                   int act, float slope) {
    if (t == ClType::F32) {
      unblock16(static_cast<const float*>(src), static_cast<float*>(dst), hw, c, p_begin, p_end, act, slope);
    } else {
      unblock16(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), hw, c, p_begin, p_end, act, slope);
    }
  };
  k.blur2_backward = &blur2_backward;
  k.bn_stats_cl = [](ClType t, const void* x, int64_t pixels, int64_t c, float* mean, float* m2) {
    by_type(t, [&](auto tag) { using T = decltype(tag); bn_stats_cl(static_cast<const T*>(x), pixels, c, mean, m2); });
  };
  k.bn_stats_plane = [](ClType t, const void* x, int64_t hw, float* mean, float* m2) {
    by_type(t, [&](auto tag) { using T = decltype(tag); bn_stats_plane(static_cast<const T*>(x), hw, mean, m2); });
  };
  k.bn_act_cl = [](ClType t, const void* x, void* y, int64_t pixels, int64_t c, const float* scale,
                   const float* shift, int act, float slope) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(bn_act_cl_t, T, static_cast<const T*>(x), static_cast<T*>(y), pixels, c, scale, shift, slope);
    });
  };
  k.bn_act_plane = [](ClType t, const void* x, void* y, int64_t hw, float scale, float shift, int act, float slope) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(bn_act_plane_t, T, static_cast<const T*>(x), static_cast<T*>(y), hw, scale, shift, slope);
    });
  };
  k.bn_backward_sums_cl = [](ClType t, const void* x, const void* dy, int64_t pixels, int64_t c, const float* scale,
                             const float* shift, const float* mean, int act, float slope, float* sum_dz,
                             float* sum_dzx) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(bn_backward_sums_cl_t, T, static_cast<const T*>(x), static_cast<const T*>(dy), pixels, c, scale,
                 shift, mean, slope, sum_dz, sum_dzx);
    });
  };
  k.bn_backward_sums_plane = [](ClType t, const void* x, const void* dy, int64_t hw, float scale, float shift,
                                float mean, int act, float slope, float* sum_dz, float* sum_dzx) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(bn_backward_sums_plane_t, T, static_cast<const T*>(x), static_cast<const T*>(dy), hw, scale, shift,
                 mean, slope, sum_dz, sum_dzx);
    });
  };
  k.bn_backward_dx_cl = [](ClType t, const void* x, const void* dy, void* dx, int64_t pixels, int64_t c,
                           const float* scale, const float* shift, const float* mean, const float* a, const float* b,
                           const float* kk, int act, float slope) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(bn_backward_dx_cl_t, T, static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(dx),
                 pixels, c, scale, shift, mean, a, b, kk, slope);
    });
  };
  k.bn_backward_dx_plane = [](ClType t, const void* x, const void* dy, void* dx, int64_t hw, float scale, float shift,
                              float mean, float a, float b, float kk, int act, float slope) {
    by_type(t, [&](auto tag) {
      using T = decltype(tag);
      ASL_BY_ACT(bn_backward_dx_plane_t, T, static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(dx),
                 hw, scale, shift, mean, a, b, kk, slope);
    });
  };
  return k;
}

}  // namespace asl::nn::cpu::ASL_ISA
