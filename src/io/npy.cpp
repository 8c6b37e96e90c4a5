#include "asl/io/npy.h"

#include <cstring>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "asl/io/file.h"

namespace asl::io {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

[[noreturn]] void fail(const std::string& name, const std::string& what) {
  throw std::runtime_error(name + ": invalid .npy: " + what);
}

struct DtypeInfo {
  const char* descr;
  torch::ScalarType type;
  size_t itemsize;
};

const DtypeInfo kDtypes[] = {
    {"<f4", torch::kFloat32, 4}, {"<f8", torch::kFloat64, 8}, {"<i8", torch::kInt64, 8},
    {"<i4", torch::kInt32, 4},   {"|u1", torch::kUInt8, 1},   {"|b1", torch::kBool, 1},
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

// Finds the value text after 'key': in the header dict; the value ends at the next top-level comma.
std::string_view dict_value(std::string_view header, const std::string& key, const std::string& name) {
  const std::string quoted1 = "'" + key + "'";
  const std::string quoted2 = "\"" + key + "\"";
  size_t pos = header.find(quoted1);
  size_t len = quoted1.size();
  if (pos == std::string_view::npos) {
    pos = header.find(quoted2);
    len = quoted2.size();
  }
  if (pos == std::string_view::npos) fail(name, "header has no field '" + key + "'");
  pos += len;
  while (pos < header.size() && header[pos] == ' ') ++pos;
  if (pos >= header.size() || header[pos] != ':') fail(name, "header field '" + key + "' has no value");
  ++pos;
  int depth = 0;
  size_t end = pos;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if ((c == ',' || c == '}') && depth == 0) break;
  }
  if (depth != 0) fail(name, "header field '" + key + "' is malformed");
  return trim(header.substr(pos, end - pos));
}

std::vector<int64_t> parse_shape(std::string_view v, const std::string& name) {
  if (v.size() < 2 || v.front() != '(' || v.back() != ')') {
    fail(name, "field 'shape' is not a tuple: " + std::string(v));
  }
  v = v.substr(1, v.size() - 2);
  std::vector<int64_t> shape;
  size_t i = 0;
  while (i < v.size()) {
    while (i < v.size() && (v[i] == ' ' || v[i] == ',')) ++i;
    if (i >= v.size()) break;
    int64_t dim = 0;
    size_t digits = 0;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') {
      if (dim > (int64_t{1} << 50)) fail(name, "field 'shape' has a dimension too large");
      dim = dim * 10 + (v[i] - '0');
      ++i;
      ++digits;
    }
    if (i < v.size() && v[i] == 'L') ++i;  // Python 2 long suffix
    if (digits == 0) fail(name, "field 'shape' has a non-integer entry: (" + std::string(v) + ")");
    shape.push_back(dim);
  }
  return shape;
}

}  // namespace

torch::Tensor parse_npy(const std::string& bytes, const std::string& name) {
  if (bytes.size() < kMagicLen + 4 || std::memcmp(bytes.data(), kMagic, kMagicLen) != 0) {
    fail(name, "missing magic string \\x93NUMPY (not a .npy file, or truncated)");
  }
  const auto major = static_cast<uint8_t>(bytes[6]);
  size_t header_len = 0;
  size_t offset = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8);
    offset = 10;
  } else if (major == 2) {
    if (bytes.size() < 12) fail(name, "truncated header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
    offset = 12;
  } else {
    fail(name, "unsupported format version " + std::to_string(major) + " (1 and 2 are supported)");
  }
  if (header_len > bytes.size() - offset) fail(name, "truncated header (declares " + std::to_string(header_len) + " bytes)");
  const std::string_view header(bytes.data() + offset, header_len);
  offset += header_len;

  std::string_view descr = dict_value(header, "descr", name);
  if (descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"') && descr.back() == descr.front()) {
    descr = descr.substr(1, descr.size() - 2);
  } else {
    fail(name, "field 'descr' is not a string: " + std::string(descr));
  }
  const DtypeInfo* info = nullptr;
  for (const auto& d : kDtypes) {
    if (descr == d.descr) info = &d;
  }
  // '=' and '<' mean little-endian on this platform; single-byte types may use '|' or '<'.
  if (info == nullptr && descr.size() == 3 && (descr[0] == '=' || descr[0] == '<' || descr[0] == '|')) {
    for (const auto& d : kDtypes) {
      if (descr.substr(1) == std::string_view(d.descr).substr(1)) info = &d;
    }
  }
  if (info == nullptr) {
    std::string why = "unsupported dtype '" + std::string(descr) + "'";
    if (!descr.empty() && descr[0] == '>') why += " (big-endian)";
    if (descr.find('O') != std::string_view::npos) why += " (object arrays are not supported)";
    fail(name, why + "; supported: <f4 <f8 <i8 <i4 |u1 |b1");
  }
  const std::string_view fortran = dict_value(header, "fortran_order", name);
  if (fortran == "True") fail(name, "field 'fortran_order' is True (only C order is supported)");
  if (fortran != "False") fail(name, "field 'fortran_order' is not a bool: " + std::string(fortran));
  const std::vector<int64_t> shape = parse_shape(dict_value(header, "shape", name), name);

  size_t count = 1;
  for (int64_t d : shape) {
    if (d != 0 && count > (size_t{1} << 48) / static_cast<size_t>(d)) fail(name, "field 'shape' is too large");
    count *= static_cast<size_t>(d);
  }
  const size_t nbytes = count * info->itemsize;
  if (bytes.size() - offset < nbytes) {
    fail(name, "truncated data: shape needs " + std::to_string(nbytes) + " bytes, file has " +
                   std::to_string(bytes.size() - offset));
  }
  torch::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(info->type));
  if (nbytes > 0) std::memcpy(out.data_ptr(), bytes.data() + offset, nbytes);
  if (info->type == torch::kBool) {
    // NumPy bools are 0/1 bytes; anything else would be an invalid C++ bool.
    const auto* raw = reinterpret_cast<const uint8_t*>(bytes.data() + offset);
    for (size_t i = 0; i < count; ++i) {
      if (raw[i] > 1) fail(name, "bool array holds a byte that is neither 0 nor 1");
    }
  }
  return out;
}

torch::Tensor load_npy(const std::string& path) { return parse_npy(read_file(path), path); }

std::string npy_bytes(const torch::Tensor& tensor) {
  const DtypeInfo* info = nullptr;
  for (const auto& d : kDtypes) {
    if (d.type == tensor.scalar_type()) info = &d;
  }
  if (info == nullptr) {
    throw std::runtime_error(std::string("save_npy: unsupported dtype ") + c10::toString(tensor.scalar_type()));
  }
  const torch::Tensor t = tensor.to(torch::kCPU).contiguous();
  std::string shape = "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    shape += std::to_string(t.size(i));
    shape += (t.dim() == 1 || i + 1 < t.dim()) ? "," : "";
    if (i + 1 < t.dim()) shape += " ";
  }
  shape += ")";
  std::string header = std::string("{'descr': '") + info->descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad with spaces so that magic + version + length + header is a multiple of 64, ending in '\n'.
  const bool v2 = header.size() + 1 + 10 > 65535;
  const size_t prefix = v2 ? 12 : 10;
  size_t total = prefix + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out(kMagic, kMagicLen);
  out.push_back(static_cast<char>(v2 ? 2 : 1));
  out.push_back(0);
  const size_t hl = header.size();
  out.push_back(static_cast<char>(hl & 0xff));
  out.push_back(static_cast<char>((hl >> 8) & 0xff));
  if (v2) {
    out.push_back(static_cast<char>((hl >> 16) & 0xff));
    out.push_back(static_cast<char>((hl >> 24) & 0xff));
  }
  out += header;
  out.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * info->itemsize);
  return out;
}

void save_npy(const std::string& path, const torch::Tensor& tensor) { write_file_atomic(path, npy_bytes(tensor)); }

}  // namespace asl::io
