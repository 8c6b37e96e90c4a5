#include "asl/train/distributed.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <map>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <sstream>
#include <stdexcept>

#include <torch/torch.h>

namespace asl::train {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

int64_t env_int(const char* name, c10::optional<int64_t> fallback, int64_t min_value) {
  const char* v = env(name);
  if (v == nullptr) {
    if (!fallback) throw std::runtime_error(std::string("distributed training: environment variable ") + name + " is not set");
    return *fallback;
  }
  // SLURM_NTASKS_PER_NODE may read "2(x3)": the leading count.
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  if (end == v || errno != 0 || (*end != '\0' && *end != '(') || x < min_value) {
    throw std::runtime_error(std::string("distributed training: environment variable ") + name + " is '" + v +
                             "', expected an integer >= " + std::to_string(min_value));
  }
  return x;
}

std::string rank_text(const DistributedConfig& c) {
  return "rank " + std::to_string(c.rank) + " of " + std::to_string(c.world_size);
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // The first entry up to a top-level comma; a bracket range gives its first number with its zero padding.
  std::string first;
  int depth = 0;
  for (char ch : nodelist) {
    if (ch == '[') ++depth;
    if (ch == ']') --depth;
    if (ch == ',' && depth == 0) break;
    first += ch;
  }
  const size_t open = first.find('[');
  if (open == std::string::npos) return first;
  std::string inside = first.substr(open + 1, first.find(']', open) - open - 1);
  const size_t cut = inside.find_first_of(",-");
  return first.substr(0, open) + inside.substr(0, cut);
}

c10::optional<DistributedConfig> distributed_from_env() {
  DistributedConfig c;
  if (env("WORLD_SIZE") != nullptr) {
    c.world_size = env_int("WORLD_SIZE", c10::nullopt, 1);
    if (c.world_size == 1) return c10::nullopt;
    c.rank = env_int("RANK", c10::nullopt, 0);
    c.local_rank = env_int("LOCAL_RANK", c.rank, 0);
    c.local_world_size = env_int("LOCAL_WORLD_SIZE", c.world_size, 1);
    c.master_addr = env("MASTER_ADDR") != nullptr ? env("MASTER_ADDR") : "127.0.0.1";
    c.master_port = static_cast<int>(env_int("MASTER_PORT", c10::nullopt, 1));
    const char* agent = env("TORCHELASTIC_USE_AGENT_STORE");
    c.agent_store = agent != nullptr && (std::string(agent) == "True" || std::string(agent) == "1");
    if (c.agent_store) {
      c.store_prefix = "/worker/attempt_" + std::to_string(env_int("TORCHELASTIC_RESTART_COUNT", int64_t{0}, 0));
    }
    c.source = env("TORCHELASTIC_RUN_ID") != nullptr ? "torchrun" : env("ASL_LAUNCHER") != nullptr ? "asl --nproc-per-node" : "environment";
  } else if (env("SLURM_NTASKS") != nullptr) {
    c.world_size = env_int("SLURM_NTASKS", c10::nullopt, 1);
    if (c.world_size == 1) return c10::nullopt;
    c.rank = env_int("SLURM_PROCID", c10::nullopt, 0);
    c.local_rank = env_int("SLURM_LOCALID", int64_t{0}, 0);
    c.local_world_size = env_int("SLURM_NTASKS_PER_NODE", int64_t{1}, 1);
    if (env("MASTER_ADDR") != nullptr) {
      c.master_addr = env("MASTER_ADDR");
    } else if (env("SLURM_JOB_NODELIST") != nullptr) {
      c.master_addr = first_slurm_host(env("SLURM_JOB_NODELIST"));
    } else {
      throw std::runtime_error("distributed training under SLURM: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set");
    }
    c.master_port = static_cast<int>(env_int("MASTER_PORT", int64_t{29500}, 1));
    c.source = "SLURM";
  } else {
    return c10::nullopt;
  }
  if (c.rank >= c.world_size) {
    throw std::runtime_error("distributed training: rank " + std::to_string(c.rank) + " is not below the world size " +
                             std::to_string(c.world_size));
  }
  if (c.local_rank >= c.local_world_size) {
    throw std::runtime_error("distributed training: local rank " + std::to_string(c.local_rank) +
                             " is not below the local world size " + std::to_string(c.local_world_size));
  }
  if (c.master_port > 65535) throw std::runtime_error("distributed training: MASTER_PORT " + std::to_string(c.master_port) + " is not a port");
  return c;
}

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  // Every rank bumps its counter "alive/<rank>" in the store twice a second, so that after a failed
  // collective the survivors can tell which ranks stopped.
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable stop_cv;
  bool stopping = false;

  void start_heartbeat(int64_t rank) {
    heartbeat = std::thread([this, rank] {
      int64_t beat = 0;
      std::unique_lock<std::mutex> lock(mutex);
      while (!stopping) {
        lock.unlock();
        try {
          const std::string v = std::to_string(++beat);
          store->set("alive/" + std::to_string(rank), std::vector<uint8_t>(v.begin(), v.end()));
        } catch (const std::exception&) {
          // The store is gone (its host stopped); the next collective reports it.
        }
        lock.lock();
        stop_cv.wait_for(lock, std::chrono::milliseconds(500), [this] { return stopping; });
      }
    });
  }

  void stop_heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    stop_cv.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }

  // The ranks whose heartbeat did not move for two seconds ("" when all did), or the store's host.
  std::string lost_ranks(const DistributedConfig& c) {
    auto read = [&] {
      std::vector<std::string> beats;
      for (int64_t r = 0; r < c.world_size; ++r) {
        const std::string key = "alive/" + std::to_string(r);
        if (!store->check({key})) {
          beats.emplace_back();
          continue;
        }
        const std::vector<uint8_t> v = store->get(key);
        beats.emplace_back(v.begin(), v.end());
      }
      return beats;
    };
    try {
      const auto before = read();
      std::this_thread::sleep_for(std::chrono::seconds(2));
      const auto after = read();
      std::string lost;
      for (int64_t r = 0; r < c.world_size; ++r) {
        if (r != c.rank && before[static_cast<size_t>(r)] == after[static_cast<size_t>(r)]) {
          lost += (lost.empty() ? "" : ", ") + std::to_string(r);
        }
      }
      return lost.empty() ? "" : "rank " + lost + " stopped";
    } catch (const std::exception&) {
      return c.agent_store ? "the store is unreachable" : "rank 0 (which hosts the store) stopped";
    }
  }

  // Waits for a collective; a failure (a peer died, the timeout passed) becomes one clear error.
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const DistributedConfig& c, const char* what) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      std::string msg = e.what();
      const size_t cut = msg.find("\nException raised from");
      if (cut != std::string::npos) msg.resize(cut);
      const std::string lost = lost_ranks(c);
      throw std::runtime_error(rank_text(c) + ": the " + what + " across the group failed: " +
                               (lost.empty() ? "another rank stopped or is unreachable" : lost) + " (bound: " +
                               std::to_string(c.timeout.count() / 1000) + " s, --dist-timeout): " + msg);
    }
  }
};

Communicator::Communicator(const DistributedConfig& config) : config_(config), impl_(std::make_unique<Impl>()) {
  const auto& c = config_;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(c.master_port);
    so.isServer = !c.agent_store && c.rank == 0;
    if (!c.agent_store) so.numWorkers = static_cast<size_t>(c.world_size);
    so.waitWorkers = false;
    so.timeout = c.timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(c.master_addr, so);
    impl_->store = c10::make_intrusive<c10d::PrefixStore>(c.store_prefix, tcp);
    auto options = c10d::ProcessGroupGloo::Options::create(c.timeout);
    // As PyTorch: GLOO_SOCKET_IFNAME names the interface(s), else the address this host's name resolves to.
    if (const char* ifname = env("GLOO_SOCKET_IFNAME")) {
      std::stringstream list(ifname);
      std::string one;
      while (std::getline(list, one, ',')) {
        if (!one.empty()) options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(one));
      }
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, static_cast<int>(c.rank),
                                                                static_cast<int>(c.world_size), options);
    impl_->start_heartbeat(c.rank);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    const size_t cut = msg.find("\nException raised from");
    if (cut != std::string::npos) msg.resize(cut);
    throw std::runtime_error(rank_text(c) + ": cannot join the process group at " + c.master_addr + ":" +
                             std::to_string(c.master_port) + " within " + std::to_string(c.timeout.count() / 1000) +
                             " s: " + msg);
  }
}

Communicator::~Communicator() { impl_->stop_heartbeat(); }

void Communicator::broadcast(const std::vector<torch::Tensor>& tensors, int64_t root) {
  torch::NoGradGuard no_grad;
  // One collective per dtype: the tensors flattened into one buffer (a model's buffers are hundreds of
  // small tensors, broadcast after every training step).
  std::map<c10::ScalarType, std::vector<size_t>> by_dtype;
  for (size_t i = 0; i < tensors.size(); ++i) by_dtype[tensors[i].scalar_type()].push_back(i);
  for (const auto& [dtype, members] : by_dtype) {
    std::vector<torch::Tensor> flat;
    for (size_t i : members) flat.push_back(tensors[i].reshape({-1}));
    std::vector<at::Tensor> buffer{torch::cat(flat)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    impl_->wait(impl_->group->broadcast(buffer, o), config_, "broadcast");
    int64_t offset = 0;
    for (size_t i : members) {
      const int64_t n = tensors[i].numel();
      tensors[i].copy_(buffer[0].narrow(0, offset, n).view(tensors[i].sizes()));
      offset += n;
    }
  }
}

void Communicator::allreduce_mean(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  torch::NoGradGuard no_grad;
  const double scale = 1.0 / static_cast<double>(config_.world_size);
  size_t i = 0;
  while (i < tensors.size()) {
    // One bucket: consecutive tensors up to bucket_bytes (at least one).
    size_t j = i;
    int64_t bytes = 0;
    std::vector<torch::Tensor> flat;
    while (j < tensors.size() && (j == i || bytes + tensors[j].numel() * 4 <= bucket_bytes)) {
      bytes += tensors[j].numel() * 4;
      flat.push_back(tensors[j].reshape({-1}).to(torch::kFloat32));
      ++j;
    }
    std::vector<at::Tensor> buffer{torch::cat(flat)};
    impl_->wait(impl_->group->allreduce(buffer), config_, "all-reduce of gradients");
    buffer[0].mul_(scale);
    int64_t offset = 0;
    for (size_t k = i; k < j; ++k) {
      const int64_t n = tensors[k].numel();
      tensors[k].copy_(buffer[0].narrow(0, offset, n).view(tensors[k].sizes()));
      offset += n;
    }
    i = j;
  }
}

std::vector<double> Communicator::allreduce_sum(const std::vector<double>& values) {
  std::vector<at::Tensor> t{torch::tensor(values, torch::kFloat64)};
  impl_->wait(impl_->group->allreduce(t), config_, "all-reduce");
  const auto acc = t[0].accessor<double, 1>();
  std::vector<double> out(values.size());
  for (size_t k = 0; k < values.size(); ++k) out[k] = acc[static_cast<int64_t>(k)];
  return out;
}

torch::Tensor Communicator::allgather_rows(const torch::Tensor& local) {
  const int64_t w = config_.world_size;
  // Row counts first, then every block padded to the largest.
  std::vector<std::vector<at::Tensor>> counts_out(1);
  for (int64_t r = 0; r < w; ++r) counts_out[0].push_back(torch::zeros({1}, torch::kLong));
  std::vector<at::Tensor> count_in{torch::full({1}, local.size(0), torch::kLong)};
  impl_->wait(impl_->group->allgather(counts_out, count_in), config_, "gathering of validation scores");
  int64_t most = 0;
  std::vector<int64_t> rows;
  for (const auto& t : counts_out[0]) {
    rows.push_back(t.item<int64_t>());
    most = std::max(most, rows.back());
  }
  std::vector<int64_t> shape = local.sizes().vec();
  shape[0] = most;
  torch::Tensor padded = torch::zeros(shape, local.options());
  padded.narrow(0, 0, local.size(0)).copy_(local);
  std::vector<std::vector<at::Tensor>> out(1);
  for (int64_t r = 0; r < w; ++r) out[0].push_back(torch::empty(shape, local.options()));
  std::vector<at::Tensor> in{padded};
  impl_->wait(impl_->group->allgather(out, in), config_, "gathering of validation scores");
  std::vector<torch::Tensor> parts;
  for (int64_t r = 0; r < w; ++r) parts.push_back(out[0][static_cast<size_t>(r)].narrow(0, 0, rows[static_cast<size_t>(r)]));
  return torch::cat(parts);
}

void Communicator::check_same(const std::string& what, const std::string& value) {
  const std::string key = "check/" + what + "/";
  impl_->store->set(key + std::to_string(config_.rank), std::vector<uint8_t>(value.begin(), value.end()));
  barrier();
  std::string differ;
  for (int64_t r = 0; r < config_.world_size; ++r) {
    const std::vector<uint8_t> v = impl_->store->get(key + std::to_string(r));
    const std::string other(v.begin(), v.end());
    if (other != value) differ += "; rank " + std::to_string(r) + ": " + other;
  }
  if (!differ.empty()) {
    throw std::runtime_error(rank_text(config_) + ": the ranks disagree on " + what + " (this rank: " + value + differ +
                             ")");
  }
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("no free loopback port: socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(std::string("no free loopback port: ") + std::strerror(err));
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

void Communicator::barrier() {
  impl_->wait(impl_->group->barrier(), config_, "barrier");
}

struct GradientSync::State {
  Communicator* comm = nullptr;
  std::vector<torch::Tensor> params;
  struct Bucket {
    std::vector<size_t> members;     // indices into params
    std::vector<int64_t> offsets;    // of each member in buffer
    torch::Tensor buffer;            // flat float32
    size_t pending = 0;              // members whose gradient has not arrived in this backward
    c10::intrusive_ptr<c10d::Work> work;
  };
  std::vector<Bucket> buckets;
  std::vector<std::pair<size_t, size_t>> where;  // param -> (bucket, member)
  std::mutex mutex;
  double last_wait = 0;

  void arrived(size_t param, const torch::Tensor& grad) {
    torch::NoGradGuard no_grad;
    const auto [b, m] = where[param];
    Bucket& bucket = buckets[b];
    bucket.buffer.narrow(0, bucket.offsets[m], grad.numel()).copy_(grad.reshape({-1}));
    std::lock_guard<std::mutex> lock(mutex);
    if (--bucket.pending == 0) {
      std::vector<at::Tensor> one{bucket.buffer};
      bucket.work = comm->impl_->group->allreduce(one);
    }
  }
};

GradientSync::GradientSync(Communicator& comm, std::vector<torch::Tensor> parameters, int64_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  State& s = *state_;
  s.comm = &comm;
  s.params = std::move(parameters);
  s.where.resize(s.params.size());
  // Reverse order: the last layers' gradients come first in the backward.
  int64_t filled = 0;  // elements in the current bucket
  for (size_t k = s.params.size(); k-- > 0;) {
    const int64_t n = s.params[k].numel();
    if (s.buckets.empty() || (filled > 0 && (filled + n) * 4 > bucket_bytes)) {
      s.buckets.emplace_back();
      filled = 0;
    }
    State::Bucket& b = s.buckets.back();
    s.where[k] = {s.buckets.size() - 1, b.members.size()};
    b.members.push_back(k);
    b.offsets.push_back(filled);
    filled += n;
  }
  for (auto& b : s.buckets) {
    const int64_t total = b.offsets.back() + s.params[b.members.back()].numel();
    b.buffer = torch::zeros({total}, torch::kFloat32);
    b.pending = b.members.size();
  }
  std::weak_ptr<State> weak = state_;
  for (size_t k = 0; k < s.params.size(); ++k) {
    s.params[k].register_hook([weak, k](torch::Tensor grad) {
      if (auto st = weak.lock()) st->arrived(k, grad);
    });
  }
}

GradientSync::~GradientSync() = default;

void GradientSync::finish() {
  State& s = *state_;
  torch::NoGradGuard no_grad;
  const double scale = 1.0 / static_cast<double>(s.comm->world_size());
  double wait = 0;
  for (auto& b : s.buckets) {
    if (b.pending != 0 || !b.work) {
      throw std::runtime_error(rank_text(s.comm->config()) + ": gradient synchronisation: " + std::to_string(b.pending) +
                               " parameters of a bucket got no gradient in this backward");
    }
    const auto t0 = std::chrono::steady_clock::now();
    s.comm->impl_->wait(b.work, s.comm->config(), "all-reduce of gradients");
    wait += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    b.work.reset();
    b.buffer.mul_(scale);
    for (size_t m = 0; m < b.members.size(); ++m) {
      torch::Tensor& p = s.params[b.members[m]];
      const torch::Tensor avg = b.buffer.narrow(0, b.offsets[m], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(avg);
      } else {
        p.mutable_grad() = avg.clone();
      }
    }
    b.pending = b.members.size();
  }
  s.last_wait = wait;
}

double GradientSync::last_wait_seconds() const { return state_->last_wait; }

}  // namespace asl::train
