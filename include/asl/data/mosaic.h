// Fashion-MNIST mosaics: a real multi-label dataset (grids of clothing items) written in COCO format.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace asl::data {

/// The ten Fashion-MNIST class names, in label order 0..9.
const std::vector<std::string>& fashion_mnist_classes();

/// One split of an IDX dataset: `count` grayscale images of rows × cols bytes, and their labels.
struct IdxImages {
  int64_t count = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> pixels;  ///< count × rows × cols
  std::vector<uint8_t> labels;  ///< count
};

/// Reads an IDX image file and its label file (plain or gzip-compressed, detected by zlib). Throws
/// std::runtime_error naming the file for a bad magic number, sizes that disagree or a short file.
IdxImages read_idx(const std::string& images_path, const std::string& labels_path);

/// Options of build_fashion_mosaic.
struct MosaicOptions {
  /// Folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (Debian's dataset-fashion-mnist).
  std::string source_dir = "/usr/share/datasets/fashion-mnist";
  /// Images in train2014 (items from the official train split).
  int64_t train = 2000;
  /// Images in val2014 (items from the official test split).
  int64_t val = 500;
  uint64_t seed = 0;
  /// Cell side in pixels; items are resized from 28 with Pillow's bilinear filter when different.
  int64_t cell = 28;
  /// Cells per side: 2 or 3.
  int64_t grid = 2;
  /// Items per image are drawn uniformly from 1..max_items (distinct classes; ≤ grid²).
  int64_t max_items = 4;
};

/// One placed item: its cell and the Fashion-MNIST sample.
struct MosaicItem {
  int64_t cell_row = 0, cell_col = 0;
  int64_t label = 0;         ///< class 0..9
  int64_t source_index = 0;  ///< index in the split's IDX file
};

/// What build_fashion_mosaic wrote for one image.
struct MosaicImage {
  std::string file_name;
  std::vector<MosaicItem> items;
};

/// The written dataset.
struct MosaicSummary {
  std::vector<MosaicImage> train;
  std::vector<MosaicImage> val;
};

/// Builds the dataset in COCO's reference layout under `out_dir`: annotations/instances_train2014.json,
/// train2014/*.png, annotations/instances_val2014.json, val2014/*.png. Each image is a grid × grid mosaic
/// of (grid·cell)² RGB pixels (grayscale replicated), with 1..max_items items of distinct classes in
/// distinct random cells, the other cells black; one annotation per item (bbox of its cell, area = cell²,
/// category = its class, ids 1..10 in class order). Reproducible: the same options give byte-identical
/// files (PNG written with fixed zlib settings). Every file is written atomically. Throws
/// std::runtime_error for bad options (naming the field and value) or unreadable source files.
MosaicSummary build_fashion_mosaic(const std::string& out_dir, const MosaicOptions& options = {});

/// Encodes an 8-bit RGB image (H×W×3 interleaved) as PNG: no interlace, filter 0 on every row, zlib
/// level 9. Deterministic.
std::string encode_png_rgb(int64_t width, int64_t height, const std::vector<uint8_t>& pixels);

}  // namespace asl::data
