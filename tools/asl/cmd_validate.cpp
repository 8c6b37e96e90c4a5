// `asl validate`: the reference's validate.py — mAP and threshold metrics of a checkpoint on a COCO-format set.
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/data/coco.h"
#include "asl/data/loader.h"
#include "asl/io/file.h"
#include "asl/io/npy.h"
#include "asl/metrics/map.h"
#include "asl/metrics/thresholds.h"
#include "asl/models/pretrained.h"
#include "asl/report/validation_report.h"
#include "commands.h"
#include "progress.h"

namespace asl::cli {
namespace {

struct ValidateParams {
  std::string data_dir;
  std::string split = "val2014";
  std::string annotations;
  std::string images;
  WeightsFlags weights;
  int64_t image_size = 448;
  int64_t batch_size = 32;
  int64_t workers = 2;
  double thre = 0.8;
  int threads = 0;
  bool fuse = true;
  PrecisionFlags precision{"fp32"};
  bool keep_empty = false;
  int64_t max_pixels = data::kDefaultMaxPixels;
  std::string save_preds;
  bool json = false;
  bool per_class = false;
  std::string tune_thresholds;
  std::string report;
  double tune_fraction = 1.0;
  uint64_t seed = 0;
};

// Per-class thresholds tuned on a seeded fraction of the images and scored on the rest (on all of them
// when the fraction is 1, which is optimistic: the same images choose and judge).
struct TunedResult {
  metrics::ThresholdMetrics global, tuned;
  int64_t tuned_on = 0, scored_on = 0;
};

TunedResult tune_and_score(const torch::Tensor& scores, const torch::Tensor& targets, const ValidateParams& p,
                           const std::vector<std::string>& class_names) {
  const int64_t n = scores.size(0);
  if (!(p.tune_fraction > 0 && p.tune_fraction <= 1)) {
    throw std::runtime_error("--tune-fraction must be in (0, 1], got " + std::to_string(p.tune_fraction));
  }
  torch::Tensor tune_idx = torch::arange(n), score_idx = torch::arange(n);
  if (p.tune_fraction < 1) {
    const torch::Tensor order = torch::randperm(n, torch::Generator(at::detail::createCPUGenerator(p.seed)));
    const int64_t k = std::max<int64_t>(1, std::min<int64_t>(n - 1, static_cast<int64_t>(p.tune_fraction * n + 0.5)));
    tune_idx = order.narrow(0, 0, k);
    score_idx = order.narrow(0, k, n - k);
  }
  const auto thresholds = metrics::tune_thresholds(scores.index_select(0, tune_idx), targets.index_select(0, tune_idx), p.thre);
  metrics::save_thresholds(p.tune_thresholds, class_names, thresholds, p.thre);
  torch::Tensor t = torch::empty({static_cast<int64_t>(thresholds.size())}, torch::kFloat64);
  for (size_t k = 0; k < thresholds.size(); ++k) t[static_cast<int64_t>(k)] = thresholds[k].threshold;
  const torch::Tensor s = scores.index_select(0, score_idx), y = targets.index_select(0, score_idx);
  return {metrics::threshold_metrics(s, y, p.thre), metrics::threshold_metrics(s, y, t), tune_idx.size(0),
          score_idx.size(0)};
}

int run_validate(const ValidateParams& p) {
  set_threads(p.threads);
  if (p.image_size <= 0 || p.image_size % 32 != 0) {
    throw std::runtime_error("--image-size must be a positive multiple of 32, got " + std::to_string(p.image_size));
  }
  if (p.batch_size <= 0) throw std::runtime_error("--batch-size must be positive, got " + std::to_string(p.batch_size));
  data::CocoPaths paths;
  if (!p.annotations.empty() || !p.images.empty()) {
    if (p.annotations.empty() || p.images.empty()) {
      throw std::runtime_error("--annotations and --images go together");
    }
    paths = {p.annotations, p.images};
  } else if (!p.data_dir.empty()) {
    paths = data::coco_reference_layout(p.data_dir, p.split);
  } else {
    throw std::runtime_error("give a dataset folder (DIR/annotations/instances_" + p.split +
                             ".json) or --annotations FILE --images DIR");
  }
  const std::string paths_description = paths.annotations + " (images in " + paths.images + ")";
  data::CocoOptions coco_options;
  coco_options.keep_empty = p.keep_empty;
  const data::CocoDataset dataset = data::load_coco(paths.annotations, paths.images, coco_options);
  if (dataset.size() == 0) throw std::runtime_error(paths.annotations + ": the dataset has no images");

  models::ClassifierOptions mo;
  mo.fuse = p.fuse;
  mo.bf16 = announce_precision("validate", p.precision).bf16;
  models::Classifier model = load_model("validate", p.weights, mo, dataset.class_names, paths.annotations);
  if (model.num_classes() != dataset.num_classes()) {
    throw std::runtime_error(p.weights.path + ": the model has " + std::to_string(model.num_classes()) + " classes but " +
                             paths.annotations + " has " + std::to_string(dataset.num_classes()) + " categories");
  }

  data::LoaderOptions lo;
  lo.batch_size = p.batch_size;
  lo.image_size = p.image_size;
  lo.filter = data::ResampleFilter::bilinear;
  lo.workers = p.workers;
  lo.decode.max_pixels = p.max_pixels;
  data::BatchLoader loader(dataset, lo);

  const int64_t n = dataset.size(), c = dataset.num_classes();
  torch::Tensor scores = torch::empty({n, c}, torch::kFloat32);
  torch::Tensor targets = torch::empty({n, c}, torch::kFloat32);
  std::vector<std::string> names, image_paths;
  names.reserve(static_cast<size_t>(n));
  const std::vector<std::string> all_paths = dataset.image_paths();
  Progress progress("validate", n);
  double wait_s = 0, model_s = 0;
  int64_t done = 0;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    std::optional<data::Batch> batch = loader.next();
    const auto t1 = std::chrono::steady_clock::now();
    if (!batch) break;
    const torch::Tensor s = torch::sigmoid(model.logits(batch->images));
    const auto t2 = std::chrono::steady_clock::now();
    wait_s += std::chrono::duration<double>(t1 - t0).count();
    model_s += std::chrono::duration<double>(t2 - t1).count();
    const int64_t b = s.size(0);
    scores.narrow(0, done, b).copy_(s);
    targets.narrow(0, done, b).copy_(batch->targets);
    names.insert(names.end(), batch->names.begin(), batch->names.end());
    for (const int64_t i : batch->indices) image_paths.push_back(all_paths[static_cast<size_t>(i)]);
    done += b;
    progress.update(done);
  }
  progress.finish();
  const double total_s = progress.seconds();
  const double images_per_s = static_cast<double>(n) / total_s;

  const torch::Tensor ap = metrics::average_precision(scores, targets);
  const double map = 100.0 * ap.mean().item<double>();
  const metrics::ThresholdMetrics m = metrics::threshold_metrics(scores, targets, p.thre);
  if (!p.report.empty()) {
    report::ValidationRun run;
    run.checkpoint = p.weights.path;
    run.architecture = model.model_name;
    run.dataset = paths_description;
    run.precision = model.bf16 ? "bf16" : "fp32";
    run.image_size = p.image_size;
    run.threshold = p.thre;
    run.class_names = model.class_names;
    run.image_paths = image_paths;
    run.scores = scores;
    run.targets = targets;
    report::write_validation_report(p.report, run);
    std::cerr << "asl validate: report in " << p.report << "/index.html\n";
  }
  std::optional<TunedResult> tuned;
  if (!p.tune_thresholds.empty()) tuned = tune_and_score(scores, targets, p, model.class_names);

  if (!p.save_preds.empty()) {
    prepare_output_folder("validate", p.save_preds);
    const std::filesystem::path dir(p.save_preds);
    io::save_npy((dir / "scores.npy").string(), scores);
    io::save_npy((dir / "targets.npy").string(), targets);
    std::string listing;
    for (const auto& name : names) listing += name + "\n";
    io::write_file_atomic((dir / "images.txt").string(), listing);
  }

  if (p.json) {
    nlohmann::json out = {{"mAP", map},  {"CP", m.CP},   {"CR", m.CR},   {"CF1", m.CF1},
                          {"OP", m.OP},  {"OR", m.OR},   {"OF1", m.OF1}, {"images_per_s", images_per_s},
                          {"num_images", n}, {"threshold", p.thre}, {"model", model.model_name},
                          {"load_wait_s", wait_s}, {"model_s", model_s}};
    if (tuned) {
      out["tuned_thresholds"] = {{"file", p.tune_thresholds}, {"tuned_on", tuned->tuned_on}, {"scored_on", tuned->scored_on},
                                 {"CF1_global", tuned->global.CF1}, {"OF1_global", tuned->global.OF1},
                                 {"CF1_tuned", tuned->tuned.CF1}, {"OF1_tuned", tuned->tuned.OF1}};
    }
    if (p.per_class) {
      nlohmann::json per = nlohmann::json::object();
      for (int64_t k = 0; k < c; ++k) per[model.class_names[static_cast<size_t>(k)]] = 100.0 * ap[k].item<double>();
      out["per_class"] = per;
    }
    std::cout << out.dump() << std::endl;
    return 0;
  }
  std::ostringstream s;
  s << std::fixed << std::setprecision(2);
  s << "model " << model.model_name << " (" << c << " classes), " << n << " images at " << p.image_size << "x"
    << p.image_size << "\n";
  s << "mAP " << map << "\n";
  s << "threshold " << p.thre << ": CP " << m.CP << "  CR " << m.CR << "  CF1 " << m.CF1 << "  OP " << m.OP << "  OR "
    << m.OR << "  OF1 " << m.OF1 << "\n";
  s << std::setprecision(1) << images_per_s << " images/s (" << std::setprecision(2) << total_s << " s: waiting for data "
    << wait_s << " s, model " << model_s << " s)\n";
  if (tuned) {
    s << "per-class thresholds -> " << p.tune_thresholds << " (tuned on " << tuned->tuned_on << " images, scored on "
      << tuned->scored_on << (p.tune_fraction < 1 ? " others" : " the same: optimistic, use --tune-fraction") << ")\n"
      << "  CF1 " << tuned->global.CF1 << " at " << p.thre << " -> " << tuned->tuned.CF1 << " tuned;  OF1 "
      << tuned->global.OF1 << " -> " << tuned->tuned.OF1 << "\n";
  }
  if (p.per_class) {
    for (int64_t k = 0; k < c; ++k) {
      s << "  AP " << std::setw(7) << 100.0 * ap[k].item<double>() << "  " << model.class_names[static_cast<size_t>(k)]
        << "\n";
    }
  }
  std::cout << s.str();
  return 0;
}

}  // namespace

void register_validate(CLI::App& app, Runner& run) {
  auto p = std::make_shared<ValidateParams>();
  CLI::App* cmd = app.add_subcommand("validate", "mAP and CP/CR/CF1/OP/OR/OF1 of a checkpoint on a COCO-format dataset");
  cmd->add_option("dir", p->data_dir, "dataset folder in the reference layout: DIR/annotations/instances_<split>.json + DIR/<split>/");
  cmd->add_option("--split", p->split, "split name of the reference layout")->capture_default_str();
  cmd->add_option("--annotations", p->annotations, "COCO-format annotation file (instead of DIR)");
  cmd->add_option("--images", p->images, "folder the annotation file's file_name entries are relative to");
  add_weights_flags(cmd, p->weights);
  cmd->add_option("--image-size,--image_size", p->image_size, "input resolution (multiple of 32)")->capture_default_str();
  cmd->add_option("--batch-size,--batch_size", p->batch_size, "images per batch")->capture_default_str();
  cmd->add_option("--workers", p->workers, "decoding threads (0: decode on the main thread)")->capture_default_str();
  cmd->add_option("--thre", p->thre, "threshold of the CP/CR/.../OF1 metrics (positive when score > thre)")
      ->capture_default_str();
  cmd->add_option("--threads", p->threads, "compute threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--fuse,!--no-fuse", p->fuse, "fold the norms into the convs (inference fast path)")->capture_default_str();
  add_precision_flags(cmd, p->precision, "--bf16", "run the model in bfloat16");
  cmd->add_flag("--keep-empty,--keep_empty", p->keep_empty, "keep images without annotations as all-negative");
  cmd->add_option("--max-pixels", p->max_pixels, "refuse images larger than this many pixels")->capture_default_str();
  cmd->add_option("--save-preds,--save_preds", p->save_preds, "write scores.npy, targets.npy and images.txt to this folder");
  cmd->add_flag("--json", p->json, "print the results as one JSON object");
  cmd->add_flag("--per-class,--per_class", p->per_class, "also print the AP of every class");
  cmd->add_option("--report", p->report,
                  "write a validation report a browser shows to this folder (index.html, report.json)");
  cmd->add_option("--tune-thresholds", p->tune_thresholds,
                  "choose per-class best-F1 thresholds and write them to this JSON file (for infer --thresholds)");
  cmd->add_option("--tune-fraction", p->tune_fraction,
                  "tune on this seeded fraction of the images, report CF1/OF1 on the rest")->capture_default_str();
  cmd->add_option("--seed", p->seed, "seed of the --tune-fraction split")->capture_default_str();
  cmd->callback([p, &run] { run = [p] { return run_validate(*p); }; });
}

}  // namespace asl::cli
