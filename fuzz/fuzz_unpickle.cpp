// libFuzzer target: the unpickler (with storages and tensor rebuilds), then pickling the result back.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>

#include <c10/core/CPUAllocator.h>

#include "asl/io/pickle.h"

using asl::io::PyValue;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unordered_map<std::string, PyValue> storages;
  asl::io::UnpickleOptions options;
  options.name("fuzz");
  // Like the checkpoint reader: ('storage', torch.<T>Storage, key, location, numel) → a zeroed storage.
  options.persistent_load([&](const PyValue& pid) -> PyValue {
    if (!pid.is_tuple() || pid.items().size() < 5) throw std::runtime_error("bad pid");
    const auto& a = pid.items();
    if (!a[1].is_global() || !a[2].is_str() || !a[4].is_int()) throw std::runtime_error("bad pid");
    const int64_t numel = a[4].as_int();
    if (numel < 0 || numel > (1 << 16)) throw std::runtime_error("bad numel");
    const auto it = storages.find(a[2].as_str());
    if (it != storages.end()) return it->second;
    asl::io::PyStorage s;
    s.dtype = asl::io::storage_class_dtype(a[1].as_global().name);
    const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(s.dtype);
    s.storage = c10::Storage(c10::Storage::use_byte_size_t(), nbytes, c10::GetCPUAllocator(), false);
    if (nbytes > 0) std::memset(s.storage.data(), 0, nbytes);
    s.numel = numel;
    s.key = a[2].as_str();
    PyValue v = PyValue::storage(s);
    storages.emplace(s.key, v);
    return v;
  });
  PyValue value;
  try {
    value = asl::io::unpickle(std::string_view(reinterpret_cast<const char*>(data), size), options);
  } catch (const std::runtime_error&) {
    return 0;
  }
  (void)value.repr(4096);
  // Values without tensors must survive a pickle round trip unchanged.
  std::string again;
  try {
    again = asl::io::pickle(value);
  } catch (const std::runtime_error&) {
    return 0;
  }
  const PyValue back = asl::io::unpickle(again);
  if (!back.equals(value)) __builtin_trap();
  return 0;
}
