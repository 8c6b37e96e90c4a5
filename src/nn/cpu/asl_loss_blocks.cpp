// Per-ISA element loops of the fused ASL. Built three times (ASL_ISA = isa_avx512, isa_avx2, isa_base)
// with matching -march flags. Each element is computed in the logits' dtype in the reference's order
// of operations, so float32 saturates exactly where the reference does; exp/log/pow calls become
// glibc vector-math (libmvec) calls, accurate to 4 ulp.
#include "asl_loss_blocks.h"

#include <type_traits>

#ifndef ASL_ISA
#error "ASL_ISA must name the instruction-set namespace"
#endif

extern "C" {
double exp(double) noexcept __attribute__((simd("notinbranch")));
double log(double) noexcept __attribute__((simd("notinbranch")));
double pow(double, double) noexcept __attribute__((simd("notinbranch")));
float expf(float) noexcept __attribute__((simd("notinbranch")));
float logf(float) noexcept __attribute__((simd("notinbranch")));
float powf(float, float) noexcept __attribute__((simd("notinbranch")));
}

namespace asl::nn::cpu::ASL_ISA {
namespace {

#define ASL_INLINE inline __attribute__((always_inline))

ASL_INLINE float vexp(float v) { return ::expf(v); }
ASL_INLINE double vexp(double v) { return ::exp(v); }
// Natural log of a float, vectorisable inline (glibc's AVX-512 logf costs several times its expf).
// v = m * 2^e with m in [sqrt(1/2), sqrt(2)), then log(1 + f), f = m - 1, by a degree-9 polynomial
// in f (Cephes' single-precision minimax coefficients; about 1 ulp) and e * log(2) in two parts.
// Subnormals are scaled up first; 0, negatives, inf and NaN get log's special values.
ASL_INLINE float vlog(float v) {
  const bool tiny = v < 1.17549435e-38f;  // below FLT_MIN: subnormal, zero or negative
  const float a = tiny ? v * 8388608.0f : v;  // * 2^23
  const int32_t shifted = __builtin_bit_cast(int32_t, a) - 0x3f3504f3;  // bits of sqrt(1/2)
  const float e = static_cast<float>((shifted >> 23) - (tiny ? 23 : 0));
  const float f = __builtin_bit_cast(float, (shifted & 0x007fffff) + 0x3f3504f3) - 1.0f;
  const float z = f * f;
  float poly = 7.0376836292e-2f;
  poly = poly * f - 1.1514610310e-1f;
  poly = poly * f + 1.1676998740e-1f;
  poly = poly * f - 1.2420140846e-1f;
  poly = poly * f + 1.4249322787e-1f;
  poly = poly * f - 1.6668057665e-1f;
  poly = poly * f + 2.0000714765e-1f;
  poly = poly * f - 2.4999993993e-1f;
  poly = poly * f + 3.3333331174e-1f;
  float r = f * z * poly;
  r = r - 2.12194440e-4f * e;  // log(2) = 0.693359375 - 2.12194440e-4, the first part exact in e
  r = r - 0.5f * z;
  r = (f + r) + 0.693359375f * e;
  r = v == 0.0f ? -__builtin_inff() : r;
  r = v < 0.0f ? __builtin_nanf("") : r;
  r = v == __builtin_inff() ? v : r;
  return v != v ? v : r;
}
ASL_INLINE double vlog(double v) { return ::log(v); }
ASL_INLINE float vpow_raw(float b, float e) { return ::powf(b, e); }
ASL_INLINE double vpow_raw(double b, double e) { return ::pow(b, e); }

// pow for the focusing weight's base 1 - p_t, which is >= 0 up to rounding. A zero base (every
// negative with sigmoid(x) <= clip) would send the whole vector down libmvec's scalar special-case
// path, so it is handled here: 0^g = 0, 1 or inf; a rounding residue below 0 counts as 0.
template <typename T>
ASL_INLINE T vpow(T b, T e) {
  const T r = vpow_raw(b > T(0) ? b : T(1), e);
  const T at_zero = e > T(0) ? T(0) : (e == T(0) ? T(1) : T(__builtin_inf()));
  return b > T(0) ? r : at_zero;
}

// No bool in here: a byte-sized value in the loop stops GCC from vectorising it. A disabled clip is
// a clip of 0, which gives the same values and gradients (1 - p never exceeds 1).
template <typename T>
struct Consts {
  T clip, eps, gamma_pos, gamma_neg;
  // Hard path: binary digits (0 or 1) of the integer exponents gamma+, gamma-, gamma+ - 1, gamma- - 1.
  T pos_bits[4], neg_bits[4], pos1_bits[4], neg1_bits[4];
};

constexpr int kMaxIntGamma = 15;

bool small_int(double g) { return g >= 0 && g <= kMaxIntGamma && g == static_cast<double>(static_cast<int>(g)); }

template <typename T>
void set_bits(T (&bits)[4], int e) {
  for (int k = 0; k < 4; ++k) bits[k] = e >= 0 && ((e >> k) & 1) ? T(1) : T(0);
}

template <typename T>
Consts<T> consts(const BlockParams& p) {
  Consts<T> c{};
  c.clip = static_cast<T>(p.use_clip ? p.clip : 0.0);
  c.eps = static_cast<T>(p.eps);
  c.gamma_pos = static_cast<T>(p.gamma_pos);
  c.gamma_neg = static_cast<T>(p.gamma_neg);
  if (small_int(p.gamma_pos) && small_int(p.gamma_neg)) {
    set_bits(c.pos_bits, static_cast<int>(p.gamma_pos));
    set_bits(c.neg_bits, static_cast<int>(p.gamma_neg));
    set_bits(c.pos1_bits, static_cast<int>(p.gamma_pos) - 1);
    set_bits(c.neg1_bits, static_cast<int>(p.gamma_neg) - 1);
  }
  return c;
}

// b^e for an integer 0 <= e <= 15 given by its binary digits: at most 4 roundings, no libm call.
template <typename T>
ASL_INLINE T ipow(T b, const T (&bits)[4]) {
  const T b2 = b * b, b4 = b2 * b2, b8 = b4 * b4;
  T r = bits[0] != T(0) ? b : T(1);
  r = bits[1] != T(0) ? r * b2 : r;
  r = bits[2] != T(0) ? r * b4 : r;
  return bits[3] != T(0) ? r * b8 : r;
}

// The focusing weight's power, chosen per block:
//   kSoftPow  soft targets or non-integer gammas: libmvec pow;
//   kBitsPow  hard 0/1 targets, integer gammas known at run time: ipow over their binary digits;
//   >= 0      hard targets with the common gammas compiled in (gamma+ * 16 + gamma-): a few products.
// With hard targets y log p + (1 - y) log qc is exactly the log of the selected probability.
constexpr int kSoftPow = -2;
constexpr int kBitsPow = -1;
constexpr bool is_hard(int pow_kind) { return pow_kind != kSoftPow; }
constexpr int fixed_pow(int gamma_pos, int gamma_neg) { return gamma_pos * 16 + gamma_neg; }

template <int N, typename T>
ASL_INLINE T cpow(T b) {
  if constexpr (N == 0) {
    return T(1);
  } else if constexpr (N % 2 == 0) {
    const T h = cpow<N / 2>(b);
    return h * h;
  } else {
    return cpow<N - 1>(b) * b;
  }
}

template <typename T, int Pow>
ASL_INLINE T weight(T base, T gamma, T y, const Consts<T>& c) {
  if constexpr (Pow == kSoftPow) {
    return vpow(base, gamma);
  } else if constexpr (Pow == kBitsPow) {
    return y == T(1) ? ipow(base, c.pos_bits) : ipow(base, c.neg_bits);
  } else {
    return y == T(1) ? cpow<Pow / 16>(base) : cpow<Pow % 16>(base);
  }
}

// d weight / d base (0 where gamma is 0, as autograd's pow backward).
template <typename T, int Pow>
ASL_INLINE T weight_slope(T base, T gamma, T y, const Consts<T>& c) {
  const T one = T(1);
  if constexpr (Pow >= 0) {
    constexpr int gp = Pow / 16, gn = Pow % 16;
    const T sp = gp == 0 ? T(0) : T(gp) * cpow<(gp > 0 ? gp - 1 : 0)>(base);
    const T sn = gn == 0 ? T(0) : T(gn) * cpow<(gn > 0 ? gn - 1 : 0)>(base);
    return y == one ? sp : sn;
  } else {
    const T pw = Pow == kBitsPow ? (y == one ? ipow(base, c.pos1_bits) : ipow(base, c.neg1_bits))
                                 : vpow(base, gamma - one);
    return gamma == T(0) ? T(0) : gamma * pw;
  }
}

// What both passes need about one element (scalar out-parameters, so the loops stay vectorisable):
//   p = sigmoid(x); qc = 1 - p shifted by clip and clamped at 1; dqc_dp = -1, or 0 where the clamp is
//   active; loss = y log(p) + (1 - y) log(qc), unweighted; base = 1 - p_t; gamma = g+ y + g- (1 - y).
template <typename T, int Pow>
ASL_INLINE void elem(T p_in, T y, const Consts<T>& c, T& p, T& qc, T& dqc_dp, T& loss, T& base, T& gamma) {
  const T one = T(1);
  p = p_in;
  const T q = one - p;
  const T shifted = q + c.clip;
  qc = shifted > one ? one : shifted;
  dqc_dp = shifted <= one ? T(-1) : T(0);
  const T pc = p < c.eps ? c.eps : p;
  const T qcc = qc < c.eps ? c.eps : qc;
  const T ny = one - y;
  if constexpr (is_hard(Pow)) {
    loss = vlog(y == one ? pc : qcc);
  } else {
    loss = y * vlog(pc) + ny * vlog(qcc);
  }
  base = one - (p * y + qc * ny);
  gamma = c.gamma_pos * y + c.gamma_neg * ny;
}

template <typename T>
ASL_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}

// Element loops take p = sigmoid(x) from a first, separate loop over a short chunk: each loop then has
// a shorter dependency chain per element, so more elements are in flight at once.
constexpr int64_t kChunk = 256;

template <typename T>
ASL_INLINE void sigmoid_chunk(const T* __restrict x, T* __restrict p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = sigmoid(x[i]);
}

template <typename T, bool Focal, int Pow>
ASL_INLINE T neg_loss(T p_in, T y, const Consts<T>& c) {
  T p, qc, dqc_dp, loss, base, gamma;
  elem<T, Pow>(p_in, y, c, p, qc, dqc_dp, loss, base, gamma);
  if (Focal) loss = loss * weight<T, Pow>(base, gamma, y, c);
  return -loss;
}

// d(-loss)/dx along the reference's autograd graph (a clamp passes the gradient where x >= min).
template <typename T, bool Focal, bool Detach, int Pow>
ASL_INLINE T neg_grad(T p_in, T y, const Consts<T>& c) {
  T p, qc, dqc_dp, loss, base, gamma;
  elem<T, Pow>(p_in, y, c, p, qc, dqc_dp, loss, base, gamma);
  const T one = T(1);
  const T ny = one - y;
  T dl;  // d loss / d p
  if constexpr (is_hard(Pow)) {
    // One division: only the selected log term has a non-zero derivative.
    const bool pos = y == one;
    const T num = pos ? (p >= c.eps ? one : T(0)) : (qc >= c.eps ? dqc_dp : T(0));
    const T den = pos ? p : qc;
    dl = num / (den < c.eps ? c.eps : den);  // clamped: a zero numerator stays 0, never 0/0
  } else {
    const T dlp = p >= c.eps ? one / p : T(0);
    const T dln = qc >= c.eps ? dqc_dp / qc : T(0);
    dl = y * dlp + ny * dln;
  }
  if (Focal) {
    T total = dl * weight<T, Pow>(base, gamma, y, c);
    if (!Detach) total = total + loss * (weight_slope<T, Pow>(base, gamma, y, c) * -(y + ny * dqc_dp));
    dl = total;
  }
  return -(dl * ((one - p) * p));
}

// Calls fn(start, length, p) for consecutive chunks of [0, n), p = sigmoid(x) over the chunk.
template <typename T, typename Fn>
ASL_INLINE void for_sigmoid_chunks(const T* __restrict x, int64_t n, Fn&& fn) {
  T p[kChunk];
  for (int64_t s = 0; s < n; s += kChunk) {
    const int64_t len = n - s < kChunk ? n - s : kChunk;
    sigmoid_chunk(x + s, p, len);
    fn(s, len, static_cast<const T*>(p));
  }
}

template <typename T, bool Focal, int Pow>
void forward_loop(const T* __restrict x, const T* __restrict y, T* __restrict out, int64_t n, const Consts<T> c) {
  for_sigmoid_chunks(x, n, [&](int64_t s, int64_t len, const T* __restrict p) {
    const T* __restrict ys = y + s;
    T* __restrict os = out + s;
    for (int64_t i = 0; i < len; ++i) os[i] = neg_loss<T, Focal, Pow>(p[i], ys[i], c);
  });
}

template <typename T, bool Focal, bool Detach, int Pow, bool PerElement>
void backward_loop(const T* __restrict x, const T* __restrict y, const T* __restrict gout, T gscale,
                   T* __restrict out, int64_t n, const Consts<T> c) {
  for_sigmoid_chunks(x, n, [&](int64_t s, int64_t len, const T* __restrict p) {
    const T* __restrict ys = y + s;
    T* __restrict os = out + s;
    for (int64_t i = 0; i < len; ++i) {
      const T g = PerElement ? gout[s + i] : gscale;
      os[i] = g * neg_grad<T, Focal, Detach, Pow>(p[i], ys[i], c);
    }
  });
}

// Unknown labels (target -1) contribute nothing; a separate pass keeps the main loops branch-free,
// and it runs after the product with the incoming gradient, so the result is 0 even when that is inf.
template <typename T>
void zero_unknown(const T* __restrict y, T* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = y[i] == T(-1) ? T(0) : out[i];
}

template <typename T>
bool hard_block(const T* __restrict y, int64_t n, const BlockParams& p) {
  if (!small_int(p.gamma_pos) || !small_int(p.gamma_neg)) return false;
  // An OR of 32-bit flags: GCC vectorises it without widening to 64-bit lanes, as a count would need.
  uint32_t soft = 0;
  for (int64_t i = 0; i < n; ++i) soft |= static_cast<uint32_t>((y[i] != T(0)) & (y[i] != T(1)) & (y[i] != T(-1)));
  return soft == 0;
}

// Calls fn(std::integral_constant<int, Pow>) with the power kind for this block (see kSoftPow).
template <typename Fn>
void with_pow_kind(bool hard, const BlockParams& p, Fn&& fn) {
  if (!hard) return fn(std::integral_constant<int, kSoftPow>{});
  const int gp = static_cast<int>(p.gamma_pos), gn = static_cast<int>(p.gamma_neg);
  if (gp == 0 && gn == 4) return fn(std::integral_constant<int, fixed_pow(0, 4)>{});  // training recipe
  if (gp == 1 && gn == 4) return fn(std::integral_constant<int, fixed_pow(1, 4)>{});  // reference default
  if (gp == 2 && gn == 2) return fn(std::integral_constant<int, fixed_pow(2, 2)>{});  // focal loss
  if (gp == 1 && gn == 2) return fn(std::integral_constant<int, fixed_pow(1, 2)>{});
  if (gp == 0 && gn == 2) return fn(std::integral_constant<int, fixed_pow(0, 2)>{});
  return fn(std::integral_constant<int, kBitsPow>{});
}

template <typename T>
void forward(const T* x, const T* y, T* out, int64_t n, const BlockParams& p) {
  const Consts<T> c = consts<T>(p);
  const bool hard = hard_block(y, n, p);
  if (!p.focal) {
    if (hard) forward_loop<T, false, kBitsPow>(x, y, out, n, c);
    else forward_loop<T, false, kSoftPow>(x, y, out, n, c);
  } else {
    with_pow_kind(hard, p, [&](auto kind) { forward_loop<T, true, decltype(kind)::value>(x, y, out, n, c); });
  }
  if (p.ignore_unknown) zero_unknown(y, out, n);
}

template <typename T, bool PerElement>
void backward_modes(const T* x, const T* y, const T* gout, T gscale, T* out, int64_t n, const BlockParams& p) {
  const Consts<T> c = consts<T>(p);
  const bool hard = hard_block(y, n, p);
  if (!p.focal) {
    if (hard) backward_loop<T, false, false, kBitsPow, PerElement>(x, y, gout, gscale, out, n, c);
    else backward_loop<T, false, false, kSoftPow, PerElement>(x, y, gout, gscale, out, n, c);
    return;
  }
  with_pow_kind(hard, p, [&](auto kind) {
    constexpr int Pow = decltype(kind)::value;
    if (p.detach) backward_loop<T, true, true, Pow, PerElement>(x, y, gout, gscale, out, n, c);
    else backward_loop<T, true, false, Pow, PerElement>(x, y, gout, gscale, out, n, c);
  });
}

template <typename T>
void backward(const T* x, const T* y, const T* gout, T gscale, T* out, int64_t n, const BlockParams& p) {
  if (gout != nullptr) backward_modes<T, true>(x, y, gout, gscale, out, n, p);
  else backward_modes<T, false>(x, y, nullptr, gscale, out, n, p);
  if (p.ignore_unknown) zero_unknown(y, out, n);
}

#define ASL_STR2(s) #s
#define ASL_STR(s) ASL_STR2(s)

}  // namespace

BlockKernels kernels() {
  return {ASL_STR(ASL_ISA), &forward<float>, &forward<double>, &backward<float>, &backward<double>};
}

}  // namespace asl::nn::cpu::ASL_ISA
