// The training loop: data checks, model/EMA/Adam/one-cycle set-up, steps, per-epoch validation, checkpoints, resume.
#include "asl/train/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

#include "asl/data/loader.h"
#include "asl/io/checkpoint.h"
#include "asl/io/file.h"
#include "asl/io/pickle.h"
#include "asl/metrics/map.h"
#include "asl/models/registry.h"
#include "asl/nn/autocast.h"
#include "asl/runtime.h"
#include "asl/train/augment.h"
#include "asl/train/ema.h"
#include "asl/train/optimizer.h"
#include "asl/train/schedule.h"
#include "asl/train/svg_plot.h"

namespace fs = std::filesystem;

namespace asl::train {

LabeledImages from_coco(const data::CocoDataset& dataset) {
  LabeledImages out;
  out.source = dataset.annotations_file;
  out.paths = dataset.image_paths();
  out.targets = dataset.targets;
  out.class_names = dataset.class_names;
  return out;
}

AugmentFn reference_augment() {
  const auto rand_augment = std::make_shared<const RandAugment>(RandAugmentOptions());
  return [rand_augment](data::Image& image, uint64_t seed) {
    std::mt19937_64 rng(seed);
    cutout(image, rng, 0.5);
    image = (*rand_augment)(image, rng);
  };
}

namespace {

using io::PyValue;
using Clock = std::chrono::steady_clock;

constexpr const char* kResumeFile = "last.pth";
constexpr const char* kBestFile = "model-highest.pth";

// splitmix64: decorrelates the seeds of epochs and images derived from one run seed.
uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9E3779B97F4A7C15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<int64_t> epoch_order(uint64_t seed, int64_t epoch, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(mix(mix(seed, 0x5348554646ULL), static_cast<uint64_t>(epoch)));
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t bound = static_cast<uint64_t>(i) + 1;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t r;
    do r = rng();
    while (r >= limit);
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(r % bound)]);
  }
  return order;
}

uint64_t image_seed(uint64_t seed, int64_t epoch, int64_t position) {
  return mix(mix(mix(seed, 0x4155474DULL), static_cast<uint64_t>(epoch)), static_cast<uint64_t>(position));
}

bool channels_last_training() { return cpu_info().onednn_isa.rfind("avx512", 0) == 0; }

std::vector<int64_t> shard_positions(int64_t n, int64_t world, int64_t rank, int64_t begin) {
  if (n < 1 || world < 1 || rank < 0 || rank >= world || begin < 0) {
    throw std::invalid_argument("shard_positions: n " + std::to_string(n) + ", world " + std::to_string(world) +
                                ", rank " + std::to_string(rank) + ", begin " + std::to_string(begin));
  }
  const int64_t rest = std::max<int64_t>(0, n - begin);
  const int64_t count = (rest + world - 1) / world;
  std::vector<int64_t> positions(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) positions[static_cast<size_t>(i)] = begin + rank + i * world;
  return positions;
}

namespace {

// A module's state with contiguous tensors (the model trains channels-last; files hold the usual layout).
io::StateDict contiguous_state(const torch::nn::Module& module) {
  io::StateDict out;
  for (const auto& item : io::module_state_dict(module)) out.insert(item.key(), item.value().contiguous());
  return out;
}

std::string shape_string(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_data(const LabeledImages& d, const std::string& role) {
  const std::string where = (d.source.empty() ? role + " set" : d.source) + ": ";
  if (d.size() == 0) throw std::runtime_error(where + "the " + role + " set has no images");
  if (d.num_classes() == 0) throw std::runtime_error(where + "the " + role + " set has no classes");
  if (!d.targets.defined() || d.targets.dim() != 2 || d.targets.size(0) != d.size() ||
      d.targets.size(1) != d.num_classes()) {
    throw std::runtime_error(where + "targets must be " + std::to_string(d.size()) + "x" +
                             std::to_string(d.num_classes()) + ", got " +
                             (d.targets.defined() ? shape_string(d.targets) : std::string("none")));
  }
  std::vector<std::string> missing;
  int64_t count = 0;
  for (const auto& p : d.paths) {
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) {
      if (missing.size() < 3) missing.push_back(p);
      ++count;
    }
  }
  if (count > 0) {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    throw std::runtime_error(where + std::to_string(count) + " of " + std::to_string(d.size()) + " " + role +
                             " images are missing (no such file): " + list + (count > 3 ? ", …" : ""));
  }
}

nlohmann::json record_json(const EpochRecord& r) {
  return {{"epoch", r.epoch},         {"steps", r.steps},
          {"train_loss", r.train_loss}, {"lr", r.lr},
          {"mAP_regular", r.map_regular}, {"mAP_ema", r.map_ema},
          {"mAP_highest", r.highest_map}, {"improved", r.improved},
          {"train_s", r.train_seconds}, {"val_s", r.val_seconds}};
}

PyValue record_value(const EpochRecord& r) {
  PyValue d = PyValue::dict();
  auto& m = d.as_dict();
  m.set(PyValue::str("epoch"), PyValue::integer(r.epoch));
  m.set(PyValue::str("steps"), PyValue::integer(r.steps));
  m.set(PyValue::str("train_loss"), PyValue::floating(r.train_loss));
  m.set(PyValue::str("lr"), PyValue::floating(r.lr));
  m.set(PyValue::str("mAP_regular"), PyValue::floating(r.map_regular));
  m.set(PyValue::str("mAP_ema"), PyValue::floating(r.map_ema));
  m.set(PyValue::str("mAP_highest"), PyValue::floating(r.highest_map));
  m.set(PyValue::str("improved"), PyValue::boolean(r.improved));
  m.set(PyValue::str("train_s"), PyValue::floating(r.train_seconds));
  m.set(PyValue::str("val_s"), PyValue::floating(r.val_seconds));
  return d;
}

const PyValue& field(const PyValue& dict, const std::string& key, const std::string& file) {
  const PyValue* v = dict.as_dict().find(key);
  if (v == nullptr) throw std::runtime_error(file + ": the resume state has no '" + key + "'");
  return *v;
}

EpochRecord record_from_value(const PyValue& v, const std::string& file) {
  EpochRecord r;
  r.epoch = field(v, "epoch", file).as_int();
  r.steps = field(v, "steps", file).as_int();
  r.train_loss = field(v, "train_loss", file).as_float();
  r.lr = field(v, "lr", file).as_float();
  r.map_regular = field(v, "mAP_regular", file).as_float();
  r.map_ema = field(v, "mAP_ema", file).as_float();
  r.highest_map = field(v, "mAP_highest", file).as_float();
  r.improved = field(v, "improved", file).as_bool();
  r.train_seconds = field(v, "train_s", file).as_float();
  r.val_seconds = field(v, "val_s", file).as_float();
  return r;
}

std::string param_key(const torch::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

}  // namespace

struct Trainer::State {
  LabeledImages train, val;
  TrainerOptions o;
  TrainCallbacks cb;
  std::map<int64_t, std::string> idx_to_class;
  // The registered architecture's name (empty for a custom one) and the layout checkpoints are written in.
  std::string arch;
  models::Layout save_layout = models::Layout::Published;

  models::TResNet model{nullptr};
  // Data-parallel: averages the gradients over the ranks, overlapping the backward.
  std::unique_ptr<GradientSync> grad_sync;
  std::unique_ptr<ModelEma> ema;
  std::unique_ptr<torch::optim::Adam> optimizer;
  std::unique_ptr<OneCycleSchedule> schedule;

  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  int64_t last_epoch = 0;  // epochs to train (stop epoch)

  // Position: epochs completed, steps done in the current epoch, steps of the whole run.
  int64_t epoch = 0;
  int64_t step_in_epoch = 0;
  int64_t global_step = 0;
  // Where this world's sharding of the current epoch's order starts: position `epoch_base` of the order
  // at step `base_step` (0 and 0, unless the run resumed mid-epoch, possibly with another world size).
  // `global_step` is the one-cycle schedule's step in this world's steps.
  int64_t epoch_base = 0;
  int64_t base_step = 0;
  bool channels_last = false;
  torch::MemoryFormat memory_format() const {
    return channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  }

  // Steps of the current epoch in this world: those before the base, then the rest of the order sharded.
  int64_t epoch_steps() const {
    const int64_t rest = std::max<int64_t>(0, train.size() - epoch_base);
    return base_step + ((rest + world() - 1) / world() + o.batch_size() - 1) / o.batch_size();
  }
  // Positions of the epoch's order consumed by all ranks (the padding of a finished epoch not counted).
  int64_t epoch_position() const {
    return std::min(train.size(), epoch_base + (step_in_epoch - base_step) * o.batch_size() * world());
  }
  double epoch_loss_sum = 0;
  int64_t epoch_images = 0;
  double epoch_seconds = 0;
  double last_lr = 0;
  double highest_map = 0;
  std::vector<EpochRecord> history;

  void message(const std::string& m) const {
    if (cb.on_message) cb.on_message(m);
  }
  Communicator* comm() const { return o.communicator().get(); }
  int64_t world() const { return comm() ? comm()->world_size() : 1; }
  int64_t rank() const { return comm() ? comm()->rank() : 0; }
  // Only rank 0 writes files.
  bool writer() const { return rank() == 0; }
  models::TResNet ema_model() const { return models::TResNet(ema->module_as<models::TResNetImpl>()); }
  std::string path(const std::string& name) const { return (fs::path(o.out_dir()) / name).string(); }

  // A deliverable checkpoint (model-highest.pth, model-epoch-N.pth) in the run's save layout.
  void save_model(const std::string& file, const models::TResNet& m) const {
    models::save_model(file, m, idx_to_class, models::SaveWeightsOptions().layout(save_layout).arch(arch));
  }

  PyValue recipe() const {
    PyValue d = PyValue::dict();
    auto& m = d.as_dict();
    const auto& mo = model->options;
    std::string layers;
    for (int64_t l : mo.layers()) layers += (layers.empty() ? "" : ",") + std::to_string(l);
    m.set(PyValue::str("model"), PyValue::str(o.model_options() ? "custom" : o.model_name()));
    m.set(PyValue::str("layers"), PyValue::str(layers));
    m.set(PyValue::str("width_factor"), PyValue::floating(mo.width_factor()));
    // Only where they differ from the published TResNets, so that older last.pth files still match.
    if (mo.v2()) m.set(PyValue::str("v2"), PyValue::boolean(true));
    if (mo.plain_norms()) m.set(PyValue::str("norms"), PyValue::str("plain"));
    m.set(PyValue::str("num_classes"), PyValue::integer(train.num_classes()));
    m.set(PyValue::str("train_images"), PyValue::integer(train.size()));
    m.set(PyValue::str("image_size"), PyValue::integer(o.image_size()));
    m.set(PyValue::str("batch_size"), PyValue::integer(o.batch_size()));
    m.set(PyValue::str("lr"), PyValue::floating(o.lr()));
    m.set(PyValue::str("epochs"), PyValue::integer(o.epochs()));
    m.set(PyValue::str("weight_decay"), PyValue::floating(o.weight_decay()));
    m.set(PyValue::str("ema_decay"), PyValue::floating(o.ema_decay()));
    m.set(PyValue::str("gamma_neg"), PyValue::floating(o.loss().gamma_neg()));
    m.set(PyValue::str("gamma_pos"), PyValue::floating(o.loss().gamma_pos()));
    m.set(PyValue::str("clip"), PyValue::floating(o.loss().clip().value_or(0.0)));
    m.set(PyValue::str("amp"), PyValue::boolean(o.amp()));
    m.set(PyValue::str("augment"), PyValue::boolean(static_cast<bool>(o.augment())));
    m.set(PyValue::str("seed"), PyValue::integer(static_cast<int64_t>(o.seed())));
    return d;
  }

  PyValue optimizer_value() const {
    PyValue root = PyValue::dict();
    PyValue state = PyValue::dict();
    PyValue groups = PyValue::list();
    int64_t index = 0;
    for (const auto& group : optimizer->param_groups()) {
      const auto& go = static_cast<const torch::optim::AdamOptions&>(group.options());
      PyValue g = PyValue::dict();
      auto& gm = g.as_dict();
      gm.set(PyValue::str("lr"), PyValue::floating(go.lr()));
      gm.set(PyValue::str("betas"), PyValue::tuple({PyValue::floating(std::get<0>(go.betas())),
                                                     PyValue::floating(std::get<1>(go.betas()))}));
      gm.set(PyValue::str("eps"), PyValue::floating(go.eps()));
      gm.set(PyValue::str("weight_decay"), PyValue::floating(go.weight_decay()));
      gm.set(PyValue::str("amsgrad"), PyValue::boolean(go.amsgrad()));
      PyValue ids = PyValue::list();
      for (const auto& p : group.params()) {
        const auto it = optimizer->state().find(param_key(p));
        if (it != optimizer->state().end()) {
          const auto& ps = static_cast<const torch::optim::AdamParamState&>(*it->second);
          PyValue s = PyValue::dict();
          auto& sm = s.as_dict();
          // PyTorch 1.13 keeps `step` as a float tensor.
          sm.set(PyValue::str("step"), PyValue::tensor(torch::tensor(static_cast<float>(ps.step()))));
          sm.set(PyValue::str("exp_avg"), PyValue::tensor(ps.exp_avg().contiguous()));
          sm.set(PyValue::str("exp_avg_sq"), PyValue::tensor(ps.exp_avg_sq().contiguous()));
          state.as_dict().set(PyValue::integer(index), s);
        }
        ids.items().push_back(PyValue::integer(index++));
      }
      gm.set(PyValue::str("params"), ids);
      groups.items().push_back(g);
    }
    root.as_dict().set(PyValue::str("state"), state);
    root.as_dict().set(PyValue::str("param_groups"), groups);
    return root;
  }

  void load_optimizer(const PyValue& v, const std::string& file) {
    const PyValue& state = field(v, "state", file);
    const auto& groups = field(v, "param_groups", file).items();
    if (groups.size() != optimizer->param_groups().size()) {
      throw std::runtime_error(file + ": optimizer has " + std::to_string(groups.size()) + " parameter groups, expected " +
                               std::to_string(optimizer->param_groups().size()));
    }
    int64_t index = 0;
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const auto& params = optimizer->param_groups()[gi].params();
      if (field(groups[gi], "params", file).items().size() != params.size()) {
        throw std::runtime_error(file + ": optimizer group " + std::to_string(gi) + " holds another number of parameters");
      }
      for (const auto& p : params) {
        const PyValue* s = state.as_dict().find(index);
        ++index;
        if (s == nullptr) continue;
        const torch::Tensor exp_avg = field(*s, "exp_avg", file).as_tensor();
        const torch::Tensor exp_avg_sq = field(*s, "exp_avg_sq", file).as_tensor();
        if (!exp_avg.sizes().equals(p.sizes()) || !exp_avg_sq.sizes().equals(p.sizes())) {
          throw std::runtime_error(file + ": optimizer state " + std::to_string(index - 1) + " has shape " +
                                   shape_string(exp_avg) + ", parameter " + shape_string(p));
        }
        const PyValue& step = field(*s, "step", file);
        auto ps = std::make_unique<torch::optim::AdamParamState>();
        ps->step(step.is_tensor() ? static_cast<int64_t>(step.as_tensor().item<double>()) : step.as_int());
        ps->exp_avg(exp_avg.to(p.options()).clone(p.suggest_memory_format()));
        ps->exp_avg_sq(exp_avg_sq.to(p.options()).clone(p.suggest_memory_format()));
        optimizer->state()[param_key(p)] = std::move(ps);
      }
    }
  }

  void set_schedule_point() {
    const OneCyclePoint pt = schedule->at(global_step);
    set_lr_beta1(*optimizer, pt.lr, pt.momentum);
  }

  void save_resume() {
    PyValue root = PyValue::dict();
    auto& m = root.as_dict();
    m.set(PyValue::str("model"), io::state_dict_value(contiguous_state(*model)));
    m.set(PyValue::str("num_classes"), PyValue::integer(train.num_classes()));
    PyValue classes = PyValue::dict();
    for (const auto& [k, name] : idx_to_class) classes.as_dict().set(PyValue::integer(k), PyValue::str(name));
    m.set(PyValue::str("idx_to_class"), classes);
    m.set(PyValue::str("ema"), io::state_dict_value(contiguous_state(*ema->module())));
    m.set(PyValue::str("optimizer"), optimizer_value());
    PyValue sched = PyValue::dict();
    sched.as_dict().set(PyValue::str("last_epoch"), PyValue::integer(global_step));
    sched.as_dict().set(PyValue::str("total_steps"), PyValue::integer(total_steps));
    sched.as_dict().set(PyValue::str("max_lr"), PyValue::floating(o.lr()));
    sched.as_dict().set(PyValue::str("pct_start"), PyValue::floating(schedule->options().pct_start));
    m.set(PyValue::str("scheduler"), sched);
    PyValue t = PyValue::dict();
    auto& tm = t.as_dict();
    tm.set(PyValue::str("epoch"), PyValue::integer(epoch));
    tm.set(PyValue::str("step_in_epoch"), PyValue::integer(step_in_epoch));
    tm.set(PyValue::str("global_step"), PyValue::integer(global_step));
    tm.set(PyValue::str("epoch_position"), PyValue::integer(epoch_position()));
    tm.set(PyValue::str("world_size"), PyValue::integer(world()));
    tm.set(PyValue::str("epoch_loss_sum"), PyValue::floating(epoch_loss_sum));
    tm.set(PyValue::str("epoch_images"), PyValue::integer(epoch_images));
    tm.set(PyValue::str("epoch_seconds"), PyValue::floating(epoch_seconds));
    tm.set(PyValue::str("last_lr"), PyValue::floating(last_lr));
    tm.set(PyValue::str("highest_map"), PyValue::floating(highest_map));
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      tm.set(PyValue::str("rng_state"), PyValue::tensor(gen.get_state()));
    }
    PyValue hist = PyValue::list();
    for (const auto& r : history) hist.items().push_back(record_value(r));
    tm.set(PyValue::str("history"), hist);
    tm.set(PyValue::str("recipe"), recipe());
    m.set(PyValue::str("trainer"), t);
    guarded_write([&] { io::save(path(kResumeFile), root); });
    last_complete = position();
  }

  // The position of the last last.pth written completely (by this process or the run it resumed).
  std::string last_complete;

  // Runs one checkpoint write; a failure (full disk, size limit, permissions) is rethrown naming what is
  // still on disk to continue from, and nothing already written is touched.
  template <typename Write>
  void guarded_write(Write&& write) const {
    if (!writer()) return;
    try {
      write();
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string(e.what()) + "; " +
                               (last_complete.empty()
                                    ? "no complete checkpoint was written yet: free space, then train again (with "
                                      "--resume it starts from the beginning)"
                                    : "the last complete checkpoint is " + path(kResumeFile) + " (" + last_complete +
                                          "): free space, then continue with --resume"));
    }
  }

  std::string position() const {
    return "epoch " + std::to_string(epoch + (step_in_epoch > 0 ? 1 : 0)) + ", step " + std::to_string(global_step);
  }

  // Returns false (and the run starts from the beginning) when the folder has no resume state yet, e.g.
  // after a run that could not write its first checkpoint; a state that does not fit is an error.
  bool load_resume() {
    const std::string file = path(kResumeFile);
    if (!fs::exists(file)) {
      message("no resume state in " + file + ": starting from the beginning");
      return false;
    }
    const PyValue root = io::load(file);
    if (!root.is_dict()) throw std::runtime_error(file + ": not a resume state (the root is a " + root.type_name() + ")");
    const PyValue& t = field(root, "trainer", file);
    // The recipe decides the schedule, the data order and the shapes: any change would silently
    // give another run, so it must match (stop_epoch, workers and threads may change).
    const PyValue saved = field(t, "recipe", file);
    const PyValue now = recipe();
    std::string diffs;
    for (const auto& [k, v] : now.as_dict().items) {
      const PyValue* s = saved.as_dict().find(k);
      if (s == nullptr || !s->equals(v)) {
        diffs += (diffs.empty() ? "" : "; ") + k.as_str() + " " + (s ? s->repr() : std::string("absent")) + " → " + v.repr();
      }
    }
    if (!diffs.empty()) throw std::runtime_error(file + ": cannot resume with another recipe: " + diffs);
    io::load_state_dict(*model, io::state_dict_from_value(field(root, "model", file), file + " model"));
    io::load_state_dict(*ema->module(), io::state_dict_from_value(field(root, "ema", file), file + " ema"));
    load_optimizer(field(root, "optimizer", file), file);
    epoch = field(t, "epoch", file).as_int();
    step_in_epoch = field(t, "step_in_epoch", file).as_int();
    global_step = field(t, "global_step", file).as_int();
    epoch_loss_sum = field(t, "epoch_loss_sum", file).as_float();
    epoch_images = field(t, "epoch_images", file).as_int();
    epoch_seconds = field(t, "epoch_seconds", file).as_float();
    last_lr = field(t, "last_lr", file).as_float();
    highest_map = field(t, "highest_map", file).as_float();
    history.clear();
    for (const auto& r : field(t, "history", file).items()) history.push_back(record_from_value(r, file));
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(field(t, "rng_state", file).as_tensor());
    }
    // The world that wrote the file (files of earlier versions: in the recipe when > 1, else 1) and the
    // images of the epoch's order it consumed: with DistributedSampler's interleave, after s steps exactly
    // the first s * batch * world positions.
    const PyValue* saved_world_value = t.as_dict().find(PyValue::str("world_size"));
    if (saved_world_value == nullptr) saved_world_value = saved.as_dict().find(PyValue::str("world_size"));
    const int64_t saved_world = saved_world_value ? saved_world_value->as_int() : 1;
    const PyValue* position_value = t.as_dict().find(PyValue::str("epoch_position"));
    const int64_t consumed = position_value ? position_value->as_int()
                                            : std::min(train.size(), step_in_epoch * o.batch_size() * saved_world);
    if (saved_world < 1 || consumed < 0 || consumed > train.size()) {
      throw std::runtime_error(file + ": inconsistent position (world size " + std::to_string(saved_world) +
                               ", epoch position " + std::to_string(consumed) + " of " + std::to_string(train.size()) +
                               " images)");
    }
    if (saved_world == world()) {
      if (global_step != epoch * steps_per_epoch + step_in_epoch || step_in_epoch > steps_per_epoch) {
        throw std::runtime_error(file + ": inconsistent position (epoch " + std::to_string(epoch) + ", step " +
                                 std::to_string(step_in_epoch) + ", global step " + std::to_string(global_step) + ")");
      }
    } else {
      // Another world size: the rest of the epoch's order (from the first position not consumed) is
      // sharded over this world; the schedule continues from the step of this world that has consumed
      // as many images (rounded down, so the epoch never has more steps than this world's epochs).
      step_in_epoch = consumed / (o.batch_size() * world());
      global_step = epoch * steps_per_epoch + step_in_epoch;
      message(file + " was written by " + std::to_string(saved_world) + " rank(s), this run has " +
              std::to_string(world()) + ": images " + std::to_string(consumed) + ".." + std::to_string(train.size()) +
              " of epoch " + std::to_string(epoch + 1) + "'s order are sharded over " + std::to_string(world()) +
              ", the schedule continues at step " + std::to_string(global_step) + " of " + std::to_string(total_steps));
    }
    epoch_base = consumed;
    base_step = step_in_epoch;
    set_schedule_point();
    last_complete = position();
    message("resumed from " + file + " at epoch " + std::to_string(epoch + 1) + ", step " +
            std::to_string(step_in_epoch) + "/" + std::to_string(epoch_steps()));
    return true;
  }

  void write_reports() const {
    std::string lines;
    for (const auto& r : history) lines += record_json(r).dump() + "\n";
    guarded_write([&] {
      io::write_file_atomic(path("metrics.jsonl"), lines);
      io::write_file_atomic(path("training.svg"), training_svg(history));
    });
  }

  // Sigmoid scores of the model and the EMA on the validation set; returns {mAP regular, mAP EMA}.
  std::pair<double, double> validate() {
    data::LoaderOptions lo;
    lo.batch_size = o.val_batch_size() > 0 ? o.val_batch_size() : o.batch_size();
    lo.image_size = o.image_size();
    lo.filter = data::ResampleFilter::bilinear;
    lo.workers = o.workers();
    lo.decode.max_pixels = o.max_pixels();
    // With several ranks, rank r scores the r-th contiguous slice and the slices are gathered in order.
    const int64_t total = val.size();
    const int64_t begin = total * rank() / world(), end = total * (rank() + 1) / world();
    const std::vector<std::string> paths(val.paths.begin() + begin, val.paths.begin() + end);
    data::BatchLoader loader(paths, val.targets.narrow(0, begin, end - begin), {}, lo);
    const int64_t n = end - begin, c = val.num_classes();
    torch::Tensor regular = torch::empty({n, c}, torch::kFloat32);
    torch::Tensor averaged = torch::empty({n, c}, torch::kFloat32);
    models::TResNet e = ema_model();
    model->eval();
    e->eval();
    torch::NoGradGuard no_grad;
    int64_t done = 0;
    if (cb.on_validate) cb.on_validate(0, n);
    while (auto batch = loader.next()) {
      const int64_t b = batch->images.size(0);
      asl::nn::BFloat16Autocast autocast(o.amp());
      const torch::Tensor images = batch->images.contiguous(memory_format());
      regular.narrow(0, done, b).copy_(torch::sigmoid(model->forward(images).to(torch::kFloat32)));
      averaged.narrow(0, done, b).copy_(torch::sigmoid(e->forward(images).to(torch::kFloat32)));
      done += b;
      if (cb.on_validate) cb.on_validate(done, n);
    }
    model->train();
    if (comm()) {
      regular = comm()->allgather_rows(regular);
      averaged = comm()->allgather_rows(averaged);
    }
    const torch::Tensor targets = val.targets.to(torch::kFloat32);
    return {metrics::mean_average_precision(regular, targets), metrics::mean_average_precision(averaged, targets)};
  }

  void end_epoch() {
    const auto t0 = Clock::now();
    const auto [map_regular, map_ema] = validate();
    const double val_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    EpochRecord r;
    r.epoch = epoch + 1;
    r.steps = global_step;
    r.train_loss = epoch_images > 0 ? epoch_loss_sum / static_cast<double>(epoch_images) : 0.0;
    r.lr = last_lr;
    r.map_regular = map_regular;
    r.map_ema = map_ema;
    r.train_seconds = epoch_seconds;
    r.val_seconds = val_seconds;
    const double best_now = std::max(map_regular, map_ema);
    if (history.empty() || best_now > highest_map) {
      highest_map = best_now;
      r.improved = true;
      const models::TResNet better = map_ema > map_regular ? ema_model() : model;
      guarded_write([&] { save_model(path(kBestFile), better); });
      message(std::string("epoch ") + std::to_string(r.epoch) + ": " + kBestFile + " ← " +
              (map_ema > map_regular ? "EMA" : "model") + " weights");
    }
    r.highest_map = highest_map;
    if (o.epoch_checkpoints()) {
      const std::string file = path("model-epoch-" + std::to_string(r.epoch) + ".pth");
      guarded_write([&] { save_model(file, model); });
    }
    history.push_back(r);
    ++epoch;
    step_in_epoch = 0;
    epoch_base = 0;
    base_step = 0;
    // After a resume with another world size the epoch may have had a step fewer than this world's.
    global_step = epoch * steps_per_epoch;
    epoch_loss_sum = 0;
    epoch_images = 0;
    epoch_seconds = 0;
    save_resume();
    write_reports();
    if (cb.on_epoch) cb.on_epoch(r);
  }

  StepInfo step_info(double loss) const {
    StepInfo info;
    info.epoch = epoch + 1;
    info.step = step_in_epoch;
    info.steps_per_epoch = epoch_steps();
    info.global_step = global_step;
    // Over all ranks: the rest of the epoch's order from the base, padded to a multiple of the world.
    const int64_t rest = std::max<int64_t>(0, train.size() - epoch_base);
    const int64_t epoch_total = epoch_base + world() * ((rest + world() - 1) / world());
    info.images = std::min(epoch_base + (step_in_epoch - base_step) * o.batch_size() * world(), epoch_total);
    info.epoch_images = epoch_total;
    info.loss = loss;
    info.lr = last_lr;
    return info;
  }

  // Trains the rest of the current epoch; false when stopped (stop request or max_steps).
  bool train_epoch() {
    const int64_t bs = o.batch_size();
    const std::vector<int64_t> order = epoch_order(o.seed(), epoch, train.size());
    // This rank's share, as DistributedSampler: positions base + rank, base + rank + world, ... of the
    // order padded (by repeating its start) to a multiple of the world size. One process: the whole order.
    const int64_t w = world(), n = train.size();
    const std::vector<int64_t> share = shard_positions(n, w, rank(), epoch_base);
    const int64_t start = (step_in_epoch - base_step) * bs;
    std::vector<std::string> paths;
    std::vector<int64_t> rows, positions;
    for (size_t i = static_cast<size_t>(std::min<int64_t>(start, static_cast<int64_t>(share.size()))); i < share.size(); ++i) {
      const int64_t row = order[static_cast<size_t>(share[i] % n)];
      paths.push_back(train.paths[static_cast<size_t>(row)]);
      rows.push_back(row);
      positions.push_back(share[i]);
    }
    const torch::Tensor targets = train.targets.index_select(0, torch::tensor(rows, torch::kInt64)).to(torch::kFloat32);
    data::LoaderOptions lo;
    lo.batch_size = bs;
    lo.image_size = o.image_size();
    lo.filter = data::ResampleFilter::bilinear;
    lo.workers = o.workers();
    lo.decode.max_pixels = o.max_pixels();
    if (o.augment()) {
      const AugmentFn augment = o.augment();
      const uint64_t seed = o.seed();
      const int64_t ep = epoch;
      // Seeded by the image's position in the (padded) epoch order, whatever the number of ranks and workers.
      lo.transform = [augment, seed, ep, positions](data::Image& image, int64_t index) {
        augment(image, image_seed(seed, ep, positions[static_cast<size_t>(index)]));
      };
    }
    data::BatchLoader loader(paths, targets, {}, lo);
    model->train();
    std::vector<torch::Tensor> norm_buffers;
    for (const auto& buffer : model->buffers()) norm_buffers.push_back(buffer);
    if (cb.on_epoch_start) cb.on_epoch_start(step_info(0.0));
    for (;;) {
      const auto t0 = Clock::now();
      std::optional<data::Batch> batch = loader.next();
      if (!batch) break;
      int64_t b = batch->images.size(0);
      torch::Tensor logits;
      {
        asl::nn::BFloat16Autocast autocast(o.amp());
        logits = model->forward(batch->images.contiguous(memory_format()));
      }
      const torch::Tensor loss =
          nn::functional::asymmetric_loss_optimized(logits.to(torch::kFloat32), batch->targets, o.loss());
      optimizer->zero_grad();
      loss.backward();
      if (grad_sync) grad_sync->finish();  // the all-reduces the backward's hooks started
      last_lr = static_cast<const torch::optim::AdamOptions&>(optimizer->param_groups()[0].options()).lr();
      optimizer->step();
      // DDP's default, buffers as rank 0's at every forward: broadcast after each step, so that the EMA and
      // the next forward see rank 0's running statistics on every rank.
      if (comm()) comm()->broadcast(norm_buffers, 0);
      ++global_step;
      ++step_in_epoch;
      set_schedule_point();
      ema->update(*model);
      double loss_value = loss.item<double>();
      if (comm()) {  // the step's loss and images over all ranks
        const std::vector<double> sums = comm()->allreduce_sum({loss_value, static_cast<double>(b)});
        loss_value = sums[0];
        b = static_cast<int64_t>(sums[1]);
      }
      if (!std::isfinite(loss_value)) {
        throw std::runtime_error("training diverged: loss " + std::to_string(loss_value) + " at epoch " +
                                 std::to_string(epoch + 1) + ", step " + std::to_string(step_in_epoch));
      }
      epoch_loss_sum += loss_value;
      epoch_images += b;
      epoch_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      if (cb.on_step) cb.on_step(step_info(loss_value / static_cast<double>(b)));
      bool stop_here = cb.stop_requested && cb.stop_requested();
      // A stop request on any rank stops every rank after this same step.
      if (comm()) stop_here = comm()->allreduce_sum({stop_here ? 1.0 : 0.0})[0] > 0;
      const bool stop = stop_here || (o.max_steps() >= 0 && global_step >= o.max_steps());
      if (stop && (step_in_epoch < epoch_steps() || epoch + 1 < last_epoch)) {
        save_resume();
        write_reports();
        message("stopped after step " + std::to_string(step_in_epoch) + "/" + std::to_string(epoch_steps()) +
                " of epoch " + std::to_string(epoch + 1) + "; resume with --resume (" + path(kResumeFile) + ")");
        return false;
      }
    }
    return true;
  }
};

Trainer::Trainer(LabeledImages train, LabeledImages val, TrainerOptions options, TrainCallbacks callbacks)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.o = std::move(options);
  s.cb = std::move(callbacks);
  const TrainerOptions& o = s.o;
  const auto bad = [](const std::string& what) { throw std::runtime_error("train: " + what); };
  if (o.image_size() <= 0 || o.image_size() % 32 != 0) {
    bad("image size must be a positive multiple of 32, got " + std::to_string(o.image_size()));
  }
  if (o.batch_size() < 1) bad("batch size must be at least 1, got " + std::to_string(o.batch_size()));
  if (o.val_batch_size() < 0) bad("validation batch size must be at least 0, got " + std::to_string(o.val_batch_size()));
  if (!(o.lr() > 0)) bad("learning rate must be positive, got " + std::to_string(o.lr()));
  if (o.epochs() < 1) bad("epochs must be at least 1, got " + std::to_string(o.epochs()));
  if (o.stop_epoch() < 0) bad("stop epoch must be at least 0, got " + std::to_string(o.stop_epoch()));
  if (!(o.weight_decay() >= 0)) bad("weight decay must be >= 0, got " + std::to_string(o.weight_decay()));
  if (!(o.ema_decay() >= 0 && o.ema_decay() <= 1)) bad("EMA decay must be in [0, 1], got " + std::to_string(o.ema_decay()));
  if (o.workers() < 0) bad("workers must be at least 0, got " + std::to_string(o.workers()));
  if (o.out_dir().empty()) bad("no output folder");

  check_data(train, "training");
  check_data(val, "validation");
  if (train.class_names != val.class_names) {
    std::string detail = std::to_string(train.num_classes()) + " vs " + std::to_string(val.num_classes()) + " classes";
    for (size_t k = 0; k < std::min(train.class_names.size(), val.class_names.size()); ++k) {
      if (train.class_names[k] != val.class_names[k]) {
        detail = "class " + std::to_string(k) + " is '" + train.class_names[k] + "' vs '" + val.class_names[k] + "'";
        break;
      }
    }
    throw std::runtime_error(train.source + " and " + val.source + ": the training and validation classes differ (" +
                             detail + ")");
  }
  s.train = std::move(train);
  s.val = std::move(val);
  for (int64_t k = 0; k < s.train.num_classes(); ++k) s.idx_to_class[k] = s.train.class_names[static_cast<size_t>(k)];

  // Per rank: the epoch's order padded to a multiple of the world size, every world-th image.
  const int64_t shard = (s.train.size() + s.world() - 1) / s.world();
  s.steps_per_epoch = (shard + o.batch_size() - 1) / o.batch_size();
  s.total_steps = o.epochs() * s.steps_per_epoch;
  s.last_epoch = (o.stop_epoch() == 0 || o.stop_epoch() > o.epochs()) ? o.epochs() : o.stop_epoch();
  OneCycleOptions so;
  so.max_lr = o.lr();
  so.total_steps = s.total_steps;
  so.pct_start = 0.2;
  so.div_factor = 25;
  so.final_div_factor = 1e4;
  so.base_momentum = 0.85;
  so.max_momentum = 0.95;
  s.schedule = std::make_unique<OneCycleSchedule>(so);

  if (o.deterministic()) at::globalContext().setDeterministicAlgorithms(true, false);
  torch::manual_seed(o.seed());
  const int64_t c = s.train.num_classes();
  c10::optional<models::Weights> pretrain;
  if (!o.pretrain_path().empty()) {
    pretrain = models::read_weights(o.pretrain_path(), models::ReadWeightsOptions().use_ema(o.pretrain_use_ema()));
  }
  models::TResNetOptions mo;
  if (o.model_options()) {
    mo = *o.model_options();
  } else if (o.model_name() == "auto") {
    if (!pretrain) throw std::runtime_error("model name 'auto' takes the architecture of a pretrain, and none is given");
    const models::DetectedModel detected = models::detect_weights(*pretrain);
    mo = detected.options;
    s.arch = detected.name;
  } else {
    mo = models::model_options(o.model_name(), c);
    s.arch = o.model_name();
  }
  mo.num_classes(c).fused(false);
  // timm's weights mean plain batch norms; the model keeps their semantics while it trains.
  if (pretrain && pretrain->layout == models::Layout::Timm) mo.plain_norms(true);
  s.save_layout = o.save_layout().value_or(models::natural_layout(mo));
  if (s.save_layout == models::Layout::Published && mo.plain_norms()) {
    throw std::runtime_error(std::string("save layout asl: ") +
                             (pretrain && pretrain->layout == models::Layout::Timm
                                  ? "the pretrain " + o.pretrain_path() + " is in timm's layout, so the model has plain "
                                  : std::string("this model has plain ")) +
                             "batch norms, which the published (asl) layout cannot hold; use --save-layout timm");
  }
  s.model = models::TResNet(mo);
  if (pretrain) {
    const models::Weights& w = *pretrain;
    const io::StateDict state = models::state_for_model(w.state, w.layout, s.model, w.path);
    int64_t dropped = 0;
    for (const auto& item : state) dropped += item.key().find("head.fc") != std::string::npos;
    io::LoadStateDictOptions lo;
    lo.strict(false).key_filter([](const std::string& k) { return k.find("head.fc") == std::string::npos; });
    const io::LoadStateDictReport report = io::load_state_dict(*s.model, state, lo);
    std::string note = "pretrain " + w.path + " (" + models::to_string(w.layout) + " layout, " + w.container + "): " +
                       std::to_string(state.size() - dropped) + " tensors considered, " + std::to_string(dropped) +
                       " head.fc.* dropped (new head)";
    const auto list = [&note](const char* what, const std::vector<std::string>& keys) {
      if (keys.empty()) return;
      note += "; " + std::to_string(keys.size()) + " " + what + ":";
      for (size_t i = 0; i < keys.size() && i < 8; ++i) note += " " + keys[i];
      if (keys.size() > 8) note += " …";
    };
    list("missing (kept initialised)", report.missing);
    list("unexpected (ignored)", report.unexpected);
    list("shape-mismatched (kept initialised)", report.mismatched);
    s.message(note);
  }
  // Channels-last where it pays (channels_last_training): oneDNN's convolutions, forward and both backward
  // passes, run on NHWC activations without reordering them around every conv. Checkpoints are written
  // contiguous (the published layout).
  s.channels_last = channels_last_training();
  if (s.channels_last) {
    torch::NoGradGuard no_grad;
    for (auto& p : s.model->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }
  if (Communicator* comm = s.comm()) {
    // Every rank must train the same model on the same data with the same recipe; then all start from rank 0's weights.
    comm->check_same("the training setup (model, classes, image size, dataset sizes, batch, recipe)", s.recipe().repr(1 << 20));
    std::vector<torch::Tensor> state;
    for (const auto& item : io::module_state_dict(*s.model)) state.push_back(item.value());
    comm->broadcast(state, 0);
    s.grad_sync = std::make_unique<GradientSync>(*comm, s.model->parameters());
  }
  s.ema = std::make_unique<ModelEma>(*s.model, o.ema_decay());
  AdamConfig ac;
  ac.lr = o.lr();
  ac.weight_decay = o.weight_decay();
  s.optimizer = make_adam(*s.model, ac);
  s.set_schedule_point();
}

Trainer::~Trainer() = default;

models::TResNet Trainer::model() const { return s_->model; }
models::TResNet Trainer::ema() const { return s_->ema_model(); }
int64_t Trainer::steps_per_epoch() const { return s_->steps_per_epoch; }
std::string Trainer::architecture() const { return s_->arch.empty() ? "a custom TResNet" : s_->arch; }
models::Layout Trainer::save_layout() const { return s_->save_layout; }

TrainResult Trainer::run() {
  State& s = *s_;
  fs::create_directories(s.o.out_dir());
  // Temporary files of a run that was killed mid-write (io/file.h) are removed before this one writes.
  const std::vector<std::string> stale =
      s.writer() ? io::remove_stale_temp_files(s.o.out_dir()) : std::vector<std::string>{};
  if (!stale.empty()) {
    std::string names;
    for (const auto& n : stale) names += (names.empty() ? "" : ", ") + n;
    s.message("removed " + std::to_string(stale.size()) + " temporary file(s) of an interrupted run from " +
              s.o.out_dir() + ": " + names);
  }
  if (s.o.resume()) s.load_resume();
  TrainResult result;
  result.resume_path = s.path(kResumeFile);
  while (s.epoch < s.last_epoch) {
    if (s.step_in_epoch < s.epoch_steps() && !s.train_epoch()) {
      result.interrupted = true;
      break;
    }
    s.end_epoch();
    bool stop_requested = s.cb.stop_requested && s.cb.stop_requested();
    // Agreed over the ranks, as after every step: a signal that reached one rank first stops all here.
    if (s.comm()) stop_requested = s.comm()->allreduce_sum({stop_requested ? 1.0 : 0.0})[0] > 0;
    if (stop_requested || (s.o.max_steps() >= 0 && s.global_step >= s.o.max_steps())) {
      if (s.epoch < s.last_epoch) {
        result.interrupted = true;
        s.message("stopped after epoch " + std::to_string(s.epoch) + "; resume with --resume (" + result.resume_path + ")");
      }
      break;
    }
  }
  result.finished = s.epoch >= s.last_epoch;
  result.global_step = s.global_step;
  result.epochs_done = s.epoch;
  result.highest_map = s.highest_map;
  result.history = s.history;
  if (!s.history.empty()) result.best_path = s.path(kBestFile);
  return result;
}

}  // namespace asl::train
