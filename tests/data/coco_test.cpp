// COCO-format parsing (image order, class index, area buckets, multi-hot targets) against fixtures/coco.
#include "asl/data/coco.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "asl/io/file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path& coco_dir() {
  static const fs::path dir = asl::test::fixtures_dir() / "coco";
  return dir;
}

const json& annotations() {
  static const json j = asl::test::load_json(coco_dir() / "annotations.json");
  return j;
}

std::string annotations_path() { return (coco_dir() / "annotations.json").string(); }

// Parses the fixture annotations after `edit`, and returns the error message.
std::string error_after(const std::function<void(json&)>& edit) {
  json doc = annotations();
  edit(doc);
  return asl::test::error_of([&] { asl::data::parse_coco(doc.dump(), "edited.json", coco_dir().string()); });
}

::testing::AssertionResult mentions(const std::string& msg, const std::vector<std::string>& parts) {
  for (const auto& p : parts) {
    if (msg.find(p) == std::string::npos) return ::testing::AssertionFailure() << "'" << msg << "' lacks '" << p << "'";
  }
  return ::testing::AssertionSuccess();
}


}  // namespace

TEST(Coco, MatchesReferenceDataset) {
  const json expected = asl::test::load_json(coco_dir() / "expected.json");
  const auto ds = asl::data::load_coco(annotations_path(), coco_dir().string());
  EXPECT_EQ(ds.image_ids, expected.at("image_ids").get<std::vector<int64_t>>());
  EXPECT_EQ(ds.file_names, expected.at("file_names").get<std::vector<std::string>>());
  EXPECT_EQ(ds.class_names, expected.at("class_names").get<std::vector<std::string>>());
  EXPECT_EQ(ds.size(), static_cast<int64_t>(expected.at("image_ids").size()));
  EXPECT_EQ(ds.num_classes(), static_cast<int64_t>(expected.at("class_names").size()));

  const torch::Tensor by_area = asl::test::fixture_npy("coco", "targets_by_area.npy");
  const torch::Tensor targets = asl::test::fixture_npy("coco", "targets.npy");
  ASSERT_EQ(ds.targets_by_area.sizes(), by_area.sizes());
  ASSERT_EQ(ds.targets.sizes(), targets.sizes());
  EXPECT_TRUE(torch::equal(ds.targets_by_area, by_area.to(ds.targets_by_area.scalar_type())));
  EXPECT_TRUE(torch::equal(ds.targets, targets.to(ds.targets.scalar_type())));

  // Every image exists where image_path says.
  for (int64_t i = 0; i < ds.size(); ++i) EXPECT_TRUE(fs::is_regular_file(ds.image_path(i))) << ds.image_path(i);
  EXPECT_EQ(ds.image_paths().size(), static_cast<size_t>(ds.size()));
}

TEST(Coco, OrderIsFirstAnnotationAndEmptyImagesAreDroppedOrKept) {
  // Reverse the annotations and add an image without annotations: the order follows the annotations.
  json doc = annotations();
  std::reverse(doc["annotations"].begin(), doc["annotations"].end());
  int64_t new_id = 0;
  for (const auto& im : doc["images"]) new_id = std::max(new_id, im["id"].get<int64_t>() + 1);
  doc["images"].insert(doc["images"].begin(), json{{"id", new_id}, {"file_name", "empty.jpg"}});

  std::vector<int64_t> first_seen;
  for (const auto& a : doc["annotations"]) {
    const int64_t id = a["image_id"].get<int64_t>();
    if (std::find(first_seen.begin(), first_seen.end(), id) == first_seen.end()) first_seen.push_back(id);
  }
  const auto dropped = asl::data::parse_coco(doc.dump(), "reordered.json", "imgs");
  EXPECT_EQ(dropped.image_ids, first_seen);

  asl::data::CocoOptions keep;
  keep.keep_empty = true;
  const auto kept = asl::data::parse_coco(doc.dump(), "reordered.json", "imgs", keep);
  ASSERT_EQ(kept.size(), dropped.size() + 1);
  EXPECT_EQ(kept.image_ids.back(), new_id);
  EXPECT_EQ(kept.file_names.back(), "empty.jpg");
  EXPECT_EQ(kept.targets[kept.size() - 1].sum().item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(kept.targets.narrow(0, 0, dropped.size()), dropped.targets));
  EXPECT_EQ(kept.image_path(kept.size() - 1), (fs::path("imgs") / "empty.jpg").string());
}

TEST(Coco, AreaBucketsAndClassIndexByCategoryPosition) {
  json doc;
  // Category ids out of order and sparse: the class index is the position in the list.
  doc["categories"] =
      json::array({{{"id", 90}, {"name", "z"}}, {{"id", 3}, {"name", "a"}}, {{"id", 7}, {"name", "m"}}});
  doc["images"] = json::array({{{"id", 5}, {"file_name", "x/5.jpg"}}, {{"id", 6}, {"file_name", "6.jpg"}}});
  doc["annotations"] = json::array({
      {{"image_id", 6}, {"category_id", 7}, {"area", 1023.9}},  // small
      {{"image_id", 6}, {"category_id", 7}, {"area", 1024.0}},  // medium
      {{"image_id", 6}, {"category_id", 90}, {"area", 9215}},   // medium
      {{"image_id", 6}, {"category_id", 3}, {"area", 9216.0}},  // large
      {{"image_id", 5}, {"category_id", 3}, {"area", 0}},       // small
  });
  const auto ds = asl::data::parse_coco(doc.dump(), "made.json", "root");
  EXPECT_EQ(ds.image_ids, (std::vector<int64_t>{6, 5}));
  EXPECT_EQ(ds.class_names, (std::vector<std::string>{"z", "a", "m"}));
  EXPECT_EQ(ds.category_ids, (std::vector<int64_t>{90, 3, 7}));
  const torch::Tensor want_by_area = torch::tensor({0, 0, 1, /**/ 1, 0, 1, /**/ 0, 1, 0,  //
                                                    0, 1, 0, /**/ 0, 0, 0, /**/ 0, 0, 0},
                                                   torch::kInt64)
                                         .view({2, 3, 3});
  EXPECT_TRUE(torch::equal(ds.targets_by_area, want_by_area)) << ds.targets_by_area;
  EXPECT_TRUE(torch::equal(ds.targets, torch::tensor({1, 1, 1, 0, 1, 0}, torch::kInt64).view({2, 3}))) << ds.targets;
}

TEST(Coco, ReferenceLayout) {
  asl::test::TempDir tmp;
  std::string msg = asl::test::error_of([&] { asl::data::coco_reference_layout(tmp.path().string()); });
  EXPECT_TRUE(mentions(msg, {(tmp.path() / "annotations" / "instances_val2014.json").string()}));
  fs::create_directories(tmp.path() / "annotations");
  fs::copy_file(annotations_path(), tmp.path() / "annotations" / "instances_val2014.json");
  msg = asl::test::error_of([&] { asl::data::coco_reference_layout(tmp.path().string()); });
  EXPECT_TRUE(mentions(msg, {(tmp.path() / "val2014").string()}));
  fs::create_directories(tmp.path() / "val2014");
  const auto paths = asl::data::coco_reference_layout(tmp.path().string());
  EXPECT_EQ(paths.annotations, (tmp.path() / "annotations" / "instances_val2014.json").string());
  EXPECT_EQ(paths.images, (tmp.path() / "val2014").string());
  const auto ds = asl::data::load_coco(paths.annotations, paths.images);
  EXPECT_EQ(ds.image_path(0), (tmp.path() / "val2014" / ds.file_names[0]).string());
  const auto train = asl::data::coco_reference_layout(tmp.path().string(), "val2014");
  EXPECT_EQ(train.images, paths.images);
}

TEST(CocoErrors, MissingFields) {
  EXPECT_TRUE(mentions(error_after([](json& d) { d.erase("images"); }), {"edited.json", "'images'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d.erase("annotations"); }), {"edited.json", "'annotations'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d.erase("categories"); }), {"edited.json", "'categories'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["images"][1].erase("file_name"); }),
                       {"edited.json", "images[1]", "'file_name'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["images"][0].erase("id"); }), {"edited.json", "images[0]", "'id'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["annotations"][2].erase("area"); }),
                       {"edited.json", "annotations[2]", "'area'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["annotations"][3].erase("category_id"); }),
                       {"edited.json", "annotations[3]", "'category_id'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["annotations"][0].erase("image_id"); }),
                       {"edited.json", "annotations[0]", "'image_id'"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["categories"][4].erase("name"); }),
                       {"edited.json", "categories[4]", "'name'"}));
}

TEST(CocoErrors, WrongTypes) {
  EXPECT_TRUE(
      mentions(error_after([](json& d) { d["images"][2]["id"] = "two"; }), {"images[2].id", "\"two\"", "integer"}));
  EXPECT_TRUE(
      mentions(error_after([](json& d) { d["annotations"][1]["area"] = "big"; }), {"annotations[1].area", "\"big\""}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["images"][0]["file_name"] = 7; }), {"images[0].file_name", "7"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["categories"] = json::object(); }), {"categories", "array"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["images"][0] = 3; }), {"images[0]", "object"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d = json::array(); }), {"edited.json", "object"}));
}

TEST(CocoErrors, UnknownAndDuplicateIds) {
  EXPECT_TRUE(mentions(error_after([](json& d) { d["annotations"][5]["category_id"] = 999; }),
                       {"edited.json", "annotations[5].category_id", "unknown category id 999"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["annotations"][4]["image_id"] = 12345; }),
                       {"edited.json", "annotations[4].image_id", "unknown image id 12345"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["images"][2]["id"] = d["images"][0]["id"]; }),
                       {"edited.json", "images[2].id", "duplicate image id", "images[0]"}));
  EXPECT_TRUE(mentions(error_after([](json& d) { d["categories"][3]["id"] = d["categories"][1]["id"]; }),
                       {"edited.json", "categories[3].id", "duplicate category id", "categories[1]"}));
}

TEST(CocoErrors, FileNamesThatLeaveTheImageFolder) {
  for (const std::string bad : {"../secret.jpg", "/etc/passwd", "a/../../x.jpg", "..", "", ".", "./"}) {
    EXPECT_TRUE(mentions(error_after([&](json& d) { d["images"][1]["file_name"] = bad; }),
                         {"edited.json", "images[1].file_name", "'" + bad + "'"}))
        << bad;
  }
  // Staying inside is fine, even through "..".
  json doc = annotations();
  doc["images"][0]["file_name"] = "JPEGImages/../JPEGImages/x.jpg";
  EXPECT_NO_THROW(asl::data::parse_coco(doc.dump(), "ok.json", "root"));
}

TEST(CocoErrors, MalformedJsonAndMissingFile) {
  const std::string text = annotations().dump();
  EXPECT_TRUE(mentions(asl::test::error_of([&] { asl::data::parse_coco(text.substr(0, text.size() / 2), "cut.json", "."); }),
                       {"cut.json", "malformed JSON"}));
  EXPECT_TRUE(mentions(asl::test::error_of([&] { asl::data::load_coco("/nonexistent/instances.json", "."); }),
                       {"/nonexistent/instances.json"}));
}
