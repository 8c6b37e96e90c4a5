// Batch loader: worker threads claim images in dataset order and write them straight into batch tensors.
#include "asl/data/loader.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace asl::data {

// A batch from its first claimed image until next() hands it out.
struct BatchLoader::Pending {
  torch::Tensor images;
  int64_t remaining = 0;
  int64_t error_index = -1;  // lowest failed image index in the batch, so the reported error is deterministic
  std::exception_ptr error;
};

BatchLoader::BatchLoader(std::vector<std::string> paths, torch::Tensor targets, std::vector<std::string> names,
                         LoaderOptions options)
    : paths_(std::move(paths)), targets_(std::move(targets)), names_(std::move(names)), options_(std::move(options)) {
  const auto bad = [](const std::string& what) { throw std::runtime_error("BatchLoader: " + what); };
  if (options_.batch_size < 1) bad("batch_size must be at least 1, got " + std::to_string(options_.batch_size));
  if (options_.image_size < 1) bad("image_size must be at least 1, got " + std::to_string(options_.image_size));
  if (options_.workers < 0) bad("workers must be at least 0, got " + std::to_string(options_.workers));
  if (options_.prefetch_batches < 0)
    bad("prefetch_batches must be at least 0, got " + std::to_string(options_.prefetch_batches));
  if (targets_.defined() && (targets_.dim() < 1 || targets_.size(0) != size())) {
    bad("targets hold " + std::to_string(targets_.dim() < 1 ? 0 : targets_.size(0)) + " rows for " +
        std::to_string(size()) + " images");
  }
  if (!names_.empty() && static_cast<int64_t>(names_.size()) != size()) {
    bad(std::to_string(names_.size()) + " names for " + std::to_string(size()) + " images");
  }
  if (names_.empty()) names_ = paths_;
  pending_.resize(static_cast<size_t>(num_batches()));
  const int64_t threads = std::min(options_.workers, size());
  for (int64_t t = 0; t < threads; ++t) threads_.emplace_back([this] { work(); });
}

BatchLoader::BatchLoader(const CocoDataset& dataset, LoaderOptions options)
    : BatchLoader(dataset.image_paths(), dataset.targets, dataset.file_names, std::move(options)) {}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (std::thread& t : threads_) t.join();
}

int64_t BatchLoader::num_batches() const { return (size() + options_.batch_size - 1) / options_.batch_size; }

void BatchLoader::load_into(int64_t index, float* out) const {
  Image image = load_resized(paths_[static_cast<size_t>(index)], options_.image_size, options_.filter, options_.decode);
  if (options_.transform) {
    options_.transform(image, index);
    if (image.width != options_.image_size || image.height != options_.image_size) {
      throw std::runtime_error("BatchLoader: the transform changed " + paths_[static_cast<size_t>(index)] + " to " +
                               std::to_string(image.width) + "x" + std::to_string(image.height));
    }
  }
  to_chw_float(image, out);
}

void BatchLoader::work() {
  const int64_t bs = options_.batch_size;
  const int64_t s = options_.image_size;
  for (;;) {
    int64_t index = 0;
    float* out = nullptr;
    Pending* pending = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Claim only within the prefetch window: the batch being consumed plus prefetch_batches more.
      changed_.wait(lock, [&] {
        return stopping_ || next_claim_ >= size() || next_claim_ < (next_batch_ + 1 + options_.prefetch_batches) * bs;
      });
      if (stopping_ || next_claim_ >= size()) return;
      index = next_claim_++;
      const int64_t batch = index / bs;
      std::unique_ptr<Pending>& slot = pending_[static_cast<size_t>(batch)];
      if (!slot) {
        slot = std::make_unique<Pending>();
        slot->remaining = std::min(bs, size() - batch * bs);
        slot->images = torch::empty({slot->remaining, 3, s, s}, torch::kFloat32);
      }
      pending = slot.get();
      out = pending->images.data_ptr<float>() + (index - batch * bs) * 3 * s * s;
    }
    std::exception_ptr error;
    try {
      load_into(index, out);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (error && (pending->error_index < 0 || index < pending->error_index)) {
        pending->error_index = index;
        pending->error = std::move(error);  // the consumer holds the only reference
      }
      --pending->remaining;
    }
    changed_.notify_all();
  }
}

Batch BatchLoader::take(int64_t batch, torch::Tensor images) const {
  const int64_t begin = batch * options_.batch_size;
  const int64_t count = images.size(0);
  Batch out;
  out.images = std::move(images);
  if (targets_.defined()) out.targets = targets_.narrow(0, begin, count).clone();
  for (int64_t i = begin; i < begin + count; ++i) {
    out.names.push_back(names_[static_cast<size_t>(i)]);
    out.indices.push_back(i);
  }
  return out;
}

std::optional<Batch> BatchLoader::next() {
  if (next_batch_ >= num_batches()) return std::nullopt;
  const int64_t batch = next_batch_;
  if (threads_.empty()) {
    ++next_batch_;
    const int64_t begin = batch * options_.batch_size;
    const int64_t count = std::min(options_.batch_size, size() - begin);
    const int64_t s = options_.image_size;
    torch::Tensor images = torch::empty({count, 3, s, s}, torch::kFloat32);
    for (int64_t i = 0; i < count; ++i) load_into(begin + i, images.data_ptr<float>() + i * 3 * s * s);
    return take(batch, std::move(images));
  }
  std::unique_ptr<Pending> done;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] {
      const auto& slot = pending_[static_cast<size_t>(batch)];
      return slot && slot->remaining == 0;
    });
    done = std::move(pending_[static_cast<size_t>(batch)]);
    ++next_batch_;
  }
  changed_.notify_all();  // the prefetch window moved
  if (done->error) std::rethrow_exception(done->error);
  return take(batch, std::move(done->images));
}

}  // namespace asl::data
