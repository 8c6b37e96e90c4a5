// `asl infer`: the reference's infer.py — the classes detected in images by a checkpoint.
#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/data/annotate.h"
#include "asl/data/image.h"
#include "asl/data/loader.h"
#include "asl/io/file.h"
#include "asl/metrics/thresholds.h"
#include "asl/models/pretrained.h"
#include "commands.h"

namespace asl::cli {
namespace {

struct InferParams {
  std::vector<std::string> inputs;
  WeightsFlags weights;
  int64_t input_size = 448;
  std::string dataset_type = "MS-COCO";
  double th = -1;  // < 0: the dataset type's default
  std::string thresholds;
  int64_t top_k = 0;
  bool json = false;
  std::string annotate;
  int threads = 0;
  int64_t batch_size = 16;
  int64_t workers = 2;
  bool fuse = true;
  PrecisionFlags precision{"fp32"};
  int64_t max_pixels = data::kDefaultMaxPixels;
};

bool is_image_name(const std::filesystem::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp" || ext == ".webp";
}

// Files as given; folders contribute their image files in name order.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  for (const auto& in : inputs) {
    if (std::filesystem::is_directory(in)) {
      std::vector<std::string> found;
      for (const auto& e : std::filesystem::directory_iterator(in)) {
        if (e.is_regular_file() && is_image_name(e.path())) found.push_back(e.path().string());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) throw std::runtime_error(in + ": folder holds no .jpg/.jpeg/.png/.bmp/.webp file");
      out.insert(out.end(), found.begin(), found.end());
    } else if (std::filesystem::exists(in)) {
      out.push_back(in);
    } else {
      throw std::runtime_error(in + ": no such file or folder");
    }
  }
  return out;
}

struct Detection {
  int64_t index;
  float score;
};

// The image with its detections written in a box at the top left, as the reference shows it.
std::string annotated_jpeg(const std::string& path, const std::vector<Detection>& found,
                           const std::vector<std::string>& names, int64_t max_pixels) {
  data::DecodeOptions d;
  d.max_pixels = max_pixels;
  std::vector<std::string> lines;
  for (const auto& f : found) {
    std::ostringstream s;
    s << names[static_cast<size_t>(f.index)] << " " << std::fixed << std::setprecision(2) << f.score;
    lines.push_back(s.str());
  }
  return data::encode_jpeg(data::annotate(data::load_image(path, d), lines).image);
}

int run_infer(const InferParams& p) {
  set_threads(p.threads);
  if (p.dataset_type != "MS-COCO" && p.dataset_type != "OpenImages") {
    throw std::runtime_error("--dataset-type must be MS-COCO or OpenImages, got '" + p.dataset_type + "'");
  }
  if (p.input_size <= 0 || p.input_size % 32 != 0) {
    throw std::runtime_error("--input-size must be a positive multiple of 32, got " + std::to_string(p.input_size));
  }
  const double th = p.th >= 0 ? p.th : (p.dataset_type == "OpenImages" ? 0.995 : 0.7);
  const std::vector<std::string> files = expand_inputs(p.inputs);
  models::ClassifierOptions mo;
  mo.fuse = p.fuse;
  mo.bf16 = announce_precision("infer", p.precision).bf16;
  models::Classifier model = load_model("infer", p.weights, mo);
  if (!p.thresholds.empty()) model.thresholds = metrics::load_thresholds(p.thresholds, model.class_names).thresholds;

  std::filesystem::path annotate_dir;
  bool annotate_single_file = false;
  if (!p.annotate.empty()) {
    annotate_single_file = files.size() == 1 && is_image_name(p.annotate);
    if (!annotate_single_file) {
      annotate_dir = p.annotate;
      prepare_output_folder("infer", annotate_dir.string());
    }
  }

  data::LoaderOptions lo;
  lo.batch_size = p.batch_size;
  lo.image_size = p.input_size;
  lo.filter = data::ResampleFilter::bicubic;  // Pillow's default resize, as infer.py
  lo.workers = p.workers;
  lo.decode.max_pixels = p.max_pixels;
  data::BatchLoader loader(files, torch::Tensor(), {}, lo);
  while (std::optional<data::Batch> batch = loader.next()) {
    const torch::Tensor scores = torch::sigmoid(model.logits(batch->images)).contiguous();
    for (int64_t b = 0; b < scores.size(0); ++b) {
      const float* row = scores[b].data_ptr<float>();
      std::vector<Detection> found;
      for (int64_t k = 0; k < scores.size(1); ++k) {
        if (row[k] > model.threshold(k, th)) found.push_back({k, row[k]});
      }
      std::stable_sort(found.begin(), found.end(), [](const Detection& a, const Detection& b2) { return a.score > b2.score; });
      if (p.top_k > 0 && static_cast<int64_t>(found.size()) > p.top_k) found.resize(static_cast<size_t>(p.top_k));
      const std::string& path = files[static_cast<size_t>(batch->indices[static_cast<size_t>(b)])];
      if (p.json) {
        nlohmann::json det = nlohmann::json::array();
        for (const auto& f : found) {
          det.push_back({{"class", model.class_names[static_cast<size_t>(f.index)]}, {"index", f.index}, {"score", f.score}});
        }
        nlohmann::json all = nlohmann::json::array();
        for (int64_t k = 0; k < scores.size(1); ++k) all.push_back(row[k]);
        std::cout << nlohmann::json{{"image", path}, {"detected", det}, {"scores", all}}.dump() << "\n";
      } else {
        std::cout << path << ":";
        if (found.empty()) std::cout << " (no class above " << th << ")";
        for (const auto& f : found) {
          std::cout << " " << model.class_names[static_cast<size_t>(f.index)] << " (" << std::fixed << std::setprecision(3)
                    << f.score << ")";
        }
        std::cout << "\n";
      }
      if (!p.annotate.empty()) {
        const std::string out = annotate_single_file
                                    ? p.annotate
                                    : (annotate_dir / (std::filesystem::path(path).stem().string() + ".jpg")).string();
        io::write_file_atomic(out, annotated_jpeg(path, found, model.class_names, p.max_pixels));
      }
    }
    std::cout.flush();
  }
  return 0;
}

}  // namespace

void register_infer(CLI::App& app, Runner& run) {
  auto p = std::make_shared<InferParams>();
  CLI::App* cmd = app.add_subcommand("infer", "print the classes a checkpoint detects in images (files or folders)");
  cmd->add_option("images,--pic-path,--pic_path", p->inputs, "image files or folders")->required();
  add_weights_flags(cmd, p->weights);
  cmd->add_option("--input-size,--input_size", p->input_size, "input resolution (multiple of 32)")->capture_default_str();
  cmd->add_option("--dataset-type,--dataset_type", p->dataset_type, "MS-COCO or OpenImages (sets the default threshold)")
      ->capture_default_str();
  cmd->add_option("--th", p->th, "detection threshold (default 0.7 for MS-COCO, 0.995 for OpenImages)");
  cmd->add_option("--thresholds", p->thresholds,
                  "per-class thresholds from asl validate --tune-thresholds (their class names must match the model's)");
  cmd->add_option("--top-k,--top_k", p->top_k, "print at most K detections per image (0: all)")->capture_default_str();
  cmd->add_flag("--json", p->json, "one JSON object per image and line, with all scores");
  cmd->add_option("--annotate", p->annotate, "write the images with their detections drawn (a .jpg file for one image, else a folder)");
  cmd->add_option("--batch-size,--batch_size", p->batch_size, "images per batch")->capture_default_str();
  cmd->add_option("--workers", p->workers, "decoding threads")->capture_default_str();
  cmd->add_option("--threads", p->threads, "compute threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--fuse,!--no-fuse", p->fuse, "fold the norms into the convs (inference fast path)")->capture_default_str();
  add_precision_flags(cmd, p->precision, "--bf16", "run the model in bfloat16");
  cmd->add_option("--max-pixels", p->max_pixels, "refuse images larger than this many pixels")->capture_default_str();
  cmd->callback([p, &run] { run = [p] { return run_infer(*p); }; });
}

}  // namespace asl::cli
