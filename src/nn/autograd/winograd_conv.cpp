#include "winograd_conv.h"

#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <tuple>

#include <torch/torch.h>

namespace asl::nn::autograd {
namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

const dnnl::engine& engine() {
  static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::memory::desc strided_desc(const torch::Tensor& t) {
  const auto sizes = t.sizes().vec(), strides = t.strides().vec();
  return dnnl::memory::desc(dnnl::memory::dims(sizes.begin(), sizes.end()), dt::f32,
                            dnnl::memory::dims(strides.begin(), strides.end()));
}

// The three primitives of one shape (N, C, H, W, O) and the layouts they read and write.
struct Primitives {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights;
};

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;

// nullptr where oneDNN has no Winograd kernel for the shape on this CPU (kept, so it is asked once).
std::shared_ptr<const Primitives> primitives(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<const Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const auto [n, c, h, w, o] = key;
  std::shared_ptr<Primitives> p;
  try {
    const dnnl::memory::desc src({n, c, h, w}, dt::f32, tag::nChw16c), dst({n, o, h, w}, dt::f32, tag::nChw16c);
    const dnnl::memory::desc any_weights({o, c, 3, 3}, dt::f32, tag::any);
    const dnnl::memory::dims one{1, 1};
    p = std::make_shared<Primitives>();
    const auto& e = engine();
    p->fwd_pd = dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_winograd, src,
                                        any_weights, dst, one, one, one),
        e);
    p->data_pd = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_winograd, src, any_weights, dst, one, one,
                                              one),
        e, p->fwd_pd);
    p->weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_winograd, src, any_weights, dst, one,
                                                 one, one),
        e, p->fwd_pd);
    // The blocked activations are shared between the passes (saved once, reordered once).
    if (!(p->fwd_pd.src_desc() == src && p->fwd_pd.dst_desc() == dst && p->data_pd.diff_dst_desc() == dst &&
          p->data_pd.diff_src_desc() == src && p->weights_pd.src_desc() == src &&
          p->weights_pd.diff_dst_desc() == dst)) {
      p.reset();
    } else {
      p->fwd = dnnl::convolution_forward(p->fwd_pd);
      p->data = dnnl::convolution_backward_data(p->data_pd);
      p->weights = dnnl::convolution_backward_weights(p->weights_pd);
    }
  } catch (const dnnl::error&) {
    p.reset();  // no Winograd kernel here (AVX2, or the shape)
  }
  cache[key] = p;
  return p;
}

Key key_of(const torch::Tensor& input, const torch::Tensor& weight) {
  return {input.size(0), input.size(1), input.size(2), input.size(3), weight.size(0)};
}

torch::Tensor bytes(const dnnl::memory::desc& d) {
  return torch::empty({static_cast<int64_t>(d.get_size())}, torch::kUInt8);
}

void reorder(const dnnl::memory::desc& from_desc, void* from, const dnnl::memory::desc& to_desc, void* to) {
  const auto& e = engine();
  dnnl::memory a(from_desc, e, from), b(to_desc, e, to);
  dnnl::stream s(e);
  dnnl::reorder(a, b).execute(s, a, b);
  s.wait();
}

// A channels-last tensor's values in `desc` (nChw16c), and back.
torch::Tensor to_blocked(const torch::Tensor& t, const dnnl::memory::desc& desc) {
  auto out = bytes(desc);
  reorder(strided_desc(t), t.data_ptr(), desc, out.data_ptr());
  return out;
}

torch::Tensor from_blocked(const torch::Tensor& blocked, const dnnl::memory::desc& desc, std::vector<int64_t> size) {
  auto out = torch::empty(size, torch::TensorOptions().dtype(torch::kFloat32).memory_format(torch::MemoryFormat::ChannelsLast));
  reorder(desc, blocked.data_ptr(), strided_desc(out), out.data_ptr());
  return out;
}

struct WinogradConvBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable weight;
  torch::Tensor blocked_input;  // the input in nChw16c (what backward-weights reads)
  std::vector<int64_t> input_size;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::autograd::variable_list out(2);
    const bool need_input = task_should_compute_output(0), need_weight = task_should_compute_output(1);
    if (!grads[0].defined() || !(need_input || need_weight)) return out;
    const auto w = weight.unpack();
    const auto p = primitives({input_size[0], input_size[1], input_size[2], input_size[3], w.size(0)});
    TORCH_CHECK(p, "WinogradConvBackward: the forward's primitives are gone");
    const auto dy = grads[0].contiguous(torch::MemoryFormat::ChannelsLast);
    const auto blocked_dy = to_blocked(dy, p->data_pd.diff_dst_desc());
    const auto& e = engine();
    dnnl::stream s(e);
    if (need_input) {
      const auto wc = w.contiguous(w.suggest_memory_format());
      auto blocked_w = bytes(p->data_pd.weights_desc());
      reorder(strided_desc(wc), wc.data_ptr(), p->data_pd.weights_desc(), blocked_w.data_ptr());
      auto blocked_dx = bytes(p->data_pd.diff_src_desc());
      p->data.execute(s, {{DNNL_ARG_DIFF_DST, dnnl::memory(p->data_pd.diff_dst_desc(), e, blocked_dy.data_ptr())},
                          {DNNL_ARG_WEIGHTS, dnnl::memory(p->data_pd.weights_desc(), e, blocked_w.data_ptr())},
                          {DNNL_ARG_DIFF_SRC, dnnl::memory(p->data_pd.diff_src_desc(), e, blocked_dx.data_ptr())}});
      s.wait();
      out[0] = from_blocked(blocked_dx, p->data_pd.diff_src_desc(), input_size);
    }
    if (need_weight) {
      auto blocked_dw = bytes(p->weights_pd.diff_weights_desc());
      p->weights.execute(s, {{DNNL_ARG_SRC, dnnl::memory(p->weights_pd.src_desc(), e, blocked_input.data_ptr())},
                             {DNNL_ARG_DIFF_DST, dnnl::memory(p->weights_pd.diff_dst_desc(), e, blocked_dy.data_ptr())},
                             {DNNL_ARG_DIFF_WEIGHTS,
                              dnnl::memory(p->weights_pd.diff_weights_desc(), e, blocked_dw.data_ptr())}});
      s.wait();
      auto dw = torch::empty_like(w, w.options(), w.suggest_memory_format());
      reorder(p->weights_pd.diff_weights_desc(), blocked_dw.data_ptr(), strided_desc(dw), dw.data_ptr());
      out[1] = dw;
    }
    return out;
  }

  std::string name() const override { return "WinogradConvBackward"; }

  void release_variables() override {
    weight.reset_data();
    blocked_input = torch::Tensor();
  }
};

}  // namespace

bool winograd_conv3x3_supported(const torch::Tensor& input, const torch::Tensor& weight) {
  if (!input.defined() || !weight.defined() || !input.device().is_cpu() || !weight.device().is_cpu()) return false;
  if (input.scalar_type() != torch::kFloat32 || weight.scalar_type() != torch::kFloat32) return false;
  if (input.dim() != 4 || weight.dim() != 4 || weight.size(2) != 3 || weight.size(3) != 3) return false;
  if (weight.size(1) != input.size(1) || at::autocast::is_cpu_enabled()) return false;
  if (!input.is_contiguous(torch::MemoryFormat::ChannelsLast) || input.is_contiguous()) return false;
  if (!weight.is_contiguous() && !weight.is_contiguous(torch::MemoryFormat::ChannelsLast)) return false;
  return primitives(key_of(input, weight)) != nullptr;
}

torch::Tensor winograd_conv3x3(const torch::Tensor& input, const torch::Tensor& weight) {
  TORCH_CHECK(winograd_conv3x3_supported(input, weight), "winograd_conv3x3: unsupported input ", input.sizes(),
              " / weight ", weight.sizes());
  const auto p = primitives(key_of(input, weight));
  torch::Tensor y, blocked_input;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // the result gets its history below
    blocked_input = to_blocked(input, p->fwd_pd.src_desc());
    auto blocked_w = bytes(p->fwd_pd.weights_desc());
    reorder(strided_desc(weight), weight.data_ptr(), p->fwd_pd.weights_desc(), blocked_w.data_ptr());
    auto blocked_y = bytes(p->fwd_pd.dst_desc());
    const auto& e = engine();
    dnnl::stream s(e);
    p->fwd.execute(s, {{DNNL_ARG_SRC, dnnl::memory(p->fwd_pd.src_desc(), e, blocked_input.data_ptr())},
                       {DNNL_ARG_WEIGHTS, dnnl::memory(p->fwd_pd.weights_desc(), e, blocked_w.data_ptr())},
                       {DNNL_ARG_DST, dnnl::memory(p->fwd_pd.dst_desc(), e, blocked_y.data_ptr())}});
    s.wait();
    y = from_blocked(blocked_y, p->fwd_pd.dst_desc(), {input.size(0), weight.size(0), input.size(2), input.size(3)});
  }
  if (torch::autograd::compute_requires_grad(input, weight)) {
    auto node = std::shared_ptr<WinogradConvBackward>(new WinogradConvBackward(), torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(input, weight));
    node->weight = torch::autograd::SavedVariable(weight, /*is_output=*/false);
    // Only backward-weights reads the input: keep its blocked copy when the weight needs a gradient.
    if (weight.requires_grad()) node->blocked_input = blocked_input;
    node->input_size = input.sizes().vec();
    torch::autograd::set_history(y, node);
  }
  return y;
}

}  // namespace asl::nn::autograd
