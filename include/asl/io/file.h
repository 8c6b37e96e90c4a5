// Whole-file reads and crash-safe whole-file writes (temporary file, then rename).
#pragma once

#include <string>

namespace asl::io {

/// Reads a whole file; throws std::runtime_error naming the path when it cannot.
std::string read_file(const std::string& path);

/// Writes `bytes` to `path` through `path.tmp.<pid>` renamed into place, so that the final name
/// never holds a partial file.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace asl::io
