// Fused multi-label ASL kernels. Each element is computed in the logits' dtype in the reference's
// operation order (so float32 saturates exactly where the reference does); exp/log/pow are evaluated
// in double through glibc's vector math library, then rounded to the logits' dtype.
#include "asl_loss_kernel.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <vector>

// SIMD variants of these exist in libmvec; the declarations let the vectoriser call them.
extern "C" {
double exp(double) noexcept __attribute__((simd("notinbranch")));
double log(double) noexcept __attribute__((simd("notinbranch")));
double pow(double, double) noexcept __attribute__((simd("notinbranch")));
}

namespace asl::nn::cpu {
namespace {

#define ASL_TARGET_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))

constexpr int64_t kBlock = 2048;           // elements per deterministic partial sum
constexpr int64_t kParallelGrain = 8;      // blocks: below 16k elements one thread is faster

template <typename T>
struct Consts {
  T clip, eps, gamma_pos, gamma_neg;
  bool use_clip, ignore_unknown;
};

template <typename T>
Consts<T> make_consts(const AslParams& p) {
  return {static_cast<T>(p.clip), static_cast<T>(p.eps), static_cast<T>(p.gamma_pos),
          static_cast<T>(p.gamma_neg), p.clip > 0, p.ignore_unknown};
}

// Everything both passes need about one element, in the reference's order of operations.
template <typename T>
struct Elem {
  T p;        // sigmoid(x)
  T qc;       // 1 - p, shifted by clip and clamped at 1
  T dqc_dp;   // -1, or 0 where the clip clamp is active
  T loss;     // y log(p) + (1 - y) log(qc), unweighted
  T base;     // 1 - p_t
  T gamma;    // gamma_pos y + gamma_neg (1 - y)
};

template <typename T>
inline __attribute__((always_inline)) Elem<T> elem(T x, T y, const Consts<T>& c) {
  Elem<T> e;
  const T one = T(1);
  const T ex = static_cast<T>(::exp(-static_cast<double>(x)));
  e.p = one / (one + ex);
  const T q = one - e.p;
  const T shifted = q + c.clip;
  e.qc = c.use_clip ? (shifted > one ? one : shifted) : q;
  e.dqc_dp = (c.use_clip && !(shifted <= one)) ? T(0) : T(-1);
  const T pc = e.p < c.eps ? c.eps : e.p;
  const T qcc = e.qc < c.eps ? c.eps : e.qc;
  const T lp = static_cast<T>(::log(static_cast<double>(pc)));
  const T ln = static_cast<T>(::log(static_cast<double>(qcc)));
  const T ny = one - y;
  e.loss = y * lp + ny * ln;
  const T pt = e.p * y + e.qc * ny;
  e.base = one - pt;
  e.gamma = c.gamma_pos * y + c.gamma_neg * ny;
  return e;
}

template <typename T, bool Focal>
inline __attribute__((always_inline)) T elem_neg_loss(T x, T y, const Consts<T>& c) {
  const Elem<T> e = elem(x, y, c);
  T l = e.loss;
  if (Focal) l = l * static_cast<T>(::pow(static_cast<double>(e.base), static_cast<double>(e.gamma)));
  const bool skip = c.ignore_unknown && y == T(-1);
  return skip ? T(0) : -l;
}

// d(-loss_el)/dx, following the reference autograd graph (clamp passes the gradient where x >= min).
template <typename T, bool Focal, bool Detach>
inline __attribute__((always_inline)) T elem_neg_grad(T x, T y, const Consts<T>& c) {
  const Elem<T> e = elem(x, y, c);
  const T one = T(1);
  const T ny = one - y;
  const T dlp = e.p >= c.eps ? one / e.p : T(0);
  const T dln = e.qc >= c.eps ? e.dqc_dp / e.qc : T(0);
  T dl = y * dlp + ny * dln;  // d loss / d p
  if (Focal) {
    const double b = static_cast<double>(e.base), g = static_cast<double>(e.gamma);
    const T w = static_cast<T>(::pow(b, g));
    T total = dl * w;
    if (!Detach) {
      const T dw_dbase = e.gamma == T(0) ? T(0) : e.gamma * static_cast<T>(::pow(b, g - 1.0));
      const T dbase_dp = -(y + ny * e.dqc_dp);
      total = total + e.loss * (dw_dbase * dbase_dp);
    }
    dl = total;
  }
  const T g = -(dl * ((one - e.p) * e.p));
  const bool skip = c.ignore_unknown && y == T(-1);
  return skip ? T(0) : g;
}

template <typename T, bool Focal>
ASL_TARGET_CLONES double forward_sum_block(const T* x, const T* y, int64_t n, Consts<T> c) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(elem_neg_loss<T, Focal>(x[i], y[i], c));
  return acc;
}

template <typename T, bool Focal>
ASL_TARGET_CLONES void forward_elem_block(const T* x, const T* y, T* out, int64_t n, Consts<T> c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = elem_neg_loss<T, Focal>(x[i], y[i], c);
}

template <typename T, bool Focal, bool Detach, bool PerElement>
ASL_TARGET_CLONES void backward_block(const T* x, const T* y, const T* gout, T gscale, T* out, int64_t n,
                                      Consts<T> c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T g = PerElement ? gout[i] : gscale;
    out[i] = g * elem_neg_grad<T, Focal, Detach>(x[i], y[i], c);
  }
}

template <typename Fn>
void for_blocks(int64_t n, const Fn& fn) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kParallelGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * kBlock;
      fn(b, start, std::min(kBlock, n - start));
    }
  });
}

template <typename T>
int64_t count_known(const T* y, int64_t n) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) k += (y[i] != T(-1));
  return k;
}

template <typename T>
AslForward forward_impl(const torch::Tensor& logits, const torch::Tensor& targets, const AslParams& p,
                        bool per_element) {
  const Consts<T> c = make_consts<T>(p);
  const bool focal = p.gamma_neg > 0 || p.gamma_pos > 0;
  const T* x = logits.data_ptr<T>();
  const T* y = targets.data_ptr<T>();
  const int64_t n = logits.numel();
  AslForward result;
  if (per_element) {
    result.loss = torch::empty_like(logits);
    T* out = result.loss.data_ptr<T>();
    for_blocks(n, [&](int64_t, int64_t s, int64_t len) {
      if (focal) forward_elem_block<T, true>(x + s, y + s, out + s, len, c);
      else forward_elem_block<T, false>(x + s, y + s, out + s, len, c);
    });
    return result;
  }
  std::vector<double> partial(static_cast<size_t>((n + kBlock - 1) / kBlock), 0.0);
  for_blocks(n, [&](int64_t b, int64_t s, int64_t len) {
    partial[static_cast<size_t>(b)] = focal ? forward_sum_block<T, true>(x + s, y + s, len, c)
                                            : forward_sum_block<T, false>(x + s, y + s, len, c);
  });
  double total = 0;
  for (double v : partial) total += v;  // fixed order: the same result for any thread count
  result.loss = torch::full({}, total, logits.options());
  result.count = p.ignore_unknown ? count_known(y, n) : n;
  return result;
}

template <typename T, bool Focal, bool Detach>
void backward_dispatch_grad(const T* x, const T* y, const T* gout, T gscale, T* out, int64_t n,
                            const Consts<T>& c) {
  for_blocks(n, [&](int64_t, int64_t s, int64_t len) {
    if (gout != nullptr) backward_block<T, Focal, Detach, true>(x + s, y + s, gout + s, gscale, out + s, len, c);
    else backward_block<T, Focal, Detach, false>(x + s, y + s, nullptr, gscale, out + s, len, c);
  });
}

template <typename T>
torch::Tensor backward_impl(const torch::Tensor& grad_out, const torch::Tensor& logits,
                            const torch::Tensor& targets, const AslParams& p, double scale) {
  const Consts<T> c = make_consts<T>(p);
  const bool focal = p.gamma_neg > 0 || p.gamma_pos > 0;
  torch::Tensor grad = torch::empty_like(logits);
  const int64_t n = logits.numel();
  const T* x = logits.data_ptr<T>();
  const T* y = targets.data_ptr<T>();
  T* out = grad.data_ptr<T>();
  const T* gout = nullptr;
  T gscale = T(0);
  torch::Tensor g_contig;
  if (grad_out.dim() == 0) {
    gscale = static_cast<T>(grad_out.item<double>() * scale);
  } else {
    g_contig = grad_out.to(logits.scalar_type()).contiguous();
    gout = g_contig.data_ptr<T>();
  }
  if (!focal) backward_dispatch_grad<T, false, false>(x, y, gout, gscale, out, n, c);
  else if (p.detach_weight) backward_dispatch_grad<T, true, true>(x, y, gout, gscale, out, n, c);
  else backward_dispatch_grad<T, true, false>(x, y, gout, gscale, out, n, c);
  return grad;
}

void check_inputs(const torch::Tensor& logits, const torch::Tensor& targets) {
  TORCH_CHECK(logits.device().is_cpu(), "asl fused kernel: logits must be on the CPU, got ", logits.device());
  TORCH_CHECK(logits.scalar_type() == torch::kFloat32 || logits.scalar_type() == torch::kFloat64,
              "asl fused kernel: logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(targets.scalar_type() == logits.scalar_type(), "asl fused kernel: targets dtype ",
              targets.scalar_type(), " differs from logits dtype ", logits.scalar_type());
  TORCH_CHECK(logits.sizes() == targets.sizes(), "asl fused kernel: logits shape ", logits.sizes(),
              " differs from targets shape ", targets.sizes());
  TORCH_CHECK(logits.is_contiguous() && targets.is_contiguous(), "asl fused kernel: inputs must be contiguous");
}

}  // namespace

AslForward asl_forward_cpu(const torch::Tensor& logits, const torch::Tensor& targets, const AslParams& p,
                           bool per_element) {
  check_inputs(logits, targets);
  if (logits.scalar_type() == torch::kFloat64) return forward_impl<double>(logits, targets, p, per_element);
  return forward_impl<float>(logits, targets, p, per_element);
}

torch::Tensor asl_backward_cpu(const torch::Tensor& grad_out, const torch::Tensor& logits,
                               const torch::Tensor& targets, const AslParams& p, double scale) {
  check_inputs(logits, targets);
  TORCH_CHECK(grad_out.dim() == 0 || grad_out.sizes() == logits.sizes(), "asl fused kernel: grad_out shape ",
              grad_out.sizes(), " does not match logits ", logits.sizes());
  if (logits.scalar_type() == torch::kFloat64) return backward_impl<double>(grad_out, logits, targets, p, scale);
  return backward_impl<float>(grad_out, logits, targets, p, scale);
}

}  // namespace asl::nn::cpu
