// Pillow-compatible antialiased resampling (separable convolution, fixed-point weights), 8-bit RGB.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "asl/data/image.h"

namespace asl::data {
namespace {

// Weights are fixed point with this many fractional bits: 32 bits, less 8 for the sample, less 2 for
// the sign and the headroom of negative bicubic lobes (Pillow's choice, which we must match to be exact).
constexpr int kWeightBits = 22;
constexpr int64_t kHalf = int64_t{1} << (kWeightBits - 1);

double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Keys' cubic convolution kernel with a = -0.5.
double cubic(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// For each output position along one axis: the first input index, the number of taps, and the taps'
// fixed-point weights (rows of `stride` entries).
struct AxisWeights {
  int64_t stride = 0;
  std::vector<int64_t> first;
  std::vector<int64_t> count;
  std::vector<int32_t> weights;
};

AxisWeights axis_weights(int64_t in_size, int64_t out_size, ResampleFilter filter) {
  const double filter_support = filter == ResampleFilter::bicubic ? 2.0 : 1.0;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  // Downscaling stretches the filter over `scale` input pixels (antialiasing); upscaling does not shrink it.
  const double stretch = std::max(scale, 1.0);
  const double support = filter_support * stretch;
  AxisWeights w;
  w.stride = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  w.first.resize(out_size);
  w.count.resize(out_size);
  w.weights.assign(static_cast<size_t>(out_size * w.stride), 0);
  std::vector<double> taps(static_cast<size_t>(w.stride));
  for (int64_t o = 0; o < out_size; ++o) {
    const double center = (static_cast<double>(o) + 0.5) * scale;
    // Truncation toward zero, then clamping, as the reference computes the window.
    int64_t lo = static_cast<int64_t>(center - support + 0.5);
    int64_t hi = static_cast<int64_t>(center + support + 0.5);
    lo = std::max<int64_t>(lo, 0);
    hi = std::min<int64_t>(hi, in_size);
    const int64_t n = std::max<int64_t>(hi - lo, 0);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = (static_cast<double>(lo + i) - center + 0.5) / stretch;
      taps[i] = filter == ResampleFilter::bicubic ? cubic(d) : triangle(d);
      total += taps[i];
    }
    int32_t* row = &w.weights[static_cast<size_t>(o * w.stride)];
    for (int64_t i = 0; i < n; ++i) {
      const double v = (total != 0.0 ? taps[i] / total : taps[i]) * static_cast<double>(int64_t{1} << kWeightBits);
      // Round half away from zero.
      row[i] = static_cast<int32_t>(v < 0.0 ? v - 0.5 : v + 0.5);
    }
    w.first[o] = lo;
    w.count[o] = n;
  }
  return w;
}

inline uint8_t to_byte(int64_t acc) {
  if (acc <= 0) return 0;
  const int64_t v = acc >> kWeightBits;
  return v > 255 ? uint8_t{255} : static_cast<uint8_t>(v);
}

// Rows [row_begin, row_end) of `src` (src_width × 3 bytes per row) resampled horizontally into `dst`.
void horizontal_pass(const uint8_t* src, int64_t src_width, int64_t row_begin, int64_t row_end, const AxisWeights& w,
                     int64_t out_width, uint8_t* dst) {
  for (int64_t y = row_begin; y < row_end; ++y) {
    const uint8_t* in_row = src + y * src_width * 3;
    uint8_t* out_row = dst + (y - row_begin) * out_width * 3;
    for (int64_t o = 0; o < out_width; ++o) {
      const int32_t* k = &w.weights[static_cast<size_t>(o * w.stride)];
      const uint8_t* p = in_row + w.first[o] * 3;
      int64_t r = kHalf, g = kHalf, b = kHalf;
      for (int64_t i = 0; i < w.count[o]; ++i) {
        r += int64_t{p[3 * i]} * k[i];
        g += int64_t{p[3 * i + 1]} * k[i];
        b += int64_t{p[3 * i + 2]} * k[i];
      }
      out_row[3 * o] = to_byte(r);
      out_row[3 * o + 1] = to_byte(g);
      out_row[3 * o + 2] = to_byte(b);
    }
  }
}

// `src` rows (row_stride bytes each, first row = input row `row_offset`) resampled vertically into `dst`.
void vertical_pass(const uint8_t* src, int64_t row_bytes, int64_t row_offset, const AxisWeights& w, int64_t out_height,
                   uint8_t* dst) {
  std::vector<int64_t> acc(static_cast<size_t>(row_bytes));
  for (int64_t o = 0; o < out_height; ++o) {
    std::fill(acc.begin(), acc.end(), kHalf);
    const int32_t* k = &w.weights[static_cast<size_t>(o * w.stride)];
    for (int64_t i = 0; i < w.count[o]; ++i) {
      const uint8_t* in_row = src + (w.first[o] - row_offset + i) * row_bytes;
      const int64_t weight = k[i];
      for (int64_t j = 0; j < row_bytes; ++j) acc[j] += int64_t{in_row[j]} * weight;
    }
    uint8_t* out_row = dst + o * row_bytes;
    for (int64_t j = 0; j < row_bytes; ++j) out_row[j] = to_byte(acc[j]);
  }
}

}  // namespace

Image resize(const Image& image, int64_t width, int64_t height, ResampleFilter filter) {
  if (width <= 0 || height <= 0) {
    throw std::runtime_error("resize: target size must be positive, got " + std::to_string(width) + "x" +
                             std::to_string(height));
  }
  if (image.width <= 0 || image.height <= 0 ||
      static_cast<int64_t>(image.pixels.size()) != image.width * image.height * 3) {
    throw std::runtime_error("resize: image of " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                             " holds " + std::to_string(image.pixels.size()) + " bytes, expected width*height*3");
  }
  const bool horizontal = width != image.width;
  const bool vertical = height != image.height;
  if (!horizontal && !vertical) return image;

  // Horizontal pass first, over only the input rows the vertical pass will read.
  Image mid;
  const uint8_t* rows = image.pixels.data();
  int64_t row_offset = 0;
  AxisWeights vw;
  if (vertical) vw = axis_weights(image.height, height, filter);
  if (horizontal) {
    const AxisWeights hw = axis_weights(image.width, width, filter);
    int64_t row_begin = 0;
    int64_t row_end = image.height;
    if (vertical) {
      row_begin = vw.first.front();
      row_end = vw.first.back() + vw.count.back();
    }
    mid.width = width;
    mid.height = row_end - row_begin;
    mid.pixels.resize(static_cast<size_t>(mid.width * mid.height * 3));
    horizontal_pass(image.pixels.data(), image.width, row_begin, row_end, hw, width, mid.pixels.data());
    if (!vertical) {
      mid.height = height;
      return mid;
    }
    rows = mid.pixels.data();
    row_offset = row_begin;
  }
  Image out;
  out.width = width;
  out.height = height;
  out.pixels.resize(static_cast<size_t>(width * height * 3));
  vertical_pass(rows, width * 3, row_offset, vw, height, out.pixels.data());
  return out;
}

}  // namespace asl::data
