// Fused multi-label ASL: tensor checks, blocking and threading around the per-ISA element loops
// of asl_loss_blocks.cpp.
#include "asl_loss_kernel.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "asl_loss_blocks.h"
#include "isa.h"

namespace asl::nn::cpu {

const BlockKernels& block_kernels() {
  static const BlockKernels chosen = best_isa() == Isa::Avx512 ? isa_avx512::kernels()
                                : best_isa() == Isa::Avx2 ? isa_avx2::kernels()
                                                          : isa_base::kernels();
  return chosen;
}

namespace {

constexpr int64_t kBlock = 1024;       // elements per deterministic partial sum
constexpr int64_t kParallelGrain = 32;  // blocks: below 32k elements one thread is faster

BlockParams block_params(const AslParams& p) {
  BlockParams b;
  b.clip = p.clip;
  b.eps = p.eps;
  b.gamma_pos = p.gamma_pos;
  b.gamma_neg = p.gamma_neg;
  b.use_clip = p.clip > 0;
  b.ignore_unknown = p.ignore_unknown;
  b.focal = p.gamma_neg > 0 || p.gamma_pos > 0;
  b.detach = p.detach_weight;
  return b;
}

double forward_block(const float* x, const float* y, float* out, int64_t n, const BlockParams& p) {
  return block_kernels().forward_f32(x, y, out, n, p);
}
double forward_block(const double* x, const double* y, double* out, int64_t n, const BlockParams& p) {
  return block_kernels().forward_f64(x, y, out, n, p);
}
void backward_block(const float* x, const float* y, const float* g, float gs, float* out, int64_t n,
                    const BlockParams& p) {
  block_kernels().backward_f32(x, y, g, gs, out, n, p);
}
void backward_block(const double* x, const double* y, const double* g, double gs, double* out, int64_t n,
                    const BlockParams& p) {
  block_kernels().backward_f64(x, y, g, gs, out, n, p);
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
AslForward forward_impl(const torch::Tensor& logits, const torch::Tensor& targets, const AslParams& params,
                        bool per_element) {
  const BlockParams p = block_params(params);
  const T* x = logits.data_ptr<T>();
  const T* y = targets.data_ptr<T>();
  const int64_t n = logits.numel();
  AslForward result;
  if (per_element) {
    result.loss = torch::empty_like(logits);
    T* out = result.loss.data_ptr<T>();
    for_blocks(n, [&](int64_t, int64_t s, int64_t len) { forward_block(x + s, y + s, out + s, len, p); });
    return result;
  }
  std::vector<double> partial(static_cast<size_t>((n + kBlock - 1) / kBlock), 0.0);
  for_blocks(n, [&](int64_t b, int64_t s, int64_t len) {
    partial[static_cast<size_t>(b)] = forward_block(x + s, y + s, nullptr, len, p);
  });
  double total = 0;
  for (double v : partial) total += v;  // fixed order: the same result for any thread count
  result.loss = torch::full({}, total, logits.options());
  result.count = params.ignore_unknown ? count_known(y, n) : n;
  return result;
}

template <typename T>
torch::Tensor backward_impl(const torch::Tensor& grad_out, const torch::Tensor& logits,
                            const torch::Tensor& targets, const AslParams& params, double scale) {
  const BlockParams p = block_params(params);
  torch::Tensor grad = torch::empty_like(logits);
  const int64_t n = logits.numel();
  const T* x = logits.data_ptr<T>();
  const T* y = targets.data_ptr<T>();
  T* out = grad.data_ptr<T>();
  const T* gout = nullptr;
  T gscale = T(0);
  torch::Tensor g_contig;
  if (grad_out.dim() == 0) {
    // Read in place where possible: item() is a dispatched op, a visible cost next to a 10k-element loss.
    const double g = grad_out.device().is_cpu() && grad_out.scalar_type() == logits.scalar_type()
                         ? static_cast<double>(*grad_out.data_ptr<T>())
                         : grad_out.item<double>();
    gscale = static_cast<T>(g * scale);
  } else {
    g_contig = grad_out.to(logits.scalar_type()).contiguous();
    gout = g_contig.data_ptr<T>();
  }
  // Per fixed block, like the forward: the hard/soft path is chosen per 256-element chunk of a block, so
  // results do not depend on how the blocks are split between threads.
  for_blocks(n, [&](int64_t, int64_t s, int64_t len) {
    backward_block(x + s, y + s, gout != nullptr ? gout + s : nullptr, gscale, out + s, len, p);
  });
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
