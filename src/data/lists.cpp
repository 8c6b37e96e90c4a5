// CSV image lists and folder datasets → CocoDataset (paths, class names, multi-hot targets).
#include "asl/data/lists.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "asl/io/file.h"

namespace asl::data {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& source, size_t line, const std::string& what) {
  throw std::runtime_error(source + ":" + std::to_string(line) + ": " + what);
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// One CSV line → fields (double quotes group, "" is a literal quote).
std::vector<std::string> split_csv(const std::string& line, const std::string& source, size_t lineno) {
  std::vector<std::string> fields;
  std::string cur;
  bool quoted = false, was_quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') cur += '"', ++i;
      else if (c == '"') quoted = false;
      else cur += c;
    } else if (c == '"' && trim(cur).empty()) {
      quoted = was_quoted = true;
      cur.clear();
    } else if (c == ',') {
      fields.push_back(was_quoted ? cur : trim(cur));
      cur.clear();
      was_quoted = false;
    } else {
      cur += c;
    }
  }
  if (quoted) fail(source, lineno, "unterminated quoted field");
  fields.push_back(was_quoted ? cur : trim(cur));
  return fields;
}

std::vector<std::string> split_labels(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(';', start);
    const std::string name = trim(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (!name.empty()) out.push_back(name);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

CocoDataset make_dataset(const std::string& source, const std::string& images_dir, std::vector<std::string> classes,
                         std::vector<std::string> files, const std::vector<std::vector<int64_t>>& labels) {
  CocoDataset d;
  d.annotations_file = source;
  d.images_dir = images_dir;
  d.class_names = std::move(classes);
  const int64_t n = static_cast<int64_t>(files.size()), c = static_cast<int64_t>(d.class_names.size());
  for (int64_t i = 0; i < c; ++i) d.category_ids.push_back(i);
  for (int64_t i = 0; i < n; ++i) d.image_ids.push_back(i);
  d.file_names = std::move(files);
  d.targets = torch::zeros({n, c}, torch::kInt64);
  auto acc = d.targets.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k : labels[static_cast<size_t>(i)]) acc[i][k] = 1;
  d.targets_by_area = torch::zeros({n, 3, c}, torch::kInt64);
  d.targets_by_area.select(1, 2).copy_(d.targets);  // no box, no area: counted as "large"
  return d;
}

void check_images(const CocoDataset& d, const std::vector<size_t>& lines) {
  for (int64_t i = 0; i < d.size(); ++i) {
    const std::string path = d.image_path(i);
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      fail(d.annotations_file, lines[static_cast<size_t>(i)], "image '" + d.file_names[static_cast<size_t>(i)] +
                                                                  "' not found (looked for " + path + ")");
    }
  }
}

}  // namespace

CocoDataset parse_csv_list(const std::string& text, const std::string& source, const std::string& images_dir,
                           bool check_files) {
  std::vector<std::pair<size_t, std::vector<std::string>>> rows;  // (line number, fields)
  size_t lineno = 0, pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    ++lineno;
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (lineno == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // BOM
    const std::string t = trim(line);
    if (t.empty() || t[0] == '#') {
      if (end == text.size()) break;
      continue;
    }
    rows.emplace_back(lineno, split_csv(line, source, lineno));
    if (end == text.size()) break;
  }
  if (rows.empty()) throw std::runtime_error(source + ": empty file: no header line");
  const auto [header_line, header] = rows.front();
  if (header.size() < 2) {
    fail(source, header_line, "header has " + std::to_string(header.size()) +
                                  " column(s); expected `path,<classes separated by ;>` or `path,<class1>,<class2>,...`");
  }
  bool multi_hot = header.size() > 2;
  if (header.size() == 2 && header[1].find(';') == std::string::npos && lower(header[1]) != "labels" && rows.size() > 1) {
    multi_hot = std::all_of(rows.begin() + 1, rows.end(), [](const auto& r) {
      return r.second.size() == 2 && (r.second[1] == "0" || r.second[1] == "1");
    });
  }

  std::vector<std::string> classes;
  std::map<std::string, int64_t> index;
  const bool infer_classes = !multi_hot && lower(header[1]) == "labels";
  if (multi_hot) {
    classes.assign(header.begin() + 1, header.end());
  } else if (!infer_classes) {
    classes = split_labels(header[1]);
  }
  for (size_t k = 0; k < classes.size(); ++k) {
    if (classes[k].empty()) fail(source, header_line, "class " + std::to_string(k) + " has an empty name");
    if (!index.emplace(classes[k], static_cast<int64_t>(k)).second) {
      fail(source, header_line, "class '" + classes[k] + "' appears twice in the header");
    }
  }
  if (infer_classes) {
    std::set<std::string> seen;
    for (size_t r = 1; r < rows.size(); ++r) {
      if (rows[r].second.size() == 2)
        for (const auto& n : split_labels(rows[r].second[1])) seen.insert(n);
    }
    classes.assign(seen.begin(), seen.end());
    for (size_t k = 0; k < classes.size(); ++k) index[classes[k]] = static_cast<int64_t>(k);
  }
  if (classes.empty()) fail(source, header_line, "the header names no class");

  std::vector<std::string> files;
  std::vector<std::vector<int64_t>> labels;
  std::vector<size_t> lines;
  for (size_t r = 1; r < rows.size(); ++r) {
    const auto& [line, f] = rows[r];
    const size_t want = multi_hot ? classes.size() + 1 : 2;
    if (f.size() != want) {
      fail(source, line, "row has " + std::to_string(f.size()) + " columns, the header " + std::to_string(want));
    }
    if (f[0].empty()) fail(source, line, "empty image path");
    std::vector<int64_t> on;
    if (multi_hot) {
      for (size_t k = 0; k < classes.size(); ++k) {
        if (f[k + 1] == "1") on.push_back(static_cast<int64_t>(k));
        else if (f[k + 1] != "0") {
          fail(source, line, "value '" + f[k + 1] + "' for class '" + classes[k] + "' is not 0 or 1");
        }
      }
    } else {
      for (const auto& name : split_labels(f[1])) {
        const auto it = index.find(name);
        if (it == index.end()) fail(source, line, "unknown class '" + name + "' (not in the header's class list)");
        on.push_back(it->second);
      }
    }
    files.push_back(f[0]);
    labels.push_back(std::move(on));
    lines.push_back(line);
  }
  if (files.empty()) throw std::runtime_error(source + ": empty dataset: the header is followed by no image row");
  CocoDataset d = make_dataset(source, images_dir, std::move(classes), std::move(files), labels);
  if (check_files) check_images(d, lines);
  return d;
}

CocoDataset load_csv_list(const std::string& csv_path, const ListOptions& options) {
  const std::string text = asl::io::read_file(csv_path);
  std::string dir = options.images_dir;
  if (dir.empty()) dir = fs::path(csv_path).parent_path().string();
  if (dir.empty()) dir = ".";
  return parse_csv_list(text, csv_path, dir, options.check_files);
}

CocoDataset load_folder(const std::string& dir, const ListOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw std::runtime_error(dir + ": dataset folder not found");
  const fs::path labels = fs::path(dir) / "labels.csv";
  if (fs::is_regular_file(labels, ec)) {
    ListOptions o = options;
    if (o.images_dir.empty()) o.images_dir = dir;
    return load_csv_list(labels.string(), o);
  }
  static const std::set<std::string> kExtensions = {".jpg", ".jpeg", ".png", ".bmp", ".webp"};
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && !name.empty() && name[0] != '.') classes.push_back(name);
  }
  std::sort(classes.begin(), classes.end());
  std::vector<std::string> files;
  std::vector<std::vector<int64_t>> labels_of;
  for (size_t k = 0; k < classes.size(); ++k) {
    std::vector<std::string> found;
    for (const auto& e : fs::recursive_directory_iterator(fs::path(dir) / classes[k])) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || name.empty() || name[0] == '.') continue;
      if (kExtensions.count(lower(e.path().extension().string())) == 0) continue;
      found.push_back(fs::relative(e.path(), dir).generic_string());
    }
    std::sort(found.begin(), found.end());
    for (auto& f : found) {
      files.push_back(std::move(f));
      labels_of.push_back({static_cast<int64_t>(k)});
    }
  }
  if (classes.empty()) {
    throw std::runtime_error(dir + ": no labels.csv and no class subfolder: empty dataset");
  }
  if (files.empty()) throw std::runtime_error(dir + ": the class subfolders hold no image: empty dataset");
  return make_dataset(dir, dir, std::move(classes), std::move(files), labels_of);
}

CocoDataset load_any_dataset(const std::string& path, const std::string& coco_split, const ListOptions& options) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    if (lower(fs::path(path).extension().string()) == ".csv") return load_csv_list(path, options);
    throw std::runtime_error(path + ": not a .csv list or a dataset folder");
  }
  if (fs::is_regular_file(fs::path(path) / "annotations" / ("instances_" + coco_split + ".json"), ec)) {
    const CocoPaths p = coco_reference_layout(path, coco_split);
    return load_coco(p.annotations, p.images);
  }
  return load_folder(path, options);
}

}  // namespace asl::data
