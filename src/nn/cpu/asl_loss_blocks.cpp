// Per-ISA element loops of the fused ASL. Built three times (ASL_ISA = isa_avx512, isa_avx2, isa_base)
// with matching -march flags. Each element is computed in the logits' dtype in the reference's order
// of operations, so float32 saturates exactly where the reference does. Float32 exp (in the sigmoid)
// and log are inline polynomials (about 1 ulp, below); pow and the float64 functions are glibc
// vector-math (libmvec) calls, accurate to 4 ulp.
#include "asl_loss_blocks.h"

#include <limits>
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
// log(v) - k log(2) for a normal, finite v > 0 (NaN passes through); vlog below adds the other cases.
ASL_INLINE float vlog_normal(float v, int32_t k = 0) {
  const int32_t shifted = __builtin_bit_cast(int32_t, v) - 0x3f3504f3;  // bits of sqrt(1/2)
  const float e = static_cast<float>((shifted >> 23) - k);
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
  return v != v ? v : r;
}
// Any float: subnormals are scaled up first; 0, negatives and inf get log's special values.
ASL_INLINE float vlog(float v) {
  const bool tiny = v < 1.17549435e-38f;  // below FLT_MIN: subnormal, zero or negative
  float r = vlog_normal(tiny ? v * 8388608.0f : v, tiny ? 23 : 0);  // * 2^23
  r = v == 0.0f ? -__builtin_inff() : r;
  r = v < 0.0f ? __builtin_nanf("") : r;
  return v == __builtin_inff() ? v : r;
}
ASL_INLINE float vlog_normal_or_nan(float v) { return vlog_normal(v); }
ASL_INLINE double vlog_normal_or_nan(double v) { return ::log(v); }
ASL_INLINE double vlog(double v) { return ::log(v); }
ASL_INLINE float vpow_raw(float b, float e) { return ::powf(b, e); }
ASL_INLINE double vpow_raw(double b, double e) { return ::pow(b, e); }

// pow for the focusing weight's base 1 - p_t. A zero base (every negative with sigmoid(x) <= clip)
// would send the whole vector down libmvec's scalar special-case path, so it is handled here:
// 0^g = 0, 1 or inf. Any other base, negative ones included (targets outside [0, 1]), is pow's.
template <typename T>
ASL_INLINE T vpow(T b, T e) {
  const T r = vpow_raw(b != T(0) ? b : T(1), e);
  const T at_zero = e > T(0) ? T(0) : (e == T(0) ? T(1) : T(__builtin_inf()));
  return b != T(0) ? r : at_zero;
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
//   active; loss = y log(p) + (1 - y) log(qc), unweighted; base = 1 - p_t; gamma = g+ y + g- (1 - y);
//   hard path: sel = the selected probability, p or qc, clamped at eps (the argument of the log).
template <typename T, int Pow>
ASL_INLINE void elem(T p_in, T y, const Consts<T>& c, T& p, T& qc, T& dqc_dp, T& loss, T& base, T& gamma,
                     T& sel) {
  const T one = T(1);
  p = p_in;
  const T q = one - p;
  const T shifted = q + c.clip;
  qc = shifted > one ? one : shifted;
  dqc_dp = shifted <= one ? T(-1) : T(0);
  const T ny = one - y;
  const T pc = p < c.eps ? c.eps : p;
  const T qcc = qc < c.eps ? c.eps : qc;
  if constexpr (is_hard(Pow)) {
    // y is 0 or 1 (or -1 for an ignored unknown label, whose values are discarded): the reference's
    // y-weighted sums are exactly selections (0 times a finite value is 0).
    // Selections are written as products with y and 1 - y (exact for y in {0, 1}): GCC turns a division
    // by a selected value into one division per case, and divisions are the slowest part of the loops.
    sel = pc * y + qcc * ny;
    loss = vlog_normal_or_nan(sel);  // sel in [eps, 1] with eps >= FLT_MIN, or NaN: see hard_possible
    base = y == one ? q : one - qc;
  } else {
    loss = y * vlog(pc) + ny * vlog(qcc);
    base = one - (p * y + qc * ny);
  }
  gamma = c.gamma_pos * y + c.gamma_neg * ny;
}

// exp(t) for the sigmoid, vectorisable inline (a libmvec call per vector spills every register around
// it). t = n log(2) + r with |r| <= log(2)/2, exp(r) by Cephes' degree-6 single-precision polynomial,
// times 2^n built in the exponent bits (as 2^(n-1) * 2 so that n = 128 still fits). t is clamped to
// [-80, 88.75]: above 88.7228 the product overflows to inf as exp does, and below -80 any positive
// result gives the same sigmoid (1 + exp(t) rounds to 1 once exp(t) < 2^-25). NaN passes through.
// Checked on every float in [-80, 88.72] against exp in double: at most 1.01 ulp (0.99 without FMA).
ASL_INLINE float exp_for_sigmoid(float t) {
  t = t < -80.0f ? -80.0f : t;
  t = t > 88.75f ? 88.75f : t;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = t * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const int32_t ni = __builtin_bit_cast(int32_t, shifted) - __builtin_bit_cast(int32_t, kRound);
  float r = t - n * 0.693359375f;  // log(2) in two parts, the first exact in n
  r = r + n * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float e = (poly * (r * r) + r) + 1.0f;
  const float half_scale = __builtin_bit_cast(float, (ni + 126) << 23);  // 2^(n-1)
  return (e * half_scale) * 2.0f;
}
ASL_INLINE double exp_for_sigmoid(double t) { return vexp(t); }

template <typename T>
ASL_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + exp_for_sigmoid(-x));
}

// Element loops take p = sigmoid(x) from a first, separate loop over a short chunk: each loop then has
// a shorter dependency chain per element, so more elements are in flight at once. The same first loop
// looks at the chunk's targets, and the element loop of the chunk is chosen from what it found.
constexpr int64_t kChunk = 256;

// Returns non-zero when some target of the chunk is neither 0 nor 1 (nor -1, an unknown label, where
// unknown labels are ignored: their values are discarded afterwards).
template <typename T, bool CheckTargets>
ASL_INLINE uint32_t sigmoid_chunk(const T* __restrict x, const T* __restrict y, T unknown, T* __restrict p,
                                  int64_t n) {
  // An OR of 32-bit flags: GCC vectorises it without widening to 64-bit lanes, as a count would need.
  uint32_t soft = 0;
  for (int64_t i = 0; i < n; ++i) {
    p[i] = sigmoid(x[i]);
    if (CheckTargets) soft |= static_cast<uint32_t>((y[i] != T(0)) & (y[i] != T(1)) & (y[i] != unknown));
  }
  return soft;
}

template <typename T, bool Focal, int Pow>
ASL_INLINE T neg_loss(T p_in, T y, const Consts<T>& c) {
  T p, qc, dqc_dp, loss, base, gamma, sel;
  elem<T, Pow>(p_in, y, c, p, qc, dqc_dp, loss, base, gamma, sel);
  if (Focal) loss = loss * weight<T, Pow>(base, gamma, y, c);
  return -loss;
}

// d(-loss)/dx along the reference's autograd graph (a clamp passes the gradient where x >= min).
template <typename T, bool Focal, bool Detach, int Pow>
ASL_INLINE T neg_grad(T p_in, T y, const Consts<T>& c) {
  T p, qc, dqc_dp, loss, base, gamma, sel;
  elem<T, Pow>(p_in, y, c, p, qc, dqc_dp, loss, base, gamma, sel);
  const T one = T(1);
  const T ny = one - y;
  T dl;  // d loss / d p
  if constexpr (is_hard(Pow)) {
    // One division: only the selected log term has a non-zero derivative.
    const T num = y * (p >= c.eps ? one : T(0)) + ny * (qc >= c.eps ? dqc_dp : T(0));
    dl = num / sel;  // sel is clamped: a zero numerator stays 0, never 0/0
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

// Calls fn(start, length, p, hard) for consecutive chunks of [0, n): p = sigmoid(x) over the chunk,
// hard = the chunk may take the element loop for hard targets (only ever true when HardPossible).
template <typename T, bool HardPossible, typename Fn>
ASL_INLINE void for_sigmoid_chunks(const T* __restrict x, const T* __restrict y, T unknown, int64_t n, Fn&& fn) {
  alignas(64) T p[kChunk];
  for (int64_t s = 0; s < n; s += kChunk) {
    const int64_t len = n - s < kChunk ? n - s : kChunk;
    const uint32_t soft = sigmoid_chunk<T, HardPossible>(x + s, y + s, unknown, p, len);
    fn(s, len, static_cast<const T*>(p), HardPossible && soft == 0);
  }
}

// Unknown labels (target -1) contribute nothing; a separate pass keeps the main loops branch-free,
// and it runs after the product with the incoming gradient, so the result is 0 even when that is inf.
template <typename T>
ASL_INLINE void zero_unknown(const T* __restrict y, T* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = y[i] == T(-1) ? T(0) : out[i];
}

// Partial sums in a fixed order: within a chunk, element i goes to lane i % kLanes (a vector's worth
// of T, summed in T: one vector add per vector of elements), the chunk's tail to lane 0; each chunk's
// lanes are then added to the block's double sums.
constexpr int kSums = 16;  // at least one vector of floats

template <typename T>
ASL_INLINE void accumulate(const T* __restrict v, int64_t n, double (&acc)[kSums]) {
  constexpr int kLanes = 64 / static_cast<int>(sizeof(T));  // 16 floats or 8 doubles
  static_assert(kLanes <= kSums && kChunk % kLanes == 0, "lanes must fit the sums and divide a chunk");
  T lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] += v[i + j];
  }
  for (; i < n; ++i) lane[0] += v[i];
  for (int j = 0; j < kLanes; ++j) acc[j] += static_cast<double>(lane[j]);
}

ASL_INLINE double total(const double (&acc)[kSums]) {
  double level[kSums];
  for (int j = 0; j < kSums; ++j) level[j] = acc[j];
  for (int width = kSums / 2; width >= 1; width /= 2) {
    for (int j = 0; j < width; ++j) level[j] = level[j] + level[j + width];
  }
  return level[0];
}

// Where the hard-target loops may be used: the focusing powers are small integers (or there is no
// focusing) and eps is a normal float, so the selected log argument lies in [eps, 1] or is NaN (the
// hard loops' log skips the special cases) and y log p + (1 - y) log qc equals the selected log
// exactly (0 times a finite log is 0).
bool hard_possible(const BlockParams& p) {
  const bool powers = !p.focal || (small_int(p.gamma_pos) && small_int(p.gamma_neg));
  return powers && p.eps >= static_cast<double>(std::numeric_limits<float>::min());
}

// Calls fn(std::integral_constant<int, Pow>) with the hard power kind for these parameters.
template <typename Fn>
void with_hard_pow_kind(const BlockParams& p, Fn&& fn) {
  const int gp = static_cast<int>(p.gamma_pos), gn = static_cast<int>(p.gamma_neg);
  if (gp == 0 && gn == 4) return fn(std::integral_constant<int, fixed_pow(0, 4)>{});  // training recipe
  if (gp == 1 && gn == 4) return fn(std::integral_constant<int, fixed_pow(1, 4)>{});  // reference default
  if (gp == 2 && gn == 2) return fn(std::integral_constant<int, fixed_pow(2, 2)>{});  // focal loss
  if (gp == 1 && gn == 2) return fn(std::integral_constant<int, fixed_pow(1, 2)>{});
  if (gp == 0 && gn == 2) return fn(std::integral_constant<int, fixed_pow(0, 2)>{});
  return fn(std::integral_constant<int, kBitsPow>{});
}

// Calls fn(Focal, Hard) as integral constants: Hard is the power kind of the hard loops, or kSoftPow
// when they cannot be used for these parameters.
template <typename Fn>
void with_kinds(const BlockParams& p, Fn&& fn) {
  using Yes = std::true_type;
  using No = std::false_type;
  using Soft = std::integral_constant<int, kSoftPow>;
  const bool hard = hard_possible(p);
  if (!p.focal) {
    if (hard) fn(No{}, std::integral_constant<int, kBitsPow>{});
    else fn(No{}, Soft{});
  } else if (!hard) {
    fn(Yes{}, Soft{});
  } else {
    with_hard_pow_kind(p, [&](auto kind) { fn(Yes{}, kind); });
  }
}

template <typename T, bool Focal, int Hard>
double forward_loop(const T* __restrict x, const T* __restrict y, T* __restrict out, int64_t n,
                    const Consts<T> c, bool ignore_unknown) {
  constexpr bool kHardPossible = Hard != kSoftPow;
  double acc[kSums] = {};
  alignas(64) T buffer[kChunk];
  const T unknown = ignore_unknown ? T(-1) : T(0);
  for_sigmoid_chunks<T, kHardPossible>(x, y, unknown, n, [&](int64_t s, int64_t len, const T* __restrict p, bool hard) {
    const T* __restrict ys = y + s;
    T* __restrict os = out != nullptr ? out + s : buffer;
    const auto loop = [&](auto pow) {
      for (int64_t i = 0; i < len; ++i) os[i] = neg_loss<T, Focal, decltype(pow)::value>(p[i], ys[i], c);
    };
    if (kHardPossible && hard) loop(std::integral_constant<int, Hard>{});
    else loop(std::integral_constant<int, kSoftPow>{});
    if (ignore_unknown) zero_unknown(ys, os, len);
    if (out == nullptr) accumulate(os, len, acc);
  });
  return total(acc);
}

template <typename T, bool Focal, bool Detach, int Hard, bool PerElement>
void backward_loop(const T* __restrict x, const T* __restrict y, const T* __restrict gout, T gscale,
                   T* __restrict out, int64_t n, const Consts<T> c, bool ignore_unknown) {
  constexpr bool kHardPossible = Hard != kSoftPow;
  const T unknown = ignore_unknown ? T(-1) : T(0);
  for_sigmoid_chunks<T, kHardPossible>(x, y, unknown, n, [&](int64_t s, int64_t len, const T* __restrict p, bool hard) {
    const T* __restrict ys = y + s;
    T* __restrict os = out + s;
    const auto loop = [&](auto pow) {
      for (int64_t i = 0; i < len; ++i) {
        os[i] = (PerElement ? gout[s + i] : gscale) * neg_grad<T, Focal, Detach, decltype(pow)::value>(p[i], ys[i], c);
      }
    };
    if (kHardPossible && hard) loop(std::integral_constant<int, Hard>{});
    else loop(std::integral_constant<int, kSoftPow>{});
    if (ignore_unknown) zero_unknown(ys, os, len);
  });
}

template <typename T>
double forward(const T* x, const T* y, T* out, int64_t n, const BlockParams& p) {
  const Consts<T> c = consts<T>(p);
  double sum = 0;
  with_kinds(p, [&](auto focal, auto hard) {
    sum = forward_loop<T, decltype(focal)::value, decltype(hard)::value>(x, y, out, n, c, p.ignore_unknown);
  });
  return sum;
}

template <typename T, bool PerElement>
void backward_modes(const T* x, const T* y, const T* gout, T gscale, T* out, int64_t n, const BlockParams& p) {
  const Consts<T> c = consts<T>(p);
  with_kinds(p, [&](auto focal, auto hard) {
    constexpr bool kFocal = decltype(focal)::value;
    constexpr int kHard = decltype(hard)::value;
    const bool ignore = p.ignore_unknown;
    if (kFocal && p.detach) backward_loop<T, kFocal, true, kHard, PerElement>(x, y, gout, gscale, out, n, c, ignore);
    else backward_loop<T, kFocal, false, kHard, PerElement>(x, y, gout, gscale, out, n, c, ignore);
  });
}

template <typename T>
void backward(const T* x, const T* y, const T* gout, T gscale, T* out, int64_t n, const BlockParams& p) {
  if (gout != nullptr) backward_modes<T, true>(x, y, gout, gscale, out, n, p);
  else backward_modes<T, false>(x, y, nullptr, gscale, out, n, p);
}

#define ASL_STR2(s) #s
#define ASL_STR(s) ASL_STR2(s)

}  // namespace

BlockKernels kernels() {
  return {ASL_STR(ASL_ISA), &forward<float>, &forward<double>, &backward<float>, &backward<double>};
}

}  // namespace asl::nn::cpu::ASL_ISA
