// COCO instances JSON → image order and multi-hot targets, as the reference's CocoDetection builds them.
#include "asl/data/coco.h"

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "asl/io/file.h"

namespace asl::data {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Area buckets of the reference: small < 32², medium < 96², large otherwise.
constexpr double kSmallArea = 32.0 * 32.0;
constexpr double kMediumArea = 96.0 * 96.0;

class Fields {
 public:
  explicit Fields(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& where, const std::string& what) const {
    throw std::runtime_error(source_ + ": " + where + ": " + what);
  }

  const json& array(const json& doc, const char* key) const {
    const auto it = doc.find(key);
    if (it == doc.end()) fail("top level", std::string("missing field '") + key + "'");
    if (!it->is_array()) fail(key, std::string("is ") + it->type_name() + ", expected an array");
    return *it;
  }

  const json& member(const json& obj, const std::string& where, const char* key) const {
    if (!obj.is_object()) fail(where, std::string("is ") + obj.type_name() + ", expected an object");
    const auto it = obj.find(key);
    if (it == obj.end()) fail(where, std::string("missing field '") + key + "'");
    return *it;
  }

  int64_t integer(const json& obj, const std::string& where, const char* key) const {
    const json& v = member(obj, where, key);
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) fail(where + "." + key, "value " + v.dump() + " is out of range");
      return static_cast<int64_t>(u);
    }
    if (!v.is_number_integer()) fail(where + "." + key, "value " + v.dump() + " is not an integer");
    return v.get<int64_t>();
  }

  double number(const json& obj, const std::string& where, const char* key) const {
    const json& v = member(obj, where, key);
    if (!v.is_number()) fail(where + "." + key, "value " + v.dump() + " is not a number");
    return v.get<double>();
  }

  std::string string(const json& obj, const std::string& where, const char* key) const {
    const json& v = member(obj, where, key);
    if (!v.is_string()) fail(where + "." + key, "value " + v.dump() + " is not a string");
    return v.get<std::string>();
  }

 private:
  std::string source_;
};

std::string indexed(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

// A file_name must name something inside the image folder: relative, no NUL, not climbing out with "..".
bool stays_inside(const std::string& file_name) {
  if (file_name.empty() || file_name.find('\0') != std::string::npos) return false;
  const fs::path p(file_name);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
  const fs::path normal = p.lexically_normal();
  if (normal.empty() || normal == ".") return false;
  return *normal.begin() != "..";
}

}  // namespace

std::string CocoDataset::image_path(int64_t index) const {
  if (index < 0 || index >= size()) {
    throw std::runtime_error(annotations_file + ": image index " + std::to_string(index) + " out of range [0, " +
                             std::to_string(size()) + ")");
  }
  return (fs::path(images_dir) / file_names[static_cast<size_t>(index)]).string();
}

std::vector<std::string> CocoDataset::image_paths() const {
  std::vector<std::string> paths;
  paths.reserve(file_names.size());
  for (int64_t i = 0; i < size(); ++i) paths.push_back(image_path(i));
  return paths;
}

CocoDataset parse_coco(const std::string& json_text, const std::string& source, const std::string& images_dir,
                       const CocoOptions& options) {
  const Fields f(source);
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(source + ": malformed JSON: " + e.what());
  }
  if (!doc.is_object()) f.fail("top level", std::string("is ") + doc.type_name() + ", expected an object");
  const json& categories = f.array(doc, "categories");
  const json& images = f.array(doc, "images");
  const json& annotations = f.array(doc, "annotations");

  CocoDataset ds;
  ds.annotations_file = source;
  ds.images_dir = images_dir;

  std::unordered_map<int64_t, size_t> class_of;  // category id → class index
  for (size_t i = 0; i < categories.size(); ++i) {
    const std::string where = indexed("categories", i);
    const int64_t id = f.integer(categories[i], where, "id");
    const std::string name = f.string(categories[i], where, "name");
    const auto [it, fresh] = class_of.emplace(id, i);
    if (!fresh)
      f.fail(where + ".id",
             "duplicate category id " + std::to_string(id) + " (also " + indexed("categories", it->second) + ")");
    ds.category_ids.push_back(id);
    ds.class_names.push_back(name);
  }

  std::unordered_map<int64_t, size_t> entry_of;  // image id → position in `images`
  std::vector<std::string> names(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string where = indexed("images", i);
    const int64_t id = f.integer(images[i], where, "id");
    names[i] = f.string(images[i], where, "file_name");
    const auto [it, fresh] = entry_of.emplace(id, i);
    if (!fresh)
      f.fail(where + ".id",
             "duplicate image id " + std::to_string(id) + " (also " + indexed("images", it->second) + ")");
    if (!stays_inside(names[i])) {
      f.fail(where + ".file_name", "'" + names[i] + "' is not a relative path inside the image folder");
    }
  }

  // Dataset order = order of first annotation (the reference iterates a dict filled from `annotations`).
  const int64_t num_classes = static_cast<int64_t>(ds.class_names.size());
  std::unordered_map<int64_t, size_t> row_of;    // image id → dataset index
  std::vector<size_t> entries;                   // dataset index → position in `images`
  std::vector<std::pair<size_t, int64_t>> hits;  // (dataset index, area row * C + class)
  hits.reserve(annotations.size());
  for (size_t i = 0; i < annotations.size(); ++i) {
    const std::string where = indexed("annotations", i);
    const int64_t image_id = f.integer(annotations[i], where, "image_id");
    const int64_t category_id = f.integer(annotations[i], where, "category_id");
    const double area = f.number(annotations[i], where, "area");
    const auto entry = entry_of.find(image_id);
    if (entry == entry_of.end()) f.fail(where + ".image_id", "unknown image id " + std::to_string(image_id));
    const auto cls = class_of.find(category_id);
    if (cls == class_of.end()) f.fail(where + ".category_id", "unknown category id " + std::to_string(category_id));
    const auto [row, fresh] = row_of.emplace(image_id, entries.size());
    if (fresh) entries.push_back(entry->second);
    const int64_t bucket = area < kSmallArea ? 0 : area < kMediumArea ? 1 : 2;
    hits.emplace_back(row->second, bucket * num_classes + static_cast<int64_t>(cls->second));
  }
  if (options.keep_empty) {
    for (size_t i = 0; i < images.size(); ++i) {
      const int64_t id = images[i]["id"].get<int64_t>();
      if (row_of.emplace(id, entries.size()).second) entries.push_back(i);
    }
  }

  const int64_t n = static_cast<int64_t>(entries.size());
  for (const size_t e : entries) {
    ds.image_ids.push_back(images[e]["id"].get<int64_t>());
    ds.file_names.push_back(names[e]);
  }
  ds.targets_by_area = torch::zeros({n, 3, num_classes}, torch::kInt64);
  int64_t* t = ds.targets_by_area.data_ptr<int64_t>();
  for (const auto& [row, offset] : hits) t[static_cast<int64_t>(row) * 3 * num_classes + offset] = 1;
  ds.targets =
      n > 0 ? std::get<0>(ds.targets_by_area.max(1)).contiguous() : torch::zeros({0, num_classes}, torch::kInt64);
  return ds;
}

CocoDataset load_coco(const std::string& annotations_file, const std::string& images_dir, const CocoOptions& options) {
  return parse_coco(asl::io::read_file(annotations_file), annotations_file, images_dir, options);
}

CocoPaths coco_reference_layout(const std::string& root, const std::string& split) {
  CocoPaths paths;
  paths.annotations = (fs::path(root) / "annotations" / ("instances_" + split + ".json")).string();
  paths.images = (fs::path(root) / split).string();
  if (!fs::is_regular_file(paths.annotations)) {
    throw std::runtime_error(root + ": annotation file '" + paths.annotations +
                             "' not found (expected the COCO layout ROOT/annotations/instances_" + split +
                             ".json + ROOT/" + split + "/)");
  }
  if (!fs::is_directory(paths.images)) {
    throw std::runtime_error(root + ": image folder '" + paths.images +
                             "' not found (expected the COCO layout ROOT/annotations/instances_" + split +
                             ".json + ROOT/" + split + "/)");
  }
  return paths;
}

}  // namespace asl::data
