// Cutout and RandAugment ops on known images: shape, value range, and one defining property per op.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "asl/train/augment.h"

namespace {

using asl::data::Image;
namespace t = asl::train;

// A deterministic image with varied values in every channel.
Image pattern(int64_t w, int64_t h, uint64_t seed = 1) {
  Image im{w, h, std::vector<uint8_t>(static_cast<size_t>(w * h * 3))};
  std::mt19937_64 rng(seed);
  for (auto& v : im.pixels) v = static_cast<uint8_t>(rng() % 200 + 20);  // 20..219: room on both sides
  return im;
}

// Each channel a horizontal ramp 0..255 (w = 256) — every value once per row.
Image ramp(int64_t h = 4) {
  Image im{256, h, std::vector<uint8_t>(static_cast<size_t>(256 * h * 3))};
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < 256; ++x)
      for (int c = 0; c < 3; ++c) im.pixels[(y * 256 + x) * 3 + c] = static_cast<uint8_t>(c == 1 ? 255 - x : x);
  return im;
}

void expect_shape(const Image& a, const Image& b) {
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
}

std::pair<int, int> range_of(const Image& im, int channel) {
  int lo = 255, hi = 0;
  for (size_t i = channel; i < im.pixels.size(); i += 3) lo = std::min<int>(lo, im.pixels[i]), hi = std::max<int>(hi, im.pixels[i]);
  return {lo, hi};
}

TEST(Augment, InvertTwiceIsIdentity) {
  const Image im = pattern(17, 9);
  const Image once = t::invert(im);
  expect_shape(once, im);
  for (size_t i = 0; i < im.pixels.size(); ++i) ASSERT_EQ(once.pixels[i], 255 - im.pixels[i]);
  EXPECT_EQ(t::invert(once).pixels, im.pixels);
}

TEST(Augment, PosterizeKeepsTopBits) {
  const Image im = ramp();
  for (int bits = 1; bits <= 8; ++bits) {
    const Image p = t::posterize(im, bits);
    const int low_mask = (1 << (8 - bits)) - 1;
    for (size_t i = 0; i < im.pixels.size(); ++i) {
      ASSERT_EQ(p.pixels[i] & low_mask, 0) << "bits " << bits;
      ASSERT_EQ(p.pixels[i], im.pixels[i] - (im.pixels[i] & low_mask)) << "bits " << bits;
    }
  }
  EXPECT_EQ(t::posterize(im, 8).pixels, im.pixels);
  EXPECT_THROW(t::posterize(im, 0), std::runtime_error);
}

TEST(Augment, SolarizeInvertsExactlyFromThreshold) {
  const Image im = ramp();
  for (int threshold : {0, 1, 100, 128, 255, 256}) {
    const Image s = t::solarize(im, threshold);
    for (size_t i = 0; i < im.pixels.size(); ++i) {
      const int v = im.pixels[i];
      ASSERT_EQ(s.pixels[i], v >= threshold ? 255 - v : v) << "threshold " << threshold;
    }
  }
  EXPECT_EQ(t::solarize(im, 256).pixels, im.pixels);
  EXPECT_EQ(t::solarize(im, 0).pixels, t::invert(im).pixels);
}

TEST(Augment, SolarizeAddRaisesOnlyBelowThreshold) {
  const Image im = ramp();
  const Image s = t::solarize_add(im, 110, 128);
  for (size_t i = 0; i < im.pixels.size(); ++i) {
    const int v = im.pixels[i];
    ASSERT_EQ(s.pixels[i], v < 128 ? std::min(255, v + 110) : v);
  }
}

TEST(Augment, AutoContrastStretchesToFullRange) {
  Image im = pattern(20, 10);  // values 20..219
  const Image a = t::auto_contrast(im);
  expect_shape(a, im);
  for (int c = 0; c < 3; ++c) {
    const auto [lo0, hi0] = range_of(im, c);
    const auto [lo, hi] = range_of(a, c);
    EXPECT_EQ(lo, 0);
    EXPECT_EQ(hi, 255);
    // order preserved: a larger input never maps lower
    for (size_t i = c; i < im.pixels.size(); i += 3)
      for (size_t j = c; j < im.pixels.size(); j += 3)
        if (im.pixels[i] < im.pixels[j]) ASSERT_LE(a.pixels[i], a.pixels[j]);
  }
  Image flat{4, 4, std::vector<uint8_t>(48, 77)};
  EXPECT_EQ(t::auto_contrast(flat).pixels, flat.pixels);  // a flat channel is left alone
  EXPECT_EQ(t::auto_contrast(ramp()).pixels, ramp().pixels);  // already 0..255
}

TEST(Augment, EqualizeFlattensHistogramOfRamp) {
  // A quadratic ramp v = x² / 255 crowds the dark levels; equalisation makes the cumulative histogram
  // close to a straight line (each output level holds its share of pixels).
  Image im{256, 4, std::vector<uint8_t>(256 * 4 * 3)};
  for (int64_t y = 0; y < 4; ++y)
    for (int64_t x = 0; x < 256; ++x)
      for (int c = 0; c < 3; ++c) im.pixels[(y * 256 + x) * 3 + c] = static_cast<uint8_t>(x * x / 255);
  auto cdf_distance = [](const Image& a) {  // max |CDF(v) − (v + 1) / 256| over levels, channel 0
    std::vector<double> h(256, 0.0);
    for (size_t i = 0; i < a.pixels.size(); i += 3) h[a.pixels[i]] += 1.0;
    double cum = 0, worst = 0;
    const double n = static_cast<double>(a.pixels.size() / 3);
    for (int v = 0; v < 256; ++v) cum += h[v], worst = std::max(worst, std::abs(cum / n - (v + 1) / 256.0));
    return worst;
  };
  const Image e = t::equalize(im);
  expect_shape(e, im);
  EXPECT_GT(cdf_distance(im), 0.2);
  EXPECT_LT(cdf_distance(e), 0.07);  // level 0 alone holds 16 of 256 pixels: a bin cannot split
  for (size_t i = 0; i < im.pixels.size(); ++i)  // monotone mapping
    for (size_t j = i % 3; j < im.pixels.size(); j += 3 * 97)
      if (im.pixels[i] < im.pixels[j] && i % 3 == j % 3) ASSERT_LE(e.pixels[i], e.pixels[j]);
  Image flat{4, 4, std::vector<uint8_t>(48, 9)};
  EXPECT_EQ(t::equalize(flat).pixels, flat.pixels);
}

TEST(Augment, EnhanceFactorOneIsIdentity) {
  const Image im = pattern(13, 11);
  EXPECT_EQ(t::adjust_brightness(im, 1.0).pixels, im.pixels);
  EXPECT_EQ(t::adjust_color(im, 1.0).pixels, im.pixels);
  EXPECT_EQ(t::adjust_contrast(im, 1.0).pixels, im.pixels);
  EXPECT_EQ(t::adjust_sharpness(im, 1.0).pixels, im.pixels);
}

TEST(Augment, EnhanceFactorZeroGivesDegenerateImage) {
  const Image im = pattern(13, 11);
  const Image black = t::adjust_brightness(im, 0.0);
  EXPECT_TRUE(std::all_of(black.pixels.begin(), black.pixels.end(), [](uint8_t v) { return v == 0; }));
  const Image grey = t::adjust_color(im, 0.0);
  for (size_t i = 0; i < grey.pixels.size(); i += 3) {
    ASSERT_EQ(grey.pixels[i], grey.pixels[i + 1]);
    ASSERT_EQ(grey.pixels[i], grey.pixels[i + 2]);
    const double l = 0.299 * im.pixels[i] + 0.587 * im.pixels[i + 1] + 0.114 * im.pixels[i + 2];
    ASSERT_NEAR(grey.pixels[i], l, 1.0);
  }
  const Image flat = t::adjust_contrast(im, 0.0);
  EXPECT_TRUE(std::all_of(flat.pixels.begin(), flat.pixels.end(), [&](uint8_t v) { return v == flat.pixels[0]; }));
  // Brightness halves (truncating), and 1.9 saturates at 255
  const Image half = t::adjust_brightness(im, 0.5);
  for (size_t i = 0; i < im.pixels.size(); ++i) ASSERT_EQ(half.pixels[i], im.pixels[i] / 2);
  const Image bright = t::adjust_brightness(im, 1.9);
  for (size_t i = 0; i < im.pixels.size(); ++i) ASSERT_EQ(bright.pixels[i], std::min(255, static_cast<int>(im.pixels[i] * 1.9f)));
}

TEST(Augment, SharpnessSmoothsInteriorKeepsBorder) {
  Image im{5, 5, std::vector<uint8_t>(75, 0)};
  for (int c = 0; c < 3; ++c) im.pixels[(2 * 5 + 2) * 3 + c] = 130;  // one bright dot
  const Image s = t::adjust_sharpness(im, 0.0);                       // the SMOOTH filter itself
  EXPECT_EQ(s.pixels[(2 * 5 + 2) * 3], 50);  // 130 · 5/13
  EXPECT_EQ(s.pixels[(1 * 5 + 1) * 3], 10);  // 130 · 1/13
  EXPECT_EQ(s.pixels[0], 0);
  // border row and column kept as the input
  Image edge = im;
  edge.pixels[0] = 200;
  EXPECT_EQ(t::adjust_sharpness(edge, 0.0).pixels[0], 200);
}

TEST(Augment, GeometricZeroIsIdentity) {
  const Image im = pattern(19, 12);
  EXPECT_EQ(t::rotate(im, 0.0).pixels, im.pixels);
  EXPECT_EQ(t::rotate(im, 360.0).pixels, im.pixels);
  EXPECT_EQ(t::shear_x(im, 0.0).pixels, im.pixels);
  EXPECT_EQ(t::shear_y(im, 0.0).pixels, im.pixels);
  EXPECT_EQ(t::translate_x(im, 0.0).pixels, im.pixels);
  EXPECT_EQ(t::translate_y(im, 0.0).pixels, im.pixels);
}

TEST(Augment, RotationsAndTranslationsMovePixels) {
  const Image im = pattern(8, 8);
  const Image r180 = t::rotate(im, 180.0);
  for (int64_t y = 0; y < 8; ++y)
    for (int64_t x = 0; x < 8; ++x)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(r180.pixels[(y * 8 + x) * 3 + c], im.pixels[((7 - y) * 8 + (7 - x)) * 3 + c]);
  EXPECT_EQ(t::rotate(t::rotate(im, 90.0), 270.0).pixels, im.pixels);
  // 90° counter-clockwise: the top-right corner goes to the top-left
  EXPECT_EQ(t::rotate(im, 90.0).pixels[0], im.pixels[7 * 3]);
  // translate by 3 px: output x samples input x + 3, the last 3 columns are fill
  const Image tx = t::translate_x(im, 3.0, {1, 2, 3});
  for (int64_t y = 0; y < 8; ++y) {
    for (int64_t x = 0; x < 8; ++x) {
      const uint8_t* o = &tx.pixels[(y * 8 + x) * 3];
      if (x + 3 < 8) {
        ASSERT_EQ(o[0], im.pixels[(y * 8 + x + 3) * 3]);
      } else {
        ASSERT_EQ(o[0], 1);
        ASSERT_EQ(o[2], 3);
      }
    }
  }
  const Image ty = t::translate_y(im, -2.0, {9, 9, 9});
  EXPECT_EQ(ty.pixels[0], 9);
  EXPECT_EQ(ty.pixels[(2 * 8) * 3], im.pixels[0]);
  // a 27° rotation keeps the centre pixel region and fills corners with the fill colour
  const Image big = pattern(64, 64);
  const Image r = t::rotate(big, 27.0);
  EXPECT_EQ(r.pixels[0], 128);
  EXPECT_EQ(r.pixels[(32 * 64 + 32) * 3], big.pixels[(32 * 64 + 32) * 3]);
}

TEST(Augment, ShearKeepsRowZeroRegionAndFills) {
  // ShearX by s: output row y samples input row y at x + s·(y + 0.5) — a flat image stays flat
  // where covered, fill elsewhere.
  Image flat{32, 32, std::vector<uint8_t>(32 * 32 * 3, 200)};
  const Image s = t::shear_x(flat, 0.3, {0, 0, 0});
  EXPECT_EQ(s.pixels[0], 200);                      // row 0, x 0: samples x ≈ 0.15
  EXPECT_EQ(s.pixels[(31 * 32 + 31) * 3], 0);       // bottom right: samples x ≈ 40.8, outside
  EXPECT_EQ(s.pixels[(31 * 32 + 0) * 3], 200);
  const Image sy = t::shear_y(flat, -0.3, {0, 0, 0});
  EXPECT_EQ(sy.pixels[(0 * 32 + 31) * 3], 0);     // top right: samples y = 0.5 − 0.3 · 31.5 < 0
  EXPECT_EQ(sy.pixels[(31 * 32 + 31) * 3], 200);  // bottom right: samples y = 31.5 − 9.45, inside
}

TEST(Augment, CutoutFillsHalfSizeRectangleWithOneColour) {
  const Image im{64, 48, std::vector<uint8_t>(64 * 48 * 3, 0)};
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(seed), rng2(seed);
    Image out = im;
    t::cutout(out, rng);
    const t::CutoutBox box = t::draw_cutout(64, 48, 0.5, rng2);
    // the drawn box: centred, half size (32 × 24) before clipping, corners inclusive
    EXPECT_LE(box.x1 - box.x0, 32);
    EXPECT_LE(box.y1 - box.y0, 24);
    int64_t filled = 0;
    for (int64_t y = 0; y < 48; ++y) {
      for (int64_t x = 0; x < 64; ++x) {
        const uint8_t* p = &out.pixels[(y * 64 + x) * 3];
        const bool inside = x >= box.x0 && x <= std::min<int64_t>(box.x1, 63) && y >= box.y0 &&
                            y <= std::min<int64_t>(box.y1, 47);
        if (inside) {
          ++filled;
          ASSERT_EQ(p[0], box.color[0]);
          ASSERT_EQ(p[1], box.color[1]);
          ASSERT_EQ(p[2], box.color[2]);
        } else {
          ASSERT_EQ(p[0] | p[1] | p[2], 0);
        }
      }
    }
    EXPECT_GT(filled, 0);
    EXPECT_LE(filled, 33 * 25);
  }
  // A centred box away from the edges is exactly (32 + 1) × (24 + 1) pixels (PIL's inclusive corners).
  bool saw_full = false;
  for (uint64_t seed = 0; seed < 200 && !saw_full; ++seed) {
    std::mt19937_64 rng(seed);
    const t::CutoutBox b = t::draw_cutout(64, 48, 0.5, rng);
    if (b.x0 > 0 && b.x1 < 63 && b.y0 > 0 && b.y1 < 47) {
      EXPECT_EQ(b.x1 - b.x0, 32);
      EXPECT_EQ(b.y1 - b.y0, 24);
      saw_full = true;
    }
  }
  EXPECT_TRUE(saw_full);
}

TEST(RandAugment, DeterministicWithSeedAndVaried) {
  const Image im = pattern(40, 30);
  const t::RandAugment ra;
  std::set<std::vector<uint8_t>> distinct;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    std::mt19937_64 a(seed), b(seed);
    std::vector<t::AppliedOp> ops_a, ops_b;
    const Image x = ra(im, a, &ops_a);
    const Image y = ra(im, b, &ops_b);
    expect_shape(x, im);
    EXPECT_EQ(x.pixels, y.pixels);
    ASSERT_EQ(ops_a.size(), 2u);  // probability 1: always two ops
    EXPECT_EQ(ops_a[0].op, ops_b[0].op);
    EXPECT_EQ(a(), b());  // same number of draws
    distinct.insert(x.pixels);
  }
  EXPECT_GT(distinct.size(), 20u);
}

TEST(RandAugment, ReplaysFromAppliedOps) {
  // Applying the recorded ops by hand reproduces the result: the policy is the ops, nothing hidden.
  const Image im = pattern(33, 21);
  const t::RandAugment ra;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    std::mt19937_64 rng(seed);
    std::vector<t::AppliedOp> ops;
    const Image out = ra(im, rng, &ops);
    Image replay = im;
    for (const auto& op : ops) replay = t::apply_op(replay, op.op, op.parameter);
    EXPECT_EQ(out.pixels, replay.pixels) << "seed " << seed;
    for (const auto& op : ops) {
      EXPECT_DOUBLE_EQ(std::abs(op.parameter), t::op_parameter(op.op, 9)) << t::op_name(op.op);
    }
  }
}

TEST(RandAugment, MagnitudeTable) {
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::rotate, 9), 30.0);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::posterize, 9), 4.0);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::posterize, 0), 8.0);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::posterize, 2), 7.0);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::solarize, 9), 0.0);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::solarize, 0), 256.0);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::color, 9), 0.9);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::shear_x, 9), 0.3);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::translate_y, 9), 150.0 / 331.0);
  EXPECT_DOUBLE_EQ(t::op_parameter(t::AugmentOp::cutout, 3), 7.0);
  EXPECT_THROW(t::op_parameter(t::AugmentOp::rotate, 10), std::runtime_error);
  EXPECT_TRUE(t::op_random_sign(t::AugmentOp::shear_y));
  EXPECT_FALSE(t::op_random_sign(t::AugmentOp::rotate));
}

TEST(RandAugment, ReferencePackagePolicy) {
  const t::RandAugment ra(t::RandAugmentOptions::reference_package());
  const Image im = pattern(24, 24);
  size_t applied_total = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    std::mt19937_64 rng(seed);
    std::vector<t::AppliedOp> ops;
    const Image out = ra(im, rng, &ops);
    expect_shape(out, im);
    applied_total += ops.size();
    for (const auto& op : ops) EXPECT_NE(op.op, t::AugmentOp::solarize_add);
  }
  EXPECT_NEAR(static_cast<double>(applied_total) / 200.0, 1.0, 0.2);  // 2 ops × probability 0.5
  EXPECT_THROW(t::RandAugment(t::RandAugmentOptions{0, 10}), std::runtime_error);
}

TEST(Augment, UniformHelpers) {
  std::mt19937_64 rng(5);
  std::vector<int> counts(6, 0);
  for (int i = 0; i < 6000; ++i) ++counts[t::uniform_index(rng, 6)];
  for (int c : counts) EXPECT_NEAR(c, 1000, 150);
  for (int i = 0; i < 1000; ++i) {
    const double u = t::uniform_unit(rng);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
}

}  // namespace
