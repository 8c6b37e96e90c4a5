// `asl validate` throughput: the loader alone, the fused TResNet-M alone, and both together (the
// validate loop) on a few hundred real photos at 224x224, batch 32.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include "asl/data/coco.h"
#include "asl/data/loader.h"
#include "asl/models/fuse.h"
#include "asl/models/registry.h"
#include "asl/runtime.h"

namespace fs = std::filesystem;

namespace {

// As the `asl` command does (asl/runtime.h); ASL_DEFAULT_MALLOC=1 in the environment measures glibc's
// default behaviour instead.
[[maybe_unused]] const bool kAllocatorTuned = asl::tune_allocator();

constexpr int64_t kImages = 320;
constexpr int64_t kClasses = 80;
constexpr int64_t kSize = 224;
constexpr int64_t kBatch = 32;

// Photos from the fixtures, flipped and cropped into kImages distinct JPEGs with random labels.
const asl::data::CocoDataset& photo_set() {
  static const asl::data::CocoDataset dataset = [] {
    const char* env = std::getenv("ASL_FIXTURES");
    const fs::path fixtures = env != nullptr ? fs::path(env) : fs::path(ASL_FIXTURES_DIR);
    const fs::path root = fs::temp_directory_path() / "asl_validate_bench";
    fs::create_directories(root / "images");
    std::vector<cv::Mat> photos;
    for (const char* name : {"000000000885.jpg", "dog.jpg", "person.jpg", "gray.jpg", "rgba.png", "palette.png"}) {
      cv::Mat m = cv::imread((fixtures / "images" / name).string(), cv::IMREAD_COLOR);
      if (m.empty()) throw std::runtime_error("cannot read fixture photo " + std::string(name));
      photos.push_back(m);
    }
    std::mt19937 rng(0);
    nlohmann::json images = nlohmann::json::array(), annotations = nlohmann::json::array(), categories = nlohmann::json::array();
    for (int64_t k = 0; k < kClasses; ++k) categories.push_back({{"id", k + 1}, {"name", "class" + std::to_string(k)}});
    for (int64_t i = 0; i < kImages; ++i) {
      const cv::Mat& src = photos[static_cast<size_t>(i) % photos.size()];
      const int w = src.cols * (60 + static_cast<int>(rng() % 41)) / 100, h = src.rows * (60 + static_cast<int>(rng() % 41)) / 100;
      const int x = static_cast<int>(rng() % static_cast<unsigned>(src.cols - w + 1));
      const int y = static_cast<int>(rng() % static_cast<unsigned>(src.rows - h + 1));
      cv::Mat crop = src(cv::Rect(x, y, w, h)).clone();
      if (rng() % 2) cv::flip(crop, crop, 1);
      const std::string file = "img" + std::to_string(i) + ".jpg";
      cv::imwrite((root / "images" / file).string(), crop);
      images.push_back({{"id", i + 1}, {"file_name", file}, {"width", w}, {"height", h}});
      for (int a = 0; a < 3; ++a) {
        annotations.push_back({{"id", i * 3 + a + 1}, {"image_id", i + 1}, {"category_id", 1 + rng() % kClasses},
                               {"area", 5000.0}, {"bbox", {0, 0, 10, 10}}, {"iscrowd", 0}});
      }
    }
    std::ofstream(root / "instances.json") << nlohmann::json{{"images", images}, {"annotations", annotations},
                                                             {"categories", categories}}.dump();
    return asl::data::load_coco((root / "instances.json").string(), (root / "images").string());
  }();
  return dataset;
}

asl::models::FusedTResNet& model() {
  static asl::models::FusedTResNet fused = [] {
    torch::manual_seed(0);
    asl::models::TResNet m = asl::models::create_model("tresnet_m", kClasses);
    m->eval();
    return asl::models::fuse_for_inference(m);
  }();
  return fused;
}

asl::data::LoaderOptions loader_options(int64_t workers) {
  asl::data::LoaderOptions o;
  o.batch_size = kBatch;
  o.image_size = kSize;
  o.workers = workers;
  return o;
}

void BM_Loader(benchmark::State& state) {
  const auto& ds = photo_set();
  for (auto _ : state) {
    asl::data::BatchLoader loader(ds, loader_options(state.range(0)));
    while (auto b = loader.next()) benchmark::DoNotOptimize(b->images.data_ptr());
  }
  state.counters["images_per_s"] = benchmark::Counter(static_cast<double>(kImages), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Model(benchmark::State& state) {
  const torch::Tensor x = torch::rand({kBatch, 3, kSize, kSize});
  auto& m = model();
  m->forward(x);  // warm-up: oneDNN picks its kernels on the first call
  for (auto _ : state) benchmark::DoNotOptimize(m->forward(x).data_ptr());
  state.counters["images_per_s"] = benchmark::Counter(static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Validate(benchmark::State& state) {
  const auto& ds = photo_set();
  auto& m = model();
  m->forward(torch::rand({kBatch, 3, kSize, kSize}));
  for (auto _ : state) {
    asl::data::BatchLoader loader(ds, loader_options(state.range(0)));
    while (auto b = loader.next()) benchmark::DoNotOptimize(torch::sigmoid(m->forward(b->images)).data_ptr());
  }
  state.counters["images_per_s"] = benchmark::Counter(static_cast<double>(kImages), benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_Loader)->Name("validate_loader")->Arg(0)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK(BM_Model)->Name("validate_model")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_Validate)->Name("validate_pipeline")->Arg(0)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);

}  // namespace
