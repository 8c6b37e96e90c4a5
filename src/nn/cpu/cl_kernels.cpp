#include "cl_kernels.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include <torch/torch.h>

#include "cl_blocks.h"
#include "isa.h"

namespace asl::nn::cpu {

const ClKernels& cl_kernels() {
  static const ClKernels chosen = best_isa() == Isa::Avx512 ? isa_avx512::cl_kernels()
                                : best_isa() == Isa::Avx2 ? isa_avx2::cl_kernels()
                                                          : isa_base::cl_kernels();
  return chosen;
}

namespace {

ClType cl_type(const torch::Tensor& t) { return t.scalar_type() == torch::kBFloat16 ? ClType::BF16 : ClType::F32; }

// Pixels per task: enough work to pay for a thread hand-off, few enough to spread a small map.
int64_t pixel_grain(int64_t c) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(c, 1)); }

}  // namespace

bool channels_last_kernel_input(const torch::Tensor& x) {
  return x.defined() && x.device().is_cpu() && x.dim() == 4 &&
         (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16) &&
         x.is_contiguous(torch::MemoryFormat::ChannelsLast);
}

namespace {

// Squeeze-excite over `images` images of c = groups * cv channels held as images * groups channels-last
// "view images" of cv channels each (groups 1: plain channels-last; cv 16: nChw16c), hw pixels each.
// act != 0: x = act(x) first, in the pass that pools it.
void squeeze_excite_views(const torch::Tensor& x, int64_t images, int64_t groups, int64_t cv, const torch::Tensor& w1,
                          const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                          const torch::Tensor& residual, int act, float slope) {
  const int64_t c = groups * cv, views = images * groups, hw = x.size(2) * x.size(3);
  const int64_t r = w1.size(0);
  TORCH_CHECK(w1.numel() == r * c && w2.numel() == c * r && b1.numel() == r && b2.numel() == c,
              "squeeze_excite_: weights ", w1.sizes(), " / ", w2.sizes(), " do not fit ", c, " channels");
  for (const auto* t : {&w1, &b1, &w2, &b2}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device().is_cpu(),
                "squeeze_excite_: weights must be CPU tensors of the input's dtype");
  }
  TORCH_CHECK(!residual.defined() || (channels_last_kernel_input(residual) && residual.sizes() == x.sizes() &&
                                      residual.scalar_type() == x.scalar_type()),
              "squeeze_excite_: the residual must be channels-last of the input's shape and dtype");
  const auto cw1 = w1.contiguous(), cb1 = b1.contiguous(), cw2 = w2.contiguous(), cb2 = b2.contiguous();
  const auto* res = residual.defined() ? static_cast<const char*>(residual.data_ptr()) : nullptr;
  const auto& k = cl_kernels();
  const ClType t = cl_type(x);
  const size_t elem = x.element_size();
  auto* base = static_cast<char*>(x.data_ptr());
  // Pooled sums, one partial per chunk of pixels (per view image), added in chunk order (deterministic).
  const int64_t grain = pixel_grain(cv);
  const int64_t chunks = (hw + grain - 1) / grain;
  std::vector<float> partial(static_cast<size_t>(views * chunks * cv), 0.0f);
  at::parallel_for(0, views * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t v = i / chunks, p0 = (i % chunks) * grain, p1 = std::min(hw, p0 + grain);
      char* chunk = base + ((v * hw + p0) * cv) * elem;
      if (act == 0) k.channel_sum(t, chunk, p1 - p0, cv, partial.data() + i * cv);
      else k.channel_act_sum(t, chunk, p1 - p0, cv, act, slope, partial.data() + i * cv);
    }
  });
  // An image's channels are its view images' channels in order: gate + v * cv is view image v's part.
  std::vector<float> gate(static_cast<size_t>(images * c)), hidden(static_cast<size_t>(r)), pooled(static_cast<size_t>(c));
  for (int64_t img = 0; img < images; ++img) {
    std::fill(pooled.begin(), pooled.end(), 0.0f);
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t j = 0; j < chunks; ++j) {
        const float* s = partial.data() + ((img * groups + g) * chunks + j) * cv;
        for (int64_t q = 0; q < cv; ++q) pooled[g * cv + q] += s[q];
      }
    }
    for (auto& v : pooled) v /= static_cast<float>(hw);
    k.gemv(t, cw1.data_ptr(), cb1.data_ptr(), pooled.data(), r, c, 1, hidden.data());
    k.gemv(t, cw2.data_ptr(), cb2.data_ptr(), hidden.data(), c, r, 2, gate.data() + img * c);
  }
  at::parallel_for(0, views * hw, grain, [&](int64_t begin, int64_t end) {
    // Pixels [begin, end) of the flattened view images, split where a view image ends.
    for (int64_t p = begin; p < end;) {
      const int64_t v = p / hw, stop = std::min(end, (v + 1) * hw);
      k.channel_scale(t, base + p * cv * elem, stop - p, cv, gate.data() + v * cv,
                      res != nullptr ? res + p * cv * elem : nullptr);
      p = stop;
    }
  });
}

}  // namespace

void squeeze_excite_(torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                     const torch::Tensor& b2, const torch::Tensor& residual) {
  TORCH_CHECK(channels_last_kernel_input(x), "squeeze_excite_: expected a channels-last float32/bfloat16 CPU tensor");
  squeeze_excite_views(x, x.size(0), 1, x.size(1), w1, b1, w2, b2, residual, 0, 0.0f);
}

void squeeze_excite_blocked16_(torch::Tensor& x, int64_t batch, const torch::Tensor& w1, const torch::Tensor& b1,
                               const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& residual,
                               int act, float slope) {
  TORCH_CHECK(channels_last_kernel_input(x) && x.size(1) == 16 && batch >= 1 && x.size(0) % batch == 0,
              "squeeze_excite_blocked16_: expected the blocked form (batch * C / 16) x 16 x H x W of ", batch,
              " images, got ", x.sizes());
  squeeze_excite_views(x, batch, x.size(0) / batch, 16, w1, b1, w2, b2, residual, act, slope);
}

void activate_(torch::Tensor& x, int act, float slope) {
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16) &&
                  x.is_non_overlapping_and_dense(),
              "activate_: expected a dense float32/bfloat16 CPU tensor");
  if (act == 0) return;
  const auto& k = cl_kernels();
  const ClType t = cl_type(x);
  const size_t elem = x.element_size();
  auto* base = static_cast<char*>(x.data_ptr());
  at::parallel_for(0, x.numel(), 16384, [&](int64_t begin, int64_t end) {
    k.act_inplace(t, base + begin * elem, end - begin, act, slope);
  });
}

torch::Tensor blur_pool2(const torch::Tensor& x) {
  TORCH_CHECK(channels_last_kernel_input(x), "blur_pool2: expected a channels-last float32/bfloat16 CPU tensor");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(h >= 2 && w >= 2, "blur_pool2: reflect padding needs H, W >= 2, got shape ", x.sizes());
  const int64_t oh = (h - 1) / 2 + 1, ow = (w - 1) / 2 + 1;
  auto out = torch::empty({n, c, oh, ow}, x.options().memory_format(torch::MemoryFormat::ChannelsLast));
  const auto& k = cl_kernels();
  const ClType t = cl_type(x);
  const size_t elem = x.element_size();
  const auto* in = static_cast<const char*>(x.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, n * oh, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(static_cast<size_t>(w * c));
    for (int64_t i = begin; i < end;) {
      const int64_t img = i / oh, stop = std::min(end, (img + 1) * oh);
      k.blur2(t, in + img * h * w * c * elem, h, w, c, dst + img * oh * ow * c * elem, i - img * oh, stop - img * oh,
              tmp.data());
      i = stop;
    }
  });
  return out;
}

namespace {

struct BlurPool2Backward : public torch::autograd::Node {
  std::vector<int64_t> input_size;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    if (!grads[0].defined() || !task_should_compute_output(0)) return {torch::Tensor()};
    // bfloat16 (autocast) gradients run the float32 adjoint and are rounded once.
    const bool bf16 = grads[0].scalar_type() == torch::kBFloat16;
    const auto dy = grads[0].to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast);
    const int64_t n = input_size[0], c = input_size[1], h = input_size[2], w = input_size[3];
    const int64_t oh = dy.size(2), ow = dy.size(3);
    auto dx = torch::empty(input_size, dy.options().memory_format(torch::MemoryFormat::ChannelsLast));
    const float* g = dy.data_ptr<float>();
    float* d = dx.data_ptr<float>();
    const auto& k = cl_kernels();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> tmp(static_cast<size_t>(oh * w * c));
      for (int64_t i = begin; i < end; ++i) k.blur2_backward(g + i * oh * ow * c, h, w, c, d + i * h * w * c, tmp.data());
    });
    return {bf16 ? dx.to(torch::kBFloat16) : dx};
  }

  std::string name() const override { return "BlurPool2Backward"; }
};

}  // namespace

torch::Tensor blur_pool2_differentiable(const torch::Tensor& x) {
  TORCH_CHECK(channels_last_kernel_input(x), "blur_pool2_differentiable: expected a channels-last float32/bfloat16 CPU tensor");
  torch::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // the result gets its history below
    y = blur_pool2(x);
  }
  if (torch::autograd::compute_requires_grad(x)) {
    auto node = std::shared_ptr<BlurPool2Backward>(new BlurPool2Backward(), torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->input_size = x.sizes().vec();
    torch::autograd::set_history(y, node);
  }
  return y;
}

void unblock16(bool bf16, const void* src, void* dst, int64_t n, int64_t hw, int64_t c, int act, float slope) {
  const auto& k = cl_kernels();
  const ClType t = bf16 ? ClType::BF16 : ClType::F32;
  const size_t elem = bf16 ? 2 : 4;
  const int64_t blocked_c = (c + 15) / 16 * 16;  // channels per image in the blocked layout
  const auto* s = static_cast<const char*>(src);
  auto* d = static_cast<char*>(dst);
  at::parallel_for(0, n * hw, pixel_grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end;) {
      const int64_t img = p / hw, stop = std::min(end, (img + 1) * hw);
      k.unblock16(t, s + img * hw * blocked_c * elem, d + img * hw * c * elem, hw, c, p - img * hw, stop - img * hw, act,
                  slope);
      p = stop;
    }
  });
}

}  // namespace asl::nn::cpu
