#include "asl/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/file.h"

namespace asl::io {
namespace {

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeName kDtypes[] = {{"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
                                 {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},  {"I32", torch::kInt32},
                                 {"I16", torch::kInt16},     {"I8", torch::kInt8},    {"U8", torch::kUInt8},
                                 {"BOOL", torch::kBool}};

struct Entry {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  ReadOnlyFd file(path);
  if (file.fd < 0) throw std::runtime_error(path + ": cannot open for reading: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) throw std::runtime_error(path + ": cannot stat: " + std::strerror(errno));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  auto bad = [&](const std::string& why) { return std::runtime_error(path + ": not a valid safetensors file: " + why); };
  unsigned char len_bytes[8];
  if (size < 8 || !pread_all(file.fd, len_bytes, 8, 0)) {
    throw bad("the file has " + std::to_string(size) + " bytes, fewer than the 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > kMaxSafetensorsHeader) {
    throw bad("header length " + std::to_string(n) + " is above the limit of " + std::to_string(kMaxSafetensorsHeader));
  }
  if (n > size - 8) {
    throw bad("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
              " bytes)");
  }
  std::string header(static_cast<size_t>(n), '\0');
  if (!pread_all(file.fd, header.data(), n, 8)) throw bad("cannot read the header");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("the header is not valid JSON: ") + e.what());
  }
  if (!doc.is_object()) throw bad("the header is a JSON " + std::string(doc.type_name()) + ", not an object");
  const uint64_t data_start = 8 + n, data_size = size - data_start;
  SafetensorsFile out;
  std::vector<Entry> entries;
  for (const auto& item : doc.items()) {
    const std::string& name = item.key();
    const nlohmann::json& v = item.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw bad("field __metadata__ is not an object");
      for (const auto& [k, value] : v.items()) {
        if (!value.is_string()) throw bad("__metadata__ value of '" + k + "' is not a string: " + value.dump());
        out.metadata[k] = value.get<std::string>();
      }
      continue;
    }
    const auto tensor_bad = [&](const std::string& why) { return bad("tensor '" + name + "': " + why); };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
      throw tensor_bad("needs dtype, shape and data_offsets, got " + v.dump().substr(0, 200));
    }
    Entry e;
    e.name = name;
    const auto& dt = v.at("dtype");
    const auto* known = dt.is_string() ? std::find_if(std::begin(kDtypes), std::end(kDtypes),
                                                      [&](const DtypeName& d) { return dt.get<std::string>() == d.name; })
                                       : std::end(kDtypes);
    if (known == std::end(kDtypes)) throw tensor_bad("unknown dtype " + dt.dump());
    e.dtype = known->type;
    const auto& shape = v.at("shape");
    if (!shape.is_array()) throw tensor_bad("shape is not a list: " + shape.dump());
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) throw tensor_bad("bad dimension " + d.dump() + " in shape " + shape.dump());
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > UINT64_MAX / dim) overflow = true;
      numel *= dim;
      e.shape.push_back(d.get<int64_t>());
    }
    const auto& off = v.at("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      throw tensor_bad("data_offsets must be two non-negative integers, got " + off.dump());
    }
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.end < e.begin) throw tensor_bad("data_offsets " + off.dump() + " end before they begin");
    const uint64_t esize = c10::elementSize(e.dtype);
    if (overflow || numel > UINT64_MAX / esize || numel * esize != e.end - e.begin) {
      throw tensor_bad(std::string(known->name) + " shape " + shape.dump() + " needs " +
                       (overflow ? std::string("more than 2^64") : std::to_string(numel * esize)) +
                       " bytes but data_offsets " + off.dump() + " span " + std::to_string(e.end - e.begin));
    }
    if (e.end > data_size) {
      throw tensor_bad("data_offsets " + off.dump() + " end past the data section (" + std::to_string(data_size) +
                       " bytes)");
    }
    entries.push_back(std::move(e));
  }
  // The byte ranges must tile the data section: no overlap, no hole, nothing after the last.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t expected = 0;
  for (const auto& e : entries) {
    if (e.begin < expected) {
      throw bad("tensor '" + e.name + "' at bytes [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                ") overlaps the tensor before it (which ends at " + std::to_string(expected) + ")");
    }
    if (e.begin > expected) {
      throw bad("bytes [" + std::to_string(expected) + ", " + std::to_string(e.begin) + ") before tensor '" + e.name +
                "' belong to no tensor");
    }
    expected = e.end;
  }
  if (expected != data_size) {
    throw bad(std::to_string(data_size - expected) + " bytes after the last tensor belong to no tensor");
  }
  for (const auto& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin && !pread_all(file.fd, t.data_ptr(), e.end - e.begin, data_start + e.begin)) {
      throw bad("cannot read the data of tensor '" + e.name + "'");
    }
    out.tensors.insert(e.name, std::move(t));
  }
  return out;
}

void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, torch::Tensor>> sorted;
  for (const auto& item : tensors) {
    const torch::Tensor& t = item.value();
    TORCH_CHECK(t.defined() && t.device().is_cpu(), path, ": tensor '", item.key(), "' must be a defined CPU tensor");
    const auto* known = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                                     [&](const DtypeName& d) { return d.type == t.scalar_type(); });
    if (known == std::end(kDtypes)) {
      throw std::runtime_error(path + ": tensor '" + item.key() + "' has dtype " + c10::toString(t.scalar_type()) +
                               ", which safetensors cannot hold");
    }
    sorted.emplace_back(item.key(), t.contiguous());
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& entry : sorted) {
    const std::string& name = entry.first;
    const torch::Tensor& t = entry.second;
    const auto* known = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                                     [&](const DtypeName& d) { return d.type == t.scalar_type(); });
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", known->name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[static_cast<size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  write_file_atomic(
      path,
      [&](const ByteSink& sink) {
        sink(len.data(), len.size());
        sink(text.data(), text.size());
        for (const auto& item : sorted) {
          const torch::Tensor& t = item.second;
          sink(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
        }
      },
      /*durable=*/true);
}

}  // namespace asl::io
