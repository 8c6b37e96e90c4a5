// .safetensors read/write: an 8-byte little-endian header length N, N bytes of JSON (per tensor dtype,
// shape and data_offsets into the data section; optional "__metadata__" of strings), then the raw bytes.
#pragma once

#include <map>
#include <string>

#include "asl/io/checkpoint.h"

namespace asl::io {

/// The tensors of a file (in the order of their data) and its "__metadata__".
struct SafetensorsFile {
  StateDict tensors;
  std::map<std::string, std::string> metadata;
};

/// The reference library's limit on the header length.
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

/// Reads F64/F32/F16/BF16/I64/I32/I16/I8/U8/BOOL tensors, each read straight into its own storage.
/// Refuses, with the file, the tensor's name and the values in the message: a file shorter than 8 bytes,
/// a header length past the file or above kMaxSafetensorsHeader, invalid JSON or UTF-8, unknown dtypes,
/// negative dimensions, a byte size that disagrees with the offsets, offsets outside the data section,
/// reversed, overlapping or unordered-with-gaps ranges, holes and trailing bytes (the ranges must tile
/// the data section exactly).
SafetensorsFile load_safetensors(const std::string& path);

/// Writes tensors (CPU, any layout; a supported dtype) sorted by name, the header padded with spaces to
/// a multiple of 8 bytes, "__metadata__" = metadata (default {"format": "pt"}), atomically and
/// durably (io/file.h). The same input gives the same bytes.
void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace asl::io
