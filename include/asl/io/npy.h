// NumPy .npy files (format 1.0/2.0, little-endian, C order) to and from tensors.
#pragma once

#include <string>

#include <torch/types.h>

namespace asl::io {

/// Reads a .npy file into a CPU tensor of the matching dtype.
/// Supported dtypes: <f4 <f8 <i8 <i4 |u1 |b1. Throws std::runtime_error naming the file and the
/// offending header field for anything else (big-endian, Fortran order, object arrays, truncation).
torch::Tensor load_npy(const std::string& path);

/// Parses an in-memory .npy image; `name` is used in error messages.
torch::Tensor parse_npy(const std::string& bytes, const std::string& name = "<memory>");

/// Serialises a tensor (any of the supported dtypes, any device/layout) to .npy bytes.
std::string npy_bytes(const torch::Tensor& tensor);

/// Writes a tensor as .npy through a temporary file renamed into place.
void save_npy(const std::string& path, const torch::Tensor& tensor);

}  // namespace asl::io
