// BatchLoader: order and content equal to sequential preprocessing, for any number of workers.
#include "asl/data/loader.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "asl/data/coco.h"
#include "asl/data/image.h"
#include "test_util.h"

namespace fs = std::filesystem;
using asl::data::BatchLoader;
using asl::data::LoaderOptions;
using asl::data::ResampleFilter;

namespace {

// Sequential preprocessing of one file, the reference for every batch row.
torch::Tensor sequential(const std::string& path, const LoaderOptions& o) {
  return asl::data::to_tensor(asl::data::load_resized(path, o.image_size, o.filter, o.decode));
}

// All batches of a loader, checked against sequential preprocessing of `paths`.
void expect_sequential_equal(BatchLoader& loader, const std::vector<std::string>& paths, const torch::Tensor& targets,
                             const std::vector<std::string>& names, const LoaderOptions& o) {
  const int64_t n = static_cast<int64_t>(paths.size());
  int64_t seen = 0;
  int64_t batches = 0;
  while (auto batch = loader.next()) {
    const int64_t b = static_cast<int64_t>(batch->indices.size());
    ASSERT_EQ(b, std::min(o.batch_size, n - seen));
    ASSERT_EQ(batch->images.sizes(), torch::IntArrayRef({b, 3, o.image_size, o.image_size}));
    EXPECT_EQ(batch->images.scalar_type(), torch::kFloat32);
    ASSERT_EQ(batch->names.size(), static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
      const int64_t index = seen + i;
      EXPECT_EQ(batch->indices[i], index);
      EXPECT_EQ(batch->names[i], names[index]);
      EXPECT_TRUE(torch::equal(batch->images[i], sequential(paths[index], o))) << paths[index];
    }
    if (targets.defined()) {
      EXPECT_TRUE(torch::equal(batch->targets, targets.narrow(0, seen, b)));
    } else {
      EXPECT_FALSE(batch->targets.defined());
    }
    seen += b;
    ++batches;
  }
  EXPECT_EQ(seen, n);
  EXPECT_EQ(batches, loader.num_batches());
  EXPECT_FALSE(loader.next().has_value());  // stays exhausted
}

std::vector<std::string> fixture_image_paths() {
  const fs::path dir = asl::test::fixtures_dir() / "images";
  std::vector<std::string> paths;
  for (const auto& c : asl::test::load_json(dir / "cases.json"))
    paths.push_back((dir / c.at("image").get<std::string>()).string());
  return paths;
}

}  // namespace

TEST(Loader, CocoBatchesEqualSequentialForAnyWorkerCount) {
  const fs::path dir = asl::test::fixtures_dir() / "coco";
  const auto ds = asl::data::load_coco((dir / "annotations.json").string(), dir.string());
  ASSERT_GT(ds.size(), 0);
  for (const int64_t workers : {0, 1, 2}) {
    for (const int64_t batch_size : {1, 2, 64}) {
      LoaderOptions o;
      o.workers = workers;
      o.batch_size = batch_size;
      o.image_size = 64;
      o.prefetch_batches = 1;
      BatchLoader loader(ds, o);
      EXPECT_EQ(loader.size(), ds.size());
      SCOPED_TRACE("workers " + std::to_string(workers) + ", batch " + std::to_string(batch_size));
      expect_sequential_equal(loader, ds.image_paths(), ds.targets, ds.file_names, o);
    }
  }
}

TEST(Loader, ImageListWithBothFiltersAndPrefetchDepths) {
  const std::vector<std::string> paths = fixture_image_paths();
  ASSERT_FALSE(paths.empty());
  // Repeat the list so that several batches are in flight at once.
  std::vector<std::string> many;
  for (int r = 0; r < 3; ++r) many.insert(many.end(), paths.begin(), paths.end());
  const torch::Tensor targets = torch::arange(static_cast<int64_t>(many.size()) * 2, torch::kFloat32).view({-1, 2});
  for (const auto filter : {ResampleFilter::bilinear, ResampleFilter::bicubic}) {
    for (const int64_t workers : {1, 2}) {
      for (const int64_t prefetch : {0, 3}) {
        LoaderOptions o;
        o.workers = workers;
        o.batch_size = 4;
        o.image_size = 96;
        o.filter = filter;
        o.prefetch_batches = prefetch;
        BatchLoader loader(many, targets, {}, o);
        SCOPED_TRACE("workers " + std::to_string(workers) + ", prefetch " + std::to_string(prefetch));
        expect_sequential_equal(loader, many, targets, many, o);
      }
    }
  }
}

TEST(Loader, NoTargetsAndEmptyList) {
  LoaderOptions o;
  o.image_size = 32;
  o.batch_size = 2;
  const std::vector<std::string> paths = fixture_image_paths();
  BatchLoader loader(paths, torch::Tensor(), {}, o);
  expect_sequential_equal(loader, paths, torch::Tensor(), paths, o);
  BatchLoader empty(std::vector<std::string>{}, torch::Tensor(), {}, o);
  EXPECT_EQ(empty.num_batches(), 0);
  EXPECT_FALSE(empty.next().has_value());
}

TEST(Loader, ErrorSurfacesAtItsBatchNamingTheFile) {
  std::vector<std::string> paths = fixture_image_paths();
  const std::string missing =
      (fs::temp_directory_path() / ("asl_loader_missing_" + std::to_string(::getpid()) + ".jpg")).string();
  // Batches of 2: the missing file is the second image of the second batch.
  paths.insert(paths.begin() + 3, missing);
  for (const int64_t workers : {0, 1, 2}) {
    LoaderOptions o;
    o.workers = workers;
    o.batch_size = 2;
    o.image_size = 32;
    BatchLoader loader(paths, torch::Tensor(), {}, o);
    ASSERT_TRUE(loader.next().has_value());
    try {
      loader.next();
      ADD_FAILURE() << "no error for the batch with a missing file (workers " << workers << ")";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
    }
    // The following batches still load.
    int64_t rest = 0;
    while (auto b = loader.next()) rest += static_cast<int64_t>(b->indices.size());
    EXPECT_EQ(rest, static_cast<int64_t>(paths.size()) - 4);
  }
}

TEST(Loader, AbandonedLoaderStopsCleanly) {
  const std::vector<std::string> paths = fixture_image_paths();
  LoaderOptions o;
  o.workers = 2;
  o.batch_size = 1;
  o.image_size = 32;
  BatchLoader loader(paths, torch::Tensor(), {}, o);
  ASSERT_TRUE(loader.next().has_value());
  // Destroyed with batches pending: must join without hanging.
}

TEST(Loader, BadOptionsAreRefused) {
  const std::vector<std::string> paths = fixture_image_paths();
  LoaderOptions o;
  o.batch_size = 0;
  EXPECT_THROW(BatchLoader(paths, torch::Tensor(), {}, o), std::runtime_error);
  o = LoaderOptions();
  o.workers = -1;
  EXPECT_THROW(BatchLoader(paths, torch::Tensor(), {}, o), std::runtime_error);
  o = LoaderOptions();
  EXPECT_THROW(BatchLoader(paths, torch::zeros({static_cast<int64_t>(paths.size()) + 1, 3}), {}, o),
               std::runtime_error);
  EXPECT_THROW(BatchLoader(paths, torch::Tensor(), {"only one"}, o), std::runtime_error);
}
