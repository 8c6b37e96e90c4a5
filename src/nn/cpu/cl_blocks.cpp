// Per-ISA channels-last loops (cl_blocks.h). Built three times (ASL_ISA = isa_avx512, isa_avx2, isa_base)
// with matching -march flags; the inner loops run over contiguous channels and vectorise as written.
#include "cl_blocks.h"

#include <cmath>
#include <cstring>

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
void channel_sum(const T* x, int64_t pixels, int64_t c, float* sum) {
  for (int64_t p = 0; p < pixels; ++p) {
    const T* row = x + p * c;
    for (int64_t k = 0; k < c; ++k) sum[k] += load(row, k);
  }
}

template <typename T>
void channel_scale(T* x, int64_t pixels, int64_t c, const float* gate) {
  for (int64_t p = 0; p < pixels; ++p) {
    T* row = x + p * c;
    for (int64_t k = 0; k < c; ++k) store(row, k, load(row, k) * gate[k]);
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

template <typename T, int Act>
void unblock16_act(const T* src, T* dst, int64_t hw, int64_t c, int64_t p_begin, int64_t p_end, float slope) {
  const int64_t blocks = c / 16;
  for (int64_t p = p_begin; p < p_end; ++p) {
    T* out = dst + p * c;
    for (int64_t b = 0; b < blocks; ++b) {
      const T* in = src + (b * hw + p) * 16;
      for (int j = 0; j < 16; ++j) store(out, b * 16 + j, activate(load(in, j), Act, slope));
    }
  }
}

template <typename T>
void unblock16(const T* src, T* dst, int64_t hw, int64_t c, int64_t p_begin, int64_t p_end, int act, float slope) {
  if (act == 1) unblock16_act<T, 1>(src, dst, hw, c, p_begin, p_end, slope);
  else if (act == 2) unblock16_act<T, 2>(src, dst, hw, c, p_begin, p_end, slope);
  else unblock16_act<T, 0>(src, dst, hw, c, p_begin, p_end, slope);
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
  k.channel_scale = [](ClType t, void* x, int64_t pixels, int64_t c, const float* gate) {
    if (t == ClType::F32) channel_scale(static_cast<float*>(x), pixels, c, gate);
    else channel_scale(static_cast<uint16_t*>(x), pixels, c, gate);
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
  return k;
}

}  // namespace asl::nn::cpu::ASL_ISA
