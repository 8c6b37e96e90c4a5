#include "pointwise_conv.h"

#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include <torch/torch.h>

#include "asl/runtime.h"

namespace asl::nn::autograd {
namespace {

using dt = dnnl::memory::data_type;

const dnnl::engine& engine() {
  static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dt dnnl_type(torch::ScalarType t) { return t == torch::kBFloat16 ? dt::bf16 : dt::f32; }

// (m, k, n, a's strides, b's strides, input type, output type): c[m x n] (row-major) = a[m x k] b[k x n].
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int>;

std::shared_ptr<const dnnl::matmul> primitive(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<const dnnl::matmul>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const auto [m, k, n, a0, a1, b0, b1, in, out] = key;
  const dnnl::memory::desc a({m, k}, static_cast<dt>(in), {a0, a1}), b({k, n}, static_cast<dt>(in), {b0, b1});
  const dnnl::memory::desc c({m, n}, static_cast<dt>(out), {n, 1});
  auto p = std::make_shared<const dnnl::matmul>(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), engine()));
  cache[key] = p;
  return p;
}

// c = a b for 2-D strided a, b and a row-major c of the same dtype class (float32 sums).
void matmul(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& c) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k && c.size(0) == m && c.size(1) == n && c.stride(1) == 1 && c.stride(0) == n,
              "pointwise_conv: matmul shapes ", a.sizes(), " x ", b.sizes(), " -> ", c.sizes());
  const auto in = static_cast<int>(dnnl_type(a.scalar_type())), out = static_cast<int>(dnnl_type(c.scalar_type()));
  const auto p = primitive({m, k, n, a.stride(0), a.stride(1), b.stride(0), b.stride(1), in, out});
  const auto& e = engine();
  const dnnl::memory::desc ad({m, k}, static_cast<dt>(in), {a.stride(0), a.stride(1)});
  const dnnl::memory::desc bd({k, n}, static_cast<dt>(in), {b.stride(0), b.stride(1)});
  const dnnl::memory::desc cd({m, n}, static_cast<dt>(out), {n, 1});
  dnnl::stream s(e);
  p->execute(s, {{DNNL_ARG_SRC, dnnl::memory(ad, e, a.data_ptr())},
                 {DNNL_ARG_WEIGHTS, dnnl::memory(bd, e, b.data_ptr())},
                 {DNNL_ARG_DST, dnnl::memory(cd, e, c.data_ptr())}});
  s.wait();
}

// A channels-last contiguous N x C x H x W tensor as its (N*H*W) x C matrix (a view).
torch::Tensor rows(const torch::Tensor& t) { return t.permute({0, 2, 3, 1}).view({-1, t.size(1)}); }

// O x C x 1 x 1 as the O x C matrix (a view for either memory format of a 1x1 kernel).
torch::Tensor matrix(const torch::Tensor& w) { return w.as_strided({w.size(0), w.size(1)}, {w.stride(0), w.stride(1)}); }

torch::Tensor channels_last_like(const torch::Tensor& t, int64_t channels) {
  return torch::empty({t.size(0), channels, t.size(2), t.size(3)},
                      t.options().memory_format(torch::MemoryFormat::ChannelsLast));
}

struct PointwiseConvBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable input, weight;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::autograd::variable_list out(2);
    const bool need_input = task_should_compute_output(0), need_weight = task_should_compute_output(1);
    if (!grads[0].defined() || !(need_input || need_weight)) return out;
    const auto dy = grads[0].contiguous(torch::MemoryFormat::ChannelsLast);
    const auto dy_rows = rows(dy);
    if (need_input) {
      const auto w = weight.unpack();
      auto dx = channels_last_like(dy, w.size(1));
      matmul(dy_rows, matrix(w), rows(dx));  // dX = dY W
      out[0] = dx;
    }
    if (need_weight) {
      const auto x = input.unpack();
      auto dw = torch::empty({dy.size(1), x.size(1), 1, 1}, x.options());
      matmul(dy_rows.t(), rows(x), matrix(dw));  // dW = dY^T X
      out[1] = dw;
    }
    return out;
  }

  std::string name() const override { return "PointwiseConvBackward"; }

  void release_variables() override {
    input.reset_data();
    weight.reset_data();
  }
};

}  // namespace

bool pointwise_conv_supported(const torch::Tensor& input, const torch::Tensor& weight) {
  if (!input.defined() || !weight.defined() || !input.device().is_cpu() || !weight.device().is_cpu()) return false;
  // AVX-512 oneDNN only: on AVX2 its float32 matmul is no faster than the convolution (0.7-1.2x measured).
  const auto t = input.scalar_type();
  if (!cpu_info().onednn_bf16 || weight.scalar_type() != t || !(t == torch::kFloat32 || t == torch::kBFloat16))
    return false;
  if (input.dim() != 4 || weight.dim() != 4 || weight.size(2) != 1 || weight.size(3) != 1) return false;
  if (weight.size(1) != input.size(1) || input.numel() == 0 || weight.numel() == 0) return false;
  if (!input.is_contiguous(torch::MemoryFormat::ChannelsLast)) return false;
  return weight.stride(1) == 1 && weight.stride(0) == weight.size(1);
}

torch::Tensor pointwise_conv(const torch::Tensor& input, const torch::Tensor& weight) {
  TORCH_CHECK(pointwise_conv_supported(input, weight), "pointwise_conv: unsupported input ", input.sizes(), " ",
              input.scalar_type(), " / weight ", weight.sizes(), " ", weight.scalar_type());
  torch::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // the result gets its history below
    y = channels_last_like(input, weight.size(0));
    matmul(rows(input), matrix(weight).t(), rows(y));  // Y = X W^T
  }
  if (torch::autograd::compute_requires_grad(input, weight)) {
    auto node = std::shared_ptr<PointwiseConvBackward>(new PointwiseConvBackward(), torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(input, weight));
    if (weight.requires_grad()) node->input = torch::autograd::SavedVariable(input, /*is_output=*/false);
    if (input.requires_grad()) node->weight = torch::autograd::SavedVariable(weight, /*is_output=*/false);
    torch::autograd::set_history(y, node);
  }
  return y;
}

}  // namespace asl::nn::autograd
