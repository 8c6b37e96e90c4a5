// Datasets besides COCO: a CSV list of images and labels, and a folder layout, as CocoDataset values.
#pragma once

#include <string>

#include "asl/data/coco.h"

namespace asl::data {

/// Options of the CSV and folder readers.
struct ListOptions {
  /// Folder that relative image paths are resolved against; empty: the CSV file's folder.
  std::string images_dir;
  /// Refuse a row whose image file does not exist (checked up front, before any training starts).
  bool check_files = true;
};

/// Parses a CSV image list. Two layouts, told apart by the header:
///  - label list: header `path,<class1>;<class2>;…` (the class list, in class-index order) or
///    `path,labels` (classes: the sorted union of the names used); each row `image,<name>;<name>;…`
///    (an empty label field is an all-negative image);
///  - multi-hot: header `path,<class1>,<class2>,…` (three or more columns, or two where every row's
///    value is 0 or 1); each row `image,0,1,…`.
/// Fields may be double-quoted ("a,b.jpg"; "" inside quotes is one "); spaces around fields and a
/// trailing \r are dropped; blank lines and lines starting with # are skipped. The result is a
/// CocoDataset: class_names, category_ids 0..C−1, image_ids 0..N−1, file_names as written, targets
/// N×C int64 and targets_by_area with every label in the "large" row. Throws std::runtime_error naming
/// the source, the line and the value for: a missing header, a row with the wrong number of columns, an
/// unknown class, a duplicate class in the header, a multi-hot value other than 0/1, a missing image
/// (with check_files) and an empty dataset.
CocoDataset parse_csv_list(const std::string& text, const std::string& source, const std::string& images_dir,
                           bool check_files = true);

/// Reads and parses a CSV list file (see parse_csv_list).
CocoDataset load_csv_list(const std::string& csv_path, const ListOptions& options = {});

/// A folder dataset: `dir/labels.csv` when present (a CSV list, images relative to `dir`), otherwise one
/// subfolder per class (single-label data: `dir/<class>/<image>`; classes are the sorted subfolder names;
/// images are the files with a .jpg/.jpeg/.png/.bmp/.webp extension, any case, sorted by path; hidden
/// entries skipped). Throws std::runtime_error naming the folder when it is missing or holds no image.
CocoDataset load_folder(const std::string& dir, const ListOptions& options = {});

/// Any supported dataset by path: a .csv file → load_csv_list; a folder with
/// `annotations/instances_<split>.json` → COCO (coco_reference_layout); another folder → load_folder.
CocoDataset load_any_dataset(const std::string& path, const std::string& coco_split = "val2014",
                             const ListOptions& options = {});

}  // namespace asl::data
