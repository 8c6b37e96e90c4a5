// Image header probing, decoding (OpenCV imgcodecs) to PIL-equivalent RGB, and conversion to tensors.
#include "asl/data/image.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <stdexcept>
#include <string>

#include "asl/io/file.h"

namespace asl::data {
namespace {

[[noreturn]] void fail(const std::string& name, const std::string& what) {
  throw std::runtime_error(name + ": " + what);
}

uint32_t be16(const std::string& b, size_t at) {
  return (uint32_t{static_cast<uint8_t>(b[at])} << 8) | static_cast<uint8_t>(b[at + 1]);
}
uint32_t be32(const std::string& b, size_t at) { return (be16(b, at) << 16) | be16(b, at + 2); }
uint32_t le16(const std::string& b, size_t at) {
  return uint32_t{static_cast<uint8_t>(b[at])} | (uint32_t{static_cast<uint8_t>(b[at + 1])} << 8);
}
uint32_t le24(const std::string& b, size_t at) {
  return le16(b, at) | (uint32_t{static_cast<uint8_t>(b[at + 2])} << 16);
}
uint32_t le32(const std::string& b, size_t at) { return le16(b, at) | (le16(b, at + 2) << 16); }
uint8_t byte_at(const std::string& b, size_t at) { return static_cast<uint8_t>(b[at]); }

bool starts_with(const std::string& b, const char* magic, size_t n, size_t at = 0) {
  return b.size() >= at + n && std::memcmp(b.data() + at, magic, n) == 0;
}

// Start-of-frame markers carry the image size: C0–CF except DHT (C4), JPG (C8) and DAC (CC).
bool is_sof(uint8_t m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }
// Markers without a length field.
bool is_standalone(uint8_t m) { return m == 0x01 || (m >= 0xD0 && m <= 0xD8); }

// Position of the next marker code at or after `pos` (skipping stray bytes and 0xFF fill), or npos.
size_t next_marker(const std::string& b, size_t pos) {
  while (pos < b.size()) {
    const void* ff = std::memchr(b.data() + pos, 0xFF, b.size() - pos);
    if (ff == nullptr) return std::string::npos;
    pos = static_cast<size_t>(static_cast<const char*>(ff) - b.data());
    while (pos < b.size() && byte_at(b, pos) == 0xFF) ++pos;
    if (pos >= b.size()) return std::string::npos;
    if (byte_at(b, pos) != 0x00) return pos;  // FF 00 is a stuffed byte, not a marker
    ++pos;
  }
  return std::string::npos;
}

// Walks a JPEG's marker segments. With `to_end`, also walks the entropy-coded scans and returns true
// only when the end-of-image marker is reached; otherwise it stops at the first start-of-frame.
bool walk_jpeg(const std::string& b, const std::string& name, bool to_end, ImageHeader* header) {
  size_t pos = 2;
  for (;;) {
    pos = next_marker(b, pos);
    if (pos == std::string::npos) return false;
    const uint8_t m = byte_at(b, pos);
    ++pos;
    if (m == 0xD9) return true;
    if (is_standalone(m)) continue;  // RSTn inside a scan, TEM
    if (pos + 2 > b.size()) return false;
    const size_t length = be16(b, pos);
    if (length < 2) {
      char code[8];
      std::snprintf(code, sizeof code, "0x%02X", m);
      fail(name, std::string("corrupt JPEG: marker ") + code + " has segment length " + std::to_string(length));
    }
    if (pos + length > b.size()) return false;
    if (is_sof(m) && header != nullptr) {
      if (length < 8) fail(name, "corrupt JPEG: start-of-frame segment of length " + std::to_string(length));
      header->height = be16(b, pos + 3);
      header->width = be16(b, pos + 5);
      if (!to_end) return true;
    }
    pos += length;
    if (m == 0xDA && !to_end) return false;  // image data before any frame header
  }
}

}  // namespace

const char* format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::jpeg:
      return "JPEG";
    case ImageFormat::png:
      return "PNG";
    case ImageFormat::bmp:
      return "BMP";
    case ImageFormat::webp:
      return "WebP";
  }
  return "?";
}

ImageHeader read_image_header(const std::string& b, const std::string& name) {
  ImageHeader h;
  const auto truncated = [&](const char* what) { fail(name, std::string("truncated ") + what + " header"); };
  if (starts_with(b, "\xFF\xD8\xFF", 3)) {
    h.format = ImageFormat::jpeg;
    if (!walk_jpeg(b, name, false, &h)) truncated("JPEG");
    if (h.width == 0 && h.height == 0) fail(name, "corrupt JPEG: no frame header before the end-of-image marker");
    if (h.height == 0) fail(name, "JPEG without a height in its frame header (DNL marker) is not supported");
  } else if (starts_with(b, "\x89PNG\r\n\x1a\n", 8)) {
    h.format = ImageFormat::png;
    if (b.size() < 24) truncated("PNG");
    if (!starts_with(b, "IHDR", 4, 12)) fail(name, "corrupt PNG: first chunk is not IHDR");
    h.width = be32(b, 16);
    h.height = be32(b, 20);
  } else if (starts_with(b, "BM", 2)) {
    h.format = ImageFormat::bmp;
    if (b.size() < 26) truncated("BMP");
    const uint32_t info_size = le32(b, 14);
    if (info_size == 12) {  // OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
      h.width = le16(b, 18);
      h.height = le16(b, 20);
    } else {
      h.width = static_cast<int32_t>(le32(b, 18));
      h.height = static_cast<int32_t>(le32(b, 22));
      if (h.height < 0) h.height = -h.height;  // top-down rows
    }
  } else if (starts_with(b, "RIFF", 4) && starts_with(b, "WEBP", 4, 8)) {
    h.format = ImageFormat::webp;
    if (b.size() < 30) truncated("WebP");
    if (starts_with(b, "VP8X", 4, 12)) {
      h.width = int64_t{le24(b, 24)} + 1;
      h.height = int64_t{le24(b, 27)} + 1;
    } else if (starts_with(b, "VP8 ", 4, 12)) {
      if (!starts_with(b, "\x9D\x01\x2A", 3, 23)) fail(name, "corrupt WebP: VP8 frame without its start code");
      h.width = le16(b, 26) & 0x3FFF;
      h.height = le16(b, 28) & 0x3FFF;
    } else if (starts_with(b, "VP8L", 4, 12)) {
      if (byte_at(b, 20) != 0x2F) fail(name, "corrupt WebP: VP8L chunk without its signature byte");
      const uint32_t bits = le32(b, 21);
      h.width = int64_t{bits & 0x3FFF} + 1;
      h.height = int64_t{(bits >> 14) & 0x3FFF} + 1;
    } else {
      fail(name, "unsupported WebP chunk '" + b.substr(12, 4) + "'");
    }
  } else {
    fail(name, b.empty() ? "empty file, not an image" : "not a JPEG, PNG, BMP or WebP image");
  }
  if (h.width <= 0 || h.height <= 0) {
    fail(name, std::string(format_name(h.format)) + " header gives an empty size " + std::to_string(h.width) + "x" +
                   std::to_string(h.height));
  }
  return h;
}

Image decode_image(const std::string& bytes, const std::string& name, const DecodeOptions& options) {
  const ImageHeader header = read_image_header(bytes, name);
  const int64_t pixels = header.width * header.height;
  if (pixels > options.max_pixels) {
    fail(name, std::string(format_name(header.format)) + " image of " + std::to_string(header.width) + "x" +
                   std::to_string(header.height) + " = " + std::to_string(pixels) + " pixels is over the limit of " +
                   std::to_string(options.max_pixels) + " pixels");
  }
  // libjpeg decodes a cut-off JPEG with grey rows and a warning; Pillow refuses it, and so do we.
  if (header.format == ImageFormat::jpeg && !walk_jpeg(bytes, name, true, nullptr)) {
    fail(name, "truncated JPEG (no end-of-image marker)");
  }
  if (bytes.size() > static_cast<size_t>(INT_MAX))
    fail(name, "file of " + std::to_string(bytes.size()) + " bytes is too large");
  cv::Mat decoded;
  try {
    const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
    // IMREAD_UNCHANGED keeps the file's channels and depth and applies no EXIF orientation.
    decoded = cv::imdecode(buffer, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    fail(name, std::string("cannot decode ") + format_name(header.format) + " image: " + e.what());
  }
  if (decoded.empty()) {
    fail(name, std::string("cannot decode ") + format_name(header.format) + " image (corrupt or truncated)");
  }
  if (decoded.cols != header.width || decoded.rows != header.height) {
    fail(name, "decoded size " + std::to_string(decoded.cols) + "x" + std::to_string(decoded.rows) +
                   " differs from the header's " + std::to_string(header.width) + "x" + std::to_string(header.height));
  }
  const int channels = decoded.channels();
  const int depth = decoded.depth();
  if ((depth != CV_8U && depth != CV_16U) || channels < 1 || channels > 4) {
    fail(name, "unsupported decoded pixel layout: depth " + std::to_string(depth) + ", " + std::to_string(channels) +
                   " channels");
  }
  Image out;
  out.width = decoded.cols;
  out.height = decoded.rows;
  out.pixels.resize(static_cast<size_t>(out.width * out.height * 3));
  // OpenCV gives gray (1 channel), gray+alpha (2), BGR (3) or BGRA (4). Pillow keeps 16-bit gray as
  // 32-bit integers and clips them to 255 on convert("RGB"); 16-bit colour it unpacks to the high byte.
  for (int y = 0; y < decoded.rows; ++y) {
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(y) * out.width * 3;
    if (depth == CV_8U) {
      const uint8_t* src = decoded.ptr<uint8_t>(y);
      for (int x = 0; x < decoded.cols; ++x, src += channels, dst += 3) {
        if (channels <= 2) {
          dst[0] = dst[1] = dst[2] = src[0];
        } else {
          dst[0] = src[2];
          dst[1] = src[1];
          dst[2] = src[0];
        }
      }
    } else {
      const uint16_t* src = decoded.ptr<uint16_t>(y);
      for (int x = 0; x < decoded.cols; ++x, src += channels, dst += 3) {
        if (channels == 1) {
          dst[0] = dst[1] = dst[2] = static_cast<uint8_t>(std::min<uint16_t>(src[0], 255));
        } else if (channels == 2) {
          dst[0] = dst[1] = dst[2] = static_cast<uint8_t>(src[0] >> 8);
        } else {
          dst[0] = static_cast<uint8_t>(src[2] >> 8);
          dst[1] = static_cast<uint8_t>(src[1] >> 8);
          dst[2] = static_cast<uint8_t>(src[0] >> 8);
        }
      }
    }
  }
  return out;
}

Image load_image(const std::string& path, const DecodeOptions& options) {
  return decode_image(asl::io::read_file(path), path, options);
}

void to_chw_float(const Image& image, float* out) {
  const int64_t plane = image.width * image.height;
  const uint8_t* src = image.pixels.data();
  for (int64_t i = 0; i < plane; ++i) {
    // Division (not multiplication by 1/255) to match torchvision's ToTensor bit for bit.
    out[i] = static_cast<float>(src[3 * i]) / 255.0f;
    out[plane + i] = static_cast<float>(src[3 * i + 1]) / 255.0f;
    out[2 * plane + i] = static_cast<float>(src[3 * i + 2]) / 255.0f;
  }
}

torch::Tensor to_tensor(const Image& image) {
  if (static_cast<int64_t>(image.pixels.size()) != image.width * image.height * 3) {
    throw std::runtime_error("to_tensor: image of " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                             " holds " + std::to_string(image.pixels.size()) + " bytes, expected width*height*3");
  }
  torch::Tensor t = torch::empty({3, image.height, image.width}, torch::kFloat32);
  to_chw_float(image, t.data_ptr<float>());
  return t;
}

Image load_resized(const std::string& path, int64_t size, ResampleFilter filter, const DecodeOptions& options) {
  return resize(load_image(path, options), size, size, filter);
}

}  // namespace asl::data
