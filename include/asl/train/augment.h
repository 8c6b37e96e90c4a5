// Training augmentations on 8-bit RGB images: the reference's Cutout and RandAugment, with PIL semantics.
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "asl/data/image.h"

namespace asl::train {

using asl::data::Image;

/// An RGB colour.
using Rgb = std::array<uint8_t, 3>;

/// The grey that the reference's RandAugment fills uncovered pixels with after a geometric op.
inline constexpr Rgb kAugmentFill = {128, 128, 128};

/// A uniformly random integer in [0, n) from `rng` (n ≥ 1), by rejection: the same sequence with every
/// standard library, unlike std::uniform_int_distribution.
uint64_t uniform_index(std::mt19937_64& rng, uint64_t n);

/// A uniformly random double in [0, 1) from the top 53 bits of one draw.
double uniform_unit(std::mt19937_64& rng);

// ---- single operations (each returns a new image of the same size) ----------------------------

/// ImageOps.autocontrast (cutoff 0): per channel, maps [min, max] linearly onto [0, 255]
/// (lut[i] = clip(int(i · 255 / (max − min) − min · 255 / (max − min)))); a flat channel is unchanged.
Image auto_contrast(const Image& image);
/// ImageOps.equalize: per channel, Pillow's cumulative-histogram lookup table (step = (N − count of the
/// last non-empty bin) // 255; lut[i] = (step // 2 + Σ_{j<i} h[j]) // step); unchanged when step is 0.
Image equalize(const Image& image);
/// ImageOps.invert: 255 − v.
Image invert(const Image& image);
/// ImageOps.posterize: keeps the top `bits` bits (1..8) of every value.
Image posterize(const Image& image, int bits);
/// ImageOps.solarize: values ≥ threshold become 255 − v.
Image solarize(const Image& image, int threshold);
/// SolarizeAdd (timm/AutoAugment): values < threshold become min(255, v + add).
Image solarize_add(const Image& image, int add, int threshold = 128);
/// ImageEnhance.Color: blend of the image with its grey (ITU-R 601-2 luma, Pillow's rounding) by `factor`.
Image adjust_color(const Image& image, double factor);
/// ImageEnhance.Contrast: blend with a flat image at the rounded mean grey level by `factor`.
Image adjust_contrast(const Image& image, double factor);
/// ImageEnhance.Brightness: blend with black by `factor`.
Image adjust_brightness(const Image& image, double factor);
/// ImageEnhance.Sharpness: blend with the image under ImageFilter.SMOOTH (3×3 kernel 1 1 1 / 1 5 1 /
/// 1 1 1 ÷ 13, border pixels kept) by `factor`.
Image adjust_sharpness(const Image& image, double factor);
/// Image.rotate(degrees) (counter-clockwise about the centre, same size, nearest neighbour), uncovered
/// pixels set to `fill`.
Image rotate(const Image& image, double degrees, Rgb fill = kAugmentFill);
/// Image.transform(AFFINE, (1, shear, 0, 0, 1, 0), BICUBIC): output (x, y) samples input (x + shear·y, y).
Image shear_x(const Image& image, double shear, Rgb fill = kAugmentFill);
/// Image.transform(AFFINE, (1, 0, 0, shear, 1, 0), BICUBIC): output (x, y) samples input (x, y + shear·x).
Image shear_y(const Image& image, double shear, Rgb fill = kAugmentFill);
/// Image.transform(AFFINE, (1, 0, pixels, 0, 1, 0), NEAREST): output (x, y) samples input (x + pixels, y).
Image translate_x(const Image& image, double pixels, Rgb fill = kAugmentFill);
/// Image.transform(AFFINE, (1, 0, 0, 0, 1, pixels), NEAREST): output (x, y) samples input (x, y + pixels).
Image translate_y(const Image& image, double pixels, Rgb fill = kAugmentFill);
/// ImageDraw.rectangle([x0, y0, x1, y1], fill): corners inclusive, clipped to the image, in place.
void fill_rectangle(Image& image, int64_t x0, int64_t y0, int64_t x1, int64_t y1, Rgb fill);

// ---- Cutout -----------------------------------------------------------------------------------

/// The rectangle and colour one Cutout draws (corners inclusive, before clipping to the image).
struct CutoutBox {
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  Rgb color{};
};

/// Draws the reference's CutoutPIL parameters: cutout size int(factor · size + 0.5) per axis, a centre
/// uniform over the pixels, corners centre ∓ size // 2 clipped to [0, size], one uniform random colour.
/// Draw order: centre y, centre x, then R, G, B.
CutoutBox draw_cutout(int64_t width, int64_t height, double factor, std::mt19937_64& rng);

/// CutoutPIL(cutout_factor = factor): fills the draw_cutout rectangle in place.
void cutout(Image& image, std::mt19937_64& rng, double factor = 0.5);

// ---- RandAugment ------------------------------------------------------------------------------

/// The operations RandAugment picks from.
enum class AugmentOp {
  auto_contrast, equalize, invert, rotate, posterize, solarize, solarize_add, color, contrast,
  brightness, sharpness, shear_x, shear_y, translate_x, translate_y,
  /// The reference package's Cutout op: a square of parameter × 2 // 2 pixels, fill (125, 122, 113).
  cutout,
};

/// "AutoContrast", "Equalize", … (the names of the reference tables).
const char* op_name(AugmentOp op);

/// The operation's parameter at `magnitude` (0..9, the index into the reference package's 10-entry
/// ranges), before any random sign. See docs/augmentation.md for the table.
double op_parameter(AugmentOp op, int magnitude);

/// Whether the op's parameter gets a random sign (+ or −, equally likely).
bool op_random_sign(AugmentOp op);

/// Applies one op with an explicit (already signed) parameter, as RandAugment would: the enhance ops
/// get factor 1 + parameter, translations parameter × width (height) pixels. Cutout draws its centre
/// from `rng` (required for it, unused otherwise).
Image apply_op(const Image& image, AugmentOp op, double parameter, std::mt19937_64* rng = nullptr);

/// Options of RandAugment.
struct RandAugmentOptions {
  /// Operations applied per image, each chosen uniformly (with repetition) from `ops`.
  int num_ops = 2;
  /// Magnitude index 0..9; 9 is the top of every range.
  int magnitude = 9;
  /// Draw each op's magnitude uniformly from 1..magnitude instead of using `magnitude`.
  bool random_magnitude = false;
  /// Probability of applying each chosen op.
  double probability = 1.0;
  /// The op list: by default the 15 ops of the issue (AutoContrast … TranslateY, with SolarizeAdd).
  std::vector<AugmentOp> ops = {AugmentOp::auto_contrast, AugmentOp::equalize, AugmentOp::invert,
                                AugmentOp::rotate,        AugmentOp::posterize, AugmentOp::solarize,
                                AugmentOp::solarize_add,  AugmentOp::color,     AugmentOp::contrast,
                                AugmentOp::brightness,    AugmentOp::sharpness, AugmentOp::shear_x,
                                AugmentOp::shear_y,       AugmentOp::translate_x, AugmentOp::translate_y};

  /// The policy of the `randaugment` 1.0.2 package that the reference's train.py imports: 2 ops from
  /// its 15 (Cutout instead of SolarizeAdd), each applied with probability 0.5 at a magnitude drawn
  /// uniformly from 1..9.
  static RandAugmentOptions reference_package();
};

/// One applied op: what RandAugment did to an image (for logs and tests).
struct AppliedOp {
  AugmentOp op;
  double parameter;
};

/// RandAugment: `num_ops` random ops per image, deterministic for a given rng state.
class RandAugment {
 public:
  /// Throws std::runtime_error for an empty op list, num_ops < 0, magnitude outside 0..9 or a
  /// probability outside [0, 1].
  explicit RandAugment(RandAugmentOptions options = {});

  /// The augmented image; `applied` (optional) receives the ops applied, in order. Draw order per op:
  /// op index, then (random_magnitude) magnitude, then (probability < 1) the apply draw, then (ops with a
  /// random sign) the sign.
  Image operator()(const Image& image, std::mt19937_64& rng, std::vector<AppliedOp>* applied = nullptr) const;

  const RandAugmentOptions& options() const { return options_; }

 private:
  RandAugmentOptions options_;
};

}  // namespace asl::train
