#include "asl/models/pretrained.h"

#include <stdexcept>

#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/models/registry.h"
#include "asl/models/weights.h"
#include "asl/nn/autocast.h"

namespace asl::models {

torch::Tensor Classifier::logits(const torch::Tensor& images) {
  if (fused) return fused->forward(images);
  torch::InferenceMode guard;
  asl::nn::BFloat16Autocast autocast(bf16);
  return model->forward(images).to(torch::kFloat32);
}

Classifier load_classifier(const std::string& path, const ClassifierOptions& options) {
  const Weights weights = read_weights(path, ReadWeightsOptions().use_ema(options.use_ema));
  const DetectedModel detected = detect_weights(weights);
  Classifier c;
  c.options = detected.options;
  c.model_name = detected.name.empty() ? "custom" : detected.name;
  c.layout = weights.layout;
  c.container = weights.container;
  if (options.model_name != "auto") {
    // The named architecture must be the one the weights were trained with.
    const TResNetOptions named = model_options(options.model_name, detected.options.num_classes());
    if (named.layers() != detected.options.layers() || base_width(named) != base_width(detected.options) ||
        named.v2() != detected.options.v2() || named.do_bottleneck_head() != detected.options.do_bottleneck_head()) {
      throw std::runtime_error(path + ": --model-name " + options.model_name + " does not match the weights, which are " +
                               (detected.name.empty() ? std::string("a custom TResNet") : detected.name));
    }
    c.model_name = options.model_name;
  }
  if (weights.num_classes.has_value() && *weights.num_classes != c.options.num_classes()) {
    throw std::runtime_error(path + ": field 'num_classes' is " + std::to_string(*weights.num_classes) +
                             " but the head has " + std::to_string(c.options.num_classes()) + " outputs");
  }
  c.model = TResNet(c.options);
  try {
    io::load_state_dict(*c.model, state_for_model(weights.state, weights.layout, c.model, path));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  c.model->eval();
  c.class_names.resize(static_cast<size_t>(c.options.num_classes()));
  for (int64_t i = 0; i < c.options.num_classes(); ++i) {
    const auto it = weights.idx_to_class.find(i);
    c.class_names[static_cast<size_t>(i)] = it != weights.idx_to_class.end() ? it->second : "class_" + std::to_string(i);
  }
  c.has_class_names = !weights.idx_to_class.empty();
  c.bf16 = options.bf16;
  if (options.fuse) {
    c.fused = fuse_for_inference(c.model, FuseOptions().dtype(options.bf16 ? torch::kBFloat16 : torch::kFloat32));
  }
  return c;
}

}  // namespace asl::models
