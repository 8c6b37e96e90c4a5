// Batches of preprocessed images with their targets, decoded and resized by worker threads in a fixed order.
#pragma once

#include <torch/types.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "asl/data/coco.h"
#include "asl/data/image.h"

namespace asl::data {

/// Options of BatchLoader.
struct LoaderOptions {
  /// Images per batch; the last batch may be smaller.
  int64_t batch_size = 32;
  /// Images are resized to image_size × image_size ("squish", no crop).
  int64_t image_size = 448;
  /// bilinear: the reference's validation/training preprocessing; bicubic: its single-image inference.
  ResampleFilter filter = ResampleFilter::bilinear;
  /// Decoding threads; 0 decodes on the calling thread inside next().
  int64_t workers = 2;
  /// Batches decoded ahead of the one being consumed (with workers > 0).
  int64_t prefetch_batches = 2;
  /// Pixel limit and other decoding options.
  DecodeOptions decode;
  /// Optional, applied on the worker thread to each image after the resize and before the tensor
  /// conversion (training augmentation); receives the image's position in the loader's list. It must
  /// keep the image_size × image_size size and be callable from several threads at once.
  std::function<void(Image& image, int64_t index)> transform;
};

/// One batch, in dataset order.
struct Batch {
  /// B×3×S×S float32, values uint8 / 255.
  torch::Tensor images;
  /// B×C rows of the targets given to the loader (undefined when none were given).
  torch::Tensor targets;
  /// The names of the batch's images (the COCO file_name, or the path).
  std::vector<std::string> names;
  /// Dataset indices of the batch's images.
  std::vector<int64_t> indices;
};

/// Loads images in dataset order, `batch_size` at a time, decoding and resizing on worker threads ahead
/// of the consumer. The order (and every value) is independent of the number of workers. An image that
/// fails to load makes next() throw (std::runtime_error naming the file) at the batch that holds it.
class BatchLoader {
 public:
  /// `paths` are read in order; `targets` (N×C, any dtype, or undefined) and `names` (N, or empty: the
  /// paths are used) travel with them.
  BatchLoader(std::vector<std::string> paths, torch::Tensor targets, std::vector<std::string> names,
              LoaderOptions options);
  /// A COCO dataset's images and multi-hot targets, named by their file_name.
  BatchLoader(const CocoDataset& dataset, LoaderOptions options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  /// The next batch, or nullopt after the last one.
  std::optional<Batch> next();

  /// Number of images.
  int64_t size() const { return static_cast<int64_t>(paths_.size()); }
  /// Number of batches.
  int64_t num_batches() const;

 private:
  struct Pending;
  void work();
  void load_into(int64_t index, float* out) const;
  Batch take(int64_t batch, torch::Tensor images) const;

  std::vector<std::string> paths_;
  torch::Tensor targets_;
  std::vector<std::string> names_;
  LoaderOptions options_;

  std::mutex mutex_;
  std::condition_variable changed_;
  int64_t next_claim_ = 0;  // next image index a worker will take
  int64_t next_batch_ = 0;  // next batch next() returns
  bool stopping_ = false;
  std::vector<std::unique_ptr<Pending>> pending_;  // per batch, alive from first claim to next()
  std::vector<std::thread> threads_;
};

}  // namespace asl::data
