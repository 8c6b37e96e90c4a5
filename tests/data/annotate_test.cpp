// Annotated images: small photos are enlarged (nearest-neighbour, so the item stays as it was), labels
// that would cover more than a quarter go into a panel below, every label is drawn, none leaves the canvas.
#include <gtest/gtest.h>

#include <random>

#include "asl/data/annotate.h"
#include "asl/data/image.h"

namespace {

asl::data::Image noise(int64_t w, int64_t h, uint32_t seed) {
  asl::data::Image im;
  im.width = w;
  im.height = h;
  std::mt19937 rng(seed);
  for (int64_t i = 0; i < w * h * 3; ++i) im.pixels.push_back(static_cast<uint8_t>(rng() & 0xff));
  return im;
}

void expect_inside(const asl::data::Annotated& a) {
  for (const auto& b : a.text_boxes) {
    EXPECT_GE(b.x, 0);
    EXPECT_GE(b.y, 0);
    EXPECT_LE(b.x + b.width, a.image.width);
    EXPECT_LE(b.y + b.height, a.image.height);
  }
}

TEST(Annotate, SmallMosaicIsEnlargedAndLabelledInAPanelThatLeavesTheItemVisible) {
  const asl::data::Image mosaic = noise(64, 64, 1);  // the demo's size
  const std::vector<std::string> labels = {"Ankle boot 0.97", "Sneaker 0.91", "Pullover 0.88", "T-shirt/top 0.75"};
  const asl::data::Annotated a = asl::data::annotate(mosaic, labels);
  EXPECT_EQ(a.picture.width, 320);
  EXPECT_EQ(a.picture.height, 320);
  EXPECT_EQ(a.image.width, 320);
  EXPECT_TRUE(a.panel);
  EXPECT_GT(a.image.height, 320);
  ASSERT_EQ(a.text_boxes.size(), labels.size());  // every detected class
  expect_inside(a);
  for (const auto& b : a.text_boxes) EXPECT_GE(b.y, a.picture.y + a.picture.height);  // nothing over the photo
  // The photo is the mosaic enlarged 5x by nearest neighbour: every pixel as it was.
  for (int64_t y = 0; y < 320; ++y) {
    for (int64_t x = 0; x < 320; ++x) {
      for (int ch = 0; ch < 3; ++ch) {
        const auto got = a.image.pixels[static_cast<size_t>((y * a.image.width + x) * 3 + ch)];
        const auto want = mosaic.pixels[static_cast<size_t>(((y / 5) * 64 + x / 5) * 3 + ch)];
        ASSERT_EQ(got, want) << x << "," << y;
      }
    }
  }
}

TEST(Annotate, LargePhotoKeepsItsSizeWithLabelsOverItsCorner) {
  const asl::data::Annotated a = asl::data::annotate(noise(800, 600, 2), {"dog 0.99", "person 0.81"});
  EXPECT_EQ(a.image.width, 800);
  EXPECT_EQ(a.image.height, 600);
  EXPECT_FALSE(a.panel);
  ASSERT_EQ(a.text_boxes.size(), 2u);
  expect_inside(a);
  double covered = 0;
  for (const auto& b : a.text_boxes) covered += static_cast<double>(b.width) * b.height;
  EXPECT_LE(covered, 0.25 * 800 * 600);
}

TEST(Annotate, LongLabelsAndManyClassesStayOnTheCanvas) {
  std::vector<std::string> labels;
  for (int i = 0; i < 12; ++i) labels.push_back("a class name far too long to fit on any small canvas " + std::to_string(i));
  for (const auto& size : {std::pair<int64_t, int64_t>{28, 28}, {300, 90}, {1000, 320}}) {
    const asl::data::Annotated a = asl::data::annotate(noise(size.first, size.second, 3), labels);
    EXPECT_EQ(a.text_boxes.size(), labels.size());
    expect_inside(a);
    EXPECT_GE(std::min(a.picture.width, a.picture.height), 320);
  }
  EXPECT_EQ(asl::data::annotate(noise(50, 40, 4), {}).text_boxes.size(), 1u);  // "(nothing detected)"
  EXPECT_FALSE(asl::data::encode_jpeg(noise(16, 16, 5)).empty());
}

}  // namespace
