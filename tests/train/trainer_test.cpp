// The training loop on a tiny synthetic set and a tiny TResNet: the loss falls, a stopped and resumed run equals
// the uninterrupted one bit for bit, checkpoints load in `asl validate`, bad data fails before training.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sstream>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include "asl/data/coco.h"
#include "asl/io/checkpoint.h"
#include "asl/models/registry.h"
#include "asl/runtime.h"
#include "asl/train/svg_plot.h"
#include "asl/train/trainer.h"

namespace fs = std::filesystem;
using asl::train::LabeledImages;
using asl::train::Trainer;
using asl::train::TrainerOptions;

namespace {

constexpr int64_t kSize = 32;
constexpr int64_t kClasses = 3;

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("asl_trainer_test_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A learnable multi-label set: class k paints a coloured square in its own corner of a noisy image.
// Written as a COCO folder (images/ + annotations.json); returns the annotation file.
fs::path write_set(const fs::path& dir, int64_t n, uint32_t seed) {
  fs::create_directories(dir / "images");
  std::mt19937 rng(seed);
  nlohmann::json images = nlohmann::json::array(), annotations = nlohmann::json::array();
  const nlohmann::json categories = {{{"id", 1}, {"name", "red"}}, {{"id", 2}, {"name", "green"}}, {{"id", 3}, {"name", "blue"}}};
  int ann_id = 1;
  for (int64_t i = 0; i < n; ++i) {
    cv::Mat img(static_cast<int>(kSize), static_cast<int>(kSize), CV_8UC3);
    cv::randu(img, cv::Scalar(60, 60, 60), cv::Scalar(120, 120, 120));
    int mask = 1 + static_cast<int>(rng() % 7);  // a non-empty subset of the 3 classes
    const std::string name = "img" + std::to_string(i) + ".png";
    for (int k = 0; k < 3; ++k) {
      if (!(mask & (1 << k))) continue;
      const int x = k == 1 ? 18 : 2, y = k == 2 ? 18 : 2;
      cv::Scalar bgr(k == 2 ? 255 : 0, k == 1 ? 255 : 0, k == 0 ? 255 : 0);
      cv::rectangle(img, cv::Rect(x, y, 12, 12), bgr, cv::FILLED);
      annotations.push_back({{"id", ann_id++}, {"image_id", i + 1}, {"category_id", k + 1}, {"area", 144.0},
                             {"bbox", {x, y, 12, 12}}, {"iscrowd", 0}});
    }
    cv::imwrite((dir / "images" / name).string(), img);
    images.push_back({{"id", i + 1}, {"file_name", name}, {"width", kSize}, {"height", kSize}});
  }
  const fs::path ann = dir / "annotations.json";
  std::ofstream(ann) << nlohmann::json{{"images", images}, {"annotations", annotations}, {"categories", categories}}.dump();
  return ann;
}

LabeledImages load_set(const fs::path& dir) {
  return asl::train::from_coco(asl::data::load_coco((dir / "annotations.json").string(), (dir / "images").string()));
}

struct TinyData {
  fs::path root;
  LabeledImages train, val;
};

// Built once: 12 training and 6 validation images.
const TinyData& tiny_data() {
  static const TinyData data = [] {
    TinyData d;
    d.root = temp_dir("data");
    write_set(d.root / "train", 12, 1);
    write_set(d.root / "val", 6, 2);
    d.train = load_set(d.root / "train");
    d.val = load_set(d.root / "val");
    return d;
  }();
  return data;
}

asl::models::TResNetOptions tiny_model() { return asl::models::TResNetOptions().layers({1, 1, 1, 1}).width_factor(0.25); }

TrainerOptions tiny_options(const fs::path& out) {
  return TrainerOptions()
      .model_options(tiny_model())
      .image_size(kSize)
      .batch_size(4)
      .lr(2e-3)
      .epochs(2)
      .stop_epoch(0)
      .workers(2)
      .seed(7)
      .augment(nullptr)
      .out_dir(out.string());
}

bool same_state(torch::nn::Module& a, torch::nn::Module& b) {
  const auto sa = asl::io::module_state_dict(a), sb = asl::io::module_state_dict(b);
  if (sa.size() != sb.size()) return false;
  for (size_t i = 0; i < sa.size(); ++i) {
    if (sa[i].key() != sb[i].key() || !torch::equal(sa[i].value(), sb[i].value())) {
      ADD_FAILURE() << "differs: " << sa[i].key();
      return false;
    }
  }
  return true;
}

std::vector<std::string> read_lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

struct CliResult {
  int code;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string asl_binary() {
  const char* bin = std::getenv("ASL_BINARY_DIR");
  if (bin == nullptr) throw std::runtime_error("ASL_BINARY_DIR is not set (run through ctest)");
  return (fs::path(bin) / "asl").string();
}

// `shell_prefix` runs before asl in the same shell (e.g. "ulimit -f 100; trap '' XFSZ;").
CliResult run_asl(const std::string& args, const std::string& shell_prefix = "") {
  const fs::path dir = temp_dir("cli_io");
  const std::string cmd = shell_prefix + asl_binary() + " " + args + " >" + (dir / "out").string() + " 2>" +
                          (dir / "err").string();
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(dir / "out"), slurp(dir / "err")};
}

}  // namespace

TEST(Trainer, TinyRunLowersTheLossAndWritesItsOutputs) {
  const fs::path out = temp_dir("tiny");
  std::vector<std::string> messages;
  int64_t steps_seen = 0;
  asl::train::TrainCallbacks cb;
  cb.on_step = [&](const asl::train::StepInfo& s) {
    ++steps_seen;
    EXPECT_GT(s.lr, 0);
    EXPECT_TRUE(std::isfinite(s.loss));
  };
  cb.on_message = [&](const std::string& m) { messages.push_back(m); };
  Trainer trainer(tiny_data().train, tiny_data().val, tiny_options(out).epochs(5), cb);
  EXPECT_EQ(trainer.steps_per_epoch(), 3);
  const asl::train::TrainResult r = trainer.run();
  EXPECT_TRUE(r.finished);
  EXPECT_FALSE(r.interrupted);
  EXPECT_EQ(r.global_step, 15);
  EXPECT_EQ(steps_seen, 15);
  ASSERT_EQ(r.history.size(), 5u);
  EXPECT_LT(r.history.back().train_loss, 0.7 * r.history.front().train_loss)
      << r.history.front().train_loss << " → " << r.history.back().train_loss;
  for (const auto& e : r.history) {
    EXPECT_GE(e.map_regular, 0);
    EXPECT_LE(e.map_ema, 100);
    EXPECT_LE(std::max(e.map_regular, e.map_ema), e.highest_map + 1e-12);
  }
  // metrics.jsonl: one JSON line per epoch with the documented fields.
  const auto lines = read_lines(out / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 5u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto j = nlohmann::json::parse(lines[i]);
    EXPECT_EQ(j.at("epoch").get<int64_t>(), static_cast<int64_t>(i) + 1);
    for (const char* k : {"train_loss", "lr", "mAP_regular", "mAP_ema", "mAP_highest", "train_s", "val_s"}) {
      EXPECT_TRUE(j.contains(k)) << k;
    }
  }
  const std::string svg = slurp(out / "training.svg");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  // Published-layout checkpoints that load_classifier (asl validate / infer) reads.
  for (const char* f : {"model-highest.pth", "model-epoch-1.pth", "model-epoch-5.pth", "last.pth"}) {
    ASSERT_TRUE(fs::exists(out / f)) << f;
    const asl::io::LoadedCheckpoint ck = asl::io::load_checkpoint((out / f).string());
    EXPECT_EQ(ck.num_classes.value_or(-1), kClasses) << f;
    EXPECT_EQ(ck.idx_to_class.at(1), "green") << f;
  }
  // The architecture is detected from the weights and they load strictly, as asl validate / infer do.
  const auto load = [&](const char* f) {
    const asl::io::LoadedCheckpoint ck = asl::io::load_checkpoint((out / f).string());
    asl::models::TResNet m(asl::models::detect_model(ck.model).options);
    asl::io::load_state_dict(*m, ck.model);
    return m;
  };
  EXPECT_EQ(load("model-highest.pth")->options.num_classes(), kClasses);
  // model-epoch-5 holds the final model's weights.
  asl::models::TResNet last = load("model-epoch-5.pth");
  EXPECT_TRUE(same_state(*last, *trainer.model()));
}

TEST(Trainer, Bfloat16AutocastTrainsOnEveryCpu) {
  // Native bfloat16 where the CPU has it; oneDNN's or asl's emulation elsewhere (no oneDNN error).
  SCOPED_TRACE(asl::describe(asl::cpu_info()));
  Trainer trainer(tiny_data().train, tiny_data().val, tiny_options(temp_dir("bf16")).amp(true).epochs(5));
  const asl::train::TrainResult r = trainer.run();
  ASSERT_TRUE(r.finished);
  ASSERT_EQ(r.history.size(), 5u);
  for (const auto& e : r.history) EXPECT_TRUE(std::isfinite(e.train_loss));
  EXPECT_LT(r.history.back().train_loss, 0.7 * r.history.front().train_loss)
      << r.history.front().train_loss << " → " << r.history.back().train_loss;
  for (const auto& p : trainer.model()->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);  // master weights
}

TEST(Trainer, StoppingAfterAnyStepAndResumingEqualsTheUninterruptedRun) {
  const auto options = [](const fs::path& out) {
    return tiny_options(out).augment(asl::train::reference_augment()).deterministic(true).epoch_checkpoints(false);
  };
  const fs::path full_out = temp_dir("full");
  Trainer full(tiny_data().train, tiny_data().val, options(full_out));
  const auto full_result = full.run();
  ASSERT_TRUE(full_result.finished);
  ASSERT_EQ(full_result.global_step, 6);
  // Mid-epoch (1, 4), at an epoch boundary before validation ran (3).
  for (int64_t k : {1, 3, 4}) {
    SCOPED_TRACE("stopped after step " + std::to_string(k));
    const fs::path out = temp_dir("resume_" + std::to_string(k));
    {
      Trainer first(tiny_data().train, tiny_data().val, options(out).max_steps(k));
      const auto r = first.run();
      EXPECT_TRUE(r.interrupted);
      EXPECT_EQ(r.global_step, k);
    }
    torch::manual_seed(12345);  // resume must not depend on the process's RNG state
    Trainer second(tiny_data().train, tiny_data().val, options(out).resume(true));
    const auto r = second.run();
    EXPECT_TRUE(r.finished);
    EXPECT_EQ(r.global_step, 6);
    EXPECT_TRUE(same_state(*second.model(), *full.model()));
    EXPECT_TRUE(same_state(*second.ema(), *full.ema()));
    ASSERT_EQ(r.history.size(), full_result.history.size());
    for (size_t e = 0; e < r.history.size(); ++e) {
      EXPECT_EQ(r.history[e].train_loss, full_result.history[e].train_loss);
      EXPECT_EQ(r.history[e].map_ema, full_result.history[e].map_ema);
      EXPECT_EQ(r.history[e].lr, full_result.history[e].lr);
    }
    EXPECT_EQ(read_lines(out / "metrics.jsonl").size(), 2u);
  }
}

TEST(Trainer, AugmentedRunDoesNotDependOnTheNumberOfWorkers) {
  const auto options = [](const std::string& name, int64_t workers) {
    return tiny_options(temp_dir(name)).augment(asl::train::reference_augment()).epochs(1).workers(workers);
  };
  Trainer serial(tiny_data().train, tiny_data().val, options("workers0", 0));
  Trainer parallel(tiny_data().train, tiny_data().val, options("workers3", 3));
  serial.run();
  parallel.run();
  EXPECT_TRUE(same_state(*serial.model(), *parallel.model()));
}

TEST(Trainer, StopRequestFinishesTheStepAndWritesAResumableCheckpoint) {
  const fs::path out = temp_dir("stop");
  int64_t steps = 0;
  asl::train::TrainCallbacks cb;
  cb.on_step = [&](const asl::train::StepInfo&) { ++steps; };
  cb.stop_requested = [&] { return steps >= 2; };
  Trainer trainer(tiny_data().train, tiny_data().val, tiny_options(out), cb);
  const auto r = trainer.run();
  EXPECT_TRUE(r.interrupted);
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.global_step, 2);
  const asl::io::PyValue root = asl::io::load((out / "last.pth").string());
  for (const char* k : {"model", "num_classes", "idx_to_class", "ema", "optimizer", "scheduler", "trainer"}) {
    EXPECT_NE(root.as_dict().find(k), nullptr) << k;
  }
  const auto& trainer_state = *root.as_dict().find("trainer");
  EXPECT_EQ(trainer_state.as_dict().find("step_in_epoch")->as_int(), 2);
  // Adam state per parameter (exp_avg, exp_avg_sq, step) in PyTorch's optimizer.state_dict() layout.
  const auto& opt = *root.as_dict().find("optimizer");
  const auto& state = opt.as_dict().find("state")->as_dict();
  EXPECT_EQ(static_cast<int64_t>(state.size()), static_cast<int64_t>(trainer.model()->parameters().size()));
  EXPECT_EQ(state.items.front().second.as_dict().find("step")->as_tensor().item<double>(), 2.0);
  EXPECT_EQ(opt.as_dict().find("param_groups")->items().size(), 2u);
}

TEST(Trainer, ResumeRefusesAnotherRecipe) {
  const fs::path out = temp_dir("recipe");
  Trainer(tiny_data().train, tiny_data().val, tiny_options(out).max_steps(1)).run();
  Trainer other(tiny_data().train, tiny_data().val, tiny_options(out).lr(1e-2).resume(true));
  try {
    other.run();
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("lr"), std::string::npos) << e.what();
  }
  // No state yet (e.g. the first checkpoint could not be written): --resume starts from the beginning,
  // saying so, and gives the uninterrupted run.
  std::vector<std::string> messages;
  asl::train::TrainCallbacks cb;
  cb.on_message = [&](const std::string& m) { messages.push_back(m); };
  Trainer missing(tiny_data().train, tiny_data().val, tiny_options(temp_dir("no_state")).max_steps(2).resume(true), cb);
  const asl::train::TrainResult r = missing.run();
  EXPECT_EQ(r.global_step, 2);
  ASSERT_FALSE(messages.empty());
  EXPECT_NE(messages.front().find("starting from the beginning"), std::string::npos) << messages.front();
}

TEST(Trainer, PretrainDropsTheHeadAndReportsIt) {
  const fs::path dir = temp_dir("pretrain");
  torch::manual_seed(3);
  asl::models::TResNet source(tiny_model().num_classes(10));
  asl::io::save_checkpoint((dir / "pre.pth").string(), asl::io::module_state_dict(*source), 10, {});
  std::vector<std::string> messages;
  asl::train::TrainCallbacks cb;
  cb.on_message = [&](const std::string& m) { messages.push_back(m); };
  Trainer trainer(tiny_data().train, tiny_data().val,
                  tiny_options(dir / "out").pretrain_path((dir / "pre.pth").string()), cb);
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_NE(messages[0].find("2 head.fc.* dropped"), std::string::npos) << messages[0];
  const auto got = asl::io::module_state_dict(*trainer.model());
  const auto want = asl::io::module_state_dict(*source);
  for (const auto& item : want) {
    if (item.key().find("head.fc") != std::string::npos) continue;
    EXPECT_TRUE(torch::equal(got[item.key()], item.value())) << item.key();
  }
  EXPECT_EQ(got["head.fc.weight"].size(0), kClasses);
  // The EMA starts from the loaded weights.
  EXPECT_TRUE(same_state(*trainer.ema(), *trainer.model()));
}

TEST(Trainer, BadDataFailsBeforeTraining) {
  const fs::path out = temp_dir("bad");
  const auto expect_error = [&](LabeledImages train, LabeledImages val, const std::string& needle) {
    try {
      Trainer t(std::move(train), std::move(val), tiny_options(out));
      FAIL() << "expected an error containing '" << needle << "'";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(out / "last.pth"));
  };
  LabeledImages missing = tiny_data().train;
  missing.paths[5] = (tiny_data().root / "train" / "images" / "gone.png").string();
  expect_error(missing, tiny_data().val, "gone.png");
  expect_error(missing, tiny_data().val, "1 of 12 training images are missing");

  LabeledImages empty = tiny_data().train;
  empty.paths.clear();
  empty.targets = torch::zeros({0, kClasses});
  expect_error(empty, tiny_data().val, "has no images");
  expect_error(tiny_data().train, empty, "validation set has no images");

  LabeledImages renamed = tiny_data().val;
  renamed.class_names[2] = "cyan";
  expect_error(tiny_data().train, renamed, "class 2 is 'blue' vs 'cyan'");

  LabeledImages bad_targets = tiny_data().train;
  bad_targets.targets = torch::zeros({12, 5});
  expect_error(bad_targets, tiny_data().val, "targets must be 12x3");

  try {
    Trainer t(tiny_data().train, tiny_data().val, tiny_options(out).image_size(40));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
}

TEST(TrainerCli, MidRunCheckpointLoadsInAslValidateAndTrainingResumes) {
  const TinyData& d = tiny_data();
  const fs::path out = temp_dir("cli");
  const std::string data_args = "--annotations " + (d.root / "train" / "annotations.json").string() + " --images " +
                                (d.root / "train" / "images").string() + " --val-annotations " +
                                (d.root / "val" / "annotations.json").string() + " --val-images " +
                                (d.root / "val" / "images").string();
  const std::string train_args = "train " + data_args +
                                 " --layers 1,1,1,1 --width-factor 0.25 --image-size 32 --batch-size 4 --epochs 1 --lr 1e-3"
                                 " --workers 1 --threads 2 --seed 1 --out " + out.string();
  CliResult r = run_asl(train_args + " --max-steps 2");
  ASSERT_EQ(r.code, 0) << r.err;
  // The first line says which precision `auto` chose, and why.
  const std::string chosen = asl::cpu_info().bf16_native ? "precision bf16 (auto" : "precision fp32 (auto";
  EXPECT_EQ(r.err.rfind("asl train: " + chosen, 0), 0u) << r.err;
  EXPECT_NE(r.out.find("--resume"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(out / "last.pth"));
  EXPECT_FALSE(fs::exists(out / "model-highest.pth"));

  r = run_asl("validate --annotations " + (d.root / "val" / "annotations.json").string() + " --images " +
              (d.root / "val" / "images").string() + " --model-path " + (out / "last.pth").string() +
              " --image-size 32 --batch-size 4 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("num_images").get<int64_t>(), 6);
  EXPECT_EQ(j.at("model").get<std::string>(), "custom");

  r = run_asl(train_args + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("epoch 1/1"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(out / "model-highest.pth"));
  EXPECT_EQ(read_lines(out / "metrics.jsonl").size(), 1u);

  // CSV lists (asl/data/lists.h): a class outside the header's list fails before training, naming it.
  const fs::path images = d.root / "train" / "images";
  std::ofstream(images / "good.csv") << "path,red;green;blue\nimg0.png,red\nimg1.png,green;blue\nimg2.png,\n";
  std::ofstream(images / "bad.csv") << "path,red;green;blue\nimg0.png,red\nimg1.png,purple\n";
  std::ofstream(images / "missing.csv") << "path,red;green;blue\nimg0.png,red\nnot-there.png,blue\n";
  const std::string common = " --layers 1,1,1,1 --width-factor 0.25 --image-size 32 --batch-size 4 --epochs 1 --threads 2"
                             " --out " + (out / "csv").string();
  r = run_asl("train --train-data " + (images / "bad.csv").string() + " --val-data " + (images / "good.csv").string() +
              common);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("purple"), std::string::npos) << r.err;
  r = run_asl("train --train-data " + (images / "missing.csv").string() + " --val-data " +
              (images / "good.csv").string() + common);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not-there.png"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "csv" / "last.pth"));
  r = run_asl("train --train-data " + (images / "good.csv").string() + " --val-data " + (images / "good.csv").string() +
              common + " --max-steps 1");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "csv" / "last.pth"));

  // Usage errors: a bad flag value fails with a message and no output.
  r = run_asl("train " + data_args + " --layers 1,1,1,1 --precision fp16 --out " + (out / "x").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("fp16"), std::string::npos) << r.err;
  r = run_asl("train " + data_args + " --layers 1,1,1,1 --image-size 33 --out " + (out / "x").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("multiple of 32"), std::string::npos) << r.err;
}

std::string tiny_cli_data_args(const TinyData& d) {
  return "--annotations " + (d.root / "train" / "annotations.json").string() + " --images " +
         (d.root / "train" / "images").string() + " --val-annotations " + (d.root / "val" / "annotations.json").string() +
         " --val-images " + (d.root / "val" / "images").string();
}

std::vector<std::string> temp_files_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().find(".asl-tmp-") != std::string::npos) out.push_back(e.path().filename().string());
  }
  return out;
}

TEST(TrainerCli, CheckpointWriteFailureSaysWhatIsLeftAndTrainingResumes) {
  // Writes past 100 KiB (dash counts ulimit -f in 512-byte blocks) fail with EFBIG, as on a full disk:
  // the tiny model's checkpoints (about 1 MB) cannot be written, metrics.jsonl can.
  const std::string limited = "ulimit -f 200; trap '' XFSZ; ";
  const fs::path out = temp_dir("write_failure");
  const std::string train = "train " + tiny_cli_data_args(tiny_data()) +
                            " --layers 1,1,1,1 --width-factor 0.25 --image-size 32 --batch-size 4 --epochs 2 --lr 1e-3"
                            " --workers 1 --threads 2 --seed 3 --no-epoch-checkpoints --out " + out.string();
  // 1. The first checkpoint fails: exit 1, the file and the OS reason named, nothing to continue from.
  CliResult r = run_asl(train, limited);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find((out / "model-highest.pth").string() + ": cannot write: File too large"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("no complete checkpoint was written yet"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "model-highest.pth"));
  EXPECT_TRUE(temp_files_in(out).empty());
  // 2. With room again, --resume starts from the beginning; stopped after epoch 1 it leaves last.pth.
  r = run_asl(train + " --resume --max-steps 3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("starting from the beginning"), std::string::npos) << r.err;
  ASSERT_TRUE(fs::exists(out / "last.pth"));
  const std::string last = slurp(out / "last.pth"), best = slurp(out / "model-highest.pth");
  // 3. The next checkpoint fails: the message names the last complete one, and nothing is touched.
  r = run_asl(train + " --resume", limited);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("File too large"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the last complete checkpoint is " + (out / "last.pth").string() + " (epoch 1, step 3)"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(slurp(out / "last.pth"), last);
  EXPECT_EQ(slurp(out / "model-highest.pth"), best);
  EXPECT_TRUE(temp_files_in(out).empty());
  // 4. With room, --resume finishes the run.
  r = run_asl(train + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("done: 2 epochs"), std::string::npos) << r.out;
  EXPECT_EQ(read_lines(out / "metrics.jsonl").size(), 2u);
}

// The model and EMA weights and the position stored in a last.pth.
struct FinalState {
  asl::io::StateDict model, ema;
  int64_t global_step = -1;
};
FinalState final_state(const fs::path& file) {
  const asl::io::PyValue root = asl::io::load(file.string());
  FinalState s;
  s.model = asl::io::state_dict_from_value(*root.as_dict().find("model"), "model");
  s.ema = asl::io::state_dict_from_value(*root.as_dict().find("ema"), "ema");
  s.global_step = root.as_dict().find("trainer")->as_dict().find("global_step")->as_int();
  return s;
}

TEST(TrainerCli, KilledFiveTimesAndResumedEqualsTheUninterruptedRun) {
  const std::string train = "train " + tiny_cli_data_args(tiny_data()) +
                            " --layers 1,1,1,1 --width-factor 0.25 --image-size 32 --batch-size 4 --epochs 12 --lr 1e-3"
                            " --workers 1 --threads 2 --seed 5 --deterministic --no-epoch-checkpoints --out ";
  const fs::path reference = temp_dir("kill_reference");
  CliResult r = run_asl(train + reference.string());
  ASSERT_EQ(r.code, 0) << r.err;

  const fs::path out = temp_dir("kill");
  // The first try is killed at a random time early on (most likely before any checkpoint: the next try
  // then starts from the beginning); each later one at a random point within about an epoch after it
  // wrote a new last.pth, which lands in a step, a validation or a checkpoint write.
  std::mt19937 rng(20261201);
  std::uniform_real_distribution<double> early(0.05, 0.4), after_checkpoint(0.0, 0.15);
  const auto stamp = [&] {
    std::error_code ec;
    const auto t = fs::last_write_time(out / "last.pth", ec);
    return ec ? fs::file_time_type::min() : t;
  };
  int kills = 0, kills_after_a_checkpoint = 0;
  for (int attempt = 0; attempt < 5; ++attempt) {
    const auto before = stamp();
    const std::string cmd = "exec " + asl_binary() + " " + train + out.string() + " --resume >" +
                            (out.parent_path() / "kill_log").string() + " 2>&1";
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ASSERT_GT(pid, 0);
    int status = 0;
    bool ended = false;
    if (attempt == 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(early(rng)));
    } else {
      while (stamp() == before && !(ended = ::waitpid(pid, &status, WNOHANG) == pid)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      std::this_thread::sleep_for(std::chrono::duration<double>(after_checkpoint(rng)));
    }
    if (!ended && ::waitpid(pid, &status, WNOHANG) == 0) {  // still running: kill it wherever it is
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ++kills;
      kills_after_a_checkpoint += attempt > 0;
    }
    if (WIFEXITED(status)) ASSERT_EQ(WEXITSTATUS(status), 0) << slurp(out.parent_path() / "kill_log");
  }
  EXPECT_GE(kills_after_a_checkpoint, 3) << "the kills should interrupt resumed runs";
  std::cout << kills << " kills (" << kills_after_a_checkpoint << " after a checkpoint of the try)\n";
  r = run_asl(train + out.string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(temp_files_in(out).empty());
  const FinalState a = final_state(reference / "last.pth"), b = final_state(out / "last.pth");
  EXPECT_EQ(a.global_step, b.global_step);
  for (const auto* pair : {&a.model, &a.ema}) {
    const auto& other = pair == &a.model ? b.model : b.ema;
    ASSERT_EQ(pair->keys(), other.keys());
    for (const auto& item : *pair) EXPECT_TRUE(torch::equal(item.value(), other[item.key()])) << item.key();
  }
  EXPECT_EQ(slurp(reference / "model-highest.pth"), slurp(out / "model-highest.pth"));
}

TEST(SvgPlot, DrawsEveryPointAndEscapesText) {
  asl::train::PlotSeries a{"a<b", "#123456", {1, 2, 3}, {0.5, 0.25, 0.125}};
  const std::string svg = asl::train::svg_line_charts({{"t&t", "epoch", "loss", {a}}});
  EXPECT_NE(svg.find("a&lt;b"), std::string::npos);
  EXPECT_NE(svg.find("t&amp;t"), std::string::npos);
  size_t circles = 0;
  for (size_t pos = 0; (pos = svg.find("<circle", pos)) != std::string::npos; ++pos) ++circles;
  EXPECT_EQ(circles, 3u);
  // An empty history is still a valid document.
  const std::string empty = asl::train::training_svg({});
  EXPECT_NE(empty.find("</svg>"), std::string::npos);
}
