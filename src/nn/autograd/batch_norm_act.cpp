#include "batch_norm_act.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/torch.h>

#include "../cpu/cl_blocks.h"

namespace asl::nn::autograd {
namespace {

// The activations seen as `groups` groups of `span` contiguous values: channels-last, groups of pixels
// (every channel of each); NCHW, one group per (image, channel) plane.
struct Layout {
  bool channels_last = false;
  int64_t n = 0, c = 0, hw = 0;
  int64_t grain = 1;  // channels-last: pixels per chunk (a chunk's values stay in cache between its passes)
  int64_t count() const { return n * hw; }  // values per channel
  int64_t chunks() const { return channels_last ? (n * hw + grain - 1) / grain : n * c; }
  int64_t chunk_pixels(int64_t j) const { return std::min(grain, n * hw - j * grain); }
  int64_t chunk_offset(int64_t j) const { return channels_last ? j * grain * c : j * hw; }  // in values
  int64_t chunk_size(int64_t j) const { return channels_last ? chunk_pixels(j) * c : hw; }
};

Layout layout_of(const torch::Tensor& x) {
  Layout l;
  l.n = x.size(0);
  l.c = x.size(1);
  l.hw = x.size(2) * x.size(3);
  l.channels_last = !x.is_contiguous() && x.is_contiguous(torch::MemoryFormat::ChannelsLast);
  l.grain = std::max<int64_t>(1, 65536 / l.c);  // 256 KB chunks: in L2 for the second pass, few partials
  return l;
}

torch::MemoryFormat format_of(const Layout& l) {
  return l.channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
}

const cpu::ClKernels& k() { return cpu::cl_kernels(); }

// A float32 or bfloat16 tensor's chunks as raw pointers (the loops take the element type alongside).
struct Values {
  Values(const torch::Tensor& t, const Layout& l)
      : data(static_cast<char*>(t.data_ptr())),
        element_size(static_cast<int64_t>(t.element_size())),
        type(t.scalar_type() == torch::kBFloat16 ? cpu::ClType::BF16 : cpu::ClType::F32),
        layout(l) {}
  void* chunk(int64_t j) const { return data + layout.chunk_offset(j) * element_size; }

  char* data;
  int64_t element_size;
  cpu::ClType type;
  Layout layout;
};

// Per-channel float64 sums of per-chunk float32 partials, in chunk order (the same for any thread count).
// partial(j) points at chunk j's `c` values for channel-last chunks; for planes, at the plane's single one.
struct ChannelStats {
  std::vector<double> mean, var;  // var: biased
};

ChannelStats batch_stats(const Values& x, const Layout& l) {
  const int64_t chunks = l.chunks(), c = l.c;
  std::vector<float> mean(static_cast<size_t>(l.channels_last ? chunks * c : chunks));
  std::vector<float> m2(mean.size());
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (l.channels_last) {
        k().bn_stats_cl(x.type, x.chunk(j), l.chunk_pixels(j), c, &mean[j * c], &m2[j * c]);
      } else {
        k().bn_stats_plane(x.type, x.chunk(j), l.hw, &mean[j], &m2[j]);
      }
    }
  });
  // Chan et al.'s pairwise update, chunk by chunk.
  ChannelStats s;
  s.mean.assign(c, 0.0);
  std::vector<double> n_seen(c, 0.0), m2_sum(c, 0.0);
  const auto merge = [&](int64_t ch, double nb, double mb, double m2b) {
    const double na = n_seen[ch], n = na + nb, delta = mb - s.mean[ch];
    s.mean[ch] += delta * nb / n;
    m2_sum[ch] += m2b + delta * delta * na * nb / n;
    n_seen[ch] = n;
  };
  for (int64_t j = 0; j < chunks; ++j) {
    if (l.channels_last) {
      const double nb = static_cast<double>(l.chunk_pixels(j));
      for (int64_t ch = 0; ch < c; ++ch) merge(ch, nb, mean[j * c + ch], m2[j * c + ch]);
    } else {
      merge(j % c, static_cast<double>(l.hw), mean[j], m2[j]);
    }
  }
  s.var.resize(c);
  for (int64_t ch = 0; ch < c; ++ch) s.var[ch] = m2_sum[ch] / static_cast<double>(l.count());
  return s;
}

struct Affine {
  std::vector<float> scale, shift, mean;  // z = x * scale + shift; mean as float for x - mean
};

Affine affine(const std::vector<double>& mean, const std::vector<double>& invstd, const torch::Tensor& gamma,
              const torch::Tensor& beta) {
  const auto g = gamma.contiguous(), b = beta.contiguous();
  const float* gp = g.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  Affine a;
  const size_t c = mean.size();
  a.scale.resize(c);
  a.shift.resize(c);
  a.mean.resize(c);
  for (size_t ch = 0; ch < c; ++ch) {
    const double s = static_cast<double>(gp[ch]) * invstd[ch];
    a.scale[ch] = static_cast<float>(s);
    a.shift[ch] = static_cast<float>(static_cast<double>(bp[ch]) - mean[ch] * s);
    a.mean[ch] = static_cast<float>(mean[ch]);
  }
  return a;
}

void apply_affine_act(const Values& x, const Values& y, const Layout& l, const Affine& a, int act, float param) {
  at::parallel_for(0, l.chunks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (l.channels_last) {
        k().bn_act_cl(x.type, x.chunk(j), y.chunk(j), l.chunk_pixels(j), l.c, a.scale.data(), a.shift.data(), act,
                      param);
      } else {
        const int64_t ch = j % l.c;
        k().bn_act_plane(x.type, x.chunk(j), y.chunk(j), l.hw, a.scale[ch], a.shift[ch], act, param);
      }
    }
  });
}

struct BatchNormActBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable input, scale, bias;
  std::vector<double> mean, invstd;
  int act = 0;
  float param = 0;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const bool need_input = task_should_compute_output(0), need_scale = task_should_compute_output(1),
               need_bias = task_should_compute_output(2);
    torch::autograd::variable_list out(3);
    if (!grads[0].defined() || !(need_input || need_scale || need_bias)) return out;
    const auto x = input.unpack();
    const auto gamma = scale.unpack().detach();
    const Layout l = layout_of(x);
    const auto dy = grads[0].to(x.scalar_type()).contiguous(format_of(l));
    const Affine a = affine(mean, invstd, gamma, bias.unpack().detach());
    const Values xv(x, l), dyv(dy, l);
    const int64_t chunks = l.chunks(), c = l.c;
    // Pass 1: per chunk, sum dz and sum dz * (x - mean) per channel.
    std::vector<float> s1(static_cast<size_t>(l.channels_last ? chunks * c : chunks), 0.0f), s2(s1.size(), 0.0f);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        if (l.channels_last) {
          k().bn_backward_sums_cl(xv.type, xv.chunk(j), dyv.chunk(j), l.chunk_pixels(j), c, a.scale.data(),
                                  a.shift.data(), a.mean.data(), act, param, &s1[j * c], &s2[j * c]);
        } else {
          const int64_t ch = j % c;
          k().bn_backward_sums_plane(xv.type, xv.chunk(j), dyv.chunk(j), l.hw, a.scale[ch], a.shift[ch], a.mean[ch],
                                     act, param, &s1[j], &s2[j]);
        }
      }
    });
    std::vector<double> sum_dz(c, 0.0), sum_dzx(c, 0.0);
    for (int64_t j = 0; j < chunks; ++j) {
      if (l.channels_last) {
        for (int64_t ch = 0; ch < c; ++ch) sum_dz[ch] += s1[j * c + ch], sum_dzx[ch] += s2[j * c + ch];
      } else {
        sum_dz[j % c] += s1[j];
        sum_dzx[j % c] += s2[j];
      }
    }
    const auto options = torch::TensorOptions().dtype(torch::kFloat32);
    if (need_bias) {
      out[2] = torch::empty({c}, options);
      for (int64_t ch = 0; ch < c; ++ch) out[2].data_ptr<float>()[ch] = static_cast<float>(sum_dz[ch]);
    }
    if (need_scale) {
      out[1] = torch::empty({c}, options);
      for (int64_t ch = 0; ch < c; ++ch) out[1].data_ptr<float>()[ch] = static_cast<float>(sum_dzx[ch] * invstd[ch]);
    }
    if (need_input) {
      // dx = scale * invstd * (dz - mean(dz) - (x - mean) * invstd^2 * mean(dz * (x - mean))).
      const double m = static_cast<double>(l.count());
      const float* gm = gamma.contiguous().data_ptr<float>();
      std::vector<float> ca(c), cb(c), ck(c);
      for (int64_t ch = 0; ch < c; ++ch) {
        ca[ch] = static_cast<float>(sum_dz[ch] / m);
        cb[ch] = static_cast<float>(sum_dzx[ch] / m * invstd[ch] * invstd[ch]);
        ck[ch] = static_cast<float>(static_cast<double>(gm[ch]) * invstd[ch]);
      }
      auto dx = torch::empty_like(x, x.options(), format_of(l));
      const Values dxv(dx, l);
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          if (l.channels_last) {
            k().bn_backward_dx_cl(xv.type, xv.chunk(j), dyv.chunk(j), dxv.chunk(j), l.chunk_pixels(j), c,
                                  a.scale.data(), a.shift.data(), a.mean.data(), ca.data(), cb.data(), ck.data(), act,
                                  param);
          } else {
            const int64_t ch = j % c;
            k().bn_backward_dx_plane(xv.type, xv.chunk(j), dyv.chunk(j), dxv.chunk(j), l.hw, a.scale[ch],
                                     a.shift[ch], a.mean[ch], ca[ch], cb[ch], ck[ch], act, param);
          }
        }
      });
      out[0] = dx;
    }
    return out;
  }

  std::string name() const override { return "BatchNormActBackward"; }

  void release_variables() override {
    input.reset_data();
    scale.reset_data();
    bias.reset_data();
  }
};

}  // namespace

bool batch_norm_act_supported(const torch::Tensor& input) {
  if (!input.defined() || !input.device().is_cpu() || input.dim() != 4) return false;
  // Autocast changes nothing here: LibTorch's batch_norm keeps its input's type under it too.
  if (input.scalar_type() != torch::kFloat32 && input.scalar_type() != torch::kBFloat16) return false;
  if (!input.is_contiguous() && !input.is_contiguous(torch::MemoryFormat::ChannelsLast)) return false;
  return input.size(1) > 0 && input.size(0) * input.size(2) * input.size(3) > 1;
}

torch::Tensor batch_norm_act_train(const torch::Tensor& input, const torch::Tensor& scale, const torch::Tensor& bias,
                                   const torch::Tensor& running_mean, const torch::Tensor& running_var,
                                   double momentum, double eps, int act, double param) {
  TORCH_CHECK(batch_norm_act_supported(input), "batch_norm_act_train: unsupported input ", input.sizes(), " ",
              input.scalar_type());
  const int64_t c = input.size(1);
  TORCH_CHECK(scale.numel() == c && bias.numel() == c && scale.scalar_type() == torch::kFloat32 &&
                  bias.scalar_type() == torch::kFloat32,
              "batch_norm_act_train: scale and bias must be float32 vectors of ", c, " values");
  const Layout l = layout_of(input);
  torch::Tensor y;
  std::vector<double> invstd(c);
  ChannelStats stats;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // the result gets its history below
    const Values x(input, l);
    stats = batch_stats(x, l);
    for (int64_t ch = 0; ch < c; ++ch) invstd[ch] = 1.0 / std::sqrt(stats.var[ch] + eps);
    const Affine a = affine(stats.mean, invstd, scale.detach(), bias.detach());
    y = torch::empty_like(input, input.options(), format_of(l));
    apply_affine_act(x, Values(y, l), l, a, act, static_cast<float>(param));
  }
  {
    torch::NoGradGuard no_grad;
    const double n = static_cast<double>(l.count());
    if (running_mean.defined()) {
      const auto m = torch::tensor(stats.mean, torch::kFloat64).to(running_mean.scalar_type());
      running_mean.mul_(1.0 - momentum).add_(m, momentum);
    }
    if (running_var.defined()) {
      const auto v = (torch::tensor(stats.var, torch::kFloat64) * (n / (n - 1.0))).to(running_var.scalar_type());
      running_var.mul_(1.0 - momentum).add_(v, momentum);
    }
  }
  if (torch::autograd::compute_requires_grad(input, scale, bias)) {
    auto node = std::shared_ptr<BatchNormActBackward>(new BatchNormActBackward(), torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(input, scale, bias));
    node->input = torch::autograd::SavedVariable(input, /*is_output=*/false);
    node->scale = torch::autograd::SavedVariable(scale, false);
    node->bias = torch::autograd::SavedVariable(bias, false);
    node->mean = std::move(stats.mean);
    node->invstd = std::move(invstd);
    node->act = act;
    node->param = static_cast<float>(param);
    torch::autograd::set_history(y, node);
  }
  return y;
}

}  // namespace asl::nn::autograd
