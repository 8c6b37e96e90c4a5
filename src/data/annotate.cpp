#include "asl/data/annotate.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace asl::data {
namespace {

constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr int kPad = 4;

struct Layout {
  double scale;
  int thickness;
  std::vector<std::string> lines;
  std::vector<cv::Size> sizes;  // text sizes (height includes the baseline)
  int block_width = 0, block_height = 0;
};

int line_height(const cv::Size& s) { return s.height + 2 * kPad; }

Layout layout(const std::vector<std::string>& labels, double scale, int max_width) {
  Layout l;
  l.scale = scale;
  l.thickness = std::max(1, static_cast<int>(std::lround(scale * 1.5)));
  for (std::string line : labels) {
    int baseline = 0;
    cv::Size size = cv::getTextSize(line, kFont, scale, l.thickness, &baseline);
    // Cut what cannot fit even at the smallest font.
    while (size.width + 2 * kPad > max_width && line.size() > 4) {
      line = line.substr(0, line.size() - 4) + "...";
      size = cv::getTextSize(line, kFont, scale, l.thickness, &baseline);
    }
    size.height += baseline;
    l.lines.push_back(line);
    l.sizes.push_back(size);
    l.block_width = std::max(l.block_width, size.width + 2 * kPad);
    l.block_height += line_height(size);
  }
  return l;
}

}  // namespace

Annotated annotate(const Image& photo, const std::vector<std::string>& labels_in, int min_short_side) {
  if (photo.width <= 0 || photo.height <= 0 || photo.pixels.size() != static_cast<size_t>(photo.width * photo.height * 3)) {
    throw std::invalid_argument("annotate: not an RGB image of its stated size");
  }
  const std::vector<std::string> labels = labels_in.empty() ? std::vector<std::string>{"(nothing detected)"} : labels_in;
  cv::Mat rgb(static_cast<int>(photo.height), static_cast<int>(photo.width), CV_8UC3,
              const_cast<uint8_t*>(photo.pixels.data()));
  const int short_side = static_cast<int>(std::min(photo.width, photo.height));
  cv::Mat pic = rgb;
  if (short_side < min_short_side) {
    const double f = static_cast<double>(min_short_side) / short_side;
    cv::resize(rgb, pic, cv::Size(static_cast<int>(std::lround(photo.width * f)), static_cast<int>(std::lround(photo.height * f))),
               0, 0, short_side < 100 ? cv::INTER_NEAREST : cv::INTER_LINEAR);
  }
  const int w = pic.cols, h = pic.rows;
  // Font from the photo's size; smaller until the widest line fits (not below a legible minimum).
  double scale = std::clamp(std::min(w, h) / 640.0, 0.45, 1.6);
  Layout l = layout(labels, scale, w);
  while (l.block_width > w && scale > 0.36) {
    scale *= 0.9;
    l = layout(labels, scale, w);
  }
  Annotated out;
  // A photo that had to be enlarged is small: any label over it would hide part of what it shows.
  const bool enlarged = short_side < min_short_side;
  out.panel = enlarged || static_cast<double>(l.block_width) * l.block_height > 0.25 * w * h;
  cv::Mat canvas;
  if (out.panel) {
    canvas = cv::Mat(h + l.block_height, w, CV_8UC3, cv::Scalar(24, 24, 24));
    pic.copyTo(canvas(cv::Rect(0, 0, w, h)));
  } else {
    canvas = pic.clone();
  }
  out.picture = {0, 0, w, h};
  int y = out.panel ? h : 0;
  for (size_t i = 0; i < l.lines.size(); ++i) {
    const cv::Size& s = l.sizes[i];
    const int lh = line_height(s);
    const cv::Rect box(0, y, std::min(w, s.width + 2 * kPad), lh);
    if (!out.panel) cv::rectangle(canvas, box, cv::Scalar(0, 0, 0), cv::FILLED);
    cv::putText(canvas, l.lines[i], cv::Point(kPad, y + kPad + s.height - (s.height / 5)), kFont, l.scale,
                cv::Scalar(255, 255, 255), l.thickness, cv::LINE_AA);
    out.text_boxes.push_back({box.x, box.y, box.width, box.height});
    y += lh;
  }
  out.image.width = canvas.cols;
  out.image.height = canvas.rows;
  out.image.pixels.assign(canvas.data, canvas.data + canvas.total() * 3);
  return out;
}

std::string encode_jpeg(const Image& image) {
  cv::Mat rgb(static_cast<int>(image.height), static_cast<int>(image.width), CV_8UC3,
              const_cast<uint8_t*>(image.pixels.data()));
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> buf;
  if (!cv::imencode(".jpg", bgr, buf, {cv::IMWRITE_JPEG_QUALITY, 95})) {
    throw std::runtime_error("cannot encode a JPEG image");
  }
  return std::string(buf.begin(), buf.end());
}

}  // namespace asl::data
