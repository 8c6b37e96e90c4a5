// Fashion-MNIST mosaics: a small build parses as COCO, targets and pixels match the placed items,
// and the same seed gives byte-identical files.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>

#include <torch/torch.h>
#include <unistd.h>

#include "asl/data/coco.h"
#include "asl/data/image.h"
#include "asl/data/mosaic.h"
#include "asl/io/file.h"

namespace {

namespace fs = std::filesystem;

class MosaicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("asl_mosaic_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
};

std::map<std::string, std::string> all_files(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = asl::io::read_file(e.path().string());
  }
  return out;
}

TEST_F(MosaicTest, BuildsParsesAndMatchesPlacedItems) {
  asl::data::MosaicOptions o;
  o.train = 12;
  o.val = 8;
  o.seed = 42;
  o.grid = 3;
  const auto summary = asl::data::build_fashion_mosaic((root_ / "a").string(), o);
  ASSERT_EQ(summary.train.size(), 12u);
  ASSERT_EQ(summary.val.size(), 8u);

  const fs::path src(o.source_dir);
  const auto train_items = asl::data::read_idx((src / "train-images-idx3-ubyte.gz").string(),
                                               (src / "train-labels-idx1-ubyte.gz").string());
  const auto test_items = asl::data::read_idx((src / "t10k-images-idx3-ubyte.gz").string(),
                                              (src / "t10k-labels-idx1-ubyte.gz").string());
  EXPECT_EQ(train_items.count, 60000);
  EXPECT_EQ(test_items.count, 10000);

  for (const std::string split : {"train2014", "val2014"}) {
    const auto& images = split == "train2014" ? summary.train : summary.val;
    const auto& items = split == "train2014" ? train_items : test_items;
    const auto paths = asl::data::coco_reference_layout((root_ / "a").string(), split);
    const asl::data::CocoDataset d = asl::data::load_coco(paths.annotations, paths.images);
    ASSERT_EQ(d.size(), static_cast<int64_t>(images.size()));
    EXPECT_EQ(d.class_names, asl::data::fashion_mnist_classes());
    for (int64_t i = 0; i < d.size(); ++i) {
      const auto& mi = images[static_cast<size_t>(i)];
      EXPECT_EQ(d.file_names[static_cast<size_t>(i)], mi.file_name);
      torch::Tensor expected = torch::zeros({10}, torch::kInt64);
      std::set<int64_t> classes, cells;
      for (const auto& it : mi.items) {
        expected[it.label] = 1;
        classes.insert(it.label);
        cells.insert(it.cell_row * 3 + it.cell_col);
        EXPECT_EQ(items.labels[static_cast<size_t>(it.source_index)], it.label);
      }
      EXPECT_GE(mi.items.size(), 1u);
      EXPECT_LE(mi.items.size(), 4u);
      EXPECT_EQ(classes.size(), mi.items.size());  // distinct classes
      EXPECT_EQ(cells.size(), mi.items.size());    // distinct cells
      EXPECT_TRUE(d.targets[i].equal(expected)) << split << " image " << i;
      // pixels: each occupied cell is its Fashion-MNIST item (grey → RGB), each empty cell black
      const asl::data::Image im = asl::data::load_image(d.image_path(i));
      ASSERT_EQ(im.width, 84);
      ASSERT_EQ(im.height, 84);
      std::map<int64_t, int64_t> source_of;
      for (const auto& it : mi.items) source_of[it.cell_row * 3 + it.cell_col] = it.source_index;
      for (int64_t y = 0; y < 84; ++y) {
        for (int64_t x = 0; x < 84; ++x) {
          const int64_t cell = (y / 28) * 3 + x / 28;
          const auto found = source_of.find(cell);
          const uint8_t want = found == source_of.end()
                                   ? 0
                                   : items.pixels[static_cast<size_t>(found->second * 784 + (y % 28) * 28 + x % 28)];
          for (int c = 0; c < 3; ++c) ASSERT_EQ(im.pixels[static_cast<size_t>((y * 84 + x) * 3 + c)], want);
        }
      }
    }
  }

  // same seed: byte-identical; another seed: different
  asl::data::build_fashion_mosaic((root_ / "b").string(), o);
  EXPECT_EQ(all_files(root_ / "a"), all_files(root_ / "b"));
  o.seed = 43;
  asl::data::build_fashion_mosaic((root_ / "c").string(), o);
  EXPECT_NE(all_files(root_ / "a"), all_files(root_ / "c"));
}

TEST_F(MosaicTest, ResizedCellsAndBadOptions) {
  asl::data::MosaicOptions o;
  o.train = 2;
  o.val = 0;
  o.cell = 40;
  const auto s = asl::data::build_fashion_mosaic((root_ / "r").string(), o);
  const asl::data::Image im = asl::data::load_image((root_ / "r" / "train2014" / s.train[0].file_name).string());
  EXPECT_EQ(im.width, 80);
  EXPECT_FALSE(fs::exists(root_ / "r" / "val2014"));
  o.grid = 4;
  EXPECT_THROW(asl::data::build_fashion_mosaic((root_ / "x").string(), o), std::runtime_error);
  o.grid = 2;
  o.source_dir = (root_ / "nowhere").string();
  EXPECT_THROW(asl::data::build_fashion_mosaic((root_ / "x").string(), o), std::runtime_error);
}

}  // namespace
