// CSV lists (label-list and multi-hot layouts) and folder datasets: targets, order, and the errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <torch/torch.h>
#include <unistd.h>

#include "asl/data/lists.h"

namespace {

namespace fs = std::filesystem;
using asl::data::CocoDataset;

class ListsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("asl_lists_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "img");
    for (const char* f : {"a.jpg", "b.jpg", "c d.png"}) touch(dir_ / "img" / f);
  }
  void TearDown() override { fs::remove_all(dir_); }
  static void touch(const fs::path& p) { std::ofstream(p) << "x"; }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  static std::string message_of(const std::function<void()>& fn) {
    try {
      fn();
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "(no error)";
  }
  fs::path dir_;
};

torch::Tensor rows(std::initializer_list<std::initializer_list<int64_t>> v) {
  std::vector<torch::Tensor> r;
  for (auto row : v) r.push_back(torch::tensor(std::vector<int64_t>(row), torch::kInt64));
  return torch::stack(r);
}

TEST_F(ListsTest, LabelListWithClassHeader) {
  const auto path = write("list.csv", "path,cat;dog;bird\nimg/a.jpg,dog;bird\n\n# comment\nimg/b.jpg,\n\"img/c d.png\", cat \r\n");
  const CocoDataset d = asl::data::load_csv_list(path);
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"cat", "dog", "bird"}));
  EXPECT_EQ(d.file_names, (std::vector<std::string>{"img/a.jpg", "img/b.jpg", "img/c d.png"}));
  EXPECT_TRUE(d.targets.equal(rows({{0, 1, 1}, {0, 0, 0}, {1, 0, 0}})));
  EXPECT_TRUE(std::get<0>(d.targets_by_area.max(1)).equal(d.targets));
  EXPECT_EQ(d.image_path(0), (dir_ / "img/a.jpg").string());
}

TEST_F(ListsTest, LabelsHeaderInfersSortedClasses) {
  const auto path = write("list.csv", "path,labels\nimg/a.jpg,zebra;ant\nimg/b.jpg,mole\n");
  const CocoDataset d = asl::data::load_csv_list(path);
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"ant", "mole", "zebra"}));
  EXPECT_TRUE(d.targets.equal(rows({{1, 0, 1}, {0, 1, 0}})));
}

TEST_F(ListsTest, MultiHotColumns) {
  const auto path = write("list.csv", "path,cat,dog\nimg/a.jpg,1,0\nimg/b.jpg,1,1\n");
  const CocoDataset d = asl::data::load_csv_list(path);
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_TRUE(d.targets.equal(rows({{1, 0}, {1, 1}})));
  // two columns whose values are all 0/1: one multi-hot class
  const CocoDataset one = asl::data::load_csv_list(write("one.csv", "path,cat\nimg/a.jpg,1\nimg/b.jpg,0\n"));
  EXPECT_EQ(one.class_names, std::vector<std::string>{"cat"});
  EXPECT_TRUE(one.targets.equal(rows({{1}, {0}})));
}

TEST_F(ListsTest, ErrorsNameFileLineAndValue) {
  const auto unknown = write("u.csv", "path,cat;dog\nimg/a.jpg,cat\nimg/b.jpg,dgo\n");
  std::string m = message_of([&] { asl::data::load_csv_list(unknown); });
  EXPECT_NE(m.find("u.csv:3"), std::string::npos) << m;
  EXPECT_NE(m.find("'dgo'"), std::string::npos) << m;

  const auto missing = write("m.csv", "path,cat\nimg/a.jpg,cat\nimg/nope.jpg,cat\n");
  m = message_of([&] { asl::data::load_csv_list(missing); });
  EXPECT_NE(m.find("m.csv:3"), std::string::npos) << m;
  EXPECT_NE(m.find("nope.jpg"), std::string::npos) << m;

  const auto empty = write("e.csv", "path,cat;dog\n");
  m = message_of([&] { asl::data::load_csv_list(empty); });
  EXPECT_NE(m.find("empty dataset"), std::string::npos) << m;

  const auto bad_value = write("v.csv", "path,cat,dog\nimg/a.jpg,1,2\n");
  m = message_of([&] { asl::data::load_csv_list(bad_value); });
  EXPECT_NE(m.find("v.csv:2"), std::string::npos) << m;
  EXPECT_NE(m.find("'2'"), std::string::npos) << m;

  const auto columns = write("c.csv", "path,cat,dog\nimg/a.jpg,1\n");
  EXPECT_NE(message_of([&] { asl::data::load_csv_list(columns); }).find("c.csv:2"), std::string::npos);
  const auto dup = write("d.csv", "path,cat;cat\nimg/a.jpg,cat\n");
  EXPECT_NE(message_of([&] { asl::data::load_csv_list(dup); }).find("twice"), std::string::npos);
  EXPECT_THROW(asl::data::load_csv_list(write("z.csv", "")), std::runtime_error);
  // check_files off: a missing image is accepted
  asl::data::ListOptions lax;
  lax.check_files = false;
  EXPECT_EQ(asl::data::load_csv_list(missing, lax).size(), 2);
}

TEST_F(ListsTest, FolderPerClassAndLabelsCsv) {
  const fs::path root = dir_ / "folder";
  fs::create_directories(root / "dog");
  fs::create_directories(root / "cat" / "sub");
  touch(root / "dog" / "2.JPG");
  touch(root / "dog" / "1.png");
  touch(root / "dog" / "notes.txt");
  touch(root / "cat" / "sub" / "x.webp");
  const CocoDataset d = asl::data::load_folder(root.string());
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(d.file_names, (std::vector<std::string>{"cat/sub/x.webp", "dog/1.png", "dog/2.JPG"}));
  EXPECT_TRUE(d.targets.equal(rows({{1, 0}, {0, 1}, {0, 1}})));

  std::ofstream(root / "labels.csv") << "path,cat;dog\ndog/1.png,cat;dog\n";
  const CocoDataset l = asl::data::load_folder(root.string());
  EXPECT_EQ(l.size(), 1);
  EXPECT_TRUE(l.targets.equal(rows({{1, 1}})));
  EXPECT_EQ(asl::data::load_any_dataset(root.string()).size(), 1);

  const fs::path empty = dir_ / "empty";
  fs::create_directories(empty / "cat");
  EXPECT_NE(message_of([&] { asl::data::load_folder(empty.string()); }).find("empty dataset"), std::string::npos);
  EXPECT_THROW(asl::data::load_folder((dir_ / "absent").string()), std::runtime_error);
}

}  // namespace
