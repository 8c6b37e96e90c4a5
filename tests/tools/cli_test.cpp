// End to end through the `asl` executable: validate and infer against in-process computation, and
// every documented error (exit code, message, no partial output).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "asl/data/coco.h"
#include "asl/data/image.h"
#include "asl/io/checkpoint.h"
#include "asl/io/npy.h"
#include "asl/io/safetensors.h"
#include "asl/metrics/map.h"
#include "asl/metrics/thresholds.h"
#include "asl/models/pretrained.h"
#include "asl/models/weights.h"
#include "asl/runtime.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

struct Result {
  int code;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string asl_binary() {
  const char* dir = std::getenv("ASL_BINARY_DIR");
  if (dir == nullptr) throw std::runtime_error("ASL_BINARY_DIR is not set (run through ctest)");
  return (fs::path(dir) / "asl").string();
}

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("asl_cli_test_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Result run(const std::string& args) {
  const fs::path dir = temp_dir("run");
  const std::string cmd = asl_binary() + " " + args + " >" + (dir / "out").string() + " 2>" + (dir / "err").string();
  const int status = std::system(cmd.c_str());
  Result r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(dir / "out"), slurp(dir / "err")};
  return r;
}

std::string fixture(const std::string& sub) { return (asl::test::fixtures_dir() / sub).string(); }

// The library's sigmoid scores for images preprocessed as the CLI does (unfused reference model).
torch::Tensor library_scores(const std::vector<std::string>& paths, int64_t size, asl::data::ResampleFilter filter) {
  asl::models::ClassifierOptions o;
  o.fuse = false;
  asl::models::Classifier model = asl::models::load_classifier(fixture("tresnet/small.pth"), o);
  std::vector<torch::Tensor> images;
  for (const auto& p : paths) images.push_back(asl::data::to_tensor(asl::data::load_resized(p, size, filter)));
  return torch::sigmoid(model.logits(torch::stack(images)));
}

// Fused float32 against the unfused model (the bound for the fused path).
constexpr double kFusedAtol = 1e-4, kFusedRtol = 1e-4;

TEST(CliValidate, SavedPredictionsEqualTheLibrarysScores) {
  const fs::path out = temp_dir("validate") / "preds";
  const Result r = run("validate --annotations " + fixture("coco/annotations.json") + " --images " +
                       fixture("coco") + " --model-path " + fixture("tresnet/small.pth") +
                       " --image-size 224 --batch-size 2 --workers 2 --json --per-class --save-preds " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* key : {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "images_per_s", "num_images", "per_class"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  const asl::data::CocoDataset ds = asl::data::load_coco(fixture("coco/annotations.json"), fixture("coco"));
  EXPECT_EQ(j.at("num_images").get<int64_t>(), ds.size());
  const torch::Tensor scores = asl::io::load_npy((out / "scores.npy").string());
  const torch::Tensor targets = asl::io::load_npy((out / "targets.npy").string());
  EXPECT_EQ(scores.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(targets, ds.targets.to(torch::kFloat32)));
  std::string listing;
  for (const auto& f : ds.file_names) listing += f + "\n";
  EXPECT_EQ(slurp(out / "images.txt"), listing);
  EXPECT_TRUE(asl::test::all_close(scores, library_scores(ds.image_paths(), 224, asl::data::ResampleFilter::bilinear),
                                   kFusedAtol, kFusedRtol));
  // The reported mAP is the library's on the saved predictions (the CLI's float32 scores).
  EXPECT_NEAR(j.at("mAP").get<double>(), asl::metrics::mean_average_precision(scores, targets), 1e-9);
}

TEST(CliInfer, PrintsTheClassesAboveTheThreshold) {
  const std::string image = fixture("images/000000000885.jpg");
  const Result r = run("infer " + image + " --model-path " + fixture("tresnet/small.pth") +
                       " --input-size 224 --th 0.5 --json --no-fuse");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("image").get<std::string>(), image);
  const torch::Tensor expected = library_scores({image}, 224, asl::data::ResampleFilter::bicubic)[0];
  const auto& all = j.at("scores");
  ASSERT_EQ(static_cast<int64_t>(all.size()), expected.size(0));
  std::vector<int64_t> above;
  for (int64_t k = 0; k < expected.size(0); ++k) {
    EXPECT_NEAR(all[static_cast<size_t>(k)].get<double>(), expected[k].item<double>(), 1e-6);
    if (expected[k].item<double>() > 0.5) above.push_back(k);
  }
  std::vector<int64_t> detected;
  double last = 2.0;
  for (const auto& d : j.at("detected")) {
    detected.push_back(d.at("index").get<int64_t>());
    EXPECT_LE(d.at("score").get<double>(), last);  // highest first
    last = d.at("score").get<double>();
  }
  std::sort(detected.begin(), detected.end());
  EXPECT_EQ(detected, above);
}

// bfloat16 keeps 8 mantissa bits: scores (sigmoids of logits of a small random model) within 2e-2.
constexpr double kBf16ScoreAtol = 2e-2;

TEST(CliInfer, PrecisionFlagsOnEveryCpu) {
  // --precision bf16 and its older spelling --bf16 run to the end on any CPU (emulated where bfloat16 is
  // not native, with a warning), fused and unfused, and agree with the float32 library scores.
  SCOPED_TRACE(asl::describe(asl::cpu_info()));
  const std::string image = fixture("images/000000000885.jpg");
  const torch::Tensor expected = library_scores({image}, 224, asl::data::ResampleFilter::bicubic)[0];
  const bool native = asl::cpu_info().bf16_native;
  for (const std::string flags : {" --precision bf16", " --bf16", " --precision bf16 --no-fuse"}) {
    SCOPED_TRACE(flags);
    const Result r = run("infer " + image + " --model-path " + fixture("tresnet/small.pth") + " --input-size 224 --json" +
                         flags);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.err.rfind("asl infer: precision bf16 (requested", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find("emulated") != std::string::npos, !native) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    const auto& all = j.at("scores");
    ASSERT_EQ(static_cast<int64_t>(all.size()), expected.size(0));
    for (int64_t k = 0; k < expected.size(0); ++k) {
      EXPECT_NEAR(all[static_cast<size_t>(k)].get<double>(), expected[k].item<double>(), kBf16ScoreAtol) << k;
    }
  }
  // validate/infer default to fp32; auto follows the CPU.
  Result r = run("infer " + image + " --model-path " + fixture("tresnet/small.pth") + " --input-size 224 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.rfind("asl infer: precision fp32 (the default)", 0), 0u) << r.err;
  r = run("infer " + image + " --model-path " + fixture("tresnet/small.pth") + " --input-size 224 --precision auto");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.rfind(native ? "asl infer: precision bf16 (auto" : "asl infer: precision fp32 (auto", 0), 0u) << r.err;
  EXPECT_EQ(run("infer " + image + " --model-path " + fixture("tresnet/small.pth") + " --precision half").code, 2);
  // --version names the CPU, its ISAs and what auto picks.
  r = run("--version");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("oneDNN " + asl::cpu_info().onednn_isa), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ATen " + asl::cpu_info().aten_isa), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("precision auto: "), std::string::npos) << r.out;
}

TEST(CliValidate, ReportAndTunedThresholdsThatInferApplies) {
  const fs::path dir = temp_dir("tune");
  const std::string thresholds = (dir / "thresholds.json").string();
  Result r = run("validate --annotations " + fixture("coco/annotations.json") + " --images " + fixture("coco") +
                 " --model-path " + fixture("tresnet/small.pth") + " --image-size 224 --json --report " +
                 (dir / "report").string() + " --tune-thresholds " + thresholds);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.contains("tuned_thresholds"));
  EXPECT_EQ(j.at("tuned_thresholds").at("scored_on").get<int64_t>(), j.at("num_images").get<int64_t>());
  // Tuned and scored on the same images, the tuned CF1 cannot be below the global one's.
  EXPECT_GE(j.at("tuned_thresholds").at("CF1_tuned").get<double>(), j.at("tuned_thresholds").at("CF1_global").get<double>());
  EXPECT_TRUE(fs::exists(dir / "report" / "index.html"));
  EXPECT_TRUE(fs::exists(dir / "report" / "report.json"));
  asl::models::ClassifierOptions o;
  o.fuse = false;
  const asl::models::Classifier model = asl::models::load_classifier(fixture("tresnet/small.pth"), o);
  const auto file = asl::metrics::load_thresholds(thresholds, model.class_names);
  // infer --thresholds detects exactly the classes above their own threshold.
  const std::string image = fixture("images/000000000885.jpg");
  r = run("infer " + image + " --model-path " + fixture("tresnet/small.pth") + " --input-size 224 --json --no-fuse"
          " --thresholds " + thresholds);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json out = nlohmann::json::parse(r.out);
  std::set<int64_t> detected;
  for (const auto& d : out.at("detected")) detected.insert(d.at("index").get<int64_t>());
  for (size_t k = 0; k < file.thresholds.size(); ++k) {
    const double score = out.at("scores")[k].get<double>();
    EXPECT_EQ(detected.count(static_cast<int64_t>(k)) == 1, score > file.thresholds[k]) << k;
  }
  // A thresholds file of another model's classes is refused, naming the file.
  r = run("infer " + image + " --model-path " + fixture("tresnet/small_bhead.pth") + " --input-size 224 --thresholds " +
          thresholds);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("thresholds.json"), std::string::npos) << r.err;
}

TEST(CliInfer, AnnotateWritesAnImage) {
  const fs::path out = temp_dir("annotate") / "annotated.jpg";
  const Result r = run("infer " + fixture("images/dog.jpg") + " --model-path " + fixture("tresnet/small.pth") +
                       " --input-size 224 --annotate " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const asl::data::Image img = asl::data::load_image(out.string());
  EXPECT_EQ(img.width, 768);
  EXPECT_EQ(img.height, 576);
}

void expect_failure(const Result& r, const std::string& needle) {
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
}

TEST(CliErrors, EveryDocumentedErrorIsClearAndLeavesNoOutput) {
  const fs::path dir = temp_dir("errors");
  const std::string model = " --model-path " + fixture("tresnet/small.pth");
  const std::string coco = " --annotations " + fixture("coco/annotations.json") + " --images " + fixture("coco");
  // Missing files.
  expect_failure(run("infer " + (dir / "nope.jpg").string() + model), "nope.jpg");
  expect_failure(run("infer " + fixture("images/dog.jpg") + " --model-path " + (dir / "nope.pth").string()), "nope.pth");
  // A corrupt JPEG.
  {
    std::string bytes = slurp(fixture("images/dog.jpg"));
    std::ofstream(dir / "broken.jpg", std::ios::binary) << bytes.substr(0, bytes.size() / 3);
    expect_failure(run("infer " + (dir / "broken.jpg").string() + model + " --input-size 224"), "broken.jpg");
  }
  // Malformed JSON.
  std::ofstream(dir / "bad.json") << "{\"images\": [";
  const fs::path preds = dir / "preds";
  expect_failure(run("validate --annotations " + (dir / "bad.json").string() + " --images " + fixture("coco") +
                     model + " --save-preds " + preds.string()),
                 "bad.json");
  EXPECT_FALSE(fs::exists(preds));
  // Wrong class count: a 30-class model on the 21-category set.
  const Result wrong = run("validate" + coco + " --model-path " + fixture("tresnet/small_bhead.pth") +
                           " --image-size 224 --save-preds " + preds.string());
  expect_failure(wrong, "30 classes");
  EXPECT_NE(wrong.err.find("21 categories"), std::string::npos) << wrong.err;
  EXPECT_FALSE(fs::exists(preds));
  // Unknown model name.
  expect_failure(run("infer " + fixture("images/dog.jpg") + model + " --model-name resnet9000"), "resnet9000");
  // A usage error exits with 2.
  EXPECT_EQ(run("validate --no-such-flag").code, 2);
}

// ---- timm's weights through every command --------------------------------

// fixtures/coco restricted to its first `classes` categories (the timm fixture models have 12 and 7).
fs::path coco_subset(const fs::path& dir, int classes) {
  nlohmann::json j = asl::test::load_json(fixture("coco/annotations.json"));
  nlohmann::json cats = nlohmann::json::array(), anns = nlohmann::json::array();
  std::set<int64_t> kept;
  for (const auto& c : j.at("categories")) {
    if (static_cast<int>(cats.size()) == classes) break;
    cats.push_back(c);
    kept.insert(c.at("id").get<int64_t>());
  }
  for (const auto& a : j.at("annotations")) {
    if (kept.count(a.at("category_id").get<int64_t>()) > 0) anns.push_back(a);
  }
  j["categories"] = cats;
  j["annotations"] = anns;
  const fs::path out = dir / ("coco_" + std::to_string(classes) + ".json");
  std::ofstream(out) << j.dump();
  return out;
}

torch::Tensor timm_scores(const std::string& file, bool use_ema, const std::vector<std::string>& paths, int64_t size,
                          asl::data::ResampleFilter filter) {
  asl::models::ClassifierOptions o;
  o.fuse = false;
  o.use_ema = use_ema;
  asl::models::Classifier model = asl::models::load_classifier(fixture("timm/" + file), o);
  std::vector<torch::Tensor> images;
  for (const auto& p : paths) images.push_back(asl::data::to_tensor(asl::data::load_resized(p, size, filter)));
  return torch::sigmoid(model.logits(torch::stack(images)));
}

// Logits of `file` on `input` through ../shared/bench/ref_tresnet.py (plain PyTorch, timm's layout: the
// stand-in for timm's own TResNet and load_checkpoint).
torch::Tensor reference_timm_logits(const std::string& file, const std::string& input, const fs::path& dir) {
  const fs::path script = asl::test::fixtures_dir().parent_path() / "bench" / "ref_tresnet.py";
  const fs::path out = dir / "ref_logits.npy";
  const std::string cmd = "/usr/bin/python3 " + script.string() + " logits " + file + " " + input + " " + out.string() +
                          " --layout timm >" + (dir / "ref.log").string() + " 2>&1";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("ref_tresnet.py failed: " + slurp(dir / "ref.log"));
  return asl::io::load_npy(out.string());
}

TEST(CliTimm, InferWithTimmWeightsEmaAndClassNames) {
  const fs::path dir = temp_dir("timm_infer");
  std::ofstream(dir / "names.txt") << "a\nb\nc\nd\ne\nf\ng\n";
  const std::string image = fixture("images/dog.jpg");
  for (const bool ema : {false, true}) {
    for (const char* file : {"small_v2.safetensors", "small_v2_train.pth.tar"}) {
      if (ema && std::string(file) != "small_v2_train.pth.tar") continue;
      SCOPED_TRACE(std::string(file) + (ema ? " --use-ema" : ""));
      const Result r = run("infer " + image + " --model-path " + fixture(std::string("timm/") + file) +
                           " --input-size 96 --th 0.5 --json --class-names " + (dir / "names.txt").string() +
                           (ema ? " --use-ema" : ""));
      ASSERT_EQ(r.code, 0) << r.err;
      const nlohmann::json j = nlohmann::json::parse(r.out);
      const torch::Tensor want =
          timm_scores("small_v2_train.pth.tar", ema, {image}, 96, asl::data::ResampleFilter::bicubic)[0];
      ASSERT_EQ(j.at("scores").size(), 7u);
      for (int64_t k = 0; k < 7; ++k) {
        EXPECT_NEAR(j.at("scores")[static_cast<size_t>(k)].get<double>(), want[k].item<double>(), 1e-4);
      }
      for (const auto& d : j.at("detected")) {
        EXPECT_EQ(d.at("class").get<std::string>(), std::string(1, static_cast<char>('a' + d.at("index").get<int>())));
      }
    }
  }
  expect_failure(run("infer " + image + " --model-path " + fixture("timm/small_v2.safetensors") + " --use-ema"),
                 "--use-ema");
  std::ofstream(dir / "three.txt") << "a\nb\nc\n";
  expect_failure(run("infer " + image + " --model-path " + fixture("timm/small_v2.safetensors") + " --class-names " +
                     (dir / "three.txt").string()),
                 "has 3 class names, the model has 7");
}

TEST(CliTimm, ValidateTakesTheDatasetsClassNames) {
  const fs::path dir = temp_dir("timm_validate");
  const fs::path ann = coco_subset(dir, 12);
  const fs::path preds = dir / "preds";
  const Result r = run("validate --annotations " + ann.string() + " --images " + fixture("coco") + " --model-path " +
                       fixture("timm/small_v1.safetensors") + " --image-size 128 --batch-size 2 --json --per-class "
                       "--save-preds " + preds.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("does not name its classes; using those of"), std::string::npos) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const asl::data::CocoDataset ds = asl::data::load_coco(ann.string(), fixture("coco"));
  for (const auto& name : ds.class_names) EXPECT_TRUE(j.at("per_class").contains(name)) << name;
  const torch::Tensor scores = asl::io::load_npy((preds / "scores.npy").string());
  EXPECT_TRUE(asl::test::all_close(
      scores, timm_scores("small_v1.safetensors", false, ds.image_paths(), 128, asl::data::ResampleFilter::bilinear),
      kFusedAtol, kFusedRtol));
}

TEST(CliTimm, FineTuneFromTimmWeightsWritesTimmCheckpoints) {
  const fs::path dir = temp_dir("timm_train");
  const fs::path ann7 = coco_subset(dir, 7);
  const std::string data = " --annotations " + ann7.string() + " --images " + fixture("coco") + " --val-annotations " +
                           ann7.string() + " --val-images " + fixture("coco");
  const std::string common = data + " --image-size 64 --batch-size 2 --epochs 1 --workers 1 --precision fp32";
  // The v2 training checkpoint's EMA weights: architecture read from the file, norms plain, timm layout out.
  const Result r = run("train --model-path " + fixture("timm/small_v2_train.pth.tar") + " --use-ema" + common +
                       " --out " + (dir / "v2").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("plain batch norms"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("timm layout, timm training checkpoint, state_dict_ema"), std::string::npos) << r.err;
  const auto best = asl::models::read_weights((dir / "v2" / "model-highest.pth").string());
  EXPECT_EQ(best.layout, asl::models::Layout::Timm);
  EXPECT_TRUE(best.state.contains("body.layer1.0.downsample.0.conv.weight"));
  EXPECT_EQ(best.idx_to_class.at(0), asl::data::load_coco(ann7.string(), fixture("coco")).class_names[0]);
  // timm's TResNet (the stand-in) loads it and computes asl's logits.
  const std::string input = fixture("timm/small_v2_input.npy");
  asl::models::ClassifierOptions co;
  co.fuse = false;
  const torch::Tensor asl_logits =
      asl::models::load_classifier((dir / "v2" / "model-highest.pth").string(), co).logits(asl::io::load_npy(input));
  EXPECT_TRUE(asl::test::all_close(reference_timm_logits((dir / "v2" / "model-highest.pth").string(), input, dir),
                                   asl_logits, 1e-5, 1e-5));
  // Readable by validate as it is.
  const Result v = run("validate --annotations " + ann7.string() + " --images " + fixture("coco") + " --model-path " +
                       (dir / "v2" / "model-highest.pth").string() + " --image-size 64 --json");
  EXPECT_EQ(v.code, 0) << v.err;
  // A 12-class pretrain on 7 classes: the head is dropped and said so; the published layout is refused.
  const Result head = run("train --model-path " + fixture("timm/small_v1.pth") + common + " --max-steps 1 --out " +
                          (dir / "v1").string());
  ASSERT_EQ(head.code, 0) << head.err;
  EXPECT_NE(head.err.find("head.fc.* dropped"), std::string::npos) << head.err;
  expect_failure(run("train --model-path " + fixture("timm/small_v1.pth") + common + " --save-layout asl --out " +
                     (dir / "v1asl").string()),
                 "--save-layout timm");
  EXPECT_FALSE(fs::exists(dir / "v1asl" / "model-highest.pth"));
}

TEST(CliTimm, CkptConvertRoundTripsAndRefusesWhatCannotBeConverted) {
  const fs::path dir = temp_dir("timm_convert");
  const std::string pub = (dir / "pub.pth").string(), back = (dir / "back.safetensors").string();
  Result r = run("ckpt convert " + fixture("timm/small_v1_pos.safetensors") + " " + pub + " --layout asl");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("ckpt convert " + pub + " " + back + " --layout timm");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto want_pub = asl::io::load_checkpoint(fixture("timm/small_v1_pos_published.pth")).model;
  const auto got_pub = asl::io::load_checkpoint(pub).model;
  ASSERT_EQ(got_pub.size(), want_pub.size());
  for (const auto& item : want_pub) EXPECT_TRUE(got_pub[item.key()].equal(item.value())) << item.key();
  const auto want_timm = asl::io::load_safetensors(fixture("timm/small_v1_pos.safetensors")).tensors;
  const auto got_timm = asl::io::load_safetensors(back).tensors;
  ASSERT_EQ(got_timm.size(), want_timm.size());
  for (const auto& item : want_timm) {
    if (item.key().find("num_batches_tracked") != std::string::npos) continue;  // published has none: 0
    EXPECT_TRUE(got_timm[item.key()].equal(item.value())) << item.key();
  }
  // The converted file in timm's TResNet (the stand-in) gives the fixture's logits.
  EXPECT_TRUE(asl::test::all_close(reference_timm_logits(back, fixture("timm/small_v1_input.npy"), dir),
                                   asl::test::fixture_npy("timm", "small_v1_pos_eval_logits.npy"), 5e-5, 1e-5));
  r = run("ckpt info " + back);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("layout:  timm"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("plain batch norm"), std::string::npos) << r.out;
  // Signed norm weights have no published form; v2 has no published layout: an error and no file.
  const fs::path refused = dir / "refused.pth";
  expect_failure(run("ckpt convert " + fixture("timm/small_v1.pth") + " " + refused.string() + " --layout asl"),
                 "body.conv1.bn.weight");
  expect_failure(run("ckpt convert " + fixture("timm/small_v2.safetensors") + " " + refused.string() + " --layout asl"),
                 "TResNet-v2");
  EXPECT_FALSE(fs::exists(refused));
}

}  // namespace
