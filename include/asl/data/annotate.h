// Images with their detected classes drawn on them, readable at any size.
#pragma once

#include <string>
#include <vector>

#include "asl/data/image.h"

namespace asl::data {

/// A rectangle in pixels (x, y of the top-left corner).
struct PixelRect {
  int x = 0, y = 0, width = 0, height = 0;
};

/// The annotated picture and where things went on it.
struct Annotated {
  Image image;                      ///< RGB, the canvas
  PixelRect picture;                ///< where the (possibly enlarged) photo sits on the canvas
  std::vector<PixelRect> text_boxes;  ///< one per label line, each inside the canvas
  bool panel = false;               ///< labels in a panel below the photo rather than over it
};

/// Draws one line per label ("class 0.97", every detected class). A photo whose short side is under
/// `min_short_side` is enlarged to it first (nearest-neighbour below 100 px, so small items stay crisp;
/// bilinear above). Labels go over the photo's top-left corner when their block covers at most a quarter
/// of it and the photo was not enlarged, else into a panel below it; the font shrinks until the widest line fits the canvas, and a line
/// still too long is cut with "...", so no text runs off the canvas.
Annotated annotate(const Image& photo, const std::vector<std::string>& labels, int min_short_side = 320);

/// JPEG bytes of an image (quality 95).
std::string encode_jpeg(const Image& image);

}  // namespace asl::data
