#include "asl/io/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <c10/core/CPUAllocator.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include "asl/io/file.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace asl::io {

namespace {

// torch.save's legacy stream starts with this pickled number (little-endian bytes of 0x1950a86a20f9469cfc6c).
const std::string kLegacyMagic("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
constexpr int64_t kLegacyProtocolVersion = 1001;

/// A buffered reader over a whole file, for the legacy format (pickles, then raw storage bytes).
class FileSource final : public ByteSource {
 public:
  explicit FileSource(const std::string& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "rb");
    if (file_ == nullptr) throw std::runtime_error(path + ": cannot open for reading: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(::fileno(file_), &st) != 0) {
      std::fclose(file_);
      throw std::runtime_error(path + ": cannot stat: " + std::strerror(errno));
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~FileSource() override { std::fclose(file_); }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;

  void read(void* dst, size_t n) override {
    if (n > remaining()) {
      throw std::runtime_error(path_ + ": truncated: needs " + std::to_string(n) + " bytes at offset " +
                               std::to_string(pos_) + ", only " + std::to_string(remaining()) + " left");
    }
    if (n > 0 && std::fread(dst, 1, n, file_) != n) {
      throw std::runtime_error(path_ + ": read error at offset " + std::to_string(pos_));
    }
    pos_ += n;
  }
  uint64_t position() const override { return pos_; }
  uint64_t remaining() const override { return size_ - pos_; }
  uint64_t size() const { return size_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  uint64_t size_ = 0;
  uint64_t pos_ = 0;
};

/// The fields of a persistent id ('storage', torch.<T>Storage, key, location, numel[, view_metadata]).
struct StorageId {
  c10::ScalarType dtype;
  std::string key;
  int64_t numel;
  PyValue view_metadata;
};

StorageId parse_storage_id(const PyValue& pid, const std::string& where) {
  auto bad = [&](const std::string& why) -> std::runtime_error {
    return std::runtime_error(where + ": bad storage persistent id " + pid.repr(120) + ": " + why);
  };
  if (!pid.is_tuple() || pid.items().size() < 5 || pid.items().size() > 6) throw bad("expected a 5- or 6-tuple");
  const auto& a = pid.items();
  if (!a[0].is_str() || a[0].as_str() != "storage") throw bad("first item must be 'storage'");
  if (!a[1].is_global() || a[1].as_global().module != "torch") throw bad("second item must be a torch storage class");
  StorageId id;
  try {
    id.dtype = storage_class_dtype(a[1].as_global().name);
  } catch (const std::exception& e) {
    throw bad(e.what());
  }
  if (!a[2].is_str()) throw bad("key must be a str");
  id.key = a[2].as_str();
  if (!a[4].is_int() || a[4].as_int() < 0) throw bad("element count must be a non-negative int");
  id.numel = a[4].as_int();
  if (a.size() == 6) id.view_metadata = a[5];
  return id;
}

/// Whether numel elements of `dtype` fit in `limit` bytes (overflow-safe).
bool fits(int64_t numel, c10::ScalarType dtype, uint64_t limit) {
  const uint64_t esize = c10::elementSize(dtype);
  return static_cast<uint64_t>(numel) <= limit / esize;
}

std::string c10_message(const c10::Error& e) { return e.what_without_backtrace(); }

uint64_t le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/// One entry of a zip central directory.
struct ZipEntry {
  uint64_t size = 0;          // uncompressed
  uint64_t compressed = 0;
  uint64_t local_offset = 0;  // of the entry's local header
  uint16_t method = 0;        // 0: stored
  uint16_t flags = 0;
};

/// The largest data.pkl asl inflates: a state dict's pickle is ~100 bytes per tensor plus the class names
/// (about 0.3 MB for Open Images' 9605), so a compressed pickle declaring more is refused unread.
constexpr uint64_t kMaxCompressedPickleBytes = uint64_t{64} << 20;

/// The zip central directory (entry name → sizes, method, local header), read to check every record
/// before anything is allocated or inflated. Empty when the directory cannot be parsed.
std::unordered_map<std::string, ZipEntry> zip_directory(int fd, uint64_t file_size) {
  std::unordered_map<std::string, ZipEntry> out;
  const uint64_t tail_size = std::min<uint64_t>(file_size, 65535 + 22 + 20);
  if (tail_size < 22) return out;
  std::vector<unsigned char> tail(static_cast<size_t>(tail_size));
  if (!pread_all(fd, tail.data(), tail_size, file_size - tail_size)) return out;
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0; --i) {
    if (le(&tail[static_cast<size_t>(i)], 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return out;
  const unsigned char* e = &tail[static_cast<size_t>(eocd)];
  uint64_t count = le(e + 10, 2), cd_size = le(e + 12, 4), cd_offset = le(e + 16, 4);
  if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    // Zip64: the locator sits just before the end-of-central-directory record.
    if (eocd < 20 || le(e - 20, 4) != 0x07064b50) return out;
    const uint64_t eocd64 = le(e - 20 + 8, 8);
    unsigned char z[56];
    if (eocd64 > file_size || file_size - eocd64 < 56 || !pread_all(fd, z, 56, eocd64)) return out;
    if (le(z, 4) != 0x06064b50) return out;
    count = le(z + 32, 8);
    cd_size = le(z + 40, 8);
    cd_offset = le(z + 48, 8);
  }
  if (cd_offset > file_size || cd_size > file_size - cd_offset || count > cd_size / 46) return out;
  std::vector<unsigned char> cd(static_cast<size_t>(cd_size));
  if (!pread_all(fd, cd.data(), cd_size, cd_offset)) return out;
  size_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (cd.size() - pos < 46 || le(&cd[pos], 4) != 0x02014b50) return {};
    const unsigned char* h = &cd[pos];
    ZipEntry entry;
    entry.flags = static_cast<uint16_t>(le(h + 8, 2));
    entry.method = static_cast<uint16_t>(le(h + 10, 2));
    entry.size = le(h + 24, 4);
    entry.compressed = le(h + 20, 4);
    entry.local_offset = le(h + 42, 4);
    const size_t name_len = le(h + 28, 2), extra_len = le(h + 30, 2), comment_len = le(h + 32, 2);
    if (cd.size() - pos - 46 < name_len + extra_len + comment_len) return {};
    std::string name(reinterpret_cast<const char*>(h + 46), name_len);
    if (entry.size == 0xffffffff || entry.compressed == 0xffffffff || entry.local_offset == 0xffffffff) {
      // Zip64 extra field (id 1): the 64-bit values present, in the order size, compressed size, offset.
      const unsigned char* x = h + 46 + name_len;
      size_t xp = 0;
      bool found = false;
      while (xp + 4 <= extra_len) {
        const uint64_t id = le(x + xp, 2), len = le(x + xp + 2, 2);
        if (xp + 4 + len > extra_len) return {};
        if (id == 1) {
          uint64_t at = 0;
          for (uint64_t* field : {&entry.size, &entry.compressed, &entry.local_offset}) {
            if (*field != 0xffffffff) continue;
            if (at + 8 > len) return {};
            *field = le(x + xp + 4 + at, 8);
            at += 8;
          }
          found = true;
        }
        xp += 4 + len;
      }
      if (!found) return {};
    }
    if (out.count(name) != 0) return {};  // a name twice: which one a reader takes is ambiguous
    out[std::move(name)] = entry;
    pos += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

/// Checks, before a record is read, that its local header agrees with the central directory (same name and
/// method, and the same sizes where the local header carries them) and that its compressed bytes lie in
/// the file. Throws naming the record otherwise.
void check_local_header(int fd, uint64_t file_size, const std::string& path, const std::string& name,
                        const ZipEntry& entry) {
  auto bad = [&](const std::string& why) {
    return std::runtime_error(path + ": zip entry " + name + ": " + why);
  };
  unsigned char h[30];
  if (entry.local_offset > file_size || file_size - entry.local_offset < 30 || !pread_all(fd, h, 30, entry.local_offset) ||
      le(h, 4) != 0x04034b50) {
    throw bad("no local header at offset " + std::to_string(entry.local_offset));
  }
  const uint64_t method = le(h + 8, 2), comp = le(h + 18, 4), size = le(h + 22, 4);
  const uint64_t name_len = le(h + 26, 2), extra_len = le(h + 28, 2);
  if (method != entry.method) {
    throw bad("local header says method " + std::to_string(method) + ", central directory " +
              std::to_string(entry.method));
  }
  std::string local_name(static_cast<size_t>(name_len), '\0');
  if (name_len != name.size() || !pread_all(fd, local_name.data(), name_len, entry.local_offset + 30) ||
      local_name != name) {
    throw bad("local header names another entry");
  }
  // Without a data descriptor (flag bit 3) the local sizes are the real ones (0xffffffff: in a zip64 extra).
  if ((entry.flags & 8) == 0) {
    if (size != 0xffffffff && size != entry.size) {
      throw bad("local header says " + std::to_string(size) + " bytes, central directory " + std::to_string(entry.size));
    }
    if (comp != 0xffffffff && comp != entry.compressed) {
      throw bad("local header says " + std::to_string(comp) + " compressed bytes, central directory " +
                std::to_string(entry.compressed));
    }
  }
  const uint64_t data = entry.local_offset + 30 + name_len + extra_len;
  if (data > file_size || entry.compressed > file_size - data) throw bad("data runs past the end of the file");
  if (entry.method == 0 && entry.compressed != entry.size) throw bad("stored entry with two sizes");
  if (entry.method != 0 && entry.method != 8) throw bad("unsupported compression method " + std::to_string(entry.method));
}

/// A storage allocated while unpickling, filled from its record afterwards.
struct PendingRecord {
  void* dst;
  uint64_t nbytes;
  uint64_t offset;
  std::string record;
};

/// Reads the records in place with a few threads: the copy out of the page cache dominates load time.
void read_records(int fd, const std::string& path, std::vector<PendingRecord>& pending) {
  uint64_t total = 0;
  for (const auto& p : pending) total += p.nbytes;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const unsigned threads = static_cast<unsigned>(std::min<uint64_t>({hw, 8, pending.size(), total / (8 << 20) + 1}));
  std::sort(pending.begin(), pending.end(), [](const PendingRecord& a, const PendingRecord& b) { return a.nbytes > b.nbytes; });
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::string failed_record;
  std::mutex failed_mutex;
  auto work = [&] {
    for (size_t i = next++; i < pending.size() && !failed; i = next++) {
      if (!pread_all(fd, pending[i].dst, pending[i].nbytes, pending[i].offset)) {
        std::lock_guard<std::mutex> lock(failed_mutex);
        failed = true;
        failed_record = pending[i].record;
      }
    }
  };
  if (threads <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
  }
  if (failed) throw std::runtime_error(path + ": cannot read record " + failed_record + " (file truncated?)");
}

PyValue load_zip(const std::string& path) {
  ReadOnlyFd file(path);
  if (file.fd < 0) throw std::runtime_error(path + ": cannot open for reading: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) throw std::runtime_error(path + ": cannot stat: " + std::strerror(errno));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  try {
    // Every record is checked against the central directory and its local header before LibTorch's
    // reader allocates or inflates anything (a few KB of deflated zeros can declare gigabytes).
    const std::unordered_map<std::string, ZipEntry> directory = zip_directory(file.fd, file_size);
    if (directory.empty()) throw std::runtime_error(path + ": cannot read the zip central directory (not a zip file?)");
    for (const auto& [name, entry] : directory) {
      // LibTorch's reader inflates small records (version, byteorder) itself; storages are checked at use.
      const bool storage_record = name.find("/data/") != std::string::npos;
      if (entry.method != 0 && !storage_record && entry.size > kMaxCompressedPickleBytes) {
        throw std::runtime_error(path + ": compressed zip entry " + name + " declares " + std::to_string(entry.size) +
                                 " bytes (limit " + std::to_string(kMaxCompressedPickleBytes) + ")");
      }
    }
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("data.pkl")) {
      throw std::runtime_error(path + ": zip archive has no data.pkl record (a TorchScript archive is not a checkpoint)");
    }
    // The archive folder, as PyTorchStreamReader finds it: the first entry's leading path component.
    std::string prefix;
    for (const auto& [name, entry] : directory) {
      if (name.size() > 9 && name.compare(name.size() - 9, 9, "/data.pkl") == 0) prefix = name.substr(0, name.size() - 8);
    }
    auto checked_entry = [&](const std::string& record) -> const ZipEntry& {
      const auto it = directory.find(prefix + record);
      if (prefix.empty() || it == directory.end()) {
        throw std::runtime_error(path + ": record " + record + " is not in the zip central directory");
      }
      check_local_header(file.fd, file_size, path, it->first, it->second);
      return it->second;
    };
    const ZipEntry& pkl_entry = checked_entry("data.pkl");
    if (pkl_entry.method != 0 && pkl_entry.size > kMaxCompressedPickleBytes) {
      throw std::runtime_error(path + ": compressed data.pkl declares " + std::to_string(pkl_entry.size) +
                               " bytes (limit " + std::to_string(kMaxCompressedPickleBytes) + ")");
    }
    at::DataPtr pkl_ptr;
    size_t pkl_size = 0;
    std::tie(pkl_ptr, pkl_size) = reader.getRecord("data.pkl");
    std::vector<PendingRecord> pending;
    std::unordered_map<std::string, PyValue> storages;
    UnpickleOptions options;
    options.name(path + " (data.pkl)");
    options.persistent_load([&](const PyValue& pid) -> PyValue {
      StorageId id = parse_storage_id(pid, path);
      const auto it = storages.find(id.key);
      if (it != storages.end()) {
        if (it->second.as_storage().dtype != id.dtype) {
          throw std::runtime_error(path + ": storage '" + id.key + "' referenced with two dtypes");
        }
        return it->second;
      }
      if (!fits(id.numel, id.dtype, file_size)) {
        throw std::runtime_error(path + ": storage '" + id.key + "' claims " + std::to_string(id.numel) +
                                 " elements, more than the file holds");
      }
      const std::string record = "data/" + id.key;
      if (!reader.hasRecord(record)) throw std::runtime_error(path + ": missing record " + record);
      const uint64_t expected = static_cast<uint64_t>(id.numel) * c10::elementSize(id.dtype);
      auto size_error = [&](uint64_t size) {
        return std::runtime_error(path + ": record " + record + " holds " + std::to_string(size) + " bytes, expected " +
                                  std::to_string(expected) + " (" + std::to_string(id.numel) + " elements of " +
                                  dtype_name(id.dtype) + ")");
      };
      PyStorage s;
      const ZipEntry& entry = checked_entry(record);
      // The declared size must be the storage's before anything is allocated or inflated.
      if (entry.size != expected) throw size_error(entry.size);
      if (entry.method == 0) {
        // Stored record: allocate now, read in place after unpickling.
        s.storage = c10::Storage(c10::Storage::use_byte_size_t(), expected, c10::GetCPUAllocator(), false);
        const uint64_t offset = reader.getRecordOffset(record);
        if (offset > file_size || expected > file_size - offset) throw size_error(file_size - std::min(offset, file_size));
        pending.push_back({s.storage.data(), expected, offset, record});
      } else {
        at::DataPtr ptr;
        size_t size = 0;
        std::tie(ptr, size) = reader.getRecord(record);
        if (size != expected) throw size_error(size);
        s.storage = c10::Storage(c10::Storage::use_byte_size_t(), size, std::move(ptr), nullptr, false);
      }
      s.dtype = id.dtype;
      s.numel = id.numel;
      s.key = id.key;
      PyValue v = PyValue::storage(std::move(s));
      storages.emplace(id.key, v);
      return v;
    });
    PyValue root = unpickle(std::string_view(static_cast<const char*>(pkl_ptr.get()), pkl_size), options);
    read_records(file.fd, path, pending);
    return root;
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": not a readable PyTorch zip checkpoint: " + c10_message(e));
  } catch (const std::bad_alloc&) {
    throw std::runtime_error(path + ": out of memory (corrupt sizes?)");
  }
}

PyValue load_legacy(const std::string& path) {
  FileSource src(path);
  UnpickleOptions header;
  header.name(path + " (legacy header)");
  const PyValue magic = unpickle(src, header);
  if (!(magic.kind() == PyValue::Kind::BigInt && magic.as_big_integer() == kLegacyMagic)) {
    throw std::runtime_error(path + ": not a PyTorch checkpoint (a pickle without torch.save's magic number)");
  }
  const PyValue version = unpickle(src, header);
  if (!version.is_int() || version.as_int() != kLegacyProtocolVersion) {
    throw std::runtime_error(path + ": unsupported legacy protocol version " + version.repr(40) + " (expected 1001)");
  }
  const PyValue sys_info = unpickle(src, header);
  if (sys_info.is_dict()) {
    const PyValue* le = sys_info.as_dict().find("little_endian");
    if (le != nullptr && le->is_bool() && !le->as_bool()) {
      throw std::runtime_error(path + ": big-endian legacy checkpoints are not supported");
    }
  }

  struct Entry {
    PyStorage storage;
    bool filled = false;
  };
  std::unordered_map<std::string, Entry> roots;
  std::unordered_map<std::string, PyValue> values;  // root and view keys → storage value
  uint64_t allocated = 0;
  UnpickleOptions options;
  options.name(path + " (legacy object)");
  options.persistent_load([&](const PyValue& pid) -> PyValue {
    StorageId id = parse_storage_id(pid, path);
    auto root = roots.find(id.key);
    if (root == roots.end()) {
      // Storage bytes follow the pickles, so all of them together must fit in what is left.
      if (!fits(id.numel, id.dtype, src.remaining()) ||
          allocated + static_cast<uint64_t>(id.numel) * c10::elementSize(id.dtype) > src.remaining()) {
        throw std::runtime_error(path + ": storage '" + id.key + "' claims " + std::to_string(id.numel) +
                                 " elements, more than the file holds");
      }
      const size_t nbytes = static_cast<size_t>(id.numel) * c10::elementSize(id.dtype);
      allocated += nbytes;
      Entry e;
      e.storage.storage = c10::Storage(c10::Storage::use_byte_size_t(), nbytes, c10::GetCPUAllocator(), false);
      e.storage.dtype = id.dtype;
      e.storage.numel = id.numel;
      e.storage.key = id.key;
      root = roots.emplace(id.key, std::move(e)).first;
      values.emplace(id.key, PyValue::storage(root->second.storage));
    } else if (root->second.storage.dtype != id.dtype || root->second.storage.numel != id.numel) {
      throw std::runtime_error(path + ": storage '" + id.key + "' referenced with two dtypes or sizes");
    }
    if (id.view_metadata.is_none()) return values.at(id.key);
    // (view_key, offset, size): a slice of the root storage shared by the tensors that use it.
    const PyValue& vm = id.view_metadata;
    if (!vm.is_tuple() || vm.items().size() != 3 || !vm.items()[0].is_str() || !vm.items()[1].is_int() ||
        !vm.items()[2].is_int()) {
      throw std::runtime_error(path + ": bad storage view metadata " + vm.repr(80));
    }
    const std::string& view_key = vm.items()[0].as_str();
    const int64_t offset = vm.items()[1].as_int();
    const int64_t size = vm.items()[2].as_int();
    if (offset < 0 || size < 0 || offset > id.numel || size > id.numel - offset) {
      throw std::runtime_error(path + ": storage view '" + view_key + "' outside storage '" + id.key + "'");
    }
    const auto it = values.find("view:" + view_key);
    if (it != values.end()) return it->second;
    PyStorage view = root->second.storage;
    view.offset = offset;
    view.numel = size;
    view.key = view_key;
    PyValue v = PyValue::storage(std::move(view));
    values.emplace("view:" + view_key, v);
    return v;
  });
  PyValue root_value = unpickle(src, options);

  UnpickleOptions keys_options;
  keys_options.name(path + " (legacy storage keys)");
  const PyValue keys = unpickle(src, keys_options);
  if (!keys.is_list()) throw std::runtime_error(path + ": legacy storage key list is a " + keys.type_name());
  for (const PyValue& key : keys.items()) {
    if (!key.is_str()) throw std::runtime_error(path + ": legacy storage key is a " + key.type_name());
    const auto it = roots.find(key.as_str());
    if (it == roots.end()) throw std::runtime_error(path + ": data for unknown storage '" + key.as_str() + "'");
    Entry& e = it->second;
    if (e.filled) throw std::runtime_error(path + ": data for storage '" + key.as_str() + "' appears twice");
    uint8_t b[8];
    src.read(b, 8);
    uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = (count << 8) | b[i];
    if (count != static_cast<uint64_t>(e.storage.numel)) {
      throw std::runtime_error(path + ": storage '" + key.as_str() + "' has " + std::to_string(count) +
                               " elements in the file, " + std::to_string(e.storage.numel) + " in the pickle");
    }
    src.read(e.storage.storage.data(), e.storage.storage.nbytes());
    e.filled = true;
  }
  for (const auto& [key, e] : roots) {
    if (!e.filled) throw std::runtime_error(path + ": storage '" + key + "' has no data in the file");
  }
  return root_value;
}

}  // namespace

PyValue load(const std::string& path, std::string* format) {
  char head[4] = {0, 0, 0, 0};
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open for reading: " + std::strerror(errno));
    in.read(head, 4);
    if (in.gcount() < 2) throw std::runtime_error(path + ": too short to be a checkpoint");
  }
  try {
    if (std::memcmp(head, "PK\x03\x04", 4) == 0) {
      if (format != nullptr) *format = "zip";
      return load_zip(path);
    }
    if (static_cast<uint8_t>(head[0]) == 0x80) {
      if (format != nullptr) *format = "legacy";
      return load_legacy(path);
    }
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": " + c10_message(e));
  } catch (const std::bad_alloc&) {
    throw std::runtime_error(path + ": out of memory (corrupt sizes?)");
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02x %02x %02x %02x", static_cast<uint8_t>(head[0]), static_cast<uint8_t>(head[1]),
                static_cast<uint8_t>(head[2]), static_cast<uint8_t>(head[3]));
  throw std::runtime_error(path + ": not a PyTorch checkpoint (starts with bytes " + buf +
                           "; expected a zip archive or a legacy torch.save stream)");
}

StateDict state_dict_from_value(const PyValue& dict, const std::string& what) {
  if (!dict.is_dict()) throw std::runtime_error(what + " is a " + dict.type_name() + ", not a dict");
  StateDict out;
  for (const auto& [key, value] : dict.as_dict().items) {
    if (!key.is_str()) throw std::runtime_error(what + ": key " + key.repr(60) + " is not a str");
    if (!value.is_tensor()) {
      throw std::runtime_error(what + ": '" + key.as_str() + "' is a " + value.type_name() + ", not a tensor");
    }
    out.insert(key.as_str(), value.as_tensor());
  }
  return out;
}

namespace {

bool is_tensor_dict(const PyValue* v) {
  if (v == nullptr || !v->is_dict() || v->as_dict().size() == 0) return false;
  for (const auto& [key, value] : v->as_dict().items) {
    if (!key.is_str() || !value.is_tensor()) return false;
  }
  return true;
}

}  // namespace

LoadedCheckpoint load_checkpoint(const std::string& path) {
  LoadedCheckpoint ck;
  ck.root = load(path, &ck.format);
  if (!ck.root.is_dict()) return ck;
  const PyDict& root = ck.root.as_dict();
  if (const PyValue* m = root.find("model"); is_tensor_dict(m)) {
    ck.model = state_dict_from_value(*m, path + ": model");
  } else if (const PyValue* s = root.find("state_dict"); is_tensor_dict(s)) {
    ck.model = state_dict_from_value(*s, path + ": state_dict");
  } else if (is_tensor_dict(&ck.root)) {
    ck.model = state_dict_from_value(ck.root, path);
  }
  if (const PyValue* n = root.find("num_classes"); n != nullptr && n->is_int() && !n->is_bool()) {
    ck.num_classes = n->as_int();
  }
  if (const PyValue* m = root.find("idx_to_class"); m != nullptr && m->is_dict()) {
    for (const auto& [key, value] : m->as_dict().items) {
      if (!value.is_str()) continue;
      if (key.is_int()) {
        ck.idx_to_class[key.as_int()] = value.as_str();
      } else if (key.is_str()) {
        char* end = nullptr;
        errno = 0;
        const long long k = std::strtoll(key.as_str().c_str(), &end, 10);
        if (!key.as_str().empty() && *end == '\0' && errno == 0) ck.idx_to_class[k] = value.as_str();
      }
    }
  }
  return ck;
}

void save(const std::string& path, const PyValue& value) {
  std::vector<c10::Storage> storages;
  std::unordered_map<const void*, std::string> keys;
  const std::string pkl = pickle(value, [&](const torch::Tensor& t) {
    const c10::Storage& s = t.storage();
    const void* impl = s.unsafeGetStorageImpl();
    const auto it = keys.find(impl);
    if (it != keys.end()) return it->second;
    std::string key = std::to_string(storages.size());
    storages.push_back(s);
    keys.emplace(impl, key);
    return key;
  });
  try {
    // The sink never fails (write_file_atomic records the first error and reports it after the writer
    // is done), so LibTorch's writer, which finishes the archive in its destructor if it has to and
    // would throw there, always runs to its explicit end.
    write_file_atomic(
        path,
        [&](const ByteSink& sink) {
          caffe2::serialize::PyTorchStreamWriter writer([&](const void* buf, size_t n) -> size_t {
            sink(buf, n);
            return n;
          });
          writer.writeRecord("data.pkl", pkl.data(), pkl.size());
          static const char empty = 0;
          for (size_t i = 0; i < storages.size(); ++i) {
            const void* data = storages[i].nbytes() > 0 ? storages[i].data() : &empty;
            writer.writeRecord("data/" + std::to_string(i), data, storages[i].nbytes());
          }
          writer.writeEndOfFile();
        },
        /*durable=*/true);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": cannot write checkpoint: " + c10_message(e));
  }
}

PyValue state_dict_value(const StateDict& state) {
  PyValue d = PyValue::dict(true);
  for (const auto& item : state) d.as_dict().set(PyValue::str(item.key()), PyValue::tensor(item.value()));
  return d;
}

void save_checkpoint(const std::string& path, const StateDict& model, int64_t num_classes,
                     const std::map<int64_t, std::string>& idx_to_class) {
  PyValue root = PyValue::dict();
  PyValue classes = PyValue::dict();
  for (const auto& [i, name] : idx_to_class) classes.as_dict().set(PyValue::integer(i), PyValue::str(name));
  root.as_dict().set(PyValue::str("model"), state_dict_value(model));
  root.as_dict().set(PyValue::str("num_classes"), PyValue::integer(num_classes));
  root.as_dict().set(PyValue::str("idx_to_class"), classes);
  save(path, root);
}

namespace {

void collect_state(const torch::nn::Module& module, const std::string& prefix, StateDict& out) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) out.insert(prefix + p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/false)) out.insert(prefix + b.key(), b.value());
  for (const auto& c : module.named_children()) collect_state(*c.value(), prefix + c.key() + ".", out);
}

std::string shape_str(c10::IntArrayRef sizes) {
  std::ostringstream s;
  s << sizes;
  return s.str();
}

bool is_num_batches_tracked(const std::string& key) {
  static const std::string suffix = "num_batches_tracked";
  return key.size() >= suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         (key.size() == suffix.size() || key[key.size() - suffix.size() - 1] == '.');
}

}  // namespace

StateDict module_state_dict(const torch::nn::Module& module) {
  StateDict out;
  collect_state(module, "", out);
  return out;
}

LoadStateDictReport load_state_dict(torch::nn::Module& module, const StateDict& state,
                                    const LoadStateDictOptions& options) {
  const StateDict target = module_state_dict(module);
  auto keep = [&](const std::string& key) { return !options.key_filter() || options.key_filter()(key); };
  LoadStateDictReport report;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const auto& item : target) {
    const std::string& key = item.key();
    if (!keep(key)) continue;
    const torch::Tensor* src = state.find(key);
    if (src == nullptr) {
      if (!is_num_batches_tracked(key)) report.missing.push_back(key);
      continue;
    }
    if (src->sizes() != item.value().sizes()) {
      report.mismatched.push_back(key + ": checkpoint " + shape_str(src->sizes()) + " vs module " +
                                  shape_str(item.value().sizes()));
      continue;
    }
    copies.emplace_back(item.value(), *src);
  }
  for (const auto& item : state) {
    if (!keep(item.key()) || target.contains(item.key()) || is_num_batches_tracked(item.key())) continue;
    report.unexpected.push_back(item.key());
  }
  if (options.strict() && (!report.missing.empty() || !report.unexpected.empty() || !report.mismatched.empty())) {
    std::ostringstream msg;
    msg << "load_state_dict: state dict does not match the module (" << report.missing.size() << " missing, "
        << report.unexpected.size() << " unexpected, " << report.mismatched.size() << " shape-mismatched keys)";
    for (const auto& k : report.missing) msg << "\n  missing: " << k;
    for (const auto& k : report.unexpected) msg << "\n  unexpected: " << k;
    for (const auto& k : report.mismatched) msg << "\n  shape mismatch: " << k;
    throw std::runtime_error(msg.str());
  }
  torch::NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst.copy_(src);
  return report;
}

}  // namespace asl::io
