// Faults and exhaustion: every writer under a file-size limit (EFBIG) fails naming its file and leaves
// the previous file byte-identical and no temporary behind; training that cannot write its checkpoint
// says what is left and resumes; a zip bomb, lying zip headers and a legacy file declaring 2^40 bytes
// are refused before memory is spent; a deterministic training killed with SIGKILL at random points
// and resumed each time ends bit-identical to the uninterrupted run.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <caffe2/serialize/inline_container.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <thread>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/io/file.h"
#include "asl/io/npy.h"
#include "asl/io/pickle.h"
#include "test_util.h"

namespace fs = std::filesystem;
using asl::io::PyValue;

namespace {

std::string read(const fs::path& p) { return asl::io::read_file(p.string()); }


std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The resident-set figure of /proc/self/status in kB ("VmRSS", "VmHWM").
long status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(std::string(field) + ":", 0) == 0) return std::stol(line.substr(std::strlen(field) + 1));
  }
  return -1;
}

struct ChildResult {
  int code = -1;            // exit code (-1: killed)
  std::string message;      // what the child reported
  long peak_growth_kb = 0;  // peak RSS above the child's RSS at its start
};

// Runs `body` in a forked child with file writes limited to `fsize_limit` bytes (0: none) and SIGXFSZ
// ignored, so that a write past the limit fails with EFBIG as on a full disk. The child reports the
// exception's message (exit 1) or nothing (exit 0), and how far its peak RSS rose above its start
// (the peak is reset through /proc/self/clear_refs, so the parent's pages do not count).
ChildResult in_child(const std::function<void()>& body, rlim_t fsize_limit = 0) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::signal(SIGXFSZ, SIG_IGN);
    if (fsize_limit > 0) {
      const struct rlimit lim = {fsize_limit, fsize_limit};
      ::setrlimit(RLIMIT_FSIZE, &lim);
    }
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    const long start = status_kb("VmRSS");
    std::string message;
    int code = 0;
    try {
      body();
    } catch (const std::exception& e) {
      message = e.what();
      code = 1;
    }
    const std::string report = std::to_string(status_kb("VmHWM") - start) + "\n" + message;
    const ssize_t ignored = ::write(fds[1], report.data(), report.size());
    (void)ignored;
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string report;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) report.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ChildResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const auto nl = report.find('\n');
  if (nl != std::string::npos) {
    r.peak_growth_kb = std::stol(report.substr(0, nl));
    r.message = report.substr(nl + 1);
  }
  return r;
}

// Every writer: a previous file, a write that needs more than the limit, and then the same file.
void expect_failed_write_keeps_previous(const fs::path& dir, const std::string& name,
                                        const std::function<void(const std::string&)>& write_big) {
  SCOPED_TRACE(name);
  const fs::path target = dir / name;
  asl::io::write_file_atomic(target.string(), std::string("previous contents"));
  const std::string before = read(target);
  const ChildResult r = in_child([&] { write_big(target.string()); }, 64 << 10);
  EXPECT_EQ(r.code, 1) << r.message;
  EXPECT_NE(r.message.find(target.string()), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("File too large"), std::string::npos) << r.message;
  EXPECT_EQ(read(target), before);
  EXPECT_EQ(names_in(dir), std::vector<std::string>{name}) << "a temporary file was left behind";
  // Without the limit the same write succeeds (the failure was the limit's, not the writer's).
  EXPECT_EQ(in_child([&] { write_big(target.string()); }).code, 0);
  EXPECT_NE(read(target), before);
  fs::remove(target);
}

class Faults : public ::testing::Test {
 protected:
  // No OpenMP pool in this process: forked children may then compute safely.
  static void SetUpTestSuite() { at::set_num_threads(1); }
};

TEST_F(Faults, ChildPeakMemoryIsMeasured) {
  // The measure the hostile-file tests rely on: 64 MiB touched in the child shows, nothing touched does not.
  const ChildResult touched = in_child([] {
    std::vector<char> block(64 << 20);
    for (size_t i = 0; i < block.size(); i += 4096) block[i] = 1;
    if (block[4096] != 1) throw std::runtime_error("unreachable");
  });
  EXPECT_EQ(touched.code, 0) << touched.message;
  EXPECT_GT(touched.peak_growth_kb, 60 * 1024);
  EXPECT_LT(in_child([] {}).peak_growth_kb, 8 * 1024);
}

TEST_F(Faults, EveryWriterFailsCleanlyUnderAFileSizeLimit) {
  const asl::test::TempDir tmp("asl_faults_writers");
  const fs::path& dir = tmp.path();
  const auto big = torch::randn({100000});  // 400 kB against a 64 kB limit
  // Bytes (metrics.jsonl, training.svg, annotated images, images.txt, the mosaic data set all use it).
  expect_failed_write_keeps_previous(dir, "metrics.jsonl", [](const std::string& p) {
    asl::io::write_file_atomic(p, std::string(1 << 20, 'x'));
  });
  // A producer writing in pieces.
  expect_failed_write_keeps_previous(dir, "training.svg", [](const std::string& p) {
    asl::io::write_file_atomic(p, [](const asl::io::ByteSink& sink) {
      const std::string piece(4096, 'y');
      for (int i = 0; i < 64; ++i) sink(piece.data(), piece.size());
    });
  });
  // .npy (--save-preds).
  expect_failed_write_keeps_previous(dir, "scores.npy", [&](const std::string& p) { asl::io::save_npy(p, big); });
  // Checkpoints through LibTorch's zip writer (durable: fsync'ed).
  expect_failed_write_keeps_previous(dir, "model-highest.pth", [&](const std::string& p) {
    asl::io::StateDict sd;
    sd.insert("w", big);
    asl::io::save_checkpoint(p, sd, 1, {{0, "a"}});
  });
  // A producer that throws leaves nothing either.
  EXPECT_THROW(asl::io::write_file_atomic((dir / "x").string(),
                                          [](const asl::io::ByteSink&) { throw std::runtime_error("no"); }),
               std::runtime_error);
  EXPECT_TRUE(names_in(dir).empty());
  // A folder that cannot be written: the OS reason, no file.
  try {
    asl::io::write_file_atomic("/proc/asl-cannot-write-here", std::string("x"));
    ADD_FAILURE() << "write into /proc accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/proc/asl-cannot-write-here"), std::string::npos) << e.what();
  }
}

TEST_F(Faults, StaleTemporaryFilesOfDeadProcessesAreRemoved) {
  const asl::test::TempDir tmp("asl_faults_stale");
  const fs::path& dir = tmp.path();
  // A process that is gone: a child that has exited and been reaped.
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const std::string dead_tmp = ".last.pth.asl-tmp-" + std::to_string(dead);
  const std::string live_tmp = ".last.pth.asl-tmp-" + std::to_string(::getpid());
  for (const std::string& n : {dead_tmp, live_tmp, std::string("last.pth"), std::string(".notes.asl-tmp-x")}) {
    std::ofstream(dir / n) << "x";
  }
  EXPECT_EQ(asl::io::remove_stale_temp_files(dir.string()), std::vector<std::string>{dead_tmp});
  EXPECT_EQ(names_in(dir), (std::vector<std::string>{".last.pth.asl-tmp-" + std::to_string(::getpid()),
                                                     ".notes.asl-tmp-x", "last.pth"}));
  EXPECT_TRUE(asl::io::remove_stale_temp_files((dir / "missing").string()).empty());
  EXPECT_EQ(asl::io::temp_path_for((dir / "a.pth").string()), (dir / (".a.pth" + std::string(".asl-tmp-") +
                                                                        std::to_string(::getpid()))).string());
}

// ---- hostile files -------------------------------------------------------------------------------

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

struct ZipMember {
  std::string name;
  std::string data;     // as stored in the archive (deflated when method is 8)
  uint64_t size = 0;    // uncompressed
  uint32_t crc = 0;
  uint16_t method = 0;
};

ZipMember stored(const std::string& name, const std::string& bytes) {
  ZipMember m{name, bytes, bytes.size(),
              static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size()))),
              0};
  return m;
}

// `zeros` bytes of 0, raw-deflated in pieces (a zip member's method 8), with their CRC.
ZipMember deflated_zeros(const std::string& name, uint64_t zeros) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY), Z_OK);
  const std::vector<unsigned char> chunk(1 << 20, 0);
  std::vector<unsigned char> out(1 << 16);
  ZipMember m;
  m.name = name;
  m.size = zeros;
  m.method = 8;
  uLong crc = crc32(0, nullptr, 0);
  for (uint64_t left = zeros; left > 0 || true;) {
    const uInt n = static_cast<uInt>(std::min<uint64_t>(left, chunk.size()));
    crc = crc32(crc, chunk.data(), n);
    left -= n;
    z.next_in = const_cast<Bytef*>(chunk.data());
    z.avail_in = n;
    const int flush = left == 0 ? Z_FINISH : Z_NO_FLUSH;
    int rc;
    do {
      z.next_out = out.data();
      z.avail_out = static_cast<uInt>(out.size());
      rc = deflate(&z, flush);
      m.data.append(reinterpret_cast<const char*>(out.data()), out.size() - z.avail_out);
    } while (z.avail_out == 0);
    if (flush == Z_FINISH) {
      EXPECT_EQ(rc, Z_STREAM_END);
      break;
    }
  }
  deflateEnd(&z);
  m.crc = static_cast<uint32_t>(crc);
  return m;
}

// A plain zip archive (no zip64) of the members, local headers then central directory.
std::string zip_archive(const std::vector<ZipMember>& members) {
  std::string out, central;
  for (const auto& m : members) {
    const uint64_t offset = out.size();
    auto header = [&](std::string& h, bool central_entry) {
      put_le(h, central_entry ? 0x02014b50 : 0x04034b50, 4);
      if (central_entry) put_le(h, 20, 2);  // version made by
      put_le(h, 20, 2);                     // version needed
      put_le(h, 0, 2);                      // flags
      put_le(h, m.method, 2);
      put_le(h, 0, 4);  // time, date
      put_le(h, m.crc, 4);
      put_le(h, m.data.size(), 4);
      put_le(h, m.size, 4);
      put_le(h, m.name.size(), 2);
      put_le(h, 0, 2);  // extra
      if (central_entry) {
        put_le(h, 0, 2);  // comment
        put_le(h, 0, 2);  // disk
        put_le(h, 0, 2);  // internal attributes
        put_le(h, 0, 4);  // external attributes
        put_le(h, offset, 4);
      }
      h += m.name;
    };
    header(out, false);
    out += m.data;
    header(central, true);
  }
  const uint64_t cd_offset = out.size();
  out += central;
  put_le(out, 0x06054b50, 4);
  put_le(out, 0, 4);
  put_le(out, members.size(), 2);
  put_le(out, members.size(), 2);
  put_le(out, central.size(), 4);
  put_le(out, cd_offset, 4);
  put_le(out, 0, 2);
  return out;
}

// data.pkl of a checkpoint {"w": <10 float32s>} as LibTorch writes it (read back from a real save).
std::string small_checkpoint_pickle(const fs::path& dir) {
  asl::io::StateDict sd;
  sd.insert("w", torch::arange(10, torch::kFloat32));
  const std::string file = (dir / "small.pth").string();
  asl::io::save(file, asl::io::state_dict_value(sd));
  caffe2::serialize::PyTorchStreamReader reader(file);
  at::DataPtr ptr;
  size_t size = 0;
  std::tie(ptr, size) = reader.getRecord("data.pkl");
  return std::string(static_cast<const char*>(ptr.get()), size);
}

TEST_F(Faults, ZipBombIsRefusedBeforeInflating) {
  const asl::test::TempDir tmp("asl_faults_bomb");
  const fs::path& dir = tmp.path();
  const std::string pkl = small_checkpoint_pickle(dir);
  // data/0 should hold 40 bytes; the member declares 1 GiB of deflated zeros (about 1 MB in the file).
  const ZipMember bomb = deflated_zeros("archive/data/0", uint64_t{1} << 30);
  const std::string file = (dir / "bomb.pth").string();
  asl::io::write_file_atomic(file, zip_archive({stored("archive/data.pkl", pkl), bomb, stored("archive/version", "3\n")}));
  EXPECT_LT(fs::file_size(file), 2u << 20);
  const ChildResult r = in_child([&] { asl::io::load_checkpoint(file); });
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.message.find("record data/0 holds 1073741824 bytes, expected 40"), std::string::npos) << r.message;
  EXPECT_LT(r.peak_growth_kb, 100 * 1024) << "peak RSS grew by " << r.peak_growth_kb << " kB";
  std::cout << "zip bomb refused; child's peak RSS grew by " << r.peak_growth_kb << " kB\n";

  // A deflated data.pkl declaring 1 GiB is refused by its limit, as is any other large compressed member.
  const std::string pkl_bomb = (dir / "pkl_bomb.pth").string();
  ZipMember pkl_member = bomb;
  pkl_member.name = "archive/data.pkl";
  asl::io::write_file_atomic(pkl_bomb, zip_archive({pkl_member, stored("archive/version", "3\n")}));
  const ChildResult p = in_child([&] { asl::io::load_checkpoint(pkl_bomb); });
  EXPECT_EQ(p.code, 1);
  EXPECT_NE(p.message.find("declares 1073741824 bytes"), std::string::npos) << p.message;
  EXPECT_LT(p.peak_growth_kb, 100 * 1024) << "peak RSS grew by " << p.peak_growth_kb << " kB";

  // The same members honestly sized load.
  const std::string honest = (dir / "honest.pth").string();
  std::string floats(40, '\0');
  for (int i = 0; i < 10; ++i) {
    const float v = static_cast<float>(i);
    std::memcpy(&floats[static_cast<size_t>(4 * i)], &v, 4);
  }
  asl::io::write_file_atomic(honest, zip_archive({stored("archive/data.pkl", pkl), stored("archive/data/0", floats),
                                                  stored("archive/version", "3\n")}));
  EXPECT_TRUE(torch::equal(asl::io::load_checkpoint(honest).model["w"], torch::arange(10, torch::kFloat32)));

  // Local and central headers that disagree (the local header of data/0 claims 41 bytes).
  std::string lying = read(honest);
  const size_t local = lying.find(std::string("PK\x03\x04", 4), lying.find("archive/data.pkl") + 1);
  ASSERT_NE(local, std::string::npos);
  lying[local + 22] = 41;
  const std::string lying_file = (dir / "lying.pth").string();
  asl::io::write_file_atomic(lying_file, lying);
  try {
    asl::io::load_checkpoint(lying_file);
    ADD_FAILURE() << "disagreeing headers accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("archive/data/0: local header says 41 bytes"), std::string::npos) << e.what();
  }
}

TEST_F(Faults, LegacyStorageLargerThanTheFileIsRefusedWithoutAllocating) {
  const asl::test::TempDir tmp("asl_faults_legacy");
  const fs::path& dir = tmp.path();
  // torch.save's legacy stream: magic number, protocol 1001, sys_info, then the object whose persistent
  // id declares a FloatStorage of 2^38 elements (2^40 bytes), then the key list (never reached).
  const auto bytes = [](const auto& literal) { return std::string(literal, sizeof(literal) - 1); };
  std::string f;
  f += std::string("\x80\x02\x8a\x0a", 4);
  put_le(f, 0x20f9469cfc6cULL, 6);
  put_le(f, 0x1950a86aULL, 4);
  f += '.';
  f += std::string("\x80\x02M\xe9\x03.", 6);
  f += std::string("\x80\x02}q\x00.", 6);
  f += bytes("\x80\x02(X\x07\x00\x00\x00" "storage" "ctorch\nFloatStorage\n" "X\x01\x00\x00\x00" "0"
             "X\x03\x00\x00\x00" "cpu" "\x8a\x06");
  put_le(f, uint64_t{1} << 38, 6);
  f += "tQ.";
  const std::string file = (dir / "huge_legacy.pth").string();
  asl::io::write_file_atomic(file, f);
  const ChildResult r = in_child([&] { asl::io::load_checkpoint(file); });
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.message.find("claims 274877906944 elements, more than the file holds"), std::string::npos) << r.message;
  EXPECT_LT(r.peak_growth_kb, 16 * 1024) << "peak RSS grew by " << r.peak_growth_kb << " kB";
}

}  // namespace
