// Images: header probing, decoding to RGB as PIL's convert("RGB"), Pillow-exact resizing, tensors.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace asl::data {

/// An 8-bit RGB image: `height` rows of `width` pixels, channels interleaved (H×W×3, row-major).
struct Image {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> pixels;
};

/// The containers the decoder accepts, recognised by their first bytes (not the file extension).
enum class ImageFormat { jpeg, png, bmp, webp };

/// "JPEG", "PNG", "BMP" or "WebP".
const char* format_name(ImageFormat format);

/// What a file's header says, read without decoding any pixel data.
struct ImageHeader {
  ImageFormat format = ImageFormat::jpeg;
  int64_t width = 0;
  int64_t height = 0;
};

/// The default pixel limit (width × height) above which an image is refused before decoding.
inline constexpr int64_t kDefaultMaxPixels = 100'000'000;

/// Decoding options.
struct DecodeOptions {
  /// Images with more pixels than this are refused before any pixel data is decoded.
  int64_t max_pixels = kDefaultMaxPixels;
};

/// Reads the format and the size from the first bytes of an encoded image (JPEG SOF marker, PNG IHDR,
/// BMP info header, WebP VP8/VP8L/VP8X chunk). Throws std::runtime_error naming `name` when the bytes
/// are not one of the four formats or the header is cut short.
ImageHeader read_image_header(const std::string& bytes, const std::string& name);

/// Decodes an encoded image to RGB exactly as `PIL.Image.open(f).convert("RGB")` does: grayscale is
/// replicated, alpha dropped (not blended), palettes expanded, 16-bit samples reduced as Pillow does
/// (multi-channel: high byte; single-channel: clipped to 255), no EXIF rotation. The pixel limit is
/// checked on the header first; a JPEG without its end-of-image marker is refused as truncated (libjpeg
/// would fill the missing rows with grey, Pillow refuses). Throws std::runtime_error naming `name`.
Image decode_image(const std::string& bytes, const std::string& name, const DecodeOptions& options = {});

/// Reads and decodes the file at `path` (see decode_image); errors name the path.
Image load_image(const std::string& path, const DecodeOptions& options = {});

/// The two resampling filters of the reference's preprocessing.
enum class ResampleFilter {
  /// Triangle filter, support 1: torchvision `Resize((S, S))` on a PIL image (validation, training).
  bilinear,
  /// Cubic convolution with a = -0.5, support 2: Pillow 9.4's default of `img.resize((S, S))` (inference).
  bicubic,
};

/// Resizes to `width` × `height` with Pillow's resampling (antialiased: the filter support widens by the
/// downscale factor; separable, horizontal pass then vertical; fixed-point weights with 22 fractional
/// bits; each pass rounds and clips to uint8). Bit-exact with Pillow 9.4 on the reference fixtures.
Image resize(const Image& image, int64_t width, int64_t height, ResampleFilter filter);

/// The image as a 3×H×W float32 tensor with values uint8 / 255 (no mean/std normalisation).
torch::Tensor to_tensor(const Image& image);

/// Writes the image as 3×H×W float32 values uint8 / 255 to `out` (3·H·W floats, channel-major).
void to_chw_float(const Image& image, float* out);

/// The reference's preprocessing of one file: decode, resize to size × size ("squish", no crop).
Image load_resized(const std::string& path, int64_t size, ResampleFilter filter, const DecodeOptions& options = {});

}  // namespace asl::data
