// `asl ckpt`: inspect and convert PyTorch .pth checkpoints.
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "asl/io/checkpoint.h"
#include "commands.h"

namespace asl::cli {

namespace {

struct CkptInfoParams {
  std::string file;
  int classes_shown = 5;  // idx_to_class entries printed
};

struct CkptConvertParams {
  std::string input;
  std::string output;
  bool keep_all = false;  // write the whole object, not just {model, num_classes, idx_to_class}
};

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
  const io::LoadedCheckpoint ck = io::load_checkpoint(p.file);
  // Built completely before printing, so that a failure prints nothing on stdout.
  std::ostringstream out;
  out << "file:    " << p.file << "\n";
  out << "format:  " << ck.format << "\n";
  if (ck.root.is_dict()) {
    out << "fields: ";
    for (const auto& [key, value] : ck.root.as_dict().items) out << " " << key.repr(40) << " (" << value.type_name() << ")";
    out << "\n";
  } else {
    out << "object:  " << ck.root.type_name() << "\n";
  }
  int64_t elements = 0, parameters = 0, bytes = 0;
  size_t width = 0;
  for (const auto& item : ck.model) width = std::max(width, item.key().size());
  std::ostringstream keys;
  for (const auto& item : ck.model) {
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
  out << "state dict: " << ck.model.size() << " tensors, " << with_commas(elements) << " elements ("
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
                           key.as_str() == "idx_to_class")) {
        continue;
      }
      if (value.is_tensor() && ck.model.size() > 0 && ck.model.contains(key.is_str() ? key.as_str() : "")) continue;
      out << key.repr(60) << ": " << value.repr(120) << "\n";
    }
  }
  std::cout << out.str();
  return 0;
}

int run_convert(const CkptConvertParams& p) {
  if (p.keep_all) {
    std::string format;
    const io::PyValue root = io::load(p.input, &format);
    io::save(p.output, root);
    std::cerr << "asl ckpt convert: " << p.input << " (" << format << ") -> " << p.output << " (zip, whole object)\n";
    return 0;
  }
  const io::LoadedCheckpoint ck = io::load_checkpoint(p.input);
  if (ck.model.size() == 0) {
    throw std::runtime_error(p.input + ": no state dict found (no 'model' or 'state_dict' dict of tensors); use "
                             "--keep-all to convert the whole object");
  }
  int64_t num_classes = ck.num_classes.value_or(-1);
  if (!ck.num_classes) {
    // The reference layout's classifier: the last 2-D weight's row count.
    for (const auto& item : ck.model) {
      if (item.value().dim() == 2 && ends_with(item.key(), "weight")) num_classes = item.value().size(0);
    }
  }
  io::save_checkpoint(p.output, ck.model, num_classes, ck.idx_to_class);
  std::cerr << "asl ckpt convert: " << p.input << " (" << ck.format << ") -> " << p.output << " (zip, "
            << ck.model.size() << " tensors, num_classes " << num_classes << ")\n";
  return 0;
}

}  // namespace

void register_ckpt(CLI::App& app, Runner& run) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect and convert PyTorch .pth checkpoints (no Python needed)");
  ckpt->require_subcommand(1);

  auto info = std::make_shared<CkptInfoParams>();
  CLI::App* info_cmd = ckpt->add_subcommand("info", "Format, every state-dict key with dtype and shape, parameter "
                                                    "count, num_classes and idx_to_class");
  info_cmd->add_option("file", info->file, "Checkpoint file (.pth, zip or legacy format)")->required();
  info_cmd->add_option("--classes", info->classes_shown, "idx_to_class entries to print")->capture_default_str();
  info_cmd->callback([info, &run] { run = [info] { return run_info(*info); }; });

  auto conv = std::make_shared<CkptConvertParams>();
  CLI::App* conv_cmd = ckpt->add_subcommand(
      "convert",
      "Rewrite a checkpoint (legacy or zip) as a clean zip {model, num_classes, idx_to_class} file; num_classes\n"
      "comes from the file, else from the row count of the last 2-D weight");
  conv_cmd->add_option("input", conv->input, "Checkpoint to read")->required();
  conv_cmd->add_option("output", conv->output, "Checkpoint to write (replaced atomically)")->required();
  conv_cmd->add_flag("--keep-all,--keep_all", conv->keep_all, "Write the whole object, not only the three fields");
  conv_cmd->callback([conv, &run] { run = [conv] { return run_convert(*conv); }; });
}

}  // namespace asl::cli
