#include "asl/io/pickle.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>

namespace asl::io {

struct PyValue::Node {
  virtual ~Node() = default;
  /// Set once the node has been placed inside another container; it may not change after that,
  /// which also makes reference cycles impossible.
  bool sealed = false;
  /// Container nesting depth below this node.
  int64_t depth = 0;
};

namespace {

struct StrNode final : PyValue::Node {
  std::string s;
};
struct ListNode final : PyValue::Node {
  std::vector<PyValue> items;
};
struct DictNode final : PyValue::Node {
  PyDict dict;
};
struct TensorNode final : PyValue::Node {
  torch::Tensor tensor;
};
struct StorageNode final : PyValue::Node {
  PyStorage storage;
};
struct GlobalNode final : PyValue::Node {
  PyGlobal global;
};
struct ObjectNode final : PyValue::Node {
  PyObject object;
};

const char* kind_label(PyValue::Kind kind) {
  switch (kind) {
    case PyValue::Kind::None: return "None";
    case PyValue::Kind::Bool: return "bool";
    case PyValue::Kind::Int: return "int";
    case PyValue::Kind::BigInt: return "int";
    case PyValue::Kind::Float: return "float";
    case PyValue::Kind::Str: return "str";
    case PyValue::Kind::Bytes: return "bytes";
    case PyValue::Kind::List: return "list";
    case PyValue::Kind::Tuple: return "tuple";
    case PyValue::Kind::Dict: return "dict";
    case PyValue::Kind::Tensor: return "Tensor";
    case PyValue::Kind::Storage: return "Storage";
    case PyValue::Kind::Global: return "global";
    case PyValue::Kind::Object: return "object";
  }
  return "?";
}

}  // namespace

struct PyValueAccess {
  static PyValue make(PyValue::Kind kind, std::shared_ptr<PyValue::Node> node) {
    PyValue v;
    v.kind_ = kind;
    v.node_ = std::move(node);
    return v;
  }
  static PyValue::Node* node(const PyValue& v) { return v.node_.get(); }
  template <typename T>
  static T& as(const PyValue& v, PyValue::Kind k1, PyValue::Kind k2, const char* expected) {
    if (v.kind_ != k1 && v.kind_ != k2) {
      throw std::runtime_error(std::string("pickle value: expected ") + expected + ", got " + v.type_name());
    }
    return *static_cast<T*>(v.node_.get());
  }
};

// ---- PyValue ---------------------------------------------------------------------------------

PyValue PyValue::none() { return PyValue(); }

PyValue PyValue::boolean(bool value) {
  PyValue v;
  v.kind_ = Kind::Bool;
  v.b_ = value;
  return v;
}
PyValue PyValue::integer(int64_t value) {
  PyValue v;
  v.kind_ = Kind::Int;
  v.i_ = value;
  return v;
}
PyValue PyValue::floating(double value) {
  PyValue v;
  v.kind_ = Kind::Float;
  v.f_ = value;
  return v;
}
PyValue PyValue::big_integer(std::string le_bytes) {
  auto n = std::make_shared<StrNode>();
  n->s = std::move(le_bytes);
  return PyValueAccess::make(Kind::BigInt, std::move(n));
}
PyValue PyValue::str(std::string utf8) {
  auto n = std::make_shared<StrNode>();
  n->s = std::move(utf8);
  return PyValueAccess::make(Kind::Str, std::move(n));
}
PyValue PyValue::bytes(std::string data) {
  auto n = std::make_shared<StrNode>();
  n->s = std::move(data);
  return PyValueAccess::make(Kind::Bytes, std::move(n));
}
PyValue PyValue::list(std::vector<PyValue> items) {
  auto n = std::make_shared<ListNode>();
  n->items = std::move(items);
  return PyValueAccess::make(Kind::List, std::move(n));
}
PyValue PyValue::tuple(std::vector<PyValue> items) {
  auto n = std::make_shared<ListNode>();
  n->items = std::move(items);
  return PyValueAccess::make(Kind::Tuple, std::move(n));
}
PyValue PyValue::dict(bool ordered) {
  auto n = std::make_shared<DictNode>();
  n->dict.ordered = ordered;
  return PyValueAccess::make(Kind::Dict, std::move(n));
}
PyValue PyValue::tensor(torch::Tensor tensor) {
  auto n = std::make_shared<TensorNode>();
  n->tensor = std::move(tensor);
  return PyValueAccess::make(Kind::Tensor, std::move(n));
}
PyValue PyValue::storage(PyStorage storage) {
  auto n = std::make_shared<StorageNode>();
  n->storage = std::move(storage);
  return PyValueAccess::make(Kind::Storage, std::move(n));
}
PyValue PyValue::global(std::string module, std::string name) {
  auto n = std::make_shared<GlobalNode>();
  n->global = PyGlobal{std::move(module), std::move(name)};
  return PyValueAccess::make(Kind::Global, std::move(n));
}
PyValue PyValue::object(std::string cls, PyValue args) { return object(std::move(cls), std::move(args), PyValue()); }

PyValue PyValue::object(std::string cls, PyValue args, PyValue state) {
  auto n = std::make_shared<ObjectNode>();
  n->object = PyObject{std::move(cls), std::move(args), std::move(state)};
  return PyValueAccess::make(Kind::Object, std::move(n));
}

std::string PyValue::type_name() const {
  if (kind_ == Kind::Dict && as_dict().ordered) return "OrderedDict";
  if (kind_ == Kind::Object) return as_object().cls;
  return kind_label(kind_);
}

bool PyValue::as_bool() const {
  if (kind_ != Kind::Bool) throw std::runtime_error("pickle value: expected bool, got " + type_name());
  return b_;
}
int64_t PyValue::as_int() const {
  if (kind_ == Kind::Int) return i_;
  if (kind_ == Kind::Bool) return b_ ? 1 : 0;
  if (kind_ == Kind::BigInt) throw std::runtime_error("pickle value: integer does not fit in 64 bits");
  throw std::runtime_error("pickle value: expected int, got " + type_name());
}
double PyValue::as_float() const {
  if (kind_ == Kind::Float) return f_;
  if (kind_ == Kind::Int || kind_ == Kind::Bool) return static_cast<double>(as_int());
  throw std::runtime_error("pickle value: expected float, got " + type_name());
}
const std::string& PyValue::as_str() const {
  return PyValueAccess::as<StrNode>(*this, Kind::Str, Kind::Str, "str").s;
}
const std::string& PyValue::as_bytes() const {
  return PyValueAccess::as<StrNode>(*this, Kind::Bytes, Kind::Bytes, "bytes").s;
}
const std::string& PyValue::as_big_integer() const {
  return PyValueAccess::as<StrNode>(*this, Kind::BigInt, Kind::BigInt, "big int").s;
}
const std::vector<PyValue>& PyValue::items() const {
  return PyValueAccess::as<ListNode>(*this, Kind::List, Kind::Tuple, "list or tuple").items;
}
std::vector<PyValue>& PyValue::items() {
  return PyValueAccess::as<ListNode>(*this, Kind::List, Kind::Tuple, "list or tuple").items;
}
const PyDict& PyValue::as_dict() const { return PyValueAccess::as<DictNode>(*this, Kind::Dict, Kind::Dict, "dict").dict; }
PyDict& PyValue::as_dict() { return PyValueAccess::as<DictNode>(*this, Kind::Dict, Kind::Dict, "dict").dict; }
const torch::Tensor& PyValue::as_tensor() const {
  return PyValueAccess::as<TensorNode>(*this, Kind::Tensor, Kind::Tensor, "Tensor").tensor;
}
const PyStorage& PyValue::as_storage() const {
  return PyValueAccess::as<StorageNode>(*this, Kind::Storage, Kind::Storage, "storage").storage;
}
const PyGlobal& PyValue::as_global() const {
  return PyValueAccess::as<GlobalNode>(*this, Kind::Global, Kind::Global, "global").global;
}
const PyObject& PyValue::as_object() const {
  return PyValueAccess::as<ObjectNode>(*this, Kind::Object, Kind::Object, "object").object;
}

namespace {

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "'";
}

void repr_into(const PyValue& v, std::string& out, size_t max_chars) {
  if (out.size() > max_chars) return;
  switch (v.kind()) {
    case PyValue::Kind::None: out += "None"; return;
    case PyValue::Kind::Bool: out += v.as_bool() ? "True" : "False"; return;
    case PyValue::Kind::Int: out += std::to_string(v.as_int()); return;
    case PyValue::Kind::BigInt: out += "<int of " + std::to_string(v.as_big_integer().size()) + " bytes>"; return;
    case PyValue::Kind::Float: {
      // Shortest text that reads back as the same double, as Python's repr prints it.
      const double f = v.as_float();
      char buf[40];
      for (int precision = 1; precision <= 17; ++precision) {
        std::snprintf(buf, sizeof buf, "%.*g", precision, f);
        if (std::strtod(buf, nullptr) == f || std::isnan(f)) break;
      }
      out += buf;
      if (std::isfinite(f) && std::strpbrk(buf, ".e") == nullptr) out += ".0";
      return;
    }
    case PyValue::Kind::Str: out += quote(v.as_str()); return;
    case PyValue::Kind::Bytes: out += "b" + quote(v.as_bytes()); return;
    case PyValue::Kind::List:
    case PyValue::Kind::Tuple: {
      const bool list = v.is_list();
      out += list ? "[" : "(";
      bool first = true;
      for (const PyValue& item : v.items()) {
        if (!first) out += ", ";
        first = false;
        if (out.size() > max_chars) break;
        repr_into(item, out, max_chars);
      }
      if (!list && v.items().size() == 1) out += ",";
      out += list ? "]" : ")";
      return;
    }
    case PyValue::Kind::Dict: {
      const PyDict& d = v.as_dict();
      out += d.ordered ? "OrderedDict({" : "{";
      bool first = true;
      for (const auto& [key, value] : d.items) {
        if (!first) out += ", ";
        first = false;
        if (out.size() > max_chars) break;
        repr_into(key, out, max_chars);
        out += ": ";
        repr_into(value, out, max_chars);
      }
      out += d.ordered ? "})" : "}";
      return;
    }
    case PyValue::Kind::Tensor: {
      const torch::Tensor& t = v.as_tensor();
      std::ostringstream s;
      s << "Tensor[" << dtype_name(t.scalar_type()) << ", (";
      for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
      s << (t.dim() == 1 ? ",)]" : ")]");
      out += s.str();
      return;
    }
    case PyValue::Kind::Storage:
      out += "Storage[" + dtype_name(v.as_storage().dtype) + ", " + std::to_string(v.as_storage().numel) + "]";
      return;
    case PyValue::Kind::Global: out += v.as_global().module + "." + v.as_global().name; return;
    case PyValue::Kind::Object:
      out += v.as_object().cls;
      repr_into(v.as_object().args, out, max_chars);
      if (!v.as_object().state.is_none()) {
        out += " with ";
        repr_into(v.as_object().state, out, max_chars);
      }
      return;
  }
}

bool tensors_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;
  return torch::equal(a.cpu(), b.cpu());
}

}  // namespace

std::string PyValue::repr(size_t max_chars) const {
  std::string out;
  repr_into(*this, out, max_chars);
  if (out.size() > max_chars) {
    out.resize(max_chars);
    out += "...";
  }
  return out;
}

bool PyValue::equals(const PyValue& other) const {
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case Kind::None: return true;
    case Kind::Bool: return b_ == other.b_;
    case Kind::Int: return i_ == other.i_;
    case Kind::Float: return f_ == other.f_ || (std::isnan(f_) && std::isnan(other.f_));
    case Kind::BigInt:
    case Kind::Str:
    case Kind::Bytes: return static_cast<StrNode*>(node_.get())->s == static_cast<StrNode*>(other.node_.get())->s;
    case Kind::List:
    case Kind::Tuple: {
      const auto& a = items();
      const auto& b = other.items();
      if (a.size() != b.size()) return false;
      for (size_t i = 0; i < a.size(); ++i) {
        if (!a[i].equals(b[i])) return false;
      }
      return true;
    }
    case Kind::Dict: {
      const PyDict& a = as_dict();
      const PyDict& b = other.as_dict();
      if (a.ordered != b.ordered || a.items.size() != b.items.size()) return false;
      for (size_t i = 0; i < a.items.size(); ++i) {
        if (!a.items[i].first.equals(b.items[i].first) || !a.items[i].second.equals(b.items[i].second)) return false;
      }
      return true;
    }
    case Kind::Tensor: return tensors_equal(as_tensor(), other.as_tensor());
    case Kind::Storage: return as_storage().storage.is_alias_of(other.as_storage().storage);
    case Kind::Global:
      return as_global().module == other.as_global().module && as_global().name == other.as_global().name;
    case Kind::Object:
      return as_object().cls == other.as_object().cls && as_object().args.equals(other.as_object().args) &&
             as_object().state.equals(other.as_object().state);
  }
  return false;
}

// ---- PyDict ----------------------------------------------------------------------------------

namespace {

/// The index key of a hashable scalar (Python: 1 == 1.0 == True), or nullopt for other keys.
std::optional<std::string> index_key(const PyValue& key) {
  switch (key.kind()) {
    case PyValue::Kind::Str: return "s" + key.as_str();
    case PyValue::Kind::Bytes: return "b" + key.as_bytes();
    case PyValue::Kind::Int:
    case PyValue::Kind::Bool: return "i" + std::to_string(key.as_int());
    case PyValue::Kind::BigInt: return "I" + key.as_big_integer();
    case PyValue::Kind::None: return std::string("n");
    case PyValue::Kind::Float: {
      const double f = key.as_float();
      if (f == std::floor(f) && std::abs(f) < 9.2e18) return "i" + std::to_string(static_cast<int64_t>(f));
      char buf[40];
      std::snprintf(buf, sizeof buf, "f%a", f);
      return std::string(buf);
    }
    default: return std::nullopt;
  }
}

}  // namespace

const PyValue* PyDict::find(std::string_view key) const {
  const auto it = index_.find("s" + std::string(key));
  return it == index_.end() ? nullptr : &items[it->second].second;
}

const PyValue* PyDict::find(int64_t key) const {
  const auto it = index_.find("i" + std::to_string(key));
  return it == index_.end() ? nullptr : &items[it->second].second;
}

const PyValue* PyDict::find(const PyValue& key) const {
  if (auto k = index_key(key)) {
    const auto it = index_.find(*k);
    return it == index_.end() ? nullptr : &items[it->second].second;
  }
  for (const auto& item : items) {
    if (item.first.equals(key)) return &item.second;
  }
  return nullptr;
}

void PyDict::set(PyValue key, PyValue value) {
  if (auto k = index_key(key)) {
    const auto [it, inserted] = index_.emplace(*k, items.size());
    if (!inserted) {
      items[it->second].second = std::move(value);
      return;
    }
  } else {
    for (auto& item : items) {
      if (item.first.equals(key)) {
        item.second = std::move(value);
        return;
      }
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

// ---- dtypes ----------------------------------------------------------------------------------

namespace {

struct DtypeInfo {
  c10::ScalarType dtype;
  const char* storage;
  const char* name;
};

constexpr DtypeInfo kDtypes[] = {
    {c10::ScalarType::Float, "FloatStorage", "float32"},  {c10::ScalarType::Double, "DoubleStorage", "float64"},
    {c10::ScalarType::Half, "HalfStorage", "float16"},    {c10::ScalarType::BFloat16, "BFloat16Storage", "bfloat16"},
    {c10::ScalarType::Long, "LongStorage", "int64"},      {c10::ScalarType::Int, "IntStorage", "int32"},
    {c10::ScalarType::Short, "ShortStorage", "int16"},    {c10::ScalarType::Char, "CharStorage", "int8"},
    {c10::ScalarType::Byte, "ByteStorage", "uint8"},      {c10::ScalarType::Bool, "BoolStorage", "bool"},
};

/// torch attribute names of dtypes (torch.float32, torch.float, …), accepted as plain globals.
constexpr const char* kDtypeAttributes[] = {"float32", "float",  "float64", "double", "float16", "half",
                                            "bfloat16", "int64", "long",    "int32",  "int",     "int16",
                                            "short",    "int8",  "uint8",   "bool"};

}  // namespace

c10::ScalarType storage_class_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.storage) return d.dtype;
  }
  throw std::runtime_error("unsupported storage class torch." + name);
}

std::string dtype_storage_class(c10::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (dtype == d.dtype) return d.storage;
  }
  throw std::runtime_error(std::string("unsupported tensor dtype for a checkpoint: ") + c10::toString(dtype));
}

std::string dtype_name(c10::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (dtype == d.dtype) return d.name;
  }
  return c10::toString(dtype);
}

// ---- sources ---------------------------------------------------------------------------------

MemorySource::MemorySource(std::string_view bytes, std::string name) : bytes_(bytes), name_(std::move(name)) {}

void MemorySource::read(void* dst, size_t n) {
  if (n > bytes_.size() - pos_) {
    throw std::runtime_error(name_ + ": truncated: needs " + std::to_string(n) + " bytes at offset " +
                             std::to_string(pos_) + ", only " + std::to_string(bytes_.size() - pos_) + " left");
  }
  if (n > 0) std::memcpy(dst, bytes_.data() + pos_, n);
  pos_ += n;
}

// ---- unpickler -------------------------------------------------------------------------------

namespace {

constexpr size_t kMaxLine = 1 << 16;  // text opcodes (GLOBAL names, INT, FLOAT) are short
constexpr int64_t kMaxDims = 64;

bool is_container(const PyValue& v) {
  return v.is_list() || v.is_tuple() || v.is_dict() || v.is_object();
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

/// Protocol 0's UNICODE argument (raw-unicode-escape: latin-1 bytes plus \uXXXX / \UXXXXXXXX) as UTF-8.
std::optional<std::string> decode_raw_unicode_escape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c == '\\' && i + 1 < s.size() && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
      const size_t n = s[i + 1] == 'u' ? 4 : 8;
      if (i + 2 + n > s.size()) return std::nullopt;
      uint32_t cp = 0;
      for (size_t k = 0; k < n; ++k) {
        const char h = s[i + 2 + k];
        int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (v < 0) return std::nullopt;
        cp = cp * 16 + static_cast<uint32_t>(v);
      }
      if (cp > 0x10ffff) return std::nullopt;
      append_utf8(out, cp);
      i += 1 + n;
    } else {
      append_utf8(out, c);
    }
  }
  return out;
}

/// A decimal integer string ("-123") as little-endian two's-complement bytes, or nullopt.
std::optional<std::string> decimal_to_le(std::string digits) {
  bool neg = false;
  if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
    neg = digits[0] == '-';
    digits.erase(0, 1);
  }
  if (digits.empty() || digits.size() > 5000) return std::nullopt;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  std::vector<uint8_t> mag;  // little-endian magnitude
  for (char c : digits) {
    uint32_t carry = static_cast<uint32_t>(c - '0');
    for (uint8_t& b : mag) {
      const uint32_t v = b * 10u + carry;
      b = static_cast<uint8_t>(v & 0xff);
      carry = v >> 8;
    }
    while (carry) {
      mag.push_back(static_cast<uint8_t>(carry & 0xff));
      carry >>= 8;
    }
  }
  mag.push_back(0);  // room for the sign bit
  if (neg) {
    uint32_t carry = 1;
    for (uint8_t& b : mag) {
      const uint32_t v = static_cast<uint8_t>(~b) + carry;
      b = static_cast<uint8_t>(v & 0xff);
      carry = v >> 8;
    }
  }
  return std::string(mag.begin(), mag.end());
}

class Unpickler {
 public:
  Unpickler(ByteSource& source, const UnpickleOptions& options) : src_(source), opt_(options) {}

  PyValue run();

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(opt_.name() + ": pickle opcode at byte " + std::to_string(op_pos_) + ": " + what);
  }

  uint8_t u8() {
    uint8_t v;
    src_.read(&v, 1);
    return v;
  }
  uint16_t u16() {
    uint8_t b[2];
    src_.read(b, 2);
    return static_cast<uint16_t>(b[0] | (b[1] << 8));
  }
  uint32_t u32() {
    uint8_t b[4];
    src_.read(b, 4);
    return static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) | (static_cast<uint32_t>(b[2]) << 16) |
           (static_cast<uint32_t>(b[3]) << 24);
  }
  uint64_t u64() {
    const uint64_t lo = u32();
    const uint64_t hi = u32();
    return lo | (hi << 32);
  }
  std::string take(uint64_t n) {
    if (n > src_.remaining()) {
      fail("length " + std::to_string(n) + " runs past the end of the data (" + std::to_string(src_.remaining()) +
           " bytes left)");
    }
    std::string s(static_cast<size_t>(n), '\0');
    src_.read(s.data(), s.size());
    return s;
  }
  std::string line() {
    std::string s;
    for (;;) {
      const char c = static_cast<char>(u8());
      if (c == '\n') break;
      if (s.size() >= kMaxLine) fail("text argument longer than " + std::to_string(kMaxLine) + " bytes");
      s += c;
    }
    if (!s.empty() && s.back() == '\r') s.pop_back();
    return s;
  }

  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  PyValue pop() {
    if (stack_.size() <= floor()) fail("stack underflow");
    PyValue v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PyValue& top() {
    if (stack_.size() <= floor()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<PyValue> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyValue> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
                               std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  void push(PyValue v) {
    if (stack_.size() >= kMaxStack) fail("stack deeper than " + std::to_string(kMaxStack));
    stack_.push_back(std::move(v));
  }

  /// Records that `child` now lives inside `parent`: seals the child, refuses to modify a sealed
  /// parent (so no cycles can form) and keeps the nesting depth within bounds.
  void adopt(const PyValue& parent, const PyValue& child) {
    PyValue::Node* c = PyValueAccess::node(child);
    if (c != nullptr) c->sealed = true;
    PyValue::Node* p = PyValueAccess::node(parent);
    if (p->sealed) fail("pickle modifies a container after nesting it (recursive structures are not supported)");
    const int64_t d = (c != nullptr && is_container(child) ? c->depth : 0) + 1;
    if (d > p->depth) p->depth = d;
    if (p->depth > opt_.max_depth()) fail("containers nested deeper than " + std::to_string(opt_.max_depth()));
  }

  PyValue make_tuple(std::vector<PyValue> items) {
    PyValue t = PyValue::tuple();
    for (const PyValue& item : items) adopt(t, item);
    t.items() = std::move(items);
    return t;
  }

  void append_to(PyValue& target, std::vector<PyValue> items) {
    if (!target.is_list()) fail("APPEND(S) into a " + target.type_name());
    for (PyValue& item : items) {
      adopt(target, item);
      target.items().push_back(std::move(item));
    }
  }

  void set_items(PyValue& target, std::vector<PyValue> items) {
    if (!target.is_dict()) fail("SETITEM(S) into a " + target.type_name());
    if (items.size() % 2 != 0) fail("SETITEMS with an odd number of stack items");
    PyDict& d = target.as_dict();
    for (size_t i = 0; i < items.size(); i += 2) {
      adopt(target, items[i]);
      adopt(target, items[i + 1]);
      d.set(std::move(items[i]), std::move(items[i + 1]));
    }
  }

  PyValue memo_get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo index " + std::to_string(index) + " was never stored");
    return it->second;
  }
  void memo_put(uint64_t index) { memo_[index] = top(); }

  PyValue global(std::string module, std::string name);
  PyValue call(const PyValue& callable, const PyValue& args);
  PyValue rebuild_tensor(const std::vector<PyValue>& a);
  void build(PyValue& target, const PyValue& state);
  PyValue decode_long(const std::string& le);
  int64_t int_arg(const PyValue& v, const char* what) {
    if (!v.is_int()) fail(std::string(what) + " must be an int, got " + v.type_name());
    return v.as_int();
  }

  static constexpr size_t kMaxStack = size_t{1} << 24;

  ByteSource& src_;
  const UnpickleOptions& opt_;
  std::vector<PyValue> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyValue> memo_;
  uint64_t op_pos_ = 0;
};

PyValue Unpickler::decode_long(const std::string& le) {
  if (le.empty()) return PyValue::integer(0);
  if (le.size() <= 8) {
    uint64_t u = 0;
    for (size_t i = 0; i < le.size(); ++i) u |= static_cast<uint64_t>(static_cast<uint8_t>(le[i])) << (8 * i);
    if (le.size() < 8 && (static_cast<uint8_t>(le.back()) & 0x80)) u |= ~uint64_t{0} << (8 * le.size());
    return PyValue::integer(static_cast<int64_t>(u));
  }
  // Wider: still an int64 if every byte past the eighth only sign-extends.
  const bool neg = static_cast<uint8_t>(le.back()) & 0x80;
  const uint8_t ext = neg ? 0xff : 0x00;
  bool fits = (static_cast<uint8_t>(le[7]) & 0x80) == (neg ? 0x80 : 0);
  for (size_t i = 8; i < le.size() && fits; ++i) fits = static_cast<uint8_t>(le[i]) == ext;
  if (fits) return decode_long(le.substr(0, 8));
  // Minimal form, so that equal numbers compare equal whichever opcode carried them.
  std::string m = le;
  while (m.size() > 9 && static_cast<uint8_t>(m.back()) == ext &&
         (static_cast<uint8_t>(m[m.size() - 2]) & 0x80) == (ext & 0x80)) {
    m.pop_back();
  }
  return PyValue::big_integer(std::move(m));
}

PyValue Unpickler::global(std::string module, std::string name) {
  if (module == "__builtin__") module = "builtins";
  static const std::vector<std::pair<std::string, std::string>> allowed = {
      {"collections", "OrderedDict"},
      {"torch._utils", "_rebuild_tensor_v2"},
      {"torch._utils", "_rebuild_tensor"},
      {"torch._utils", "_rebuild_parameter"},
      {"torch._utils", "_rebuild_parameter_with_state"},
      {"torch", "Size"},
      {"torch", "device"},
      {"argparse", "Namespace"},
      {"_codecs", "encode"},
      {"builtins", "set"},
      {"builtins", "frozenset"},
      {"builtins", "bytes"},
      {"numpy", "dtype"},
      {"numpy.core.multiarray", "scalar"},
      {"numpy._core.multiarray", "scalar"},
  };
  bool ok = false;
  for (const auto& [m, n] : allowed) ok = ok || (m == module && n == name);
  if (!ok && module == "torch") {
    for (const auto& d : kDtypes) ok = ok || name == d.storage;
    for (const char* d : kDtypeAttributes) ok = ok || name == d;
  }
  if (!ok) {
    fail("forbidden global '" + module + "." + name +
         "': only plain data, tensors and storages may be loaded (a pickle can run code through globals)");
  }
  return PyValue::global(std::move(module), std::move(name));
}

PyValue Unpickler::rebuild_tensor(const std::vector<PyValue>& a) {
  if (!a[0].is_storage()) fail("tensor rebuild: first argument must be a storage, got " + a[0].type_name());
  const PyStorage& st = a[0].as_storage();
  const int64_t offset = int_arg(a[1], "tensor storage offset");
  if (!(a[2].is_tuple() || a[2].is_list()) || !(a[3].is_tuple() || a[3].is_list())) {
    fail("tensor rebuild: size and stride must be tuples");
  }
  const auto& size_v = a[2].items();
  const auto& stride_v = a[3].items();
  if (size_v.size() != stride_v.size()) {
    fail("tensor rebuild: " + std::to_string(size_v.size()) + " sizes but " + std::to_string(stride_v.size()) +
         " strides");
  }
  if (static_cast<int64_t>(size_v.size()) > kMaxDims) fail("tensor rebuild: more than 64 dimensions");
  std::vector<int64_t> sizes, strides;
  bool empty = false;
  __int128 last = 0;
  for (size_t i = 0; i < size_v.size(); ++i) {
    const int64_t s = int_arg(size_v[i], "tensor size");
    const int64_t t = int_arg(stride_v[i], "tensor stride");
    if (s < 0 || t < 0) fail("tensor rebuild: negative size or stride");
    sizes.push_back(s);
    strides.push_back(t);
    if (s == 0) empty = true;
    last += static_cast<__int128>(s > 0 ? s - 1 : 0) * t;
  }
  if (offset < 0 || offset > st.numel) {
    fail("tensor rebuild: storage offset " + std::to_string(offset) + " outside a storage of " +
         std::to_string(st.numel) + " elements");
  }
  if (!empty && static_cast<__int128>(offset) + last + 1 > st.numel) {
    fail("tensor rebuild: view (offset " + std::to_string(offset) + ", sizes and strides) reaches past the end of its "
         "storage of " + std::to_string(st.numel) + " elements (key '" + st.key + "')");
  }
  const int64_t esize = static_cast<int64_t>(c10::elementSize(st.dtype));
  if ((static_cast<__int128>(st.offset) + st.numel) * esize > static_cast<__int128>(st.storage.nbytes())) {
    fail("tensor rebuild: storage '" + st.key + "' holds fewer bytes than its element count needs");
  }
  torch::Tensor t = at::empty({0}, at::TensorOptions().dtype(st.dtype));
  t.set_(st.storage, st.offset + offset, sizes, strides);
  return PyValue::tensor(std::move(t));
}

PyValue Unpickler::call(const PyValue& callable, const PyValue& args_v) {
  if (!callable.is_global()) fail("REDUCE on a " + callable.type_name() + ", not a class or function");
  if (!args_v.is_tuple()) fail("REDUCE arguments must be a tuple, got " + args_v.type_name());
  const std::string name = callable.as_global().module + "." + callable.as_global().name;
  const auto& a = args_v.items();
  auto need = [&](size_t lo, size_t hi) {
    if (a.size() < lo || a.size() > hi) {
      fail(name + " called with " + std::to_string(a.size()) + " arguments");
    }
  };
  if (name == "collections.OrderedDict") {
    need(0, 1);
    PyValue d = PyValue::dict(true);
    if (a.size() == 1) {
      if (!(a[0].is_list() || a[0].is_tuple())) fail("OrderedDict argument must be a list of pairs");
      for (const PyValue& kv : a[0].items()) {
        // Python 3 writes (key, value) tuples, Python 2 [key, value] lists.
        if (!(kv.is_tuple() || kv.is_list()) || kv.items().size() != 2) fail("OrderedDict argument must be a list of pairs");
        set_items(d, {kv.items()[0], kv.items()[1]});
      }
    }
    return d;
  }
  if (name == "torch._utils._rebuild_tensor_v2") {
    need(6, 7);
    return rebuild_tensor(a);
  }
  if (name == "torch._utils._rebuild_tensor") {
    need(4, 4);
    return rebuild_tensor(a);
  }
  if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
    need(3, 4);
    if (!a[0].is_tensor()) fail(name + ": first argument must be a tensor, got " + a[0].type_name());
    return a[0];
  }
  if (name == "torch.Size") {
    need(1, 1);
    if (!(a[0].is_tuple() || a[0].is_list())) fail("torch.Size argument must be a tuple");
    return make_tuple(a[0].items());
  }
  if (name == "builtins.set" || name == "builtins.frozenset") {
    need(0, 1);
    if (a.empty()) return PyValue::list();
    if (!(a[0].is_tuple() || a[0].is_list())) fail(name + " argument must be a list");
    PyValue l = PyValue::list();
    append_to(l, a[0].items());
    return l;
  }
  if (name == "builtins.bytes") {
    need(0, 0);
    return PyValue::bytes("");
  }
  if (name == "_codecs.encode") {
    // How protocol 2 pickles bytes: encode(str_with_code_points_below_256, 'latin1').
    need(2, 2);
    if (!a[0].is_str() || !a[1].is_str() || (a[1].as_str() != "latin1" && a[1].as_str() != "latin-1")) {
      fail("_codecs.encode is only accepted as encode(str, 'latin1')");
    }
    const std::string& s = a[0].as_str();
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<uint8_t>(s[i]);
      if (c < 0x80) {
        out += static_cast<char>(c);
      } else if ((c == 0xc2 || c == 0xc3) && i + 1 < s.size()) {
        out += static_cast<char>(((c & 0x03) << 6) | (static_cast<uint8_t>(s[++i]) & 0x3f));
      } else {
        fail("_codecs.encode: character outside latin1");
      }
    }
    return PyValue::bytes(std::move(out));
  }
  if (name == "numpy.dtype") {
    need(1, 3);
    if (!a[0].is_str()) fail("numpy.dtype argument must be a str");
    PyValue args = make_tuple(a);
    PyValue o = PyValue::object(name, args);
    adopt(o, args);
    return o;
  }
  if (name == "numpy.core.multiarray.scalar" || name == "numpy._core.multiarray.scalar") {
    // A NumPy scalar (e.g. a best-accuracy float64): dtype and raw bytes; becomes a plain float/int/bool.
    need(2, 2);
    if (!a[0].is_object() || a[0].as_object().cls != "numpy.dtype" || !a[1].is_bytes()) {
      fail("numpy scalar needs a numpy.dtype and bytes");
    }
    const std::string& code = a[0].as_object().args.items()[0].as_str();
    const PyValue& state = a[0].as_object().state;
    if (state.is_tuple() && state.items().size() > 1 && state.items()[1].is_str() && state.items()[1].as_str() == ">") {
      fail("big-endian numpy scalar");
    }
    const std::string& raw = a[1].as_bytes();
    auto want = [&](size_t n) {
      if (raw.size() != n) fail("numpy scalar of type " + code + " with " + std::to_string(raw.size()) + " bytes");
    };
    auto load = [&](auto zero) {
      want(sizeof(zero));
      std::memcpy(&zero, raw.data(), sizeof(zero));
      return zero;
    };
    if (code == "f8") return PyValue::floating(load(double{}));
    if (code == "f4") return PyValue::floating(load(float{}));
    if (code == "f2") return PyValue::floating(static_cast<float>(c10::Half(load(uint16_t{}), c10::Half::from_bits())));
    if (code == "i8") return PyValue::integer(load(int64_t{}));
    if (code == "i4") return PyValue::integer(load(int32_t{}));
    if (code == "i2") return PyValue::integer(load(int16_t{}));
    if (code == "i1") return PyValue::integer(load(int8_t{}));
    if (code == "u4") return PyValue::integer(load(uint32_t{}));
    if (code == "u2") return PyValue::integer(load(uint16_t{}));
    if (code == "u1") return PyValue::integer(load(uint8_t{}));
    if (code == "u8") {
      const uint64_t v = load(uint64_t{});
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return decode_long(raw + std::string(1, '\0'));
      return PyValue::integer(static_cast<int64_t>(v));
    }
    if (code == "b1") return PyValue::boolean(load(uint8_t{}) != 0);
    fail("unsupported numpy scalar type '" + code + "'");
  }
  if (name == "torch.device" || name == "argparse.Namespace") {
    PyValue args = make_tuple(a);
    PyValue o = PyValue::object(name, args);
    adopt(o, args);
    return o;
  }
  fail("global " + name + " cannot be called");
}

void Unpickler::build(PyValue& target, const PyValue& state) {
  if (target.is_dict()) {
    // OrderedDict instance attributes, e.g. a state dict's `_metadata`.
    PyValue attrs = state;
    if (state.is_tuple() && state.items().size() == 2) attrs = state.items()[0];
    if (attrs.is_none()) return;
    if (!attrs.is_dict()) fail("BUILD state of a dict must be a dict, got " + attrs.type_name());
    adopt(target, attrs);
    target.as_dict().attributes = attrs;
    return;
  }
  if (target.is_object()) {
    adopt(target, state);
    const_cast<PyObject&>(target.as_object()).state = state;
    return;
  }
  fail("BUILD on a " + target.type_name());
}

PyValue Unpickler::run() {
  for (;;) {
    op_pos_ = src_.position();
    const uint8_t op = u8();
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t v = u8();
        if (v > 5) fail("unsupported pickle protocol " + std::to_string(v));
        break;
      }
      case 0x95: {  // FRAME: a length hint only
        const uint64_t n = u64();
        if (n > src_.remaining()) fail("frame of " + std::to_string(n) + " bytes runs past the end of the data");
        break;
      }
      case '.': {  // STOP
        PyValue v = pop();
        return v;
      }
      case '(': marks_.push_back(stack_.size()); break;                       // MARK
      case '0':                                                                // POP
        if (stack_.size() > floor()) {
          stack_.pop_back();
        } else {
          pop_mark();
        }
        break;
      case '1': pop_mark(); break;                                             // POP_MARK
      case '2': push(top()); break;                                            // DUP
      case 'N': push(PyValue::none()); break;                                  // NONE
      case 0x88: push(PyValue::boolean(true)); break;                          // NEWTRUE
      case 0x89: push(PyValue::boolean(false)); break;                         // NEWFALSE
      case 'K': push(PyValue::integer(u8())); break;                           // BININT1
      case 'M': push(PyValue::integer(u16())); break;                          // BININT2
      case 'J': push(PyValue::integer(static_cast<int32_t>(u32()))); break;    // BININT
      case 'I': {                                                              // INT (text)
        const std::string s = line();
        if (s == "01") {
          push(PyValue::boolean(true));
        } else if (s == "00") {
          push(PyValue::boolean(false));
        } else {
          char* end = nullptr;
          errno = 0;
          const long long v = std::strtoll(s.c_str(), &end, 10);
          if (s.empty() || *end != '\0' || errno != 0) fail("bad INT argument '" + s + "'");
          push(PyValue::integer(v));
        }
        break;
      }
      case 'L': {  // LONG (text)
        std::string s = line();
        if (!s.empty() && s.back() == 'L') s.pop_back();
        const auto le = decimal_to_le(s);
        if (!le) fail("bad LONG argument '" + s.substr(0, 40) + "'");
        push(decode_long(*le));
        break;
      }
      case 0x8a: push(decode_long(take(u8()))); break;   // LONG1
      case 0x8b: {                                       // LONG4
        const int32_t n = static_cast<int32_t>(u32());
        if (n < 0) fail("negative LONG4 length");
        push(decode_long(take(static_cast<uint64_t>(n))));
        break;
      }
      case 'F': {  // FLOAT (text)
        const std::string s = line();
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0') fail("bad FLOAT argument '" + s + "'");
        push(PyValue::floating(v));
        break;
      }
      case 'G': {  // BINFLOAT, big-endian
        uint8_t b[8];
        src_.read(b, 8);
        uint64_t u = 0;
        for (uint8_t c : b) u = (u << 8) | c;
        double d;
        std::memcpy(&d, &u, 8);
        push(PyValue::floating(d));
        break;
      }
      case 'X': push(PyValue::str(take(u32()))); break;          // BINUNICODE
      case 0x8c: push(PyValue::str(take(u8()))); break;          // SHORT_BINUNICODE
      case 0x8d: push(PyValue::str(take(u64()))); break;         // BINUNICODE8
      case 'V': {                                                // UNICODE (raw-unicode-escape)
        const auto u = decode_raw_unicode_escape(line());
        if (!u) fail("bad UNICODE argument");
        push(PyValue::str(*u));
        break;
      }
      case 'T': {                                                // BINSTRING (Python 2 str)
        const int32_t n = static_cast<int32_t>(u32());
        if (n < 0) fail("negative BINSTRING length");
        push(PyValue::str(take(static_cast<uint64_t>(n))));
        break;
      }
      case 'U': push(PyValue::str(take(u8()))); break;           // SHORT_BINSTRING
      case 'S': {                                                // STRING (quoted text)
        std::string s = line();
        if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front()) {
          fail("bad STRING argument");
        }
        push(PyValue::str(s.substr(1, s.size() - 2)));
        break;
      }
      case 'B': push(PyValue::bytes(take(u32()))); break;        // BINBYTES
      case 'C': push(PyValue::bytes(take(u8()))); break;         // SHORT_BINBYTES
      case 0x8e: push(PyValue::bytes(take(u64()))); break;       // BINBYTES8
      case 0x96: push(PyValue::bytes(take(u64()))); break;       // BYTEARRAY8
      case ']': push(PyValue::list()); break;                    // EMPTY_LIST
      case 'l': {                                                // LIST
        PyValue l = PyValue::list();
        append_to(l, pop_mark());
        push(std::move(l));
        break;
      }
      case 'a': {  // APPEND
        PyValue item = pop();
        append_to(top(), {std::move(item)});
        break;
      }
      case 'e': {  // APPENDS
        std::vector<PyValue> items = pop_mark();
        append_to(top(), std::move(items));
        break;
      }
      case ')': push(PyValue::tuple()); break;                   // EMPTY_TUPLE
      case 't': push(make_tuple(pop_mark())); break;             // TUPLE
      case 0x85: push(make_tuple({pop()})); break;               // TUPLE1
      case 0x86: {                                               // TUPLE2
        PyValue b = pop();
        PyValue a = pop();
        push(make_tuple({std::move(a), std::move(b)}));
        break;
      }
      case 0x87: {  // TUPLE3
        PyValue c = pop();
        PyValue b = pop();
        PyValue a = pop();
        push(make_tuple({std::move(a), std::move(b), std::move(c)}));
        break;
      }
      case '}': push(PyValue::dict()); break;                    // EMPTY_DICT
      case 'd': {                                                // DICT
        PyValue d = PyValue::dict();
        set_items(d, pop_mark());
        push(std::move(d));
        break;
      }
      case 's': {  // SETITEM
        PyValue value = pop();
        PyValue key = pop();
        set_items(top(), {std::move(key), std::move(value)});
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<PyValue> items = pop_mark();
        set_items(top(), std::move(items));
        break;
      }
      case 0x8f: push(PyValue::list()); break;                   // EMPTY_SET (as a list)
      case 0x90: {                                               // ADDITEMS
        std::vector<PyValue> items = pop_mark();
        append_to(top(), std::move(items));
        break;
      }
      case 0x91: {  // FROZENSET
        PyValue l = PyValue::list();
        append_to(l, pop_mark());
        push(std::move(l));
        break;
      }
      case 'g': {  // GET
        const std::string s = line();
        char* end = nullptr;
        const unsigned long long i = std::strtoull(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0') fail("bad GET argument");
        push(memo_get(i));
        break;
      }
      case 'h': push(memo_get(u8())); break;                     // BINGET
      case 'j': push(memo_get(u32())); break;                    // LONG_BINGET
      case 'p': {                                                // PUT
        const std::string s = line();
        char* end = nullptr;
        const unsigned long long i = std::strtoull(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0') fail("bad PUT argument");
        memo_put(i);
        break;
      }
      case 'q': memo_put(u8()); break;                           // BINPUT
      case 'r': memo_put(u32()); break;                          // LONG_BINPUT
      case 0x94: memo_put(memo_.size()); break;                  // MEMOIZE
      case 'c': {                                                // GLOBAL
        std::string module = line();
        std::string name = line();
        push(global(std::move(module), std::move(name)));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PyValue name = pop();
        PyValue module = pop();
        if (!name.is_str() || !module.is_str()) fail("STACK_GLOBAL needs two strings");
        push(global(module.as_str(), name.as_str()));
        break;
      }
      case 'R': {  // REDUCE
        PyValue args = pop();
        PyValue callable = pop();
        push(call(callable, args));
        break;
      }
      case 0x81: {  // NEWOBJ
        PyValue args = pop();
        PyValue cls = pop();
        push(call(cls, args));
        break;
      }
      case 0x92: {  // NEWOBJ_EX
        PyValue kwargs = pop();
        PyValue args = pop();
        PyValue cls = pop();
        if (!kwargs.is_dict() || kwargs.as_dict().size() != 0) fail("NEWOBJ_EX with keyword arguments");
        push(call(cls, args));
        break;
      }
      case 'b': {  // BUILD
        PyValue state = pop();
        build(top(), state);
        break;
      }
      case 'P': {  // PERSID
        PyValue pid = PyValue::str(line());
        if (!opt_.persistent_load()) fail("persistent id in a pickle read without a storage loader");
        push(opt_.persistent_load()(pid));
        break;
      }
      case 'Q': {  // BINPERSID
        PyValue pid = pop();
        if (!opt_.persistent_load()) fail("persistent id in a pickle read without a storage loader");
        push(opt_.persistent_load()(pid));
        break;
      }
      case 'i':
      case 'o':
        fail("INST/OBJ opcodes build arbitrary objects and are not accepted");
      case 0x82:
      case 0x83:
      case 0x84:
        fail("extension-registry opcodes (EXT1/2/4) are not accepted");
      case 0x97:
      case 0x98:
        fail("out-of-band buffers are not accepted");
      default: {
        char buf[8];
        std::snprintf(buf, sizeof buf, "0x%02x", op);
        fail(std::string("unknown opcode ") + buf);
      }
    }
  }
}

}  // namespace

PyValue unpickle(ByteSource& source, const UnpickleOptions& options) {
  Unpickler u(source, options);
  try {
    return u.run();
  } catch (const c10::Error& e) {
    throw std::runtime_error(options.name() + ": " + e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    throw std::runtime_error(options.name() + ": out of memory while unpickling");
  } catch (const std::length_error&) {
    throw std::runtime_error(options.name() + ": size out of range while unpickling");
  }
}

PyValue unpickle(std::string_view bytes, const UnpickleOptions& options) {
  MemorySource src(bytes, options.name());
  return unpickle(src, options);
}

// ---- pickler ---------------------------------------------------------------------------------

namespace {

class Pickler {
 public:
  explicit Pickler(const StorageKeyFn& storage_key) : storage_key_(storage_key) {}

  std::string run(const PyValue& v) {
    out_ += "\x80\x02";
    value(v, 0);
    out_ += '.';
    return std::move(out_);
  }

 private:
  void op(char c) { out_ += c; }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
  }
  void str(const std::string& s) {
    if (s.size() > 0xffffffffu) throw std::runtime_error("pickle: string longer than 4 GiB");
    op('X');
    u32(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      out_ += static_cast<char>(v);
    } else if (v >= 0 && v < 65536) {
      op('M');
      out_ += static_cast<char>(v & 0xff);
      out_ += static_cast<char>(v >> 8);
    } else if (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()) {
      op('J');
      u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {
      std::string le(8, '\0');
      for (int i = 0; i < 8; ++i) le[i] = static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
      long1(le);
    }
  }
  void long1(const std::string& le) {
    if (le.size() < 256) {
      op('\x8a');
      out_ += static_cast<char>(le.size());
    } else {
      op('\x8b');
      u32(static_cast<uint32_t>(le.size()));
    }
    out_ += le;
  }
  void global(const std::string& module, const std::string& name) {
    const std::string key = module + "\n" + name + "\n";
    const auto it = memo_.find(key);
    if (it != memo_.end()) {
      if (it->second < 256) {
        op('h');
        out_ += static_cast<char>(it->second);
      } else {
        op('j');
        u32(it->second);
      }
      return;
    }
    op('c');
    out_ += key;
    const uint32_t index = static_cast<uint32_t>(memo_.size());
    memo_.emplace(key, index);
    if (index < 256) {
      op('q');
      out_ += static_cast<char>(index);
    } else {
      op('r');
      u32(index);
    }
  }
  void tensor(const torch::Tensor& input) {
    if (!input.defined()) throw std::runtime_error("pickle: undefined tensor");
    if (input.layout() != c10::kStrided) throw std::runtime_error("pickle: only strided (dense) tensors can be saved");
    const torch::Tensor t = input.is_cpu() ? input : input.cpu();
    const std::string cls = dtype_storage_class(t.scalar_type());
    if (!storage_key_) throw std::runtime_error("pickle: a tensor needs a storage writer (use asl::io::save)");
    const std::string key = storage_key_(t);
    const int64_t numel = static_cast<int64_t>(t.storage().nbytes() / t.element_size());
    global("torch._utils", "_rebuild_tensor_v2");
    op('(');
    op('(');
    str("storage");
    global("torch", cls);
    str(key);
    str("cpu");
    integer(numel);
    op('t');
    op('Q');
    integer(t.storage_offset());
    op('(');
    for (int64_t s : t.sizes()) integer(s);
    op('t');
    op('(');
    for (int64_t s : t.strides()) integer(s);
    op('t');
    op('\x89');
    global("collections", "OrderedDict");
    op(')');
    op('R');
    op('t');
    op('R');
  }
  void dict_items(const PyDict& d, int depth) {
    size_t i = 0;
    while (i < d.items.size()) {
      op('(');
      for (size_t n = 0; n < 1000 && i < d.items.size(); ++n, ++i) {
        value(d.items[i].first, depth + 1);
        value(d.items[i].second, depth + 1);
      }
      op('u');
    }
  }

  void value(const PyValue& v, int depth) {
    if (depth > 1000) throw std::runtime_error("pickle: value nested deeper than 1000 levels");
    switch (v.kind()) {
      case PyValue::Kind::None: op('N'); return;
      case PyValue::Kind::Bool: op(v.as_bool() ? '\x88' : '\x89'); return;
      case PyValue::Kind::Int: integer(v.as_int()); return;
      case PyValue::Kind::BigInt: long1(v.as_big_integer()); return;
      case PyValue::Kind::Float: {
        op('G');
        const double d = v.as_float();
        uint64_t u;
        std::memcpy(&u, &d, 8);
        for (int i = 7; i >= 0; --i) out_ += static_cast<char>((u >> (8 * i)) & 0xff);
        return;
      }
      case PyValue::Kind::Str: str(v.as_str()); return;
      case PyValue::Kind::Bytes: {
        const std::string& b = v.as_bytes();
        if (b.size() > 0xffffffffu) throw std::runtime_error("pickle: bytes longer than 4 GiB");
        op('B');
        u32(static_cast<uint32_t>(b.size()));
        out_ += b;
        return;
      }
      case PyValue::Kind::List: {
        op(']');
        const auto& items = v.items();
        size_t i = 0;
        while (i < items.size()) {
          op('(');
          for (size_t n = 0; n < 1000 && i < items.size(); ++n, ++i) value(items[i], depth + 1);
          op('e');
        }
        return;
      }
      case PyValue::Kind::Tuple: {
        const auto& items = v.items();
        if (items.empty()) {
          op(')');
          return;
        }
        if (items.size() > 3) op('(');
        for (const PyValue& item : items) value(item, depth + 1);
        op(items.size() == 1 ? '\x85' : items.size() == 2 ? '\x86' : items.size() == 3 ? '\x87' : 't');
        return;
      }
      case PyValue::Kind::Dict: {
        const PyDict& d = v.as_dict();
        if (d.ordered) {
          global("collections", "OrderedDict");
          op(')');
          op('R');
        } else {
          op('}');
        }
        dict_items(d, depth);
        if (d.ordered && d.attributes.is_dict() && d.attributes.as_dict().size() > 0) {
          value(d.attributes, depth + 1);
          op('b');
        }
        return;
      }
      case PyValue::Kind::Tensor: tensor(v.as_tensor()); return;
      case PyValue::Kind::Storage: throw std::runtime_error("pickle: a bare storage cannot be saved; save a tensor");
      case PyValue::Kind::Global: global(v.as_global().module, v.as_global().name); return;
      case PyValue::Kind::Object: {
        const PyObject& o = v.as_object();
        const size_t dot = o.cls.rfind('.');
        if (dot == std::string::npos) throw std::runtime_error("pickle: object class '" + o.cls + "' has no module");
        global(o.cls.substr(0, dot), o.cls.substr(dot + 1));
        if (o.args.is_tuple()) {
          value(o.args, depth + 1);
        } else {
          op(')');
        }
        op('R');
        if (!o.state.is_none()) {
          value(o.state, depth + 1);
          op('b');
        }
        return;
      }
    }
  }

  const StorageKeyFn& storage_key_;
  std::string out_;
  std::unordered_map<std::string, uint32_t> memo_;
};

}  // namespace

std::string pickle(const PyValue& value, const StorageKeyFn& storage_key) {
  Pickler p(storage_key);
  return p.run(value);
}

}  // namespace asl::io
