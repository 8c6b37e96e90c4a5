#include "asl/nn/packed_conv.h"

#include "asl/runtime.h"
#include "cpu/cl_kernels.h"

#include <algorithm>
#include <string>

#include <c10/util/Exception.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <torch/torch.h>

namespace asl::nn {
namespace {

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::memory::data_type data_type(torch::ScalarType t) {
  return t == torch::kBFloat16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

dnnl::memory::dims dims_of(const std::vector<int64_t>& v) { return dnnl::memory::dims(v.begin(), v.end()); }

// Per-thread buffers that a call needs only while it runs (the blocked input and output of a Winograd
// kernel, oneDNN's scratchpad), grown as needed and reused: a TResNet-M forward asks for ~100 of them,
// each a fresh allocation before.
struct Workspace {
  torch::Tensor blocked_src, blocked_dst, scratchpad;
};

void* reserve(torch::Tensor& buffer, size_t bytes) {
  const auto n = static_cast<int64_t>(std::max<size_t>(bytes, 1));
  if (!buffer.defined() || buffer.numel() < n) buffer = torch::empty({n}, torch::kUInt8);
  return buffer.data_ptr();
}

Workspace& workspace() {
  thread_local Workspace w;
  return w;
}

}  // namespace

struct PackedConv2d::Impl {
  torch::Tensor weight, bias;  // the user's layout (OIHW), kept for shapes prepared later
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  ConvEpilogue epilogue;
  bool winograd = true;
  bool blocked16 = false;  // PackedConv2d::Layout::Blocked16: input and output in nChw16c, no reorders
  dnnl::memory::data_type dt;

  struct Prepared {
    dnnl::convolution_forward::primitive_desc pd;
    dnnl::convolution_forward conv;
    dnnl::memory weights;  // in pd.weights_desc()
    std::vector<int64_t> out_size;
    size_t scratchpad = 0;
    // Winograd: the kernel reads and writes nChw16c; channels-last is reordered in and out around it.
    bool blocked = false;
    bool activation_after = false;  // oneDNN's Winograd kernels take no leaky ReLU / ELU post-op
    // The blocked output is copied back to channels-last by asl's loop (cl_kernels.h), which applies the
    // activation on the way (one pass instead of oneDNN's reorder and then the activation).
    bool own_unblock = false;
    dnnl::memory::desc user_src, user_dst;
    dnnl::reorder to_blocked, from_blocked;
  };
  // Keyed by the input shape and whether the residual sum is fused.
  mutable std::map<std::pair<std::vector<int64_t>, bool>, std::shared_ptr<const Prepared>> prepared;
  mutable std::mutex mutex;

  std::vector<int64_t> out_size(const std::vector<int64_t>& in) const {
    const int64_t o = weight.size(0);
    std::vector<int64_t> out{in[0], o, 0, 0};
    for (int k = 0; k < 2; ++k) {
      const int64_t kernel = dilation[k] * (weight.size(2 + k) - 1) + 1;
      out[2 + k] = (in[2 + k] + 2 * padding[k] - kernel) / stride[k] + 1;
    }
    return out;
  }

  std::shared_ptr<const Prepared> prepare(const std::vector<int64_t>& in, bool residual) const {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = prepared.find({in, residual});
    if (it != prepared.end()) return it->second;
    using tag = dnnl::memory::format_tag;
    const auto& engine = cpu_engine();
    const std::vector<int64_t> out = out_size(in);
    TORCH_CHECK(in[1] == weight.size(1) * groups, "PackedConv2d: input has ", in[1], " channels, the weight expects ",
                weight.size(1) * groups);
    TORCH_CHECK(out[2] > 0 && out[3] > 0, "PackedConv2d: input ", in, " is too small for the kernel");
    const tag io = blocked16 ? tag::nChw16c : tag::nhwc;
    const dnnl::memory::desc src_md(dims_of(in), dt, io);
    const dnnl::memory::desc dst_md(dims_of(out), dt, io);
    dnnl::memory::dims wdims = dims_of(weight.sizes().vec());
    if (groups > 1) {
      wdims = {groups, weight.size(0) / groups, weight.size(1), weight.size(2), weight.size(3)};
    }
    const dnnl::memory::desc any_weights(wdims, dt, tag::any);
    const dnnl::memory::desc bias_md = bias.defined() ? dnnl::memory::desc({weight.size(0)}, dt, tag::x)
                                                      : dnnl::memory::desc();
    const dnnl::memory::dims dil{dilation[0] - 1, dilation[1] - 1};
    const dnnl::memory::dims st{stride[0], stride[1]}, pad{padding[0], padding[1]};
    // The right padding that makes oneDNN's output size the one of torch::conv2d.
    dnnl::memory::dims pad_r(2);
    for (int k = 0; k < 2; ++k) {
      const int64_t kernel = dilation[k] * (weight.size(2 + k) - 1) + 1;
      pad_r[k] = (out[2 + k] - 1) * stride[k] + kernel - in[2 + k] - padding[k];
    }
    dnnl::post_ops ops;
    switch (epilogue.eltwise) {
      case ConvEpilogue::Eltwise::None: break;
      case ConvEpilogue::Eltwise::LeakyReLU:
        ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, static_cast<float>(epilogue.alpha), 0.0f);
        break;
      case ConvEpilogue::Eltwise::ELU:
        ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_elu, static_cast<float>(epilogue.alpha), 0.0f);
        break;
    }
    if (residual) {
      ops.append_sum(1.0f);
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    }
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto p = std::make_shared<Prepared>();
    // Winograd (F(2x2,3x3) or F(4x4,3x3), oneDNN's avx512_core kernels) for float32 3x3 stride-1 convolutions
    // without a fused sum (tresnet_bench's *_direct_fp32 rows show the difference). Where oneDNN has no
    // such kernel (AVX2, bfloat16) the direct one is used.
    const bool wino_shape = winograd && !residual && dt == dnnl::memory::data_type::f32 && groups == 1 &&
                            weight.size(2) == 3 && weight.size(3) == 3 && stride[0] == 1 && stride[1] == 1 &&
                            dilation[0] == 1 && dilation[1] == 1;
    bool have_pd = false;
    if (wino_shape && blocked16) {
      // Already in the kernel's layout: no reorders. The activation is fused where oneDNN's Winograd kernel
      // takes it (ReLU), otherwise applied after the convolution.
      const dnnl::convolution_forward::desc wdesc(dnnl::prop_kind::forward_inference,
                                                  dnnl::algorithm::convolution_winograd, src_md, any_weights, bias_md,
                                                  dst_md, st, dil, pad, pad_r);
      try {
        p->pd = dnnl::convolution_forward::primitive_desc(wdesc, attr, engine);
        have_pd = true;
      } catch (const dnnl::error&) {
        try {
          dnnl::primitive_attr plain;
          plain.set_scratchpad_mode(dnnl::scratchpad_mode::user);
          p->pd = dnnl::convolution_forward::primitive_desc(wdesc, plain, engine);
          p->activation_after = epilogue.eltwise != ConvEpilogue::Eltwise::None;
          have_pd = true;
        } catch (const dnnl::error&) {
          // not implemented here: the direct kernel
        }
      }
    } else if (wino_shape) {
      try {
        const dnnl::memory::desc bsrc(dims_of(in), dt, tag::nChw16c), bdst(dims_of(out), dt, tag::nChw16c);
        const dnnl::convolution_forward::desc wdesc(dnnl::prop_kind::forward_inference,
                                                    dnnl::algorithm::convolution_winograd, bsrc, any_weights, bias_md,
                                                    bdst, st, dil, pad, pad_r);
        dnnl::primitive_attr plain;
        plain.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        p->pd = dnnl::convolution_forward::primitive_desc(wdesc, plain, engine);
        p->blocked = true;
        have_pd = true;
        // nChw16c exactly as asl's loop reads it (a padded last block when the channels are not a multiple of 16).
        p->own_unblock = p->pd.dst_desc() == bdst;
        p->activation_after = !p->own_unblock && epilogue.eltwise != ConvEpilogue::Eltwise::None;
        p->user_src = src_md;
        p->user_dst = dst_md;
        p->to_blocked = dnnl::reorder(dnnl::reorder::primitive_desc(engine, src_md, engine, p->pd.src_desc()));
        p->from_blocked = dnnl::reorder(dnnl::reorder::primitive_desc(engine, p->pd.dst_desc(), engine, dst_md));
      } catch (const dnnl::error&) {
        p->blocked = p->own_unblock = p->activation_after = have_pd = false;  // not implemented here: the direct kernel
      }
    }
    if (!have_pd) {
      const dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference,
                                                 dnnl::algorithm::convolution_direct, src_md, any_weights, bias_md,
                                                 dst_md, st, dil, pad, pad_r);
      p->pd = dnnl::convolution_forward::primitive_desc(desc, attr, engine);
    }
    p->conv = dnnl::convolution_forward(p->pd);
    p->out_size = out;
    p->scratchpad = p->pd.scratchpad_desc().get_size();
    // The weights in the kernel's layout, once per layout.
    for (const auto& [key, other] : prepared) {
      if (other->pd.weights_desc() == p->pd.weights_desc()) {
        p->weights = other->weights;
        break;
      }
    }
    if (!p->weights) {
      const dnnl::memory::desc user(wdims, dt, groups > 1 ? tag::goihw : tag::oihw);
      dnnl::memory from(user, engine, weight.data_ptr());
      p->weights = dnnl::memory(p->pd.weights_desc(), engine);
      dnnl::stream stream(engine);
      dnnl::reorder(from, p->weights).execute(stream, from, p->weights);
      stream.wait();
    }
    prepared[{in, residual}] = p;
    return p;
  }

  void run(const Prepared& p, const torch::Tensor& input, const torch::Tensor& output) const {
    const auto& engine = cpu_engine();
    dnnl::stream stream(engine);
    dnnl::memory src, dst, user_dst;
    Workspace& ws = workspace();
    void* blocked_dst = nullptr;
    if (p.blocked) {
      void* blocked_src = reserve(ws.blocked_src, p.pd.src_desc().get_size());
      blocked_dst = reserve(ws.blocked_dst, p.pd.dst_desc().get_size());
      dnnl::memory user_src(p.user_src, engine, input.data_ptr());
      src = dnnl::memory(p.pd.src_desc(), engine, blocked_src);
      dst = dnnl::memory(p.pd.dst_desc(), engine, blocked_dst);
      user_dst = dnnl::memory(p.user_dst, engine, output.data_ptr());
      p.to_blocked.execute(stream, user_src, src);
    } else {
      src = dnnl::memory(p.pd.src_desc(), engine, input.data_ptr());
      dst = dnnl::memory(p.pd.dst_desc(), engine, output.data_ptr());
    }
    dnnl::memory pad(p.pd.scratchpad_desc(), engine, reserve(ws.scratchpad, p.scratchpad));
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, p.weights}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, pad}};
    dnnl::memory b;
    if (bias.defined()) {
      b = dnnl::memory(p.pd.bias_desc(), engine, bias.data_ptr());
      args.emplace(DNNL_ARG_BIAS, b);
    }
    p.conv.execute(stream, args);
    if (p.blocked && !p.own_unblock) p.from_blocked.execute(stream, dst, user_dst);
    stream.wait();
    if (p.own_unblock) {
      cpu::unblock16(dt == dnnl::memory::data_type::bf16, blocked_dst, output.data_ptr(), p.out_size[0],
                     p.out_size[2] * p.out_size[3], p.out_size[1], epilogue.code(),
                     static_cast<float>(epilogue.alpha));
    }
  }
};

bool PackedConv2d::available() { return true; }

PackedConv2d::PackedConv2d(const torch::Tensor& weight, const torch::Tensor& bias, std::vector<int64_t> stride,
                           std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                           std::vector<int64_t> input_size, ConvEpilogue epilogue, bool winograd, Layout layout)
    : impl_(std::make_unique<Impl>()), dtype_(weight.scalar_type()), layout_(layout) {
  TORCH_CHECK(weight.dim() == 4 && weight.device().is_cpu(), "PackedConv2d: expected a 4-d CPU weight, got ",
              weight.sizes(), " on ", weight.device());
  TORCH_CHECK(dtype_ == torch::kFloat32 || dtype_ == torch::kBFloat16,
              "PackedConv2d: weight must be float32 or bfloat16, got ", dtype_);
  TORCH_CHECK(dtype_ != torch::kBFloat16 || cpu_info().onednn_bf16,
              "PackedConv2d: oneDNN cannot run bfloat16 on this CPU (effective ISA ", cpu_info().onednn_isa,
              "; bfloat16 needs avx512_core or above)");
  TORCH_CHECK(!bias.defined() || bias.scalar_type() == dtype_, "PackedConv2d: bias dtype ", bias.scalar_type(),
              " differs from weight dtype ", dtype_);
  TORCH_CHECK(input_size.size() == 4, "PackedConv2d: input_size must be N, C, H, W");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 && groups >= 1 &&
                  weight.size(0) % groups == 0,
              "PackedConv2d: stride, padding and dilation need 2 values and groups must divide the output channels");
  TORCH_CHECK(layout != Layout::Blocked16 ||
                  (groups == 1 && weight.size(0) % 16 == 0 && weight.size(1) % 16 == 0),
              "PackedConv2d: the blocked layout needs groups 1 and channel counts that are multiples of 16, got ",
              weight.size(1), " -> ", weight.size(0), " channels in ", groups, " groups");
  Impl& m = *impl_;
  m.blocked16 = layout == Layout::Blocked16;
  m.weight = weight.detach().contiguous().clone();
  if (bias.defined()) m.bias = bias.detach().contiguous().clone();
  m.stride = std::move(stride);
  m.padding = std::move(padding);
  m.dilation = std::move(dilation);
  m.groups = groups;
  m.epilogue = epilogue;
  m.winograd = winograd;
  m.dt = data_type(dtype_);
  m.prepare(input_size, false);
}

PackedConv2d::~PackedConv2d() = default;

torch::Tensor PackedConv2d::operator()(const torch::Tensor& input) const {
  TORCH_CHECK(layout_ == Layout::ChannelsLast, "PackedConv2d: packed for the blocked layout; call blocked16()");
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == dtype_ && input.dim() == 4,
              "PackedConv2d: expected a 4-d CPU ", dtype_, " input, got ", input.sizes(), " ", input.scalar_type(),
              " on ", input.device());
  const torch::Tensor x = input.contiguous(torch::MemoryFormat::ChannelsLast);
  const auto p = impl_->prepare(x.sizes().vec(), false);
  torch::Tensor out = torch::empty(p->out_size, x.options().memory_format(torch::MemoryFormat::ChannelsLast));
  impl_->run(*p, x, out);
  if (p->activation_after) {
    if (impl_->epilogue.eltwise == ConvEpilogue::Eltwise::LeakyReLU) torch::leaky_relu_(out, impl_->epilogue.alpha);
    if (impl_->epilogue.eltwise == ConvEpilogue::Eltwise::ELU) torch::elu_(out, impl_->epilogue.alpha);
  }
  return out;
}

torch::Tensor PackedConv2d::residual_relu(const torch::Tensor& input, torch::Tensor residual) const {
  TORCH_CHECK(layout_ == Layout::ChannelsLast, "PackedConv2d: packed for the blocked layout; call blocked16()");
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == dtype_ && input.dim() == 4,
              "PackedConv2d: expected a 4-d CPU ", dtype_, " input, got ", input.sizes(), " ", input.scalar_type(),
              " on ", input.device());
  const torch::Tensor x = input.contiguous(torch::MemoryFormat::ChannelsLast);
  // oneDNN 2.6's kernels drop the last relu of [activation, sum, relu] (seen with brgconv): the sum is fused
  // only after a plain convolution (TResNet's block tails), otherwise added here.
  const bool fuse = impl_->epilogue.eltwise == ConvEpilogue::Eltwise::None;
  const auto p = impl_->prepare(x.sizes().vec(), fuse);
  TORCH_CHECK(residual.sizes().vec() == p->out_size && residual.scalar_type() == dtype_ &&
                  residual.is_contiguous(torch::MemoryFormat::ChannelsLast),
              "PackedConv2d: the residual must be a channels-last ", dtype_, " tensor of shape ", p->out_size, ", got ",
              residual.sizes(), " ", residual.scalar_type());
  if (!fuse) return residual.add_((*this)(x)).relu_();
  impl_->run(*p, x, residual);
  return residual;
}

torch::Tensor PackedConv2d::blocked16(const torch::Tensor& input, int64_t batch, const torch::Tensor& residual,
                                     ConvEpilogue* pending) const {
  TORCH_CHECK(layout_ == Layout::Blocked16, "PackedConv2d: blocked16() needs a convolution packed for Layout::Blocked16");
  const int64_t in_channels = impl_->weight.size(1), out_channels = impl_->weight.size(0);
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == dtype_ && input.dim() == 4 && input.size(1) == 16 &&
                  batch >= 1 && input.size(0) == batch * (in_channels / 16) &&
                  input.is_contiguous(torch::MemoryFormat::ChannelsLast),
              "PackedConv2d: expected the blocked form of ", batch, " CPU ", dtype_, " images of ", in_channels,
              " channels (", batch * (in_channels / 16), " x 16 x H x W, channels-last), got ", input.sizes(), " ",
              input.scalar_type(), " on ", input.device());
  const std::vector<int64_t> in{batch, in_channels, input.size(2), input.size(3)};
  const bool fuse = residual.defined() && impl_->epilogue.eltwise == ConvEpilogue::Eltwise::None;
  const auto p = impl_->prepare(in, fuse);
  const std::vector<int64_t> out_form{batch * (out_channels / 16), 16, p->out_size[2], p->out_size[3]};
  if (residual.defined()) {
    TORCH_CHECK(residual.sizes().vec() == out_form && residual.scalar_type() == dtype_ &&
                    residual.is_contiguous(torch::MemoryFormat::ChannelsLast),
                "PackedConv2d: the residual must be the blocked form ", out_form, " (", dtype_, "), got ",
                residual.sizes(), " ", residual.scalar_type());
  }
  torch::Tensor out = fuse ? residual : torch::empty(out_form, input.options().memory_format(torch::MemoryFormat::ChannelsLast));
  impl_->run(*p, input, out);
  const bool defer = p->activation_after && pending != nullptr && !residual.defined();
  if (pending != nullptr) *pending = defer ? impl_->epilogue : ConvEpilogue{};
  if (p->activation_after && !defer) {
    // Elementwise: the layout does not matter.
    cpu::activate_(out, impl_->epilogue.code(), static_cast<float>(impl_->epilogue.alpha));
  }
  if (residual.defined() && !fuse) return residual.add_(out).relu_();
  return out;
}

}  // namespace asl::nn
