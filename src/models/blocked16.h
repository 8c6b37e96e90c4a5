// TResNet inference with every activation in oneDNN's nChw16c layout, from the stem to the pooled
// features: the convolutions (Winograd ones included) read and write it directly, so no layout
// conversion runs between layers. Activations are held as PackedConv2d's blocked form:
// (N * C / 16) x 16 x H x W channels-last tensors, which asl's channels-last loops (squeeze-excite, blur
// pool) and LibTorch's pooling treat as N * C / 16 images of 16 channels.
#pragma once

#include <torch/types.h>

#include "asl/models/tresnet.h"

namespace asl::models::blocked16 {

/// Whether the model can run blocked: float32, every conv with groups 1 and channel counts that are
/// multiples of 16, oneDNN's effective ISA AVX-512 (where its Winograd and nChw16c kernels are).
bool supported(const TResNetImpl& model, torch::ScalarType dtype);

/// ConvNormActImpl::pack(..., blocked16 = true) for every conv of the model.
void pack(TResNetImpl& model, bool winograd);

/// The fused model's logits for a channels-last input (N x in_chans x H x W of the packed dtype); the
/// convs must have been packed by pack(). Call outside autograd.
torch::Tensor forward(TResNetImpl& model, const torch::Tensor& input);

}  // namespace asl::models::blocked16
