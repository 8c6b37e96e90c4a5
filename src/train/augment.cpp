// Cutout and RandAugment ops on H×W×3 uint8 images, following Pillow 9.4's arithmetic (float blends
// truncated, lookup tables, nearest/bicubic affine sampling with PIL's pixel-centre convention).
#include "asl/train/augment.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace asl::train {
namespace {

constexpr double kPi = 3.14159265358979323846;

void check_image(const Image& image, const char* op) {
  if (image.width < 0 || image.height < 0 ||
      image.pixels.size() != static_cast<size_t>(image.width * image.height * 3)) {
    throw std::runtime_error(std::string(op) + ": image of " + std::to_string(image.width) + "x" +
                             std::to_string(image.height) + " has " + std::to_string(image.pixels.size()) +
                             " bytes, expected width·height·3");
  }
}

using Lut = std::array<uint8_t, 256>;

Image apply_luts(const Image& image, const std::array<Lut, 3>& luts) {
  Image out = image;
  for (size_t i = 0; i < out.pixels.size(); ++i) out.pixels[i] = luts[i % 3][image.pixels[i]];
  return out;
}

Image apply_lut(const Image& image, const Lut& lut) { return apply_luts(image, {lut, lut, lut}); }

std::array<std::array<int64_t, 256>, 3> histograms(const Image& image) {
  std::array<std::array<int64_t, 256>, 3> h{};
  for (size_t i = 0; i < image.pixels.size(); ++i) ++h[i % 3][image.pixels[i]];
  return h;
}

// Pillow's ImagingBlend: in1 + alpha · (in2 − in1) in float, clipped, truncated.
uint8_t blend_value(uint8_t in1, uint8_t in2, float alpha) {
  const float v = static_cast<float>(static_cast<int>(in1)) + alpha * static_cast<float>(static_cast<int>(in2) - in1);
  if (v <= 0.0f) return 0;
  if (v >= 255.0f) return 255;
  return static_cast<uint8_t>(v);
}

Image blend(const Image& degenerate, const Image& image, double factor) {
  Image out = image;
  const float alpha = static_cast<float>(factor);
  for (size_t i = 0; i < out.pixels.size(); ++i) out.pixels[i] = blend_value(degenerate.pixels[i], image.pixels[i], alpha);
  return out;
}

// Pillow's RGB → L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
uint8_t luma(const uint8_t* p) {
  return static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
}

// COORD of Pillow's Geometry.c: negative → −1, else truncation.
int64_t coord(double v) { return v < 0.0 ? -1 : static_cast<int64_t>(v); }

// Nearest-neighbour affine transform as Pillow's ImagingTransformAffine: input = (a0 x' + a1 y' + a2,
// a3 x' + a4 y' + a5) at pixel centres x' = x + 0.5. A pure scale/translation (a1 = a3 = 0) walks in
// double precision (ImagingScaleAffine); any other matrix in 16.16 fixed point (affine_fixed), both
// accumulated along rows and columns as Pillow does, so boundary pixels round the same way.
Image affine_nearest(const Image& in, const double a[6], Rgb fill) {
  Image out = in;
  const int64_t w = in.width, h = in.height;
  auto put = [&](int64_t x, int64_t y, int64_t xin, int64_t yin) {
    uint8_t* o = &out.pixels[(y * w + x) * 3];
    if (xin >= 0 && xin < w && yin >= 0 && yin < h) {
      const uint8_t* p = &in.pixels[(yin * w + xin) * 3];
      o[0] = p[0], o[1] = p[1], o[2] = p[2];
    } else {
      o[0] = fill[0], o[1] = fill[1], o[2] = fill[2];
    }
  };
  auto fits = [&](double x, double y) {
    return std::fabs(x * a[0] + y * a[1] + a[2]) < 32768.0 && std::fabs(x * a[3] + y * a[4] + a[5]) < 32768.0;
  };
  const double dw = static_cast<double>(w), dh = static_cast<double>(h);
  if (a[1] == 0 && a[3] == 0) {
    double yo = a[5] + a[4] * 0.5;
    for (int64_t y = 0; y < h; ++y, yo += a[4]) {
      const int64_t yin = coord(yo);
      double xo = a[2] + a[0] * 0.5;
      for (int64_t x = 0; x < w; ++x, xo += a[0]) put(x, y, coord(xo), yin);
    }
  } else if (fits(0, 0) && fits(dw, dh) && fits(0, dh) && fits(dw, 0)) {
    auto fix = [](double v) { return static_cast<int64_t>(std::floor(v * 65536.0 + 0.5)); };
    const int64_t a0 = fix(a[0]), a1 = fix(a[1]), a3 = fix(a[3]), a4 = fix(a[4]);
    int64_t a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5), a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
    for (int64_t y = 0; y < h; ++y) {
      int64_t xx = a2, yy = a5;
      for (int64_t x = 0; x < w; ++x) {
        // Pillow keeps these in a 32-bit int and shifts arithmetically (floor)
        put(x, y, static_cast<int32_t>(xx) >> 16, static_cast<int32_t>(yy) >> 16);
        xx += a0;
        yy += a3;
      }
      a2 += a1;
      a5 += a4;
    }
  } else {
    double xo = a[2] + a[1] * 0.5 + a[0] * 0.5;
    double yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
    for (int64_t y = 0; y < h; ++y, xo += a[1], yo += a[4]) {
      double xx = xo, yy = yo;
      for (int64_t x = 0; x < w; ++x, xx += a[0], yy += a[3]) put(x, y, coord(xx), coord(yy));
    }
  }
  return out;
}

// Pillow's bicubic filter (a = −1 convolution) on one channel, edge pixels replicated.
double cubic(double v1, double v2, double v3, double v4, double d) {
  const double p1 = v2;
  const double p2 = -v1 + v3;
  const double p3 = 2 * (v1 - v2) + v3 - v4;
  const double p4 = -v1 + v2 - v3 + v4;
  return p1 + d * (p2 + d * (p3 + d * p4));
}

Image affine_bicubic(const Image& in, const double a[6], Rgb fill) {
  Image out = in;
  const int64_t w = in.width, h = in.height;
  auto xclip = [w](int64_t x) { return x < 0 ? 0 : (x < w ? x : w - 1); };
  auto yclip = [h](int64_t y) { return y < 0 ? 0 : (y < h ? y : h - 1); };
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const double xc = x + 0.5, yc = y + 0.5;
      double xin = a[0] * xc + a[1] * yc + a[2];
      double yin = a[3] * xc + a[4] * yc + a[5];
      uint8_t* o = &out.pixels[(y * w + x) * 3];
      if (xin < 0.0 || xin >= static_cast<double>(w) || yin < 0.0 || yin >= static_cast<double>(h)) {
        o[0] = fill[0], o[1] = fill[1], o[2] = fill[2];
        continue;
      }
      xin -= 0.5;
      yin -= 0.5;
      int64_t ix = static_cast<int64_t>(std::floor(xin)), iy = static_cast<int64_t>(std::floor(yin));
      const double dx = xin - ix, dy = yin - iy;
      --ix;
      --iy;
      const int64_t xs[4] = {xclip(ix), xclip(ix + 1), xclip(ix + 2), xclip(ix + 3)};
      for (int b = 0; b < 3; ++b) {
        auto row = [&](int64_t yy) {
          const uint8_t* r = &in.pixels[yy * w * 3 + b];
          return cubic(r[xs[0] * 3], r[xs[1] * 3], r[xs[2] * 3], r[xs[3] * 3], dx);
        };
        const double v1 = row(yclip(iy));
        const double v2 = (iy + 1 >= 0 && iy + 1 < h) ? row(iy + 1) : v1;
        const double v3 = (iy + 2 >= 0 && iy + 2 < h) ? row(iy + 2) : v2;
        const double v4 = (iy + 3 >= 0 && iy + 3 < h) ? row(iy + 3) : v3;
        const double v = cubic(v1, v2, v3, v4, dy);
        o[b] = v < 0.0 ? 0 : (v > 255.0 ? 255 : static_cast<uint8_t>(v));
      }
    }
  }
  return out;
}

// Python's round(x, 15) closely enough for the rotation matrix entries.
double round15(double x) { return std::nearbyint(x * 1e15) / 1e15; }

}  // namespace

uint64_t uniform_index(std::mt19937_64& rng, uint64_t n) {
  if (n == 0) throw std::runtime_error("uniform_index: empty range");
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // draws ≥ limit would bias the remainder
  uint64_t v;
  do {
    v = rng();
  } while (v >= limit);
  return v % n;
}

double uniform_unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

Image auto_contrast(const Image& image) {
  check_image(image, "auto_contrast");
  const auto h = histograms(image);
  std::array<Lut, 3> luts;
  for (int c = 0; c < 3; ++c) {
    int lo = 0, hi = 255;
    while (lo < 256 && h[c][lo] == 0) ++lo;
    while (hi >= 0 && h[c][hi] == 0) --hi;
    for (int i = 0; i < 256; ++i) {
      if (hi <= lo) {
        luts[c][i] = static_cast<uint8_t>(i);
        continue;
      }
      const double scale = 255.0 / (hi - lo);
      const double offset = -lo * scale;
      const int64_t v = static_cast<int64_t>(i * scale + offset);  // Python int(): toward zero
      luts[c][i] = static_cast<uint8_t>(std::clamp<int64_t>(v, 0, 255));
    }
  }
  return apply_luts(image, luts);
}

Image equalize(const Image& image) {
  check_image(image, "equalize");
  const auto h = histograms(image);
  std::array<Lut, 3> luts;
  for (int c = 0; c < 3; ++c) {
    int64_t total = 0, last = 0, nonzero = 0;
    for (int i = 0; i < 256; ++i) {
      if (h[c][i] == 0) continue;
      total += h[c][i];
      last = h[c][i];
      ++nonzero;
    }
    const int64_t step = nonzero <= 1 ? 0 : (total - last) / 255;
    int64_t n = step / 2;
    for (int i = 0; i < 256; ++i) {
      if (step == 0) {
        luts[c][i] = static_cast<uint8_t>(i);
        continue;
      }
      luts[c][i] = static_cast<uint8_t>(std::min<int64_t>(n / step, 255));
      n += h[c][i];
    }
  }
  return apply_luts(image, luts);
}

Image invert(const Image& image) {
  check_image(image, "invert");
  Lut lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(255 - i);
  return apply_lut(image, lut);
}

Image posterize(const Image& image, int bits) {
  check_image(image, "posterize");
  if (bits < 1 || bits > 8) throw std::runtime_error("posterize: bits value " + std::to_string(bits) + " is outside 1..8");
  const int mask = ~((1 << (8 - bits)) - 1) & 0xff;
  Lut lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(i & mask);
  return apply_lut(image, lut);
}

Image solarize(const Image& image, int threshold) {
  check_image(image, "solarize");
  Lut lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(i < threshold ? i : 255 - i);
  return apply_lut(image, lut);
}

Image solarize_add(const Image& image, int add, int threshold) {
  check_image(image, "solarize_add");
  Lut lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(i < threshold ? std::clamp(i + add, 0, 255) : i);
  return apply_lut(image, lut);
}

Image adjust_color(const Image& image, double factor) {
  check_image(image, "adjust_color");
  Image grey = image;
  for (size_t i = 0; i < grey.pixels.size(); i += 3) {
    const uint8_t l = luma(&image.pixels[i]);
    grey.pixels[i] = grey.pixels[i + 1] = grey.pixels[i + 2] = l;
  }
  return blend(grey, image, factor);
}

Image adjust_contrast(const Image& image, double factor) {
  check_image(image, "adjust_contrast");
  const int64_t n = image.width * image.height;
  double sum = 0;
  for (size_t i = 0; i < image.pixels.size(); i += 3) sum += luma(&image.pixels[i]);
  const double mean = n > 0 ? sum / static_cast<double>(n) : 0.0;
  Image flat = image;
  std::fill(flat.pixels.begin(), flat.pixels.end(), static_cast<uint8_t>(static_cast<int>(mean + 0.5)));
  return blend(flat, image, factor);
}

Image adjust_brightness(const Image& image, double factor) {
  check_image(image, "adjust_brightness");
  Image black = image;
  std::fill(black.pixels.begin(), black.pixels.end(), uint8_t{0});
  return blend(black, image, factor);
}

Image adjust_sharpness(const Image& image, double factor) {
  check_image(image, "adjust_sharpness");
  Image smooth = image;
  const int64_t w = image.width, h = image.height;
  if (w >= 3 && h >= 3) {
    const float k_side = static_cast<float>(1.0 / 13.0), k_centre = static_cast<float>(5.0 / 13.0);
    const float k[9] = {k_side, k_side, k_side, k_side, k_centre, k_side, k_side, k_side, k_side};
    auto px = [&](int64_t x, int64_t y, int b) { return static_cast<float>(image.pixels[(y * w + x) * 3 + b]); };
    for (int64_t y = 1; y < h - 1; ++y) {
      for (int64_t x = 1; x < w - 1; ++x) {
        for (int b = 0; b < 3; ++b) {
          // Pillow's order: row below with kernel[0..2], this row [3..5], row above [6..8]; +0.5 rounds.
          float ss = 0.5f;
          ss += px(x - 1, y + 1, b) * k[0] + px(x, y + 1, b) * k[1] + px(x + 1, y + 1, b) * k[2];
          ss += px(x - 1, y, b) * k[3] + px(x, y, b) * k[4] + px(x + 1, y, b) * k[5];
          ss += px(x - 1, y - 1, b) * k[6] + px(x, y - 1, b) * k[7] + px(x + 1, y - 1, b) * k[8];
          smooth.pixels[(y * w + x) * 3 + b] = ss <= 0.0f ? 0 : (ss >= 255.0f ? 255 : static_cast<uint8_t>(ss));
        }
      }
    }
  }
  return blend(smooth, image, factor);
}

Image rotate(const Image& image, double degrees, Rgb fill) {
  check_image(image, "rotate");
  double angle = std::fmod(degrees, 360.0);
  if (angle < 0) angle += 360.0;
  if (angle == 0.0) return image;
  const int64_t w = image.width, h = image.height;
  const bool square = w == h;
  if (angle == 180.0 || ((angle == 90.0 || angle == 270.0) && square)) {
    Image out = image;  // Pillow transposes these exactly
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        int64_t sx, sy;
        if (angle == 180.0) sx = w - 1 - x, sy = h - 1 - y;
        else if (angle == 90.0) sx = w - 1 - y, sy = x;  // counter-clockwise
        else sx = y, sy = h - 1 - x;
        const uint8_t* p = &image.pixels[(sy * w + sx) * 3];
        uint8_t* o = &out.pixels[(y * w + x) * 3];
        o[0] = p[0], o[1] = p[1], o[2] = p[2];
      }
    }
    return out;
  }
  const double cx = w / 2.0, cy = h / 2.0;
  const double r = -angle * kPi / 180.0;
  double m[6] = {round15(std::cos(r)), round15(std::sin(r)), 0.0, round15(-std::sin(r)), round15(std::cos(r)), 0.0};
  m[2] = m[0] * -cx + m[1] * -cy + m[2];
  m[5] = m[3] * -cx + m[4] * -cy + m[5];
  m[2] += cx;
  m[5] += cy;
  return affine_nearest(image, m, fill);
}

Image shear_x(const Image& image, double shear, Rgb fill) {
  check_image(image, "shear_x");
  const double m[6] = {1, shear, 0, 0, 1, 0};
  return affine_bicubic(image, m, fill);
}

Image shear_y(const Image& image, double shear, Rgb fill) {
  check_image(image, "shear_y");
  const double m[6] = {1, 0, 0, shear, 1, 0};
  return affine_bicubic(image, m, fill);
}

Image translate_x(const Image& image, double pixels, Rgb fill) {
  check_image(image, "translate_x");
  const double m[6] = {1, 0, pixels, 0, 1, 0};
  return affine_nearest(image, m, fill);
}

Image translate_y(const Image& image, double pixels, Rgb fill) {
  check_image(image, "translate_y");
  const double m[6] = {1, 0, 0, 0, 1, pixels};
  return affine_nearest(image, m, fill);
}

void fill_rectangle(Image& image, int64_t x0, int64_t y0, int64_t x1, int64_t y1, Rgb fill) {
  check_image(image, "fill_rectangle");
  x0 = std::max<int64_t>(x0, 0);
  y0 = std::max<int64_t>(y0, 0);
  x1 = std::min<int64_t>(x1, image.width - 1);
  y1 = std::min<int64_t>(y1, image.height - 1);
  for (int64_t y = y0; y <= y1; ++y) {
    for (int64_t x = x0; x <= x1; ++x) {
      uint8_t* o = &image.pixels[(y * image.width + x) * 3];
      o[0] = fill[0], o[1] = fill[1], o[2] = fill[2];
    }
  }
}

CutoutBox draw_cutout(int64_t width, int64_t height, double factor, std::mt19937_64& rng) {
  if (width < 1 || height < 1) {
    throw std::runtime_error("cutout: image of " + std::to_string(width) + "x" + std::to_string(height) + " is empty");
  }
  if (!(factor >= 0.0 && factor <= 1.0)) {
    throw std::runtime_error("cutout: factor value " + std::to_string(factor) + " is outside [0, 1]");
  }
  const int64_t cut_h = static_cast<int64_t>(factor * height + 0.5);
  const int64_t cut_w = static_cast<int64_t>(factor * width + 0.5);
  const int64_t yc = static_cast<int64_t>(uniform_index(rng, static_cast<uint64_t>(height)));
  const int64_t xc = static_cast<int64_t>(uniform_index(rng, static_cast<uint64_t>(width)));
  CutoutBox box;
  box.y0 = std::clamp<int64_t>(yc - cut_h / 2, 0, height);
  box.y1 = std::clamp<int64_t>(yc + cut_h / 2, 0, height);
  box.x0 = std::clamp<int64_t>(xc - cut_w / 2, 0, width);
  box.x1 = std::clamp<int64_t>(xc + cut_w / 2, 0, width);
  for (auto& c : box.color) c = static_cast<uint8_t>(uniform_index(rng, 256));
  return box;
}

void cutout(Image& image, std::mt19937_64& rng, double factor) {
  check_image(image, "cutout");
  const CutoutBox b = draw_cutout(image.width, image.height, factor, rng);
  fill_rectangle(image, b.x0, b.y0, b.x1, b.y1, b.color);
}

const char* op_name(AugmentOp op) {
  switch (op) {
    case AugmentOp::auto_contrast: return "AutoContrast";
    case AugmentOp::equalize: return "Equalize";
    case AugmentOp::invert: return "Invert";
    case AugmentOp::rotate: return "Rotate";
    case AugmentOp::posterize: return "Posterize";
    case AugmentOp::solarize: return "Solarize";
    case AugmentOp::solarize_add: return "SolarizeAdd";
    case AugmentOp::color: return "Color";
    case AugmentOp::contrast: return "Contrast";
    case AugmentOp::brightness: return "Brightness";
    case AugmentOp::sharpness: return "Sharpness";
    case AugmentOp::shear_x: return "ShearX";
    case AugmentOp::shear_y: return "ShearY";
    case AugmentOp::translate_x: return "TranslateX";
    case AugmentOp::translate_y: return "TranslateY";
    case AugmentOp::cutout: return "Cutout";
  }
  return "?";
}

double op_parameter(AugmentOp op, int magnitude) {
  if (magnitude < 0 || magnitude > 9) {
    throw std::runtime_error("RandAugment: magnitude value " + std::to_string(magnitude) + " is outside 0..9");
  }
  const double t = magnitude / 9.0;  // position in the reference's np.linspace(lo, hi, 10)
  switch (op) {
    case AugmentOp::auto_contrast:
    case AugmentOp::equalize:
    case AugmentOp::invert: return 0.0;
    case AugmentOp::rotate: return 30.0 * t;
    case AugmentOp::posterize: return std::nearbyint(8.0 - 4.0 * t);  // bits kept
    case AugmentOp::solarize: return 256.0 - 256.0 * t;               // threshold
    case AugmentOp::solarize_add: return std::floor(110.0 * t);        // added value, threshold 128
    case AugmentOp::color:
    case AugmentOp::contrast:
    case AugmentOp::brightness:
    case AugmentOp::sharpness: return 0.9 * t;  // factor 1 ± this
    case AugmentOp::shear_x:
    case AugmentOp::shear_y: return 0.3 * t;
    case AugmentOp::translate_x:
    case AugmentOp::translate_y: return 150.0 / 331.0 * t;  // fraction of the width / height
    case AugmentOp::cutout: return std::nearbyint(20.0 * t);  // square side in pixels
  }
  return 0.0;
}

bool op_random_sign(AugmentOp op) {
  switch (op) {
    case AugmentOp::color:
    case AugmentOp::contrast:
    case AugmentOp::brightness:
    case AugmentOp::sharpness:
    case AugmentOp::shear_x:
    case AugmentOp::shear_y:
    case AugmentOp::translate_x:
    case AugmentOp::translate_y: return true;
    default: return false;
  }
}

Image apply_op(const Image& image, AugmentOp op, double p, std::mt19937_64* rng) {
  switch (op) {
    case AugmentOp::auto_contrast: return auto_contrast(image);
    case AugmentOp::equalize: return equalize(image);
    case AugmentOp::invert: return invert(image);
    case AugmentOp::rotate: return rotate(image, p);
    case AugmentOp::posterize: return posterize(image, static_cast<int>(p));
    case AugmentOp::solarize: return solarize(image, static_cast<int>(std::ceil(p)));  // i < 227.6 ⇔ i < 228
    case AugmentOp::solarize_add: return solarize_add(image, static_cast<int>(p));
    case AugmentOp::color: return adjust_color(image, 1.0 + p);
    case AugmentOp::contrast: return adjust_contrast(image, 1.0 + p);
    case AugmentOp::brightness: return adjust_brightness(image, 1.0 + p);
    case AugmentOp::sharpness: return adjust_sharpness(image, 1.0 + p);
    case AugmentOp::shear_x: return shear_x(image, p);
    case AugmentOp::shear_y: return shear_y(image, p);
    case AugmentOp::translate_x: return translate_x(image, p * static_cast<double>(image.width));
    case AugmentOp::translate_y: return translate_y(image, p * static_cast<double>(image.height));
    case AugmentOp::cutout: {
      // The reference package's Cutout: centre uniform per axis (y, then x), rows and columns
      // [c − side // 2, c + side // 2) clipped, fixed colour.
      if (rng == nullptr) throw std::runtime_error("apply_op: Cutout draws its centre and needs an rng");
      check_image(image, "cutout");
      Image out = image;
      if (out.width < 1 || out.height < 1) return out;
      const int64_t yc = static_cast<int64_t>(uniform_index(*rng, static_cast<uint64_t>(out.height)));
      const int64_t xc = static_cast<int64_t>(uniform_index(*rng, static_cast<uint64_t>(out.width)));
      const int64_t half = static_cast<int64_t>(p) / 2;
      if (half > 0) fill_rectangle(out, xc - half, yc - half, xc + half - 1, yc + half - 1, {125, 122, 113});
      return out;
    }
  }
  return image;
}

RandAugmentOptions RandAugmentOptions::reference_package() {
  RandAugmentOptions o;
  o.num_ops = 2;
  o.magnitude = 9;
  o.random_magnitude = true;
  o.probability = 0.5;
  o.ops = {AugmentOp::invert,     AugmentOp::cutout,      AugmentOp::sharpness,   AugmentOp::auto_contrast,
           AugmentOp::posterize,  AugmentOp::shear_x,     AugmentOp::translate_x, AugmentOp::translate_y,
           AugmentOp::shear_y,    AugmentOp::rotate,      AugmentOp::equalize,    AugmentOp::contrast,
           AugmentOp::color,      AugmentOp::solarize,    AugmentOp::brightness};
  return o;
}

RandAugment::RandAugment(RandAugmentOptions options) : options_(std::move(options)) {
  if (options_.ops.empty()) throw std::runtime_error("RandAugment: the op list is empty");
  if (options_.num_ops < 0) {
    throw std::runtime_error("RandAugment: num_ops value " + std::to_string(options_.num_ops) + " is negative");
  }
  if (options_.magnitude < 0 || options_.magnitude > 9) {
    throw std::runtime_error("RandAugment: magnitude value " + std::to_string(options_.magnitude) +
                             " is outside 0..9");
  }
  if (options_.random_magnitude && options_.magnitude < 1) {
    throw std::runtime_error("RandAugment: random_magnitude needs magnitude ≥ 1");
  }
  if (!(options_.probability >= 0.0 && options_.probability <= 1.0)) {
    throw std::runtime_error("RandAugment: probability value " + std::to_string(options_.probability) +
                             " is outside [0, 1]");
  }
}

Image RandAugment::operator()(const Image& image, std::mt19937_64& rng, std::vector<AppliedOp>* applied) const {
  check_image(image, "RandAugment");
  Image out = image;
  for (int k = 0; k < options_.num_ops; ++k) {
    const AugmentOp op = options_.ops[uniform_index(rng, options_.ops.size())];
    const int magnitude = options_.random_magnitude
                              ? 1 + static_cast<int>(uniform_index(rng, static_cast<uint64_t>(options_.magnitude)))
                              : options_.magnitude;
    if (options_.probability < 1.0 && !(uniform_unit(rng) < options_.probability)) continue;
    double p = op_parameter(op, magnitude);
    if (op_random_sign(op) && uniform_index(rng, 2) == 0) p = -p;
    out = apply_op(out, op, p, &rng);
    if (applied != nullptr) applied->push_back({op, p});
  }
  return out;
}

}  // namespace asl::train
