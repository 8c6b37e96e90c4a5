#include "asl/export/onnx.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <cstring>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/file.h"
#include "asl/nn/layers.h"
#include "asl/version.h"

namespace asl::exporter {

namespace {

using asl::nn::Activation;
using asl::nn::ConvNormActImpl;

torch::Tensor int64s(std::vector<int64_t> values) { return torch::tensor(values, torch::kLong); }

// protobuf's hard limit on one message; TResNet-XL is ~0.3 GB.
constexpr int64_t kMaxProtoBytes = (int64_t{1} << 31) - (int64_t{64} << 20);

// Appends nodes and initializers to a graph; every value gets a fresh name.
class Graph {
 public:
  Graph(onnx::GraphProto* g, bool float16) : g_(g), half_(float16) {}

  std::string fresh(const std::string& hint) { return hint + "_" + std::to_string(counter_++); }

  // A float32 (float16 in a float16 graph, rounded to nearest) or int64 tensor as an initializer, data
  // little-endian in raw_data.
  std::string initializer(const std::string& hint, const torch::Tensor& value) {
    torch::Tensor t = value.detach().cpu().contiguous();
    auto* init = g_->add_initializer();
    const std::string name = fresh(hint);
    init->set_name(name);
    if (t.scalar_type() == torch::kLong) {
      init->set_data_type(onnx::TensorProto_DataType_INT64);
    } else {
      TORCH_CHECK(t.scalar_type() == torch::kFloat32, "export: initializer ", hint, " must be float32 or int64");
      if (half_) t = t.to(torch::kHalf);
      init->set_data_type(half_ ? onnx::TensorProto_DataType_FLOAT16 : onnx::TensorProto_DataType_FLOAT);
      weight_bytes_ += t.nbytes();
    }
    for (int64_t d : t.sizes()) init->add_dims(d);
    init->set_raw_data(std::string(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.nbytes())));
    return name;
  }

  onnx::NodeProto* node(const std::string& op, const std::vector<std::string>& inputs, const std::string& output) {
    auto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(output + "_" + op);
    for (const auto& i : inputs) n->add_input(i);
    n->add_output(output);
    return n;
  }

  std::string op(const std::string& op, const std::vector<std::string>& inputs, const std::string& hint = "") {
    const std::string out = fresh(hint.empty() ? op : hint);
    node(op, inputs, out);
    return out;
  }

  static void ints(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& values) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto_AttributeType_INTS);
    for (int64_t v : values) a->add_ints(v);
  }
  static void integer(onnx::NodeProto* n, const std::string& name, int64_t value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto_AttributeType_INT);
    a->set_i(value);
  }
  static void real(onnx::NodeProto* n, const std::string& name, double value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto_AttributeType_FLOAT);
    a->set_f(static_cast<float>(value));
  }
  static void text(onnx::NodeProto* n, const std::string& name, const std::string& value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto_AttributeType_STRING);
    a->set_s(value);
  }

  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  onnx::GraphProto* g_;
  bool half_;
  int64_t counter_ = 0;
  int64_t weight_bytes_ = 0;
};

// Walks the unfused TResNet and emits its graph.
class Emitter {
 public:
  Emitter(Graph& graph, const OnnxExportOptions& options) : g_(graph), o_(options) {}

  std::string conv(const std::string& x, const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                   int64_t stride, int64_t padding, int64_t groups, const std::string& hint) {
    std::vector<std::string> inputs{x, g_.initializer(hint + "_weight", weight.to(torch::kFloat32))};
    if (bias) inputs.push_back(g_.initializer(hint + "_bias", bias->to(torch::kFloat32)));
    const std::string out = g_.fresh(hint);
    auto* n = g_.node("Conv", inputs, out);
    Graph::ints(n, "kernel_shape", {weight.size(2), weight.size(3)});
    Graph::ints(n, "strides", {stride, stride});
    Graph::ints(n, "pads", {padding, padding, padding, padding});
    Graph::ints(n, "dilations", {1, 1});
    Graph::integer(n, "group", groups);
    return out;
  }

  std::string activation(const std::string& x, Activation a, double param) {
    switch (a) {
      case Activation::Identity: return x;
      case Activation::LeakyReLU: {
        const std::string out = g_.fresh("leaky_relu");
        Graph::real(g_.node("LeakyRelu", {x}, out), "alpha", param);
        return out;
      }
      case Activation::ELU: {
        const std::string out = g_.fresh("elu");
        Graph::real(g_.node("Elu", {x}, out), "alpha", param);
        return out;
      }
    }
    throw std::runtime_error("export: unknown activation");
  }

  std::string conv_norm_act(const std::string& x, const ConvNormActImpl& unit) {
    TORCH_CHECK(!unit.options.fused() && unit.norm, "export: the model must be unfused (as loaded)");
    const auto& c2d = *unit.conv;
    const int64_t stride = (*c2d.options.stride())[0];
    const int64_t padding = unit.options.kernel_size() / 2;
    const int64_t groups = c2d.options.groups();
    std::string y;
    if (o_.fuse()) {
      const auto folded = unit.folded_weight_and_bias();
      y = conv(x, folded.first, folded.second, stride, padding, groups, "conv");
    } else {
      y = conv(x, c2d.weight, c10::nullopt, stride, padding, groups, "conv");
      const auto& norm = *unit.norm;
      torch::NoGradGuard no_grad;
      const torch::Tensor scale =
          asl::nn::functional::norm_scale(norm.weight.to(torch::kFloat32), norm.options.eps(), norm.options.abs_weight());
      const std::string out = g_.fresh("batch_norm");
      auto* n = g_.node("BatchNormalization",
                        {y, g_.initializer("bn_scale", scale), g_.initializer("bn_bias", norm.bias),
                         g_.initializer("bn_mean", norm.running_mean), g_.initializer("bn_var", norm.running_var)},
                        out);
      Graph::real(n, "epsilon", norm.options.eps());
      y = out;
    }
    return activation(y, unit.options.activation(), unit.options.activation_param());
  }

  // Reflect-pad by 1, then the depthwise binomial filter at stride 2.
  std::string blur(const std::string& x, int64_t channels) {
    if (!reflect_pads_) reflect_pads_ = g_.initializer("pads", int64s({0, 0, 1, 1, 0, 0, 1, 1}));
    const std::string padded = g_.fresh("reflect_pad");
    Graph::text(g_.node("Pad", {x, *reflect_pads_}, padded), "mode", "reflect");
    return conv(padded, asl::nn::functional::blur_filter(channels, torch::kFloat32), c10::nullopt, 2, 0, channels, "blur");
  }

  std::string any_conv(const std::string& x, const torch::nn::AnyModule& m) {
    if (const auto* unit = m.ptr()->as<ConvNormActImpl>()) return conv_norm_act(x, *unit);
    const auto* cb = m.ptr()->as<models::ConvBlurImpl>();
    TORCH_CHECK(cb != nullptr, "export: unexpected module in a block");
    return blur(conv_norm_act(x, *cb->conv), cb->conv->options.out_channels());
  }

  std::string squeeze_excite(const std::string& x, const asl::nn::SqueezeExciteImpl& se) {
    const std::string pooled = g_.op("GlobalAveragePool", {x}, "se_pool");
    const std::string h = g_.op("Relu", {conv(pooled, se.fc1->weight, se.fc1->bias, 1, 0, 1, "se_fc1")}, "se_relu");
    const std::string gate = g_.op("Sigmoid", {conv(h, se.fc2->weight, se.fc2->bias, 1, 0, 1, "se_fc2")}, "se_gate");
    return g_.op("Mul", {x, gate}, "se_out");
  }

  std::string downsample(const std::string& x, const torch::nn::Sequential& seq) {
    std::string y = x;
    for (const auto& m : seq->children()) {
      if (const auto* pool = m->as<torch::nn::AvgPool2dImpl>()) {
        const std::string out = g_.fresh("avg_pool");
        auto* n = g_.node("AveragePool", {y}, out);
        const int64_t k = (*pool->options.kernel_size())[0], s = (*pool->options.stride())[0];
        Graph::ints(n, "kernel_shape", {k, k});
        Graph::ints(n, "strides", {s, s});
        Graph::integer(n, "ceil_mode", pool->options.ceil_mode() ? 1 : 0);
        Graph::integer(n, "count_include_pad", pool->options.count_include_pad() ? 1 : 0);
        y = out;
      } else if (const auto* unit = m->as<ConvNormActImpl>()) {
        y = conv_norm_act(y, *unit);
      } else {
        throw std::runtime_error("export: unexpected module in a downsample");
      }
    }
    return y;
  }

  std::string block(const std::string& x, const torch::nn::AnyModule& m) {
    if (const auto* b = m.ptr()->as<models::BasicBlockImpl>()) {
      const std::string residual = b->downsample ? downsample(x, b->downsample) : x;
      std::string y = conv_norm_act(any_conv(x, b->conv1), *b->conv2);
      if (b->se) y = squeeze_excite(y, *b->se);
      return g_.op("Relu", {g_.op("Add", {y, residual}, "residual")}, "block_out");
    }
    const auto* b = m.ptr()->as<models::BottleneckImpl>();
    TORCH_CHECK(b != nullptr, "export: unexpected block");
    const std::string residual = b->downsample ? downsample(x, b->downsample) : x;
    std::string y = any_conv(conv_norm_act(x, *b->conv1), b->conv2);
    if (b->se) y = squeeze_excite(y, *b->se);
    y = conv_norm_act(y, *b->conv3);
    return g_.op("Relu", {g_.op("Add", {y, residual}, "residual")}, "block_out");
  }

  std::string gemm(const std::string& x, const torch::nn::LinearImpl& linear) {
    const std::string out = g_.fresh("gemm");
    Graph::integer(g_.node("Gemm", {x, g_.initializer("fc_weight", linear.weight), g_.initializer("fc_bias", linear.bias)}, out),
                   "transB", 1);
    return out;
  }

  // (N, C, H, W) -> (N, 16C, H/4, W/4), channel (row-in-block * 4 + col-in-block) * C + c.
  std::string space_to_depth(const std::string& x, int64_t channels, int64_t size, int64_t block) {
    const int64_t s = size / block;
    const std::string a = g_.op("Reshape", {x, g_.initializer("s2d_shape", int64s({0, channels, s, block, s, block}))}, "s2d_split");
    const std::string t = g_.fresh("s2d_transpose");
    Graph::ints(g_.node("Transpose", {a}, t), "perm", {0, 3, 5, 1, 2, 4});
    return g_.op("Reshape", {t, g_.initializer("s2d_merge", int64s({0, channels * block * block, s, s}))},
                 "space_to_depth");
  }

 private:
  Graph& g_;
  const OnnxExportOptions& o_;
  c10::optional<std::string> reflect_pads_;
};

void set_tensor_type(onnx::ValueInfoProto* v, const std::string& name, const std::vector<int64_t>& dims, bool dynamic_batch) {
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto_DataType_FLOAT);
  auto* shape = tt->mutable_shape();
  for (size_t i = 0; i < dims.size(); ++i) {
    auto* d = shape->add_dim();
    if (i == 0 && dynamic_batch) {
      d->set_dim_param("N");
    } else {
      d->set_dim_value(dims[i]);
    }
  }
}

}  // namespace

OnnxExportInfo export_onnx(const models::TResNet& model, const std::vector<std::string>& class_names,
                           const std::string& path, const OnnxExportOptions& options) {
  const auto fail = [&](const std::string& why) { return std::runtime_error(path + ": cannot export: " + why); };
  const auto& mo = model->options;
  if (mo.fused()) throw fail("the model is fused; export the model as loaded (unfused)");
  if (options.image_size() <= 0 || options.image_size() % 32 != 0) {
    throw fail("image size must be a positive multiple of 32, got " + std::to_string(options.image_size()));
  }
  if (options.opset() < 13 || options.opset() > 17) {
    throw fail("opset must be 13 to 17 (what Debian's ONNX 1.12 checks), got " + std::to_string(options.opset()));
  }
  if (options.batch() < 0) throw fail("batch must be >= 1, or 0 for a dynamic batch axis");
  if (!class_names.empty() && static_cast<int64_t>(class_names.size()) != mo.num_classes()) {
    throw fail(std::to_string(class_names.size()) + " class names for " + std::to_string(mo.num_classes()) + " classes");
  }
  torch::NoGradGuard no_grad;

  onnx::ModelProto m;
  m.set_ir_version(onnx::IR_VERSION);
  m.set_producer_name("asl");
  m.set_producer_version(asl::version());
  m.set_model_version(1);
  auto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(options.opset());
  auto* gp = m.mutable_graph();
  gp->set_name(options.architecture().empty() ? "tresnet" : options.architecture());
  const bool dynamic = options.batch() == 0;
  const int64_t n = dynamic ? 1 : options.batch(), s = options.image_size();
  set_tensor_type(gp->add_input(), "input", {n, mo.in_chans(), s, s}, dynamic);

  Graph g(gp, options.float16());
  Emitter e(g, options);
  const auto& body = *model->body;
  std::string x = "input";
  if (options.float16()) {
    x = g.fresh("input_fp16");
    Graph::integer(g.node("Cast", {"input"}, x), "to", onnx::TensorProto_DataType_FLOAT16);
  }
  x = e.space_to_depth(x, mo.in_chans(), s, body.space_to_depth->options.block_size());
  x = e.conv_norm_act(x, *body.conv1);
  for (const auto* stage : {&body.layer1, &body.layer2, &body.layer3, &body.layer4}) {
    for (const auto& b : (*stage)->blocks) x = e.block(x, b);
  }
  x = g.op("Flatten", {g.op("GlobalAveragePool", {x}, "global_pool")}, "features");
  const auto& head = model->head->fc;
  if (const auto* linear = head.ptr()->as<torch::nn::LinearImpl>()) {
    x = e.gemm(x, *linear);
  } else {
    const auto* bh = head.ptr()->as<models::BottleneckHeadImpl>();
    if (bh == nullptr) throw fail("unknown head");
    x = e.gemm(e.gemm(x, *bh->embedding_generator->ptr(0)->as<torch::nn::LinearImpl>()), *bh->FC);
  }
  if (options.float16()) {
    const std::string back = g.fresh("logits_fp32");
    Graph::integer(g.node("Cast", {x}, back), "to", onnx::TensorProto_DataType_FLOAT);
    x = back;
  }
  const std::string output = options.with_sigmoid() ? "scores" : "logits";
  g.node(options.with_sigmoid() ? "Sigmoid" : "Identity", {x}, output);
  set_tensor_type(gp->add_output(), output, {n, mo.num_classes()}, dynamic);
  if (g.weight_bytes() > kMaxProtoBytes) {
    throw fail("the weights take " + std::to_string(g.weight_bytes()) + " bytes, more than one protobuf message holds; "
               "ONNX's external-data files are not supported by this exporter");
  }

  OnnxExportInfo info;
  nlohmann::json names = nlohmann::json::array();
  for (int64_t k = 0; k < mo.num_classes(); ++k) {
    names.push_back(class_names.empty() ? "class_" + std::to_string(k) : class_names[static_cast<size_t>(k)]);
  }
  std::ostringstream th;
  th << options.threshold();
  info.metadata = {
      {"architecture", options.architecture().empty() ? "custom TResNet" : options.architecture()},
      {"layout", options.layout()},
      {"image_size", std::to_string(s)},
      {"input", "input: N x " + std::to_string(mo.in_chans()) + " x " + std::to_string(s) + " x " + std::to_string(s) +
                    " float32, RGB, NCHW"},
      {"preprocessing", "decode to RGB, resize to " + std::to_string(s) + "x" + std::to_string(s) +
                            " (Pillow bicubic as asl infer, bilinear as asl validate), scale by 1/255; no mean/std "
                            "normalisation"},
      {"output", output + ": N x " + std::to_string(mo.num_classes()) +
                     (options.with_sigmoid() ? " sigmoid scores" : " logits (apply a sigmoid for scores)")},
      {"class_names", names.dump()},
      {"num_classes", std::to_string(mo.num_classes())},
      {"default_threshold", th.str()},
      {"norms", options.fuse() ? "folded into the convolutions" : "BatchNormalization"},
      {"precision", options.float16() ? "float16 weights and activations (float32 input and output)" : "float32"},
  };
  for (const auto& [k, v] : info.metadata) {
    auto* p = m.add_metadata_props();
    p->set_key(k);
    p->set_value(v);
  }
  try {
    onnx::checker::check_model(m);
    onnx::shape_inference::InferShapes(m, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict=*/1));
  } catch (const std::exception& ex) {
    throw fail(std::string("the ONNX checker refused the graph: ") + ex.what());
  }
  std::string bytes;
  if (!m.SerializeToString(&bytes)) throw fail("protobuf could not serialise the model");
  io::write_file_atomic(path, bytes);
  info.nodes = gp->node_size();
  info.initializers = gp->initializer_size();
  info.weight_bytes = g.weight_bytes();
  info.file_bytes = static_cast<int64_t>(bytes.size());
  return info;
}

}  // namespace asl::exporter
