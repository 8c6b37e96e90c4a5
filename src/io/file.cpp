#include "asl/io/file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace asl::io {
namespace {

constexpr const char* kTempMarker = ".asl-tmp-";

// A file descriptor closed on every path out.
struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

std::string folder_of(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// fsync of the folder, so that the rename itself survives a power loss.
int sync_folder(const std::string& folder) {
  Fd dir(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.fd < 0) return errno;
  return ::fsync(dir.fd) == 0 ? 0 : errno;
}

}  // namespace

ReadOnlyFd::ReadOnlyFd(const std::string& path) : fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {}

ReadOnlyFd::~ReadOnlyFd() {
  if (fd >= 0) ::close(fd);
}

bool pread_all(int fd, void* dst, uint64_t n, uint64_t offset) {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, static_cast<size_t>(std::min<uint64_t>(n, uint64_t{1} << 30)),
                                static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error(path + ": cannot open for reading: " + std::strerror(errno));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    throw std::runtime_error(path + ": read error");
  }
  return ss.str();
}

std::string temp_path_for(const std::string& path) {
  const std::filesystem::path p(path);
  return (p.parent_path() / ("." + p.filename().string() + kTempMarker + std::to_string(::getpid()))).string();
}

void write_file_atomic(const std::string& path, const std::function<void(const ByteSink&)>& produce, bool durable) {
  const std::string tmp = temp_path_for(path);
  int error = 0;  // the first errno of a failed step
  std::string step;
  {
    Fd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (out.fd < 0) {
      throw std::runtime_error(path + ": cannot open for writing: " + std::strerror(errno));
    }
    const ByteSink sink = [&](const void* data, size_t size) {
      const char* p = static_cast<const char*>(data);
      while (error == 0 && size > 0) {
        const ssize_t n = ::write(out.fd, p, size);
        if (n < 0) {
          if (errno == EINTR) continue;
          error = errno;
          step = "cannot write";
        } else {
          p += n;
          size -= static_cast<size_t>(n);
        }
      }
    };
    try {
      produce(sink);
    } catch (...) {
      ::close(out.fd);
      out.fd = -1;
      std::remove(tmp.c_str());
      throw;
    }
    if (error == 0 && durable && ::fsync(out.fd) != 0) {
      error = errno;
      step = "cannot flush to disk";
    }
    const int fd = out.fd;
    out.fd = -1;
    if (::close(fd) != 0 && error == 0) {
      error = errno;
      step = "cannot write";
    }
  }
  if (error == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) {
    error = errno;
    step = "cannot rename the temporary file into place";
  }
  if (error != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": " + step + ": " + std::strerror(error));
  }
  if (durable) sync_folder(folder_of(path));  // the file is complete and in place either way
}

void write_file_atomic(const std::string& path, const std::string& bytes, bool durable) {
  write_file_atomic(path, [&](const ByteSink& sink) { sink(bytes.data(), bytes.size()); }, durable);
}

std::vector<std::string> remove_stale_temp_files(const std::string& folder) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!std::filesystem::is_directory(folder, ec)) return removed;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    const std::string name = entry.path().filename().string();
    const auto marker = name.rfind(kTempMarker);
    if (name.empty() || name[0] != '.' || marker == std::string::npos) continue;
    const std::string pid_text = name.substr(marker + std::strlen(kTempMarker));
    if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
    const long pid = std::strtol(pid_text.c_str(), nullptr, 10);
    // A live process (this one, or another run writing to the same folder) still owns its temporary.
    if (pid == static_cast<long>(::getpid()) || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM) continue;
    if (std::filesystem::remove(entry.path(), ec)) removed.push_back(name);
  }
  return removed;
}

}  // namespace asl::io
