#include "asl/nn/packed_conv.h"

#include "asl/runtime.h"

#include <string>

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

namespace asl::nn {
namespace {

// The two ops are registered by libtorch_cpu when it is built with oneDNN; they are looked up, not
// linked, so that a LibTorch without them still loads (and the fused model runs plain convs).
struct Ops {
  c10::optional<c10::OperatorHandle> prepack, run;
};

const Ops& ops() {
  static const Ops found = [] {
    auto& dispatcher = c10::Dispatcher::singleton();
    Ops o;
    o.prepack = dispatcher.findSchema({"mkldnn_prepacked::conv2d_prepack", ""});
    o.run = dispatcher.findSchema({"mkldnn_prepacked::conv2d_run", ""});
    return o;
  }();
  return found;
}

}  // namespace

bool PackedConv2d::available() { return ops().prepack.has_value() && ops().run.has_value(); }

PackedConv2d::PackedConv2d(const torch::Tensor& weight, const torch::Tensor& bias, std::vector<int64_t> stride,
                           std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                           std::vector<int64_t> input_size)
    : dtype_(weight.scalar_type()) {
  TORCH_CHECK(available(), "PackedConv2d: this LibTorch has no mkldnn_prepacked convolution");
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
  std::vector<c10::IValue> stack{weight.detach().contiguous(torch::MemoryFormat::ChannelsLast),
                                 bias.defined() ? c10::optional<torch::Tensor>(bias.detach().contiguous())
                                                : c10::optional<torch::Tensor>(),
                                 std::move(stride),
                                 std::move(padding),
                                 std::move(dilation),
                                 groups,
                                 std::move(input_size),
                                 std::string("none")};
  ops().prepack->callBoxed(&stack);
  TORCH_CHECK(stack.size() == 1, "PackedConv2d: unexpected result of conv2d_prepack");
  context_ = std::move(stack[0]);
}

torch::Tensor PackedConv2d::operator()(const torch::Tensor& input) const {
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == dtype_, "PackedConv2d: expected a CPU ", dtype_,
              " input, got ", input.scalar_type(), " on ", input.device());
  std::vector<c10::IValue> stack{input, context_};
  ops().run->callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace asl::nn
