// Data-parallel training on PyTorch's c10d (TCPStore + ProcessGroupGloo): where a worker finds its group
// (torchrun, Kubeflow's PyTorchJob, SLURM, or asl's own launcher) and the collectives the trainer needs.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/util/Optional.h>
#include <torch/types.h>

namespace asl::train {

/// A worker's place in its group.
struct DistributedConfig {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// torchrun's agent already hosts the store (TORCHELASTIC_USE_AGENT_STORE): every rank joins as a client.
  bool agent_store = false;
  /// Key prefix in the store (torchrun's workers use "/worker/attempt_<restart count>").
  std::string store_prefix = "asl";
  /// Bound on every collective and on joining the group.
  std::chrono::milliseconds timeout{60000};
  /// Where the variables came from: "torchrun", "SLURM", "asl --nproc-per-node".
  std::string source;
};

/// The group this process belongs to according to its environment: RANK, WORLD_SIZE, LOCAL_RANK,
/// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun, PyTorchJob, asl's launcher), else SLURM_PROCID,
/// SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE and the first host of SLURM_JOB_NODELIST. Nothing
/// (single process) when no WORLD_SIZE / SLURM_NTASKS above 1 is set. Throws naming the variable and value
/// for a malformed or inconsistent one.
c10::optional<DistributedConfig> distributed_from_env();

/// A TCP port on the loopback interface that nothing listens on now (for a group on one machine).
/// Throws std::runtime_error with the system's reason when none can be had.
int free_loopback_port();

/// The first host of a SLURM node list ("node[01-04,07],gpu2" -> "node01").
std::string first_slurm_host(const std::string& nodelist);

/// A joined process group and the collectives of data-parallel training. All ranks call every method in
/// the same order; a rank that dies makes the others' next collective fail within the timeout.
class Communicator {
 public:
  explicit Communicator(const DistributedConfig& config);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int64_t rank() const { return config_.rank; }
  int64_t world_size() const { return config_.world_size; }
  const DistributedConfig& config() const { return config_; }

  /// Every tensor (CPU, contiguous or not) set to rank `root`'s values, in place; one collective per dtype.
  void broadcast(const std::vector<torch::Tensor>& tensors, int64_t root = 0);
  /// Every floating tensor replaced by the mean over the ranks (SUM, then / world size), in place, through
  /// flat float32 buckets of at most `bucket_bytes`.
  void allreduce_mean(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes = 25 << 20);
  /// Sum over the ranks of a few doubles (loss sums, counts, flags).
  std::vector<double> allreduce_sum(const std::vector<double>& values);
  /// Rows of every rank's `local` (same number of columns and dtype; any row counts), concatenated in rank order.
  torch::Tensor allgather_rows(const torch::Tensor& local);
  /// Throws, naming `what` and the ranks' values, unless every rank passes the same `value`.
  void check_same(const std::string& what, const std::string& value);
  void barrier();

 private:
  friend class GradientSync;
  struct Impl;
  DistributedConfig config_;
  std::unique_ptr<Impl> impl_;
};

/// DDP's gradient synchronisation: the parameters are split into buckets (in reverse order, the order the
/// backward produces their gradients); autograd hooks copy each gradient into its bucket as soon as it is
/// computed, and a full bucket's all-reduce starts at once, overlapping the rest of the backward. finish()
/// waits for them and sets every parameter's .grad to the mean over the ranks. Every parameter must get a
/// gradient in every backward (as in TResNet).
class GradientSync {
 public:
  GradientSync(Communicator& comm, std::vector<torch::Tensor> parameters, int64_t bucket_bytes = 25 << 20);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;
  /// Waits for the backward's all-reduces and writes the averaged gradients into .grad.
  void finish();
  /// Seconds the last finish() spent waiting for all-reduces still running after the backward (the part
  /// of the communication the backward did not hide).
  double last_wait_seconds() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace asl::train
