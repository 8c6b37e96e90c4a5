// .npy reading and writing: every supported dtype, both format versions, and every refused header.
#include <gtest/gtest.h>

#include <filesystem>

#include "asl/io/file.h"
#include "asl/io/npy.h"
#include "test_util.h"

using asl::io::load_npy;
using asl::io::npy_bytes;
using asl::io::parse_npy;

namespace {

std::string v1_file(const std::string& dict, const std::string& payload) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  return out + header + payload;
}

std::string error_of(const std::string& bytes) {
  try {
    parse_npy(bytes, "case.npy");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(Npy, RoundTripEveryDtype) {
  torch::manual_seed(1);
  const std::vector<torch::Tensor> tensors = {
      torch::randn({3, 4}),
      torch::randn({2, 3, 5}, torch::kFloat64),
      torch::randint(-1000000, 1000000, {7}, torch::kLong),
      torch::randint(-1000, 1000, {2, 2}, torch::kInt32),
      torch::randint(0, 256, {4, 4, 3}, torch::kUInt8),
      torch::rand({9}) < 0.5,
      torch::zeros({0, 4}),
      torch::full({}, 2.5, torch::kFloat64),
  };
  for (const auto& t : tensors) {
    const torch::Tensor back = parse_npy(npy_bytes(t));
    EXPECT_EQ(back.scalar_type(), t.scalar_type());
    EXPECT_EQ(back.sizes(), t.sizes());
    EXPECT_TRUE(torch::equal(back, t));
  }
  // A non-contiguous view is written in C order.
  const torch::Tensor tr = torch::arange(12, torch::kFloat32).view({3, 4}).t();
  EXPECT_TRUE(torch::equal(parse_npy(npy_bytes(tr)), tr.contiguous()));
}

TEST(Npy, HeaderIsAlignedAndReadableByNumPyLayout) {
  const std::string b = npy_bytes(torch::zeros({2, 3}));
  EXPECT_EQ(b.substr(0, 6), "\x93NUMPY");
  const size_t header_len = static_cast<uint8_t>(b[8]) | (static_cast<size_t>(static_cast<uint8_t>(b[9])) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_NE(b.find("'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"), std::string::npos);
  EXPECT_NE(npy_bytes(torch::zeros({5})).find("'shape': (5,)"), std::string::npos);
}

TEST(Npy, ReadsFormatVersion2) {
  const std::string payload(reinterpret_cast<const char*>(std::array<float, 2>{1.5f, -2.0f}.data()), 8);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  while ((12 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string file("\x93NUMPY\x02\x00", 8);
  for (int i = 0; i < 4; ++i) file.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  file += header + payload;
  const torch::Tensor t = parse_npy(file);
  EXPECT_EQ(t[0].item<float>(), 1.5f);
  EXPECT_EQ(t[1].item<float>(), -2.0f);
}

TEST(Npy, RefusesWhatItCannotRepresent) {
  const std::string eight(8, '\0');
  EXPECT_NE(error_of(v1_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", eight)).find("big-endian"),
            std::string::npos);
  EXPECT_NE(error_of(v1_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", eight)).find("fortran_order"),
            std::string::npos);
  EXPECT_NE(error_of(v1_file("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", eight)).find("object"),
            std::string::npos);
  EXPECT_NE(error_of(v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", eight)).find("truncated"),
            std::string::npos);
  EXPECT_NE(error_of(v1_file("{'descr': '<f4', 'fortran_order': False, }", eight)).find("'shape'"), std::string::npos);
  EXPECT_NE(error_of("not a numpy file").find("magic"), std::string::npos);
  EXPECT_NE(error_of(v1_file("{'descr': '|b1', 'fortran_order': False, 'shape': (1,), }", "\x07")).find("bool"),
            std::string::npos);
  // The message names the file.
  EXPECT_EQ(error_of("xx").rfind("case.npy", 0), 0u);
}

TEST(Npy, EveryTruncationIsAnErrorNeverACrash) {
  const std::string good = npy_bytes(torch::randn({4, 5}));
  for (size_t cut = 0; cut < good.size(); ++cut) {
    EXPECT_THROW(parse_npy(good.substr(0, cut)), std::runtime_error) << "cut at " << cut;
  }
}

TEST(Npy, ReadsTheFixtures) {
  const torch::Tensor logits = asl::test::fixture_npy("loss", "coco_logits.npy");
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{8, 80}));
  const torch::Tensor grad = asl::test::fixture_npy("loss", "coco_ce_grad_f64.npy");
  EXPECT_EQ(grad.scalar_type(), torch::kFloat64);
  EXPECT_EQ(asl::test::fixture_npy("single_label", "small_target.npy").scalar_type(), torch::kInt64);
  EXPECT_EQ(asl::test::fixture_npy("images", "dog_rgb.npy").scalar_type(), torch::kUInt8);
}

TEST(Npy, SaveIsAtomicAndLoadNamesMissingFile) {
  const auto dir = std::filesystem::temp_directory_path() / "asl_npy_test";
  std::filesystem::create_directories(dir);
  const auto path = (dir / "a.npy").string();
  asl::io::save_npy(path, torch::arange(6, torch::kLong));
  EXPECT_TRUE(torch::equal(load_npy(path), torch::arange(6, torch::kLong)));
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().filename().string().find(".asl-tmp-"), std::string::npos);
  }
  try {
    load_npy((dir / "missing.npy").string());
    ADD_FAILURE() << "missing file accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.npy"), std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
