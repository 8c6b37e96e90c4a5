// Image decoding, Pillow-exact resizing and tensor conversion against fixtures/images.
#include "asl/data/image.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <regex>
#include <string>
#include <vector>

#include "asl/io/file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using asl::data::DecodeOptions;
using asl::data::Image;
using asl::data::ResampleFilter;

namespace {

// Tolerances from the issue: at most one grey level off anywhere, at least 99.5% of values exact.
constexpr int kMaxLevelDiff = 1;
constexpr double kMinExactFraction = 0.995;

const fs::path& images_dir() {
  static const fs::path dir = asl::test::fixtures_dir() / "images";
  return dir;
}

const nlohmann::json& cases() {
  static const nlohmann::json j = asl::test::load_json(images_dir() / "cases.json");
  return j;
}

// An H×W×3 uint8 fixture as an Image.
Image fixture_image(const std::string& file) {
  const torch::Tensor t = asl::test::fixture_npy("images", file).contiguous();
  EXPECT_EQ(t.scalar_type(), torch::kUInt8) << file;
  EXPECT_EQ(t.dim(), 3) << file;
  EXPECT_EQ(t.size(2), 3) << file;
  Image img;
  img.height = t.size(0);
  img.width = t.size(1);
  img.pixels.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
  return img;
}

torch::Tensor as_tensor(const Image& img) {
  return torch::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, 3}, torch::kUInt8).clone();
}

// A fresh temporary folder per test, removed at the end.

// Every (key, size, filter) resize fixture of a case: keys torchvision_resize_S and pil_default_resize_S.
struct ResizeFixture {
  std::string key;
  std::string file;
  int64_t size;
  ResampleFilter filter;
};

std::vector<ResizeFixture> resize_fixtures(const nlohmann::json& c) {
  static const std::regex pattern("(torchvision|pil_default)_resize_([0-9]+)");
  std::vector<ResizeFixture> out;
  for (auto it = c.begin(); it != c.end(); ++it) {
    std::smatch m;
    const std::string key = it.key();
    if (!std::regex_match(key, m, pattern)) continue;
    out.push_back({key, it.value().get<std::string>(), std::stoll(m[2].str()),
                   m[1].str() == "torchvision" ? ResampleFilter::bilinear : ResampleFilter::bicubic});
  }
  return out;
}

std::string bytes_of(const fs::path& p) { return asl::io::read_file(p.string()); }

std::string encode(const std::string& ext, const cv::Mat& mat, const std::vector<int>& params = {}) {
  std::vector<uchar> buf;
  if (!cv::imencode(ext, mat, buf, params)) throw std::runtime_error("test setup: imencode " + ext + " failed");
  return std::string(buf.begin(), buf.end());
}

// The decoded fixture of case 0 as an OpenCV BGR matrix, for writing other formats.
cv::Mat first_case_bgr() {
  const Image img = fixture_image(cases().at(0).at("decoded_rgb").get<std::string>());
  cv::Mat bgr(static_cast<int>(img.height), static_cast<int>(img.width), CV_8UC3);
  for (int64_t i = 0; i < img.width * img.height; ++i) {
    bgr.data[3 * i] = img.pixels[3 * i + 2];
    bgr.data[3 * i + 1] = img.pixels[3 * i + 1];
    bgr.data[3 * i + 2] = img.pixels[3 * i];
  }
  return bgr;
}

}  // namespace

TEST(ImageFixtures, CasesArePresent) {
  ASSERT_TRUE(cases().is_array());
  ASSERT_FALSE(cases().empty());
  for (const auto& c : cases()) {
    EXPECT_FALSE(resize_fixtures(c).empty()) << c.at("image");
    bool bilinear = false, bicubic = false;
    for (const auto& r : resize_fixtures(c)) (r.filter == ResampleFilter::bilinear ? bilinear : bicubic) = true;
    EXPECT_TRUE(bilinear && bicubic) << c.at("image") << ": needs a fixture for each filter";
  }
}

TEST(ImageHeader, ReadsSizeOfEveryCase) {
  for (const auto& c : cases()) {
    const std::string file = c.at("image");
    const auto h = asl::data::read_image_header(bytes_of(images_dir() / file), file);
    EXPECT_EQ(h.width, c.at("width").get<int64_t>()) << file;
    EXPECT_EQ(h.height, c.at("height").get<int64_t>()) << file;
    const std::string ext = fs::path(file).extension().string();
    const auto expected = ext == ".png" ? asl::data::ImageFormat::png : asl::data::ImageFormat::jpeg;
    EXPECT_EQ(h.format, expected) << file;
  }
}

TEST(ImageDecode, EqualsPilConvertRgbExactly) {
  for (const auto& c : cases()) {
    const std::string file = c.at("image");
    const Image got = asl::data::load_image((images_dir() / file).string());
    const Image want = fixture_image(c.at("decoded_rgb"));
    EXPECT_EQ(got.width, c.at("width").get<int64_t>()) << file;
    EXPECT_EQ(got.height, c.at("height").get<int64_t>()) << file;
    ASSERT_EQ(got.width, want.width) << file;
    ASSERT_EQ(got.height, want.height) << file;
    int64_t differing = 0;
    for (size_t i = 0; i < got.pixels.size(); ++i) differing += got.pixels[i] != want.pixels[i];
    EXPECT_EQ(differing, 0) << file << ": " << differing << " of " << got.pixels.size() << " values differ";
  }
}

TEST(ImageResize, MatchesPillowForBothFilters) {
  for (const auto& c : cases()) {
    const Image source = fixture_image(c.at("decoded_rgb"));
    for (const auto& r : resize_fixtures(c)) {
      const Image want = fixture_image(r.file);
      ASSERT_EQ(want.width, r.size) << r.file;
      ASSERT_EQ(want.height, r.size) << r.file;
      const Image got = asl::data::resize(source, r.size, r.size, r.filter);
      ASSERT_EQ(got.width, r.size);
      ASSERT_EQ(got.height, r.size);
      int64_t exact = 0;
      int max_diff = 0;
      for (size_t i = 0; i < got.pixels.size(); ++i) {
        const int d = std::abs(int{got.pixels[i]} - int{want.pixels[i]});
        exact += d == 0;
        max_diff = std::max(max_diff, d);
      }
      const double fraction = static_cast<double>(exact) / static_cast<double>(got.pixels.size());
      std::cout << "[ resize   ] " << c.at("image").get<std::string>() << " " << r.key << ": " << 100.0 * fraction
                << "% exact, max diff " << max_diff << "\n";
      EXPECT_LE(max_diff, kMaxLevelDiff) << c.at("image") << " " << r.key;
      EXPECT_GE(fraction, kMinExactFraction) << c.at("image") << " " << r.key;
    }
  }
}

TEST(ImageResize, LoadResizedChainsDecodeAndResize) {
  for (const auto& c : cases()) {
    for (const auto& r : resize_fixtures(c)) {
      const Image got =
          asl::data::load_resized((images_dir() / c.at("image").get<std::string>()).string(), r.size, r.filter);
      const Image want = fixture_image(r.file);
      int64_t off = 0;
      for (size_t i = 0; i < got.pixels.size(); ++i)
        off += std::abs(int{got.pixels[i]} - int{want.pixels[i]}) > kMaxLevelDiff;
      EXPECT_EQ(off, 0) << c.at("image") << " " << r.key;
    }
  }
}

TEST(ImageResize, SameSizeIsIdentityAndOneAxisWorks) {
  const Image source = fixture_image(cases().at(0).at("decoded_rgb").get<std::string>());
  for (const auto filter : {ResampleFilter::bilinear, ResampleFilter::bicubic}) {
    const Image same = asl::data::resize(source, source.width, source.height, filter);
    EXPECT_EQ(same.pixels, source.pixels);
    // A one-axis resize leaves the other axis' rows/columns untouched in count.
    const Image wide = asl::data::resize(source, 100, source.height, filter);
    EXPECT_EQ(wide.width, 100);
    EXPECT_EQ(wide.height, source.height);
    const Image tall = asl::data::resize(source, source.width, 50, filter);
    EXPECT_EQ(tall.width, source.width);
    EXPECT_EQ(tall.height, 50);
    // Upscaling a constant image keeps it constant (weights are normalised per output pixel).
    Image flat;
    flat.width = 5;
    flat.height = 3;
    flat.pixels.assign(5 * 3 * 3, 77);
    const Image up = asl::data::resize(flat, 17, 11, filter);
    EXPECT_TRUE(std::all_of(up.pixels.begin(), up.pixels.end(), [](uint8_t v) { return v == 77; }));
  }
  EXPECT_THROW(asl::data::resize(source, 0, 10, ResampleFilter::bilinear), std::runtime_error);
}

TEST(ImageTensor, IsChwFloatDividedBy255) {
  for (const auto& c : cases()) {
    for (const auto& r : resize_fixtures(c)) {
      const Image img = fixture_image(r.file);
      const torch::Tensor got = asl::data::to_tensor(img);
      // torchvision ToTensor / the reference's infer.py: permute to CHW, float, divide by 255.
      const torch::Tensor want = as_tensor(img).permute({2, 0, 1}).to(torch::kFloat32).div(255);
      EXPECT_EQ(got.scalar_type(), torch::kFloat32);
      EXPECT_EQ(got.sizes(), torch::IntArrayRef({3, r.size, r.size}));
      EXPECT_TRUE(got.is_contiguous());
      EXPECT_TRUE(torch::equal(got, want)) << r.file;
    }
  }
}

TEST(ImageLimits, PixelLimitIsCheckedOnTheHeader) {
  for (const auto& c : cases()) {
    const std::string path = (images_dir() / c.at("image").get<std::string>()).string();
    const int64_t pixels = c.at("width").get<int64_t>() * c.at("height").get<int64_t>();
    DecodeOptions at_limit;
    at_limit.max_pixels = pixels;
    EXPECT_NO_THROW(asl::data::load_image(path, at_limit)) << path;
    DecodeOptions below;
    below.max_pixels = pixels - 1;
    const std::string msg = asl::test::error_of([&] { asl::data::load_image(path, below); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("over the limit"), std::string::npos) << msg;
  }
}

TEST(ImageLimits, HugeHeaderIsRefusedBeforeDecoding) {
  // Headers that claim more than the default 100 MP, followed by no image data: the limit must be what
  // is reported (a decoder would fail differently, or try to allocate gigabytes).
  asl::test::TempDir tmp;
  std::string png("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
  png += std::string("\x00\x00\x27\x11\x00\x00\x27\x10\x08\x02\x00\x00\x00", 13);  // 10001 x 10000, RGB
  const fs::path png_path = tmp.write("huge.png", png);
  std::string msg = asl::test::error_of([&] { asl::data::load_image(png_path.string()); });
  EXPECT_NE(msg.find(png_path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("over the limit of 100000000"), std::string::npos) << msg;

  // A real JPEG whose frame header is patched to 20000 x 20000.
  for (const auto& c : cases()) {
    const std::string file = c.at("image");
    std::string bytes = bytes_of(images_dir() / file);
    if (bytes.size() < 2 || static_cast<uint8_t>(bytes[0]) != 0xFF || static_cast<uint8_t>(bytes[1]) != 0xD8) continue;
    size_t sof = std::string::npos;
    for (size_t i = 2; i + 9 < bytes.size(); ++i) {
      const auto m = static_cast<uint8_t>(bytes[i + 1]);
      if (static_cast<uint8_t>(bytes[i]) == 0xFF && (m == 0xC0 || m == 0xC1 || m == 0xC2)) {
        sof = i;
        break;
      }
    }
    ASSERT_NE(sof, std::string::npos) << file;
    const int h = (static_cast<uint8_t>(bytes[sof + 5]) << 8) | static_cast<uint8_t>(bytes[sof + 6]);
    ASSERT_EQ(h, c.at("height").get<int>()) << file << ": test could not find the frame header";
    bytes[sof + 5] = bytes[sof + 7] = static_cast<char>(0x4E);  // 0x4E20 = 20000
    bytes[sof + 6] = bytes[sof + 8] = static_cast<char>(0x20);
    const fs::path p = tmp.write("huge_" + file, bytes);
    msg = asl::test::error_of([&] { asl::data::load_image(p.string()); });
    EXPECT_NE(msg.find("20000x20000"), std::string::npos) << msg;
    EXPECT_NE(msg.find("over the limit"), std::string::npos) << msg;
    const auto header = asl::data::read_image_header(bytes, p.string());
    EXPECT_EQ(header.width, 20000);
    EXPECT_EQ(header.height, 20000);
  }
}

TEST(ImageErrors, TruncatedFilesAreErrorsNamingThem) {
  asl::test::TempDir tmp;
  for (const auto& c : cases()) {
    const std::string file = c.at("image");
    const std::string bytes = bytes_of(images_dir() / file);
    for (const double keep : {0.5, 0.9}) {
      const std::string name = "cut" + std::to_string(static_cast<int>(keep * 100)) + "_" + file;
      const fs::path p =
          tmp.write(name, bytes.substr(0, static_cast<size_t>(keep * static_cast<double>(bytes.size()))));
      const std::string msg = asl::test::error_of([&] { asl::data::load_image(p.string()); });
      EXPECT_NE(msg.find(p.string()), std::string::npos) << name << ": " << msg;
    }
    // Cut inside the header.
    const fs::path head = tmp.write("head_" + file, bytes.substr(0, 20));
    const std::string msg = asl::test::error_of([&] { asl::data::load_image(head.string()); });
    EXPECT_NE(msg.find(head.string()), std::string::npos) << msg;
  }
}

TEST(ImageErrors, NonImagesAndMissingFilesAreErrorsNamingThem) {
  asl::test::TempDir tmp;
  const std::vector<std::pair<std::string, std::string>> files = {
      {"text.jpg", "this is not an image\n"},
      {"empty.png", ""},
      {"gif.gif", "GIF89a\x01\x00\x01\x00\x00\x00\x00;"},
      {"jpeg_garbage.jpg", std::string("\xFF\xD8\xFF\xE0", 4) + std::string(64, 'x')},
      {"png_garbage.png",
       std::string("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0", 29) + std::string(64, 'x')},
  };
  for (const auto& [name, bytes] : files) {
    const fs::path p = tmp.write(name, bytes);
    const std::string msg = asl::test::error_of([&] { asl::data::load_image(p.string()); });
    EXPECT_NE(msg.find(p.string()), std::string::npos) << name << ": " << msg;
  }
  const std::string missing = (tmp.path() / "no_such_file.jpg").string();
  const std::string msg = asl::test::error_of([&] { asl::data::load_image(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
}

TEST(ImageDecode, OtherContainersAndDepths) {
  const cv::Mat bgr = first_case_bgr();
  const Image want = fixture_image(cases().at(0).at("decoded_rgb").get<std::string>());
  // Lossless encodings decode to the same RGB pixels.
  for (const auto& [ext, params] : std::vector<std::pair<std::string, std::vector<int>>>{
           {".bmp", {}}, {".png", {}}, {".webp", {cv::IMWRITE_WEBP_QUALITY, 101}}}) {
    const std::string bytes = encode(ext, bgr, params);
    const auto h = asl::data::read_image_header(bytes, ext);
    EXPECT_STREQ(asl::data::format_name(h.format), ext == ".bmp" ? "BMP" : ext == ".png" ? "PNG" : "WebP");
    EXPECT_EQ(h.width, want.width) << ext;
    EXPECT_EQ(h.height, want.height) << ext;
    const Image got = asl::data::decode_image(bytes, "test" + ext);
    EXPECT_EQ(got.pixels, want.pixels) << ext;
  }
  // Lossy WebP: header and size right.
  const std::string lossy = encode(".webp", bgr, {cv::IMWRITE_WEBP_QUALITY, 80});
  EXPECT_EQ(asl::data::read_image_header(lossy, "lossy.webp").width, want.width);  // VP8 (lossy) header
  const Image lossy_img = asl::data::decode_image(lossy, "lossy.webp");
  EXPECT_EQ(lossy_img.width, want.width);
  EXPECT_EQ(lossy_img.height, want.height);

  // BGRA: alpha dropped, not blended.
  cv::Mat bgra(bgr.rows, bgr.cols, CV_8UC4);
  for (int i = 0; i < bgr.rows * bgr.cols; ++i) {
    for (int k = 0; k < 3; ++k) bgra.data[4 * i + k] = bgr.data[3 * i + k];
    bgra.data[4 * i + 3] = static_cast<uchar>(i % 256);
  }
  EXPECT_EQ(asl::data::decode_image(encode(".png", bgra), "bgra.png").pixels, want.pixels);
  // Lossless WebP with alpha (an extended VP8X file); alpha never 0, so the encoder keeps every colour.
  for (int i = 0; i < bgr.rows * bgr.cols; ++i) bgra.data[4 * i + 3] = static_cast<uchar>(128 + i % 128);
  const std::string webp_alpha = encode(".webp", bgra, {cv::IMWRITE_WEBP_QUALITY, 101});
  const auto vp8x = asl::data::read_image_header(webp_alpha, "alpha.webp");
  EXPECT_EQ(vp8x.width, want.width);
  EXPECT_EQ(vp8x.height, want.height);
  EXPECT_EQ(asl::data::decode_image(webp_alpha, "alpha.webp").pixels, want.pixels);

  // 16-bit PNGs: colour keeps the high byte (Pillow's "RGB;16B"); gray is clipped to 255 (Pillow's "I" → "RGB").
  cv::Mat rgb16(2, 3, CV_16UC3), gray16(2, 3, CV_16UC1);
  const uint16_t values[] = {0, 1, 255, 256, 4660, 65535};
  for (int i = 0; i < 6; ++i) {
    gray16.ptr<uint16_t>()[i] = values[i];
    for (int k = 0; k < 3; ++k) rgb16.ptr<uint16_t>()[3 * i + k] = static_cast<uint16_t>(values[i] ^ (k * 0x1111));
  }
  const Image c16 = asl::data::decode_image(encode(".png", rgb16), "rgb16.png");
  const Image g16 = asl::data::decode_image(encode(".png", gray16), "gray16.png");
  for (int i = 0; i < 6; ++i) {
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(c16.pixels[3 * i + k], static_cast<uint8_t>(rgb16.ptr<uint16_t>()[3 * i + (2 - k)] >> 8));
      EXPECT_EQ(g16.pixels[3 * i + k], static_cast<uint8_t>(std::min<uint16_t>(values[i], 255)));
    }
  }
}
