// Whole-file reads and the one crash-safe write path of asl (temporary file in the target's folder,
// every write checked, flushed, optionally fsync'ed, then renamed into place).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace asl::io {

/// Reads a whole file; throws std::runtime_error naming the path when it cannot.
std::string read_file(const std::string& path);

/// A file opened read-only (O_CLOEXEC), closed when the object goes away; fd < 0 (and errno set) when the
/// open failed.
struct ReadOnlyFd {
  int fd = -1;
  explicit ReadOnlyFd(const std::string& path);
  ~ReadOnlyFd();
  ReadOnlyFd(const ReadOnlyFd&) = delete;
  ReadOnlyFd& operator=(const ReadOnlyFd&) = delete;
};

/// Reads exactly n bytes at `offset` (retrying short reads and EINTR); false on an error or end of file.
bool pread_all(int fd, void* dst, uint64_t n, uint64_t offset);

/// What a producer passed to write_file_atomic calls with each piece of the file, in order.
using ByteSink = std::function<void(const void* data, size_t size)>;

/// Writes the bytes that `produce` hands to its sink to `path`, through a temporary file beside it
/// (temp_path_for) that is renamed into place only when every write, the flush and, with `durable`, the
/// fsync of file and folder succeeded. On any failure (including an exception from `produce`) the
/// temporary is removed, a previous file at `path` is left untouched, and std::runtime_error names the
/// target and the OS reason ("No space left on device", "File too large", "Permission denied").
/// The sink itself never throws: after the first failed write it discards the rest, so producers that
/// cannot handle errors (LibTorch's zip writer) run to their end.
void write_file_atomic(const std::string& path, const std::function<void(const ByteSink&)>& produce,
                       bool durable = false);

/// The same for bytes in memory.
void write_file_atomic(const std::string& path, const std::string& bytes, bool durable = false);

/// The temporary file name write_file_atomic uses for `path` in this process:
/// "<folder>/.<name>.asl-tmp-<pid>".
std::string temp_path_for(const std::string& path);

/// Removes the temporary files that write_file_atomic left in `folder` (not in sub-folders) when a
/// process was killed mid-write: names of the form ".<name>.asl-tmp-<pid>" whose process is gone.
/// Returns the names removed. A folder that does not exist has none.
std::vector<std::string> remove_stale_temp_files(const std::string& folder);

}  // namespace asl::io
