// `asl train`: the reference's train.py — ASL training with Adam, one-cycle, EMA; resumable, Ctrl-C safe.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <thread>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include <torch/torch.h>

#include "asl/data/coco.h"
#include "asl/data/lists.h"
#include "asl/train/trainer.h"
#include "commands.h"
#include "progress.h"

namespace asl::cli {
namespace {

struct TrainParams {
  std::string data_dir;
  std::string split = "train2014";
  std::string val_split = "val2014";
  std::string annotations, images;
  std::string val_annotations, val_images;
  std::string train_data, val_data;
  std::string model_name = "auto";
  std::string model_path;
  bool use_ema = false;
  std::string save_layout = "auto";
  std::vector<int64_t> layers;
  double width_factor = 1.0;
  int64_t image_size = 224;
  int64_t batch_size = 128;
  int64_t val_batch_size = 0;
  double lr = 1e-4;
  int64_t epochs = 80;
  int64_t stop_epoch = 40;
  double weight_decay = 1e-4;
  double ema_decay = 0.9997;
  double gamma_neg = 4;
  double gamma_pos = 0;
  double clip = 0.05;
  PrecisionFlags precision{"auto"};
  bool augment = true;
  int64_t workers = 2;
  int threads = 0;
  uint64_t seed = 0;
  std::string out = "runs/train";
  bool resume = false;
  bool deterministic = false;
  bool keep_empty = false;
  bool epoch_checkpoints = true;
  int64_t max_steps = -1;
  int64_t max_pixels = data::kDefaultMaxPixels;
  int nproc_per_node = 1;
  double dist_timeout = 60;
};

// Set by SIGINT/SIGTERM: the trainer finishes its step, writes last.pth and returns. A second
// signal gets the default action (the handler uninstalls itself).
std::atomic<int> g_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_signal.store(sig);
  std::signal(sig, SIG_DFL);
}

// One COCO set from --annotations/--images or the reference layout DIR/annotations/instances_<split>.json.
train::LabeledImages coco_set(const std::string& annotations, const std::string& images, const std::string& dir,
                              const std::string& split, bool keep_empty, const char* flags) {
  data::CocoPaths paths;
  if (!annotations.empty() || !images.empty()) {
    if (annotations.empty() || images.empty()) throw std::runtime_error(std::string(flags) + " go together");
    paths = {annotations, images};
  } else if (!dir.empty()) {
    paths = data::coco_reference_layout(dir, split);
  } else {
    throw std::runtime_error("give a dataset folder (DIR/annotations/instances_" + split + ".json) or " + flags);
  }
  data::CocoOptions o;
  o.keep_empty = keep_empty;
  return train::from_coco(data::load_coco(paths.annotations, paths.images, o));
}

// A CSV list, a folder dataset or a COCO reference-layout folder, by path (asl/data/lists.h).
train::LabeledImages any_set(const std::string& path, const std::string& split) {
  train::LabeledImages set = train::from_coco(data::load_any_dataset(path, split));
  set.source = path;
  return set;
}

std::string lr_string(double lr) {
  std::ostringstream s;
  s << std::setprecision(3) << lr;
  return s.str();
}

// ---- asl's own launcher: --nproc-per-node N workers of this command on this machine -------------------

std::atomic<pid_t> g_workers[256];
std::atomic<int> g_worker_count{0};

extern "C" void forward_signal(int sig) {
  for (int i = 0; i < g_worker_count.load(); ++i) {
    const pid_t pid = g_workers[i].load();
    if (pid > 0) ::kill(pid, sig);
  }
}

// This process's arguments without --nproc-per-node (so that the workers do not launch again).
std::vector<std::string> worker_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> args;
  std::string a;
  while (std::getline(in, a, '\0')) args.push_back(a);
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& x = args[i];
    if (x == "--nproc-per-node" || x == "--nproc_per_node") {
      ++i;
      continue;
    }
    if (x.rfind("--nproc-per-node=", 0) == 0 || x.rfind("--nproc_per_node=", 0) == 0) continue;
    out.push_back(x);
  }
  return out;
}

int launch_workers(int n) {
  if (n > 256) throw std::runtime_error("--nproc-per-node: at most 256 workers, got " + std::to_string(n));
  const std::vector<std::string> args = worker_arguments();
  const int port = asl::train::free_loopback_port();
  std::cerr << "asl train: starting " << n << " workers on this machine (store 127.0.0.1:" << port << ")\n";
  g_worker_count.store(0);
  for (int r = 0; r < n; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("--nproc-per-node: fork: ") + std::strerror(errno));
    if (pid == 0) {
      // Own process group: a Ctrl-C at the terminal reaches the launcher, which forwards it once.
      ::setpgid(0, 0);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(n).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(n).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("ASL_LAUNCHER", "1", 1);
      std::vector<char*> argv;
      for (const auto& x : args) argv.push_back(const_cast<char*>(x.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "asl train: cannot start worker %d: %s\n", r, std::strerror(errno));
      ::_exit(127);
    }
    g_workers[r].store(pid);
    g_worker_count.store(r + 1);
  }
  std::signal(SIGINT, forward_signal);
  std::signal(SIGTERM, forward_signal);
  int result = 0, alive = n;
  bool stopping = false;
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int rank = -1;
    for (int i = 0; i < n; ++i) {
      if (g_workers[i].load() == pid) {
        rank = i;
        g_workers[i].store(0);
      }
    }
    if (rank < 0) continue;
    --alive;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && result == 0) {
      result = code;
      if (alive > 0 && !stopping) {
        std::cerr << "asl train: worker rank " << rank << " "
                  << (WIFEXITED(status) ? "exited with code " + std::to_string(code)
                                        : "was killed by signal " + std::to_string(WTERMSIG(status)))
                  << "; stopping the other workers\n";
        stopping = true;
        forward_signal(SIGTERM);
      }
    }
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return result;
}

int run_train(const TrainParams& p) {
  const c10::optional<train::DistributedConfig> dist = train::distributed_from_env();
  if (p.nproc_per_node > 1) {
    if (dist) throw std::runtime_error("--nproc-per-node: this process is already a worker of a launched group");
    return launch_workers(p.nproc_per_node);
  }
  if (!(p.dist_timeout > 0)) throw std::runtime_error("--dist-timeout must be positive, got " + std::to_string(p.dist_timeout));
  std::shared_ptr<train::Communicator> comm;
  if (dist) {
    train::DistributedConfig c = *dist;
    c.timeout = std::chrono::milliseconds(static_cast<int64_t>(p.dist_timeout * 1000));
    comm = std::make_shared<train::Communicator>(c);
  }
  const bool lead = !comm || comm->rank() == 0;
  // Compute threads: the cores shared by this machine's workers, unless --threads says otherwise.
  const int local = dist ? static_cast<int>(dist->local_world_size) : 1;
  set_threads(p.threads > 0 ? p.threads
                            : std::max(1, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) / local));
  // bf16 is the forward under bfloat16 autocast (the recipe's mixed precision); the loss stays float32.
  const bool amp = announce_precision("train", p.precision).bf16;
  train::LabeledImages train_set =
      p.train_data.empty()
          ? coco_set(p.annotations, p.images, p.data_dir, p.split, p.keep_empty, "--annotations and --images")
          : any_set(p.train_data, p.split);
  train::LabeledImages val_set =
      p.val_data.empty() ? coco_set(p.val_annotations, p.val_images, p.data_dir, p.val_split, p.keep_empty,
                                    "--val-annotations and --val-images")
                         : any_set(p.val_data, p.val_split);

  train::TrainerOptions o;
  // auto: the pretrain's architecture, or TResNet-M from scratch.
  o.model_name(p.model_name == "auto" && p.model_path.empty() ? "tresnet_m" : p.model_name)
      .pretrain_path(p.model_path)
      .pretrain_use_ema(p.use_ema)
      .image_size(p.image_size)
      .batch_size(p.batch_size)
      .val_batch_size(p.val_batch_size)
      .lr(p.lr)
      .epochs(p.epochs)
      .stop_epoch(p.stop_epoch)
      .weight_decay(p.weight_decay)
      .ema_decay(p.ema_decay)
      .amp(amp)
      .workers(p.workers)
      .seed(p.seed)
      .out_dir(p.out)
      .resume(p.resume)
      .deterministic(p.deterministic)
      .max_steps(p.max_steps)
      .epoch_checkpoints(p.epoch_checkpoints)
      .max_pixels(p.max_pixels)
      .communicator(comm);
  o.loss(nn::AsymmetricLossOptions()
             .gamma_neg(p.gamma_neg)
             .gamma_pos(p.gamma_pos)
             .clip(p.clip > 0 ? c10::optional<double>(p.clip) : c10::nullopt)
             .disable_torch_grad_focal_loss(true));
  if (!p.layers.empty()) {
    if (p.layers.size() != 4) throw std::runtime_error("--layers takes 4 block counts, got " + std::to_string(p.layers.size()));
    o.model_options(models::TResNetOptions().layers(p.layers).width_factor(p.width_factor));
  }
  o.augment(p.augment ? train::reference_augment() : nullptr);
  if (p.save_layout != "auto") o.save_layout(models::parse_layout(p.save_layout));

  std::unique_ptr<Progress> progress;
  int64_t total_epochs = (p.stop_epoch == 0 || p.stop_epoch > p.epochs) ? p.epochs : p.stop_epoch;
  train::TrainCallbacks cb;
  cb.on_message = [&](const std::string& m) {
    if (progress) progress->finish();
    progress.reset();
    std::cerr << "asl train: " << m << "\n";
  };
  int64_t images_before = 0;  // images of the epoch done before this process (resume)
  cb.on_epoch_start = [&](const train::StepInfo& s) {
    if (progress) progress->finish();
    images_before = s.images;
    progress = std::make_unique<Progress>("epoch " + std::to_string(s.epoch) + "/" + std::to_string(total_epochs),
                                          s.epoch_images - images_before);
  };
  cb.on_step = [&](const train::StepInfo& s) {
    if (!progress) return;
    std::ostringstream extra;
    extra << std::fixed << std::setprecision(4) << "loss " << s.loss << "  lr " << lr_string(s.lr);
    progress->update(s.images - images_before, extra.str());
  };
  cb.on_validate = [&](int64_t done, int64_t total) {
    if (done == 0) {
      if (progress) progress->finish();
      progress = std::make_unique<Progress>("validate", total);
      return;
    }
    if (progress) progress->update(done);
  };
  cb.on_epoch = [&](const train::EpochRecord& r) {
    if (progress) progress->finish();
    progress.reset();
    std::ostringstream s;
    s << std::fixed << std::setprecision(2) << "epoch " << r.epoch << "/" << total_epochs << "  loss "
      << std::setprecision(4) << r.train_loss << "  lr " << lr_string(r.lr) << std::setprecision(2) << "  mAP "
      << r.map_regular << "  EMA mAP " << r.map_ema << "  highest " << r.highest_map << (r.improved ? " *" : "")
      << std::setprecision(1) << "  (" << r.train_seconds << " s train, " << r.val_seconds << " s val)\n";
    std::cout << s.str() << std::flush;
  };
  cb.stop_requested = [] { return g_signal.load() != 0; };
  if (!lead) {  // one log, one progress bar: rank 0's
    train::TrainCallbacks quiet;
    quiet.stop_requested = cb.stop_requested;
    cb = quiet;
  }

  train::Trainer trainer(std::move(train_set), std::move(val_set), o, cb);
  if (comm && lead) {
    std::cerr << "asl train: data-parallel, " << comm->world_size() << " ranks (" << dist->source << ", store "
              << dist->master_addr << ":" << dist->master_port << "); --batch-size " << p.batch_size
              << " per rank, global batch " << p.batch_size * comm->world_size()
              << "; the learning rate is used as given\n";
  }
  if (lead) std::cerr << "asl train: " << (p.model_path.empty() ? "" : "fine-tuning ") << trainer.architecture()
            << (trainer.model()->options.plain_norms() ? " (plain batch norms)" : "") << ", checkpoints in "
            << models::to_string(trainer.save_layout()) << " layout, " << trainer.steps_per_epoch() << " steps per epoch, " << total_epochs << " of " << p.epochs
            << " epochs; outputs in " << p.out << "\n";
  g_signal.store(0);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  const train::TrainResult r = trainer.run();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (progress) progress->finish();
  if (!lead) return r.interrupted ? (g_signal.load() == SIGINT ? 130 : g_signal.load() == SIGTERM ? 143 : 0) : 0;
  if (r.interrupted) {
    std::cout << "stopped at step " << r.global_step << " (epoch " << r.epochs_done + 1 << "); resume state in "
              << r.resume_path << " (continue with --resume)\n";
    const int sig = g_signal.load();
    return sig == SIGINT ? 130 : sig == SIGTERM ? 143 : 0;
  }
  std::cout << std::fixed << std::setprecision(2) << "done: " << r.epochs_done << " epochs, highest mAP "
            << r.highest_map << " in " << r.best_path << "\n";
  return 0;
}

}  // namespace

void register_train(CLI::App& app, Runner& run) {
  auto p = std::make_shared<TrainParams>();
  CLI::App* cmd = app.add_subcommand("train", "train a TResNet with the Asymmetric Loss (the reference's train.py recipe)");
  cmd->add_option("dir", p->data_dir,
                  "dataset folder in the reference layout: DIR/annotations/instances_<split>.json + DIR/<split>/");
  cmd->add_option("--split", p->split, "training split of the reference layout")->capture_default_str();
  cmd->add_option("--val-split,--val_split", p->val_split, "validation split of the reference layout")
      ->capture_default_str();
  cmd->add_option("--annotations", p->annotations, "training COCO-format annotation file (instead of DIR)");
  cmd->add_option("--images", p->images, "folder the training file_name entries are relative to");
  cmd->add_option("--val-annotations,--val_annotations", p->val_annotations, "validation COCO-format annotation file");
  cmd->add_option("--val-images,--val_images", p->val_images, "folder of the validation images");
  cmd->add_option("--train-data,--train_data", p->train_data,
                  "training set by path: a CSV list, a folder dataset or a COCO reference-layout folder (see README)");
  cmd->add_option("--val-data,--val_data", p->val_data, "validation set by path, as --train-data");
  cmd->add_option("--model-name,--model_name", p->model_name,
                  model_name_choices(true) + " (auto: the --model-path pretrain's architecture, else tresnet_m)")
      ->capture_default_str();
  cmd->add_option("--model-path,--model_path", p->model_path,
                  "pretrain to start from, any weights asl reads (.pth or .safetensors, asl or timm layout); head.fc.* "
                  "is dropped");
  cmd->add_flag("--use-ema,--use_ema", p->use_ema, "timm training checkpoint pretrain: start from its EMA weights");
  cmd->add_option("--save-layout,--save_layout", p->save_layout,
                  "layout of model-highest.pth and model-epoch-N.pth: auto (asl's, or timm's for plain-norm models "
                  "from timm weights), asl or timm")
      ->check(CLI::IsMember({"auto", "asl", "published", "timm"}))
      ->capture_default_str();
  cmd->add_option("--layers", p->layers, "a custom TResNet instead of --model-name: blocks per stage, e.g. 1,1,1,1")
      ->delimiter(',')
      ->expected(4);
  cmd->add_option("--width-factor,--width_factor", p->width_factor, "base width factor of a custom --layers TResNet")
      ->capture_default_str();
  cmd->add_option("--image-size,--image_size", p->image_size, "input resolution (multiple of 32)")->capture_default_str();
  cmd->add_option("--batch-size,--batch_size", p->batch_size, "images per step")->capture_default_str();
  cmd->add_option("--val-batch-size,--val_batch_size", p->val_batch_size, "images per validation batch (0: batch size)")
      ->capture_default_str();
  cmd->add_option("--lr", p->lr, "peak learning rate of the one-cycle schedule")->capture_default_str();
  cmd->add_option("--epochs", p->epochs, "length of the one-cycle schedule in epochs")->capture_default_str();
  cmd->add_option("--stop-epoch,--stop_epoch", p->stop_epoch, "stop after this epoch (0: after --epochs)")
      ->capture_default_str();
  cmd->add_option("--weight-decay,--weight_decay", p->weight_decay, "L2 weight decay (not on biases and 1-D parameters)")
      ->capture_default_str();
  cmd->add_option("--ema-decay,--ema_decay", p->ema_decay, "decay of the model EMA")->capture_default_str();
  cmd->add_option("--gamma-neg,--gamma_neg", p->gamma_neg, "ASL focusing parameter of negatives")->capture_default_str();
  cmd->add_option("--gamma-pos,--gamma_pos", p->gamma_pos, "ASL focusing parameter of positives")->capture_default_str();
  cmd->add_option("--clip", p->clip, "ASL probability margin of negatives (0: none)")->capture_default_str();
  add_precision_flags(cmd, p->precision, "--amp", "forward under bfloat16 autocast (the loss stays float32)");
  cmd->add_flag("--augment,!--no-augment", p->augment, "Cutout + RandAugment on the training images")
      ->capture_default_str();
  cmd->add_option("--workers", p->workers, "decoding/augmentation threads")->capture_default_str();
  cmd->add_option("--threads", p->threads, "compute threads (0: all cores)")->capture_default_str();
  cmd->add_option("--seed", p->seed, "seed of the initialisation, the shuffling and the augmentation")
      ->capture_default_str();
  cmd->add_option("--out", p->out, "output folder: checkpoints, metrics.jsonl, training.svg")->capture_default_str();
  cmd->add_flag("--resume", p->resume, "continue from OUT/last.pth");
  cmd->add_flag("--deterministic", p->deterministic,
                "deterministic algorithms: a stopped and resumed run equals the uninterrupted one (same --threads)");
  cmd->add_flag("--keep-empty,--keep_empty", p->keep_empty, "keep images without annotations as all-negative");
  cmd->add_option("--max-steps,--max_steps", p->max_steps, "stop resumably after this many steps of the run (-1: never)")
      ->capture_default_str();
  cmd->add_flag("--epoch-checkpoints,!--no-epoch-checkpoints", p->epoch_checkpoints,
                "also write model-epoch-<N>.pth after every epoch")
      ->capture_default_str();
  cmd->add_option("--max-pixels", p->max_pixels, "refuse images larger than this many pixels")->capture_default_str();
  cmd->add_option("--nproc-per-node,--nproc_per_node", p->nproc_per_node,
                  "data-parallel on this machine: start N workers of this command (c10d, Gloo) and wait for them")
      ->capture_default_str();
  cmd->add_option("--dist-timeout,--dist_timeout", p->dist_timeout,
                  "data-parallel: seconds a worker waits for the group (joining, every collective) before it fails")
      ->capture_default_str();
  cmd->callback([p, &run] { run = [p] { return run_train(*p); }; });
}

}  // namespace asl::cli
