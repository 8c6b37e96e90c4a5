// Python pickle values as a tree: a safe unpickler for what torch.save writes, and a pickler.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <torch/arg.h>
#include <torch/types.h>

namespace asl::io {

class PyValue;
struct PyDict;

/// A storage that tensors of a checkpoint view: its bytes are read once and shared by every tensor
/// built on it (views keep their storage offset and strides).
struct PyStorage {
  /// The bytes.
  c10::Storage storage;
  /// Element type, from the pickled storage class (`torch.FloatStorage` → kFloat).
  c10::ScalarType dtype = c10::ScalarType::Float;
  /// Elements available from `offset` on.
  int64_t numel = 0;
  /// Element offset into `storage` (non-zero only for legacy-format storage views).
  int64_t offset = 0;
  /// Record key in the file ("0", "1", … in the zip format; a number in the legacy format).
  std::string key;
};

/// A reference to an allow-listed Python global (`torch.float32`, `collections.OrderedDict`, …).
struct PyGlobal {
  std::string module;
  std::string name;
};

/// An instance of an allow-listed plain-data class (`argparse.Namespace`, `torch.device`):
/// class, constructor arguments, and the state set by BUILD (None when none).
struct PyObject;

/// One Python value. Containers are shared by reference, as in Python: copying a PyValue that
/// holds a list copies the reference, not the list.
class PyValue {
 public:
  enum class Kind { None, Bool, Int, BigInt, Float, Str, Bytes, List, Tuple, Dict, Tensor, Storage, Global, Object };

  /// None.
  PyValue() = default;
  static PyValue none();
  static PyValue boolean(bool value);
  static PyValue integer(int64_t value);
  /// An integer outside int64, as little-endian two's-complement bytes (pickle's LONG1 layout).
  static PyValue big_integer(std::string le_bytes);
  static PyValue floating(double value);
  static PyValue str(std::string utf8);
  static PyValue bytes(std::string data);
  static PyValue list(std::vector<PyValue> items = {});
  static PyValue tuple(std::vector<PyValue> items = {});
  /// An empty dict; `ordered` marks a `collections.OrderedDict` (a plain dict keeps order too).
  static PyValue dict(bool ordered = false);
  static PyValue tensor(torch::Tensor tensor);
  static PyValue storage(PyStorage storage);
  static PyValue global(std::string module, std::string name);
  static PyValue object(std::string cls, PyValue args);
  static PyValue object(std::string cls, PyValue args, PyValue state);

  Kind kind() const { return kind_; }
  /// The kind's Python-ish name ("int", "OrderedDict", "Tensor", …) for messages.
  std::string type_name() const;

  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  /// True for Int and Bool (a Python bool is an int), false for BigInt.
  bool is_int() const { return kind_ == Kind::Int || kind_ == Kind::Bool; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_str() const { return kind_ == Kind::Str; }
  bool is_bytes() const { return kind_ == Kind::Bytes; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::Tuple; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_tensor() const { return kind_ == Kind::Tensor; }
  bool is_storage() const { return kind_ == Kind::Storage; }
  bool is_global() const { return kind_ == Kind::Global; }
  bool is_object() const { return kind_ == Kind::Object; }

  /// Accessors throw std::runtime_error naming the expected and actual type on a kind mismatch.
  bool as_bool() const;
  /// Int or Bool.
  int64_t as_int() const;
  /// Float, Int or Bool.
  double as_float() const;
  const std::string& as_str() const;
  const std::string& as_bytes() const;
  /// Little-endian two's-complement bytes of a BigInt.
  const std::string& as_big_integer() const;
  /// Items of a List or Tuple.
  const std::vector<PyValue>& items() const;
  std::vector<PyValue>& items();
  const PyDict& as_dict() const;
  PyDict& as_dict();
  const torch::Tensor& as_tensor() const;
  const PyStorage& as_storage() const;
  const PyGlobal& as_global() const;
  const PyObject& as_object() const;

  /// A short Python-like rendering ("{'a': 1, 'w': Tensor[float32, (3, 4)]}"), cut at `max_chars`.
  std::string repr(size_t max_chars = 200) const;

  /// Whether two values hold the same data (tensors: same dtype, shape and values; containers
  /// element-wise; dict order matters).
  bool equals(const PyValue& other) const;

  struct Node;

 private:
  Kind kind_ = Kind::None;
  union {
    bool b_;
    int64_t i_;
    double f_ = 0.0;
  };
  std::shared_ptr<Node> node_;

  friend struct PyValueAccess;
};

/// A Python dict: insertion-ordered items with a key index for str and int keys.
struct PyDict {
  /// A `collections.OrderedDict` (written back as one).
  bool ordered = false;
  /// Items in insertion order.
  std::vector<std::pair<PyValue, PyValue>> items;
  /// Instance attributes set by pickle BUILD, e.g. the `_metadata` of a module state dict (None or a dict).
  PyValue attributes;

  /// The value under a str key, or nullptr.
  const PyValue* find(std::string_view key) const;
  /// The value under an int key, or nullptr.
  const PyValue* find(int64_t key) const;
  /// The value under `key`, or nullptr (str, int, bool and bytes keys are indexed; others compared).
  const PyValue* find(const PyValue& key) const;
  /// Sets `key` to `value`: replaces the value of an equal key in place, else appends.
  void set(PyValue key, PyValue value);
  size_t size() const { return items.size(); }

 private:
  std::unordered_map<std::string, size_t> index_;
};

struct PyObject {
  /// Dotted class name, e.g. "argparse.Namespace".
  std::string cls;
  /// Constructor arguments (a tuple).
  PyValue args;
  /// State from BUILD (usually a dict of attributes), None when none.
  PyValue state;
};

/// Turns a persistent id (the tuple torch.save writes for each storage) into a value, usually a
/// PyValue::storage.
using PersistentLoad = std::function<PyValue(const PyValue& pid)>;

/// Where the unpickler reads from; `read` throws std::runtime_error when fewer than `n` bytes are left.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual void read(void* dst, size_t n) = 0;
  virtual uint64_t position() const = 0;
  virtual uint64_t remaining() const = 0;
};

/// A ByteSource over bytes in memory (not copied: they must outlive the source).
class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::string_view bytes, std::string name = "<memory>");
  void read(void* dst, size_t n) override;
  uint64_t position() const override { return pos_; }
  uint64_t remaining() const override { return bytes_.size() - pos_; }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
  std::string name_;
};

/// Limits and hooks of one unpickling.
struct UnpickleOptions {
  /// Called for each persistent id; without it a persistent id is an error.
  TORCH_ARG(PersistentLoad, persistent_load) = nullptr;
  /// Name used in error messages (a file path and record).
  TORCH_ARG(std::string, name) = "<pickle>";
  /// Deepest container nesting accepted.
  TORCH_ARG(int64_t, max_depth) = 1000;
};

/// Unpickles one value from `source`, stopping after its STOP opcode. No code runs: only the
/// allow-listed globals (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
/// `torch._utils._rebuild_parameter`, `torch.*Storage`, `torch.<dtype>`, `torch.Size`,
/// `torch.device`, `argparse.Namespace`, `_codecs.encode`, `builtins.set/frozenset/bytes`) are
/// accepted; any other global is an error naming it. Every length is checked against the bytes
/// left before anything is allocated; recursive structures are refused.
PyValue unpickle(ByteSource& source, const UnpickleOptions& options = {});
/// Unpickles a whole in-memory pickle.
PyValue unpickle(std::string_view bytes, const UnpickleOptions& options = {});

/// Registers a tensor's storage for writing and returns its record key; the same storage must get
/// the same key.
using StorageKeyFn = std::function<std::string(const torch::Tensor& tensor)>;

/// Pickles `value` with protocol 2 the way torch.save does: tensors become
/// `torch._utils._rebuild_tensor_v2` calls over persistent ids ('storage', torch.<T>Storage, key,
/// 'cpu', numel), keys from `storage_key` (required when the value holds tensors).
std::string pickle(const PyValue& value, const StorageKeyFn& storage_key = nullptr);

/// The dtype of a storage class name ("FloatStorage" → kFloat); throws for an unknown name.
c10::ScalarType storage_class_dtype(const std::string& name);
/// The storage class name of a dtype (kFloat → "FloatStorage"); throws for an unsupported dtype.
std::string dtype_storage_class(c10::ScalarType dtype);
/// Python's name of a dtype ("float32", "bfloat16", "int64", "bool").
std::string dtype_name(c10::ScalarType dtype);

}  // namespace asl::io
