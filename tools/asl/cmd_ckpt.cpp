// `asl ckpt`: inspect and convert weights files (.pth and .safetensors, asl's and timm's layouts).
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "asl/io/checkpoint.h"
#include "asl/models/registry.h"
#include "asl/models/weights.h"
#include "commands.h"

namespace asl::cli {

namespace {

struct CkptInfoParams {
  std::string file;
  int classes_shown = 5;  // idx_to_class entries printed
  bool use_ema = false;
};

struct CkptConvertParams {
  std::string input;
  std::string output;
  bool keep_all = false;  // write the whole object, not just {model, num_classes, idx_to_class}
  std::string layout;     // asl|timm; empty: the input's
  std::string format;     // pth|safetensors; empty: from the output's name
  bool use_ema = false;
  std::string class_names;
};

// "tresnet_m (layers [3, 4, 11, 3], width 64, ...)" for ckpt info.
std::string architecture_text(const models::DetectedModel& d) {
  const auto& o = d.options;
  std::ostringstream s;
  s << (d.name.empty() ? std::string("custom TResNet") : d.name) << " (layers [";
  for (size_t i = 0; i < o.layers().size(); ++i) s << (i ? ", " : "") << o.layers()[i];
  s << "], stem width " << models::base_width(o) << (o.v2() ? ", v2: Bottleneck blocks in every stage" : "")
    << (o.do_bottleneck_head() ? ", bottleneck head " + std::to_string(o.bottleneck_features()) : std::string()) << ", "
    << o.in_chans() << " input channels, " << o.num_classes() << " classes)";
  return s.str();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_text(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > (n < 0 ? 1 : 0); i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

int run_info(const CkptInfoParams& p) {
  const models::Weights ck = models::read_weights(p.file, models::ReadWeightsOptions().use_ema(p.use_ema));
  // Built completely before printing, so that a failure prints nothing on stdout.
  std::ostringstream out;
  out << "file:    " << p.file << "\n";
  out << "format:  " << ck.format << "\n";
  out << "container: " << ck.container << (ck.prefixed_keys > 0 ? " ('module.' prefix stripped)" : "") << "\n";
  out << "layout:  " << (ck.layout == models::Layout::Timm ? "timm" : "asl (published)") << "\n";
  out << "norms:   "
      << (ck.layout == models::Layout::Timm ? "plain batch norm (w used as is, either sign; num_batches_tracked)"
                                            : "InPlaceABN (scale |w| + eps)")
      << "\n";
  std::string architecture;
  try {
    architecture = architecture_text(models::detect_weights(ck));
  } catch (const std::exception& e) {
    architecture = std::string("not recognised: ") + e.what();
  }
  out << "architecture: " << architecture << (ck.arch.empty() ? "" : "; the file says '" + ck.arch + "'") << "\n";
  if (!ck.metadata.empty()) {
    out << "metadata:";
    for (const auto& [k, v] : ck.metadata) out << " " << k << "=" << (v.size() > 60 ? v.substr(0, 57) + "..." : v);
    out << "\n";
  }
  if (ck.root.is_dict()) {
    out << "fields: ";
    for (const auto& [key, value] : ck.root.as_dict().items) out << " " << key.repr(40) << " (" << value.type_name() << ")";
    out << "\n";
  } else if (ck.format != "safetensors") {
    out << "object:  " << ck.root.type_name() << "\n";
  }
  int64_t elements = 0, parameters = 0, bytes = 0;
  size_t width = 0;
  for (const auto& item : ck.state) width = std::max(width, item.key().size());
  std::ostringstream keys;
  for (const auto& item : ck.state) {
    const torch::Tensor& t = item.value();
    elements += t.numel();
    bytes += t.numel() * static_cast<int64_t>(t.element_size());
    const std::string& k = item.key();
    if (!ends_with(k, "running_mean") && !ends_with(k, "running_var") && !ends_with(k, "num_batches_tracked")) {
      parameters += t.numel();
    }
    keys << "  " << std::left << std::setw(static_cast<int>(width)) << k << "  " << std::setw(8)
         << io::dtype_name(t.scalar_type()) << "  " << shape_text(t) << "\n";
  }
  out << "state dict: " << ck.state.size() << " tensors, " << with_commas(elements) << " elements ("
      << with_commas(parameters) << " parameters without BN running statistics), "
      << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / 1e6 << " MB\n";
  out << keys.str();
  out << "num_classes:  " << (ck.num_classes ? std::to_string(*ck.num_classes) : std::string("(absent)")) << "\n";
  out << "idx_to_class: ";
  if (ck.idx_to_class.empty()) {
    out << "(absent)\n";
  } else {
    out << ck.idx_to_class.size() << " entries:";
    int shown = 0;
    for (const auto& [i, name] : ck.idx_to_class) {
      if (shown++ == p.classes_shown) {
        out << " ...";
        break;
      }
      out << " " << i << "='" << name << "'";
    }
    out << "\n";
  }
  if (ck.root.is_dict()) {
    for (const auto& [key, value] : ck.root.as_dict().items) {
      if (key.is_str() && (key.as_str() == "model" || key.as_str() == "state_dict" || key.as_str() == "num_classes" ||
                           key.as_str() == "idx_to_class" || key.as_str() == "state_dict_ema")) {
        continue;
      }
      if (value.is_tensor()) continue;  // a bare state dict: listed above
      out << key.repr(60) << ": " << value.repr(120) << "\n";
    }
  }
  std::cout << out.str();
  return 0;
}

int run_convert(const CkptConvertParams& p) {
  if (p.keep_all) {
    if (!p.layout.empty() || !p.format.empty() || p.use_ema || !p.class_names.empty()) {
      throw std::runtime_error("--keep-all copies the whole object as it is; it does not go with --layout, --format, "
                               "--use-ema or --class-names");
    }
    std::string format;
    const io::PyValue root = io::load(p.input, &format);
    io::save(p.output, root);
    std::cerr << "asl ckpt convert: " << p.input << " (" << format << ") -> " << p.output << " (zip, whole object)\n";
    return 0;
  }
  const models::Weights w = models::read_weights(p.input, models::ReadWeightsOptions().use_ema(p.use_ema));
  const models::Layout layout = p.layout.empty() ? w.layout : models::parse_layout(p.layout);
  const models::WeightsFormat format =
      p.format.empty() ? models::format_for_path(p.output) : models::parse_weights_format(p.format);
  // Through the model: its keys define the renaming, its norms the weight conversion.
  const models::DetectedModel detected = models::detect_weights(w);
  models::TResNet model(detected.options);
  try {
    io::load_state_dict(*model, models::state_for_model(w.state, w.layout, model, p.input));
  } catch (const std::exception& e) {
    throw std::runtime_error(p.input + ": " + e.what());
  }
  std::map<int64_t, std::string> names = w.idx_to_class;
  if (names.empty() && !p.class_names.empty()) {
    const auto list = models::read_class_names(p.class_names, detected.options.num_classes());
    for (size_t i = 0; i < list.size(); ++i) names[static_cast<int64_t>(i)] = list[i];
  }
  io::StateDict state;
  try {
    state = models::state_in_layout(model, layout);
  } catch (const std::exception& e) {
    throw std::runtime_error(p.input + " -> " + p.output + ": " + e.what());
  }
  models::save_weights(p.output, state, detected.options.num_classes(), names,
                       models::SaveWeightsOptions().layout(layout).format(format).arch(
                           detected.name.empty() ? w.arch : detected.name));
  std::cerr << "asl ckpt convert: " << p.input << " (" << w.format << ", " << models::to_string(w.layout)
            << " layout) -> " << p.output << " ("
            << (format == models::WeightsFormat::Safetensors ? "safetensors" : "pth") << ", " << models::to_string(layout)
            << " layout, " << state.size() << " tensors, " << detected.options.num_classes() << " classes"
            << (names.empty() ? ", no class names" : "") << ")\n";
  return 0;
}

}  // namespace

void register_ckpt(CLI::App& app, Runner& run) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect and convert weights: .pth and .safetensors, asl's (published) "
                                              "and timm's layouts (no Python needed)");
  ckpt->require_subcommand(1);

  auto info = std::make_shared<CkptInfoParams>();
  CLI::App* info_cmd = ckpt->add_subcommand("info", "Format, container, layout, norm semantics, architecture, every "
                                                    "state-dict key with dtype and shape, parameter count, classes");
  info_cmd->add_option("file", info->file, "Weights file (.pth zip or legacy, or .safetensors)")->required();
  info_cmd->add_flag("--use-ema,--use_ema", info->use_ema, "timm training checkpoints: list the EMA weights");
  info_cmd->add_option("--classes", info->classes_shown, "idx_to_class entries to print")->capture_default_str();
  info_cmd->callback([info, &run] { run = [info] { return run_info(*info); }; });

  auto conv = std::make_shared<CkptConvertParams>();
  CLI::App* conv_cmd = ckpt->add_subcommand(
      "convert",
      "Rewrite TResNet weights in a layout and format: asl (published) <-> timm, .pth {model, num_classes,\n"
      "idx_to_class} <-> .safetensors (class names in __metadata__). asl -> timm: norm weights |w| + eps;\n"
      "timm -> asl: w - eps, only where every norm weight >= eps. The architecture is read from the weights.");
  conv_cmd->add_option("input", conv->input, "Weights to read (.pth or .safetensors, either layout)")->required();
  conv_cmd->add_option("output", conv->output, "File to write (replaced atomically)")->required();
  conv_cmd->add_option("--layout", conv->layout, "asl or timm (default: the input's)")
      ->check(CLI::IsMember({"asl", "published", "timm"}));
  conv_cmd->add_option("--format", conv->format, "pth or safetensors (default: safetensors for a .safetensors OUT)")
      ->check(CLI::IsMember({"pth", "safetensors"}));
  conv_cmd->add_flag("--use-ema,--use_ema", conv->use_ema, "timm training checkpoints: convert the EMA weights");
  conv_cmd->add_option("--class-names,--class_names", conv->class_names,
                       "class names, one per line, for inputs that do not name their classes");
  conv_cmd->add_flag("--keep-all,--keep_all", conv->keep_all,
                     "Copy the whole unpickled object as it is (legacy -> zip), whatever it holds");
  conv_cmd->callback([conv, &run] { run = [conv] { return run_convert(*conv); }; });
}

}  // namespace asl::cli
