// Fashion-MNIST IDX reading, deterministic PNG encoding and the COCO-format mosaic dataset builder.
#include "asl/data/mosaic.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "asl/data/image.h"
#include "asl/io/file.h"

namespace asl::data {
namespace {

namespace fs = std::filesystem;

// Whole file through zlib's gz reader, which passes uncompressed files through unchanged.
std::string read_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error(path + ": cannot open");
  std::string out;
  std::array<char, 1 << 16> buf;
  for (;;) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      const std::string msg = gzerror(f, &err);
      gzclose(f);
      throw std::runtime_error(path + ": read error: " + msg);
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  gzclose(f);
  return out;
}

uint32_t be32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) | (uint32_t(uint8_t(s[at + 2])) << 8) |
         uint32_t(uint8_t(s[at + 3]));
}

void put32(std::string& s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s.push_back(static_cast<char>((v >> shift) & 0xff));
}

void png_chunk(std::string& out, const char* type, const std::string& data) {
  put32(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out += body;
  put32(out, static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
}

uint64_t draw_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t v;
  do v = rng(); while (v >= limit);
  return v % n;
}

// The first k entries of a uniformly shuffled 0..n−1 (partial Fisher–Yates).
std::vector<int64_t> choose_distinct(std::mt19937_64& rng, int64_t n, int64_t k) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t j = i + static_cast<int64_t>(draw_below(rng, static_cast<uint64_t>(n - i)));
    std::swap(v[static_cast<size_t>(i)], v[static_cast<size_t>(j)]);
  }
  v.resize(static_cast<size_t>(k));
  return v;
}

std::vector<MosaicImage> build_split(const IdxImages& src, const std::string& out_dir, const std::string& split,
                                     int64_t count, std::mt19937_64& rng, const MosaicOptions& o) {
  std::array<std::vector<int64_t>, 10> by_class;
  for (int64_t i = 0; i < src.count; ++i) {
    const uint8_t label = src.labels[static_cast<size_t>(i)];
    if (label > 9) throw std::runtime_error(split + ": label " + std::to_string(label) + " of item " + std::to_string(i) + " is not 0..9");
    by_class[label].push_back(i);
  }
  for (int c = 0; c < 10; ++c) {
    if (by_class[c].empty()) throw std::runtime_error(split + ": the source holds no item of class " + std::to_string(c));
  }
  const int64_t side = o.grid * o.cell;
  const int64_t cells = o.grid * o.grid;
  const int64_t max_items = std::min<int64_t>({o.max_items, cells, 10});
  const auto& names = fashion_mnist_classes();
  fs::create_directories(fs::path(out_dir) / split);

  nlohmann::json images = nlohmann::json::array(), annotations = nlohmann::json::array(), categories = nlohmann::json::array();
  for (int c = 0; c < 10; ++c) categories.push_back({{"id", c + 1}, {"name", names[c]}, {"supercategory", "clothing"}});
  std::vector<MosaicImage> written;
  int64_t annotation_id = 0;
  for (int64_t n = 0; n < count; ++n) {
    MosaicImage mi;
    char name[32];
    std::snprintf(name, sizeof(name), "%06lld.png", static_cast<long long>(n + 1));
    mi.file_name = name;
    const int64_t k = 1 + static_cast<int64_t>(draw_below(rng, static_cast<uint64_t>(max_items)));
    const std::vector<int64_t> classes = choose_distinct(rng, 10, k);
    const std::vector<int64_t> where = choose_distinct(rng, cells, k);
    std::vector<uint8_t> pixels(static_cast<size_t>(side * side * 3), 0);
    for (int64_t j = 0; j < k; ++j) {
      MosaicItem item;
      item.label = classes[static_cast<size_t>(j)];
      const auto& pool = by_class[static_cast<size_t>(item.label)];
      item.source_index = pool[draw_below(rng, pool.size())];
      item.cell_row = where[static_cast<size_t>(j)] / o.grid;
      item.cell_col = where[static_cast<size_t>(j)] % o.grid;
      Image cell{src.cols, src.rows, std::vector<uint8_t>(static_cast<size_t>(src.rows * src.cols * 3))};
      const uint8_t* g = &src.pixels[static_cast<size_t>(item.source_index * src.rows * src.cols)];
      for (int64_t p = 0; p < src.rows * src.cols; ++p) {
        for (int ch = 0; ch < 3; ++ch) cell.pixels[static_cast<size_t>(p * 3 + ch)] = g[p];
      }
      if (cell.width != o.cell || cell.height != o.cell) cell = resize(cell, o.cell, o.cell, ResampleFilter::bilinear);
      const int64_t x0 = item.cell_col * o.cell, y0 = item.cell_row * o.cell;
      for (int64_t y = 0; y < o.cell; ++y) {
        std::copy_n(&cell.pixels[static_cast<size_t>(y * o.cell * 3)], o.cell * 3,
                    &pixels[static_cast<size_t>(((y0 + y) * side + x0) * 3)]);
      }
      annotations.push_back({{"id", ++annotation_id},
                             {"image_id", n + 1},
                             {"category_id", item.label + 1},
                             {"bbox", {x0, y0, o.cell, o.cell}},
                             {"area", o.cell * o.cell},
                             {"iscrowd", 0}});
      mi.items.push_back(item);
    }
    images.push_back({{"id", n + 1}, {"file_name", mi.file_name}, {"width", side}, {"height", side}});
    asl::io::write_file_atomic((fs::path(out_dir) / split / mi.file_name).string(), encode_png_rgb(side, side, pixels));
    written.push_back(std::move(mi));
  }
  const nlohmann::json doc = {{"info", {{"description", "Fashion-MNIST mosaics (asl data fashion-mosaic)"},
                                        {"seed", o.seed}, {"grid", o.grid}, {"cell", o.cell}}},
                              {"images", images},
                              {"annotations", annotations},
                              {"categories", categories}};
  fs::create_directories(fs::path(out_dir) / "annotations");
  asl::io::write_file_atomic((fs::path(out_dir) / "annotations" / ("instances_" + split + ".json")).string(),
                             doc.dump() + "\n");
  return written;
}

}  // namespace

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

IdxImages read_idx(const std::string& images_path, const std::string& labels_path) {
  const std::string im = read_gz(images_path), lb = read_gz(labels_path);
  if (im.size() < 16 || be32(im, 0) != 0x803) {
    throw std::runtime_error(images_path + ": not an IDX image file (magic 0x00000803 expected)");
  }
  if (lb.size() < 8 || be32(lb, 0) != 0x801) {
    throw std::runtime_error(labels_path + ": not an IDX label file (magic 0x00000801 expected)");
  }
  IdxImages out;
  out.count = be32(im, 4);
  out.rows = be32(im, 8);
  out.cols = be32(im, 12);
  if (static_cast<int64_t>(be32(lb, 4)) != out.count) {
    throw std::runtime_error(labels_path + ": " + std::to_string(be32(lb, 4)) + " labels for " +
                             std::to_string(out.count) + " images in " + images_path);
  }
  const size_t need = static_cast<size_t>(out.count * out.rows * out.cols);
  if (im.size() - 16 < need) throw std::runtime_error(images_path + ": file is shorter than its header says");
  if (lb.size() - 8 < static_cast<size_t>(out.count)) throw std::runtime_error(labels_path + ": file is shorter than its header says");
  out.pixels.assign(im.begin() + 16, im.begin() + 16 + static_cast<std::ptrdiff_t>(need));
  out.labels.assign(lb.begin() + 8, lb.begin() + 8 + out.count);
  return out;
}

std::string encode_png_rgb(int64_t width, int64_t height, const std::vector<uint8_t>& pixels) {
  if (width < 1 || height < 1 || pixels.size() != static_cast<size_t>(width * height * 3)) {
    throw std::runtime_error("encode_png_rgb: " + std::to_string(pixels.size()) + " bytes for " +
                             std::to_string(width) + "x" + std::to_string(height) + " RGB");
  }
  std::string raw;
  raw.reserve(static_cast<size_t>(height * (width * 3 + 1)));
  for (int64_t y = 0; y < height; ++y) {
    raw.push_back('\0');  // filter type 0 (none)
    raw.append(reinterpret_cast<const char*>(&pixels[static_cast<size_t>(y * width * 3)]), static_cast<size_t>(width * 3));
  }
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string z(size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(z.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
                static_cast<uLong>(raw.size()), 9) != Z_OK) {
    throw std::runtime_error("encode_png_rgb: zlib compression failed");
  }
  z.resize(size);
  std::string out("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  put32(ihdr, static_cast<uint32_t>(width));
  put32(ihdr, static_cast<uint32_t>(height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit, RGB, deflate, filter 0, no interlace
  png_chunk(out, "IHDR", ihdr);
  png_chunk(out, "IDAT", z);
  png_chunk(out, "IEND", "");
  return out;
}

MosaicSummary build_fashion_mosaic(const std::string& out_dir, const MosaicOptions& o) {
  auto bad = [](const std::string& field, const std::string& value, const std::string& why) {
    return std::runtime_error("fashion mosaic: " + field + " value " + value + " " + why);
  };
  if (o.grid != 2 && o.grid != 3) throw bad("grid", std::to_string(o.grid), "is not 2 or 3");
  if (o.cell < 4 || o.cell > 1024) throw bad("cell", std::to_string(o.cell), "is outside 4..1024");
  if (o.train < 0) throw bad("train", std::to_string(o.train), "is negative");
  if (o.val < 0) throw bad("val", std::to_string(o.val), "is negative");
  if (o.train + o.val == 0) throw bad("train + val", "0", "leaves nothing to build");
  if (o.max_items < 1) throw bad("max_items", std::to_string(o.max_items), "is below 1");
  const fs::path src(o.source_dir);
  MosaicSummary summary;
  std::mt19937_64 train_rng(o.seed), val_rng(o.seed ^ 0x9E3779B97F4A7C15ULL);
  if (o.train > 0) {
    const IdxImages train = read_idx((src / "train-images-idx3-ubyte.gz").string(), (src / "train-labels-idx1-ubyte.gz").string());
    summary.train = build_split(train, out_dir, "train2014", o.train, train_rng, o);
  }
  if (o.val > 0) {
    const IdxImages test = read_idx((src / "t10k-images-idx3-ubyte.gz").string(), (src / "t10k-labels-idx1-ubyte.gz").string());
    summary.val = build_split(test, out_dir, "val2014", o.val, val_rng, o);
  }
  return summary;
}

}  // namespace asl::data
