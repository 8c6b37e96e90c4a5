// The training loop of the reference's train.py: Adam + one-cycle, ASL, model EMA, per-epoch validation, resumable.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/types.h>

#include "asl/data/coco.h"
#include "asl/data/image.h"
#include "asl/models/tresnet.h"
#include "asl/models/weights.h"
#include "asl/nn/loss.h"
#include "asl/train/distributed.h"

namespace asl::train {

/// Images with multi-hot targets: what the trainer reads. COCO, CSV and folder datasets convert to it.
struct LabeledImages {
  /// Where the images come from (annotation file, CSV, folder), for messages.
  std::string source;
  /// Image files, in dataset order.
  std::vector<std::string> paths;
  /// N × C targets (0/1, any dtype).
  torch::Tensor targets;
  /// C class names.
  std::vector<std::string> class_names;

  int64_t size() const { return static_cast<int64_t>(paths.size()); }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
};

/// A COCO dataset's images, targets and category names.
LabeledImages from_coco(const data::CocoDataset& dataset);

/// Augments one training image in place (after the squish resize, before the tensor conversion); the
/// seed is a pure function of (run seed, epoch, position), so the result does not depend on the
/// number of workers or on where a run was resumed. Called from several threads at once.
using AugmentFn = std::function<void(data::Image& image, uint64_t seed)>;

/// The order of epoch `epoch` (0-based) over `n` training images: a Fisher-Yates shuffle from the run
/// seed (std::mt19937_64, unbiased, library-independent).
std::vector<int64_t> epoch_order(uint64_t seed, int64_t epoch, int64_t n);

/// The augmentation seed of the image at `position` of epoch `epoch`'s order (positions past the end
/// are DistributedSampler's padding, which repeats the start of the order).
uint64_t image_seed(uint64_t seed, int64_t epoch, int64_t position);

/// DistributedSampler's share of rank `rank` of `world` of an epoch's order of `n` images from position
/// `begin` on (0 at an epoch's start; the first position not consumed when a run resumed mid-epoch):
/// begin + rank, begin + rank + world, ..., ceil((n - begin) / world) positions; a position p >= n is
/// the padding p - n. Throws std::invalid_argument for n < 1, world < 1, rank outside [0, world), begin < 0.
std::vector<int64_t> shard_positions(int64_t n, int64_t world, int64_t rank, int64_t begin = 0);

/// Whether the Trainer computes in channels-last memory format on this CPU: where oneDNN runs AVX-512
/// kernels (avx512_core and above; a float32 TResNet-M step measured ~15 % faster than NCHW), not on AVX2
/// (no gain measured). Values and checkpoints are the same either way, up to the kernels' summation order.
bool channels_last_training();

/// The reference's training augmentation after the squish resize: CutoutPIL(cutout_factor=0.5), then
/// RandAugment (2 ops at magnitude 9 from the 15 ops of asl/train/augment.h), from one std::mt19937_64
/// seeded with `seed`.
AugmentFn reference_augment();

/// The reference's recipe (train.py) as defaults, plus run control.
struct TrainerOptions {
  /// A registered architecture (tresnet_m, …), or "auto": the pretrain's architecture (needs
  /// pretrain_path); ignored when model_options is set.
  TORCH_ARG(std::string, model_name) = "tresnet_m";
  /// A custom architecture (its num_classes is replaced by the dataset's), e.g. a tiny TResNet in tests.
  TORCH_ARG(c10::optional<models::TResNetOptions>, model_options) = c10::nullopt;
  /// A pretrain to start from: any file models::read_weights reads (published or timm layout, .pth or
  /// .safetensors); head.fc.* is dropped as the reference does and every other missing, unexpected or
  /// mismatched key is reported. A timm-layout pretrain makes the model's norms plain batch norms.
  TORCH_ARG(std::string, pretrain_path) = "";
  /// Take the pretrain's EMA weights (timm training checkpoints' state_dict_ema).
  TORCH_ARG(bool, pretrain_use_ema) = false;
  /// The layout of model-highest.pth and model-epoch-N.pth; unset: the model's natural one (published for
  /// InPlaceABN norms, timm for plain norms). Published with plain norms is refused at construction.
  TORCH_ARG(c10::optional<models::Layout>, save_layout) = c10::nullopt;
  /// Training and validation resolution (multiple of 32).
  TORCH_ARG(int64_t, image_size) = 224;
  TORCH_ARG(int64_t, batch_size) = 128;
  /// Validation batch size; 0: batch_size.
  TORCH_ARG(int64_t, val_batch_size) = 0;
  /// Peak learning rate of the one-cycle schedule.
  TORCH_ARG(double, lr) = 1e-4;
  /// Length of the one-cycle schedule in epochs.
  TORCH_ARG(int64_t, epochs) = 80;
  /// Training stops after this (1-based) epoch; 0 or > epochs: after `epochs`. The reference's
  /// `if epoch > Stop_epoch: break` over 0-based epochs trains Stop_epoch + 1 = 41 epochs.
  TORCH_ARG(int64_t, stop_epoch) = 40;
  /// L2 weight decay of the weights (not of biases and 1-D parameters).
  TORCH_ARG(double, weight_decay) = 1e-4;
  TORCH_ARG(double, ema_decay) = 0.9997;
  /// The loss: the reference's AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05,
  /// disable_torch_grad_focal_loss=True), summed.
  TORCH_ARG(nn::AsymmetricLossOptions, loss) =
      nn::AsymmetricLossOptions().gamma_neg(4).gamma_pos(0).clip(0.05).disable_torch_grad_focal_loss(true);
  /// Forward under bfloat16 autocast (CPU); the loss stays float32.
  TORCH_ARG(bool, amp) = false;
  /// Decoding/augmentation threads.
  TORCH_ARG(int64_t, workers) = 2;
  /// Seeds the model initialisation, the shuffling and the augmentation.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Output folder: checkpoints, metrics.jsonl, training.svg.
  TORCH_ARG(std::string, out_dir) = "runs/train";
  /// Continue from out_dir/last.pth (from the beginning, with a message, where there is none yet).
  TORCH_ARG(bool, resume) = false;
  /// Deterministic algorithms (at::globalContext()); with the fixed seeds a stopped and resumed run then
  /// reproduces the uninterrupted one bit for bit.
  TORCH_ARG(bool, deterministic) = false;
  /// Training augmentation; empty: squish resize only.
  TORCH_ARG(AugmentFn, augment) = reference_augment();
  /// Stop (resumably, as on a signal) once this many steps of the whole run are done; < 0: never.
  TORCH_ARG(int64_t, max_steps) = -1;
  /// Also write model-epoch-<N>.pth after every epoch.
  TORCH_ARG(bool, epoch_checkpoints) = true;
  /// Refuse images larger than this many pixels.
  TORCH_ARG(int64_t, max_pixels) = data::kDefaultMaxPixels;
  /// Data-parallel training: this process is one rank of the communicator's group. batch_size is per
  /// rank (the global batch is world_size times it); each epoch's order is sharded as PyTorch's
  /// DistributedSampler does; gradients are averaged over the ranks; parameters and buffers start as
  /// rank 0's, norm buffers follow rank 0's before every forward (DDP's default); validation is sharded
  /// and gathered; only rank 0 writes files. Every rank must be given the same options and data.
  TORCH_ARG(std::shared_ptr<Communicator>, communicator) = nullptr;
};

/// One finished training step.
struct StepInfo {
  int64_t epoch = 0;            ///< 1-based
  int64_t step = 0;             ///< steps done in this epoch (1-based)
  int64_t steps_per_epoch = 0;
  int64_t global_step = 0;      ///< steps done in the whole run
  int64_t images = 0;           ///< images done in this epoch
  int64_t epoch_images = 0;     ///< images per epoch
  double loss = 0;              ///< this step's loss, per image
  double lr = 0;                ///< learning rate this step used
};

/// One finished epoch (a line of metrics.jsonl).
struct EpochRecord {
  int64_t epoch = 0;            ///< 1-based
  int64_t steps = 0;            ///< steps of the whole run after this epoch
  double train_loss = 0;        ///< mean per-image training loss over the epoch
  double lr = 0;                ///< learning rate of the epoch's last step
  double map_regular = 0;       ///< validation mAP (%) of the model
  double map_ema = 0;           ///< validation mAP (%) of the EMA
  double highest_map = 0;       ///< best max(regular, EMA) so far
  bool improved = false;        ///< this epoch wrote model-highest.pth
  double train_seconds = 0;
  double val_seconds = 0;
};

/// What the trainer tells its caller; every member is optional.
struct TrainCallbacks {
  /// Before the first step of an epoch (or of its resumed part): `step` and `images` say what is already done.
  std::function<void(const StepInfo&)> on_epoch_start;
  std::function<void(const StepInfo&)> on_step;
  /// `done` of `total` validation images evaluated by the model and the EMA (first called with done = 0).
  std::function<void(int64_t done, int64_t total)> on_validate;
  std::function<void(const EpochRecord&)> on_epoch;
  /// Notes: what was loaded, dropped, resumed, saved.
  std::function<void(const std::string&)> on_message;
  /// Polled after every step; true finishes the step, writes last.pth and returns (e.g. on SIGINT).
  std::function<bool()> stop_requested;
};

/// How run() ended.
struct TrainResult {
  /// All epochs up to the stop epoch are done.
  bool finished = false;
  /// Stopped early (stop_requested or max_steps); last.pth resumes it.
  bool interrupted = false;
  int64_t global_step = 0;
  int64_t epochs_done = 0;
  double highest_map = 0;
  std::vector<EpochRecord> history;
  /// out_dir/last.pth (resume state; also loadable as a checkpoint).
  std::string resume_path;
  /// out_dir/model-highest.pth, or empty before the first epoch ends.
  std::string best_path;
};

/// Trains a TResNet with ASL on `train`, validating on `val` after every epoch. The constructor checks
/// the data (non-empty, same classes in both sets, every image file present, target shapes) and the
/// options, and throws std::runtime_error before any training; run() does the work.
///
/// Files in out_dir: model-highest.pth (weights of whichever of model and EMA scored the best mAP),
/// model-epoch-<N>.pth (the model after epoch N), both {"model", "num_classes", "idx_to_class"} as the
/// published checkpoints; last.pth, the same keys plus the resume state ("ema", "optimizer",
/// "scheduler", "trainer"), written after every epoch and when stopped; metrics.jsonl; training.svg.
class Trainer {
 public:
  Trainer(LabeledImages train, LabeledImages val, TrainerOptions options, TrainCallbacks callbacks = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Trains until the stop epoch, a stop request or max_steps (resuming first with options.resume).
  TrainResult run();

  /// The model being trained and its EMA (valid after construction).
  models::TResNet model() const;
  models::TResNet ema() const;
  /// Steps per epoch: ceil(train images / batch size), as the reference's DataLoader without drop_last.
  int64_t steps_per_epoch() const;
  /// The registered architecture's name ("tresnet_m", ...), or "a custom TResNet".
  std::string architecture() const;
  /// The layout model-highest.pth and model-epoch-N.pth are written in.
  models::Layout save_layout() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace asl::train
