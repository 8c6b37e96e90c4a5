#include "blocked16.h"

#include <torch/torch.h>

#include "asl/nn/layers.h"
#include "asl/nn/packed_conv.h"
#include "asl/runtime.h"
#include "../nn/cpu/cl_kernels.h"

namespace asl::models::blocked16 {
namespace {

using asl::nn::ConvNormActImpl;

// (N, C, H, W) channels-last -> the blocked form (N * C / 16) x 16 x H x W.
torch::Tensor to_blocked(const torch::Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto b = x.permute({0, 2, 3, 1}).reshape({n, h, w, c / 16, 16}).permute({0, 3, 1, 2, 4}).contiguous();
  return b.view({n * (c / 16), h, w, 16}).permute({0, 3, 1, 2});
}

// A block's 3x3 conv: a ConvNormAct, or a ConvBlur (stride-1 conv, then the stride-2 blur).
torch::Tensor conv_maybe_blurred(torch::nn::AnyModule& m, const torch::Tensor& x, int64_t batch) {
  if (auto* blurred = m.ptr()->as<ConvBlurImpl>()) {
    return nn::cpu::blur_pool2(blurred->conv->forward_blocked16(x, batch));
  }
  auto* conv = m.ptr()->as<ConvNormActImpl>();
  TORCH_CHECK(conv != nullptr, "blocked16: unexpected module in a TResNet block");
  return conv->forward_blocked16(x, batch);
}

torch::Tensor downsample(torch::nn::Sequential& seq, const torch::Tensor& x, int64_t batch) {
  torch::Tensor y = x;
  for (const auto& m : seq->children()) {
    if (auto* pool = m->as<torch::nn::AvgPool2dImpl>()) {
      // Per channel: the blocked form's 16-channel images pool like any others.
      y = pool->forward(y).contiguous(torch::MemoryFormat::ChannelsLast);
    } else if (auto* conv = m->as<ConvNormActImpl>()) {
      y = conv->forward_blocked16(y, batch);
    } else {
      TORCH_CHECK(false, "blocked16: unexpected module in a TResNet downsample");
    }
  }
  return y;
}

torch::Tensor basic_block(BasicBlockImpl& b, const torch::Tensor& x, int64_t batch) {
  const torch::Tensor residual = b.downsample ? downsample(b.downsample, x, batch) : x;
  auto out = conv_maybe_blurred(b.conv1, x, batch);
  out = b.conv2->forward_blocked16(out, batch);
  if (b.se) {
    nn::cpu::squeeze_excite_blocked16_(out, batch, b.se->fc1->weight, b.se->fc1->bias, b.se->fc2->weight,
                                       b.se->fc2->bias, residual);
    return out;
  }
  return out.add_(residual).relu_();
}

torch::Tensor bottleneck(BottleneckImpl& b, const torch::Tensor& x, int64_t batch) {
  // The block's input is overwritten by conv3's residual sum when it is the shortcut: nothing reads it after.
  const torch::Tensor residual = b.downsample ? downsample(b.downsample, x, batch) : x;
  auto out = b.conv1->forward_blocked16(x, batch);
  auto* conv2 = b.conv2.ptr()->as<ConvNormActImpl>();
  if (conv2 != nullptr && b.se) {
    // A Winograd conv2's leaky ReLU is applied in squeeze-excite's pooling pass.
    nn::ConvEpilogue pending;
    out = conv2->forward_blocked16(out, batch, {}, &pending);
    nn::cpu::squeeze_excite_blocked16_(out, batch, b.se->fc1->weight, b.se->fc1->bias, b.se->fc2->weight,
                                       b.se->fc2->bias, {}, pending.code(), static_cast<float>(pending.alpha));
  } else {
    out = conv_maybe_blurred(b.conv2, out, batch);
    if (b.se) {
      nn::cpu::squeeze_excite_blocked16_(out, batch, b.se->fc1->weight, b.se->fc1->bias, b.se->fc2->weight,
                                         b.se->fc2->bias);
    }
  }
  return b.conv3->forward_blocked16(out, batch, residual);
}

bool conv_fits(const ConvNormActImpl& c) {
  const auto& w = c.conv->weight;
  return c.options.fused() && c.conv->options.groups() == 1 && w.size(0) % 16 == 0 && w.size(1) % 16 == 0;
}

}  // namespace

bool supported(const TResNetImpl& model, torch::ScalarType dtype) {
  if (dtype != torch::kFloat32 || cpu_info().onednn_isa.rfind("avx512", 0) != 0) return false;
  for (const auto& m : model.modules(false)) {
    if (const auto* c = m->as<ConvNormActImpl>()) {
      if (!conv_fits(*c) || !c->conv->weight.device().is_cpu()) return false;
    }
  }
  return true;
}

void pack(TResNetImpl& model, bool winograd) {
  for (const auto& m : model.modules(false)) {
    if (auto* c = m->as<ConvNormActImpl>()) {
      // The layout hint: a mid-network size; any input size runs correctly.
      c->pack({1, c->options.in_channels(), 28, 28}, winograd, /*blocked16=*/true);
    }
  }
}

torch::Tensor forward(TResNetImpl& model, const torch::Tensor& input) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == model.options.in_chans(), "TResNet: expected N x ",
              model.options.in_chans(), " x H x W input, got shape ", input.sizes());
  auto& body = *model.body;
  const int64_t batch = input.size(0);
  auto x = body.conv1->forward_blocked16(to_blocked(body.space_to_depth->forward(input)), batch);
  for (auto* stage : {&body.layer1, &body.layer2, &body.layer3, &body.layer4}) {
    for (auto& block : (*stage)->blocks) {
      if (auto* b = block.ptr()->as<BasicBlockImpl>()) {
        x = basic_block(*b, x, batch);
      } else if (auto* b = block.ptr()->as<BottleneckImpl>()) {
        x = bottleneck(*b, x, batch);
      } else {
        TORCH_CHECK(false, "blocked16: unexpected block in a TResNet stage");
      }
    }
  }
  // The pooled features: per channel means of the 16-channel images, an image's blocks in channel order.
  const int64_t channels = x.size(0) / batch * 16;
  auto features = nn::functional::spatial_mean(x).reshape({batch, channels});
  return model.head->forward(features);
}

}  // namespace asl::models::blocked16
