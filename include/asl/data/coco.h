// COCO-format instance annotations → the reference's image order and multi-hot class targets.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace asl::data {

/// Options of load_coco / parse_coco.
struct CocoOptions {
  /// Keep images that have no annotation, as all-negative targets, after the annotated ones (in the
  /// order of the `images` list). The reference drops them (default).
  bool keep_empty = false;
};

/// A COCO-format dataset as the reference's `CocoDetection` sees it.
struct CocoDataset {
  /// The annotation file (or the name given to parse_coco), for messages.
  std::string annotations_file;
  /// The folder that `file_names` are relative to.
  std::string images_dir;
  /// Category names; a category's class index is its position in the `categories` list.
  std::vector<std::string> class_names;
  /// Category ids, in the same order as class_names.
  std::vector<int64_t> category_ids;
  /// Image ids in dataset order: the order of each image's first annotation (then the empty ones with
  /// keep_empty).
  std::vector<int64_t> image_ids;
  /// `file_name` of each image as written in the annotation file, in dataset order.
  std::vector<std::string> file_names;
  /// N×3×C int64 (0/1): objects of area < 32², < 96² and larger (the reference's three rows).
  torch::Tensor targets_by_area;
  /// N×C int64 (0/1): the maximum over the three area rows, the multi-hot training/validation target.
  torch::Tensor targets;

  /// Number of images.
  int64_t size() const { return static_cast<int64_t>(image_ids.size()); }
  /// Number of classes (categories).
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
  /// images_dir / file_names[index].
  std::string image_path(int64_t index) const;
  /// image_path of every image, in dataset order.
  std::vector<std::string> image_paths() const;
};

/// Parses COCO-format JSON text. `source` names it in error messages; `images_dir` is stored for
/// image_path. Throws std::runtime_error naming the source, the field and the value for malformed JSON,
/// a missing or mistyped field (`images`, `annotations`, `categories`; image `id`, `file_name`;
/// annotation `image_id`, `category_id`, `area`; category `id`, `name`), a duplicate image or category
/// id, an annotation naming an unknown image or category id, and a `file_name` that is empty, absolute
/// or leaves the image folder (`..`).
CocoDataset parse_coco(const std::string& json_text, const std::string& source, const std::string& images_dir,
                       const CocoOptions& options = {});

/// Reads and parses an annotation file (see parse_coco).
CocoDataset load_coco(const std::string& annotations_file, const std::string& images_dir,
                      const CocoOptions& options = {});

/// Where a dataset's annotations and images are.
struct CocoPaths {
  std::string annotations;
  std::string images;
};

/// The reference's layout: `root/annotations/instances_<split>.json` and `root/<split>/`. Throws
/// std::runtime_error naming the missing path when either is absent.
CocoPaths coco_reference_layout(const std::string& root, const std::string& split = "val2014");

}  // namespace asl::data
