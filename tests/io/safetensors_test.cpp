// .safetensors against fixtures/timm: every malformed file of bad/ refused with its file named, the ok_
// controls and the timm model files read with the listed values, and files written by asl read back
// equal and byte-for-byte stable.
#include <gtest/gtest.h>

#include <filesystem>

#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/io/file.h"
#include "asl/io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

fs::path timm(const std::string& name) { return asl::test::fixtures_dir() / "timm" / name; }

torch::ScalarType dtype_of(const std::string& name) {
  if (name == "F64") return torch::kFloat64;
  if (name == "F32") return torch::kFloat32;
  if (name == "F16") return torch::kFloat16;
  if (name == "BF16") return torch::kBFloat16;
  if (name == "I64") return torch::kInt64;
  if (name == "I32") return torch::kInt32;
  if (name == "U8") return torch::kUInt8;
  if (name == "BOOL") return torch::kBool;
  throw std::runtime_error("unexpected dtype " + name);
}

TEST(Safetensors, MalformedFilesAreRefusedAndControlsLoad) {
  const nlohmann::json cases = asl::test::load_json(timm("bad/cases.json"));
  int refused = 0, loaded = 0;
  for (const auto& c : cases) {
    const std::string file = timm("bad/" + c.at("file").get<std::string>()).string();
    SCOPED_TRACE(file + ": " + c.value("breaks", c.value("note", "")));
    if (!c.at("valid").get<bool>()) {
      const std::string error = asl::test::error_of([&] { asl::io::load_safetensors(file); });
      EXPECT_NE(error.find(file), std::string::npos) << error;
      EXPECT_NE(error.find("not a valid safetensors file"), std::string::npos) << error;
      ++refused;
      continue;
    }
    const asl::io::SafetensorsFile f = asl::io::load_safetensors(file);
    if (c.at("metadata").is_null()) {
      EXPECT_TRUE(f.metadata.empty());
    } else {
      using Metadata = std::map<std::string, std::string>;
      EXPECT_EQ(f.metadata, c.at("metadata").get<Metadata>());
    }
    ASSERT_EQ(f.tensors.size(), c.at("tensors").size());
    for (const auto& [name, spec] : c.at("tensors").items()) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(f.tensors.contains(name));
      const torch::Tensor& t = f.tensors[name];
      EXPECT_EQ(t.scalar_type(), dtype_of(spec.at("dtype").get<std::string>()));
      EXPECT_EQ(t.sizes().vec(), spec.at("shape").get<std::vector<int64_t>>());
      const torch::Tensor flat = t.reshape({-1});
      const auto& values = spec.at("values");
      ASSERT_EQ(static_cast<size_t>(flat.numel()), values.size());
      for (size_t i = 0; i < values.size(); ++i) {
        if (t.scalar_type() == torch::kBool) {
          EXPECT_EQ(flat[static_cast<int64_t>(i)].item<bool>(), values[i].get<bool>());
        } else if (t.is_floating_point()) {
          EXPECT_EQ(flat[static_cast<int64_t>(i)].item<double>(), values[i].get<double>());  // exact
        } else {
          EXPECT_EQ(flat[static_cast<int64_t>(i)].item<int64_t>(), values[i].get<int64_t>());
        }
      }
    }
    ++loaded;
  }
  EXPECT_EQ(refused, 13);
  EXPECT_EQ(loaded, 2);
  EXPECT_NE(asl::test::error_of([] { asl::io::load_safetensors("/nonexistent/x.safetensors"); }).find("x.safetensors"),
            std::string::npos);
}

TEST(Safetensors, TimmFilesEqualTheirPthCopy) {
  const asl::io::StateDict pth = asl::io::load_checkpoint(timm("small_v1.pth").string()).model;
  const asl::io::SafetensorsFile f32 = asl::io::load_safetensors(timm("small_v1.safetensors").string());
  const asl::io::SafetensorsFile f16 = asl::io::load_safetensors(timm("small_v1_f16.safetensors").string());
  ASSERT_EQ(f32.tensors.size(), pth.size());
  ASSERT_EQ(f16.tensors.size(), pth.size());
  for (const auto& item : pth) {
    SCOPED_TRACE(item.key());
    ASSERT_TRUE(f32.tensors.contains(item.key()));
    EXPECT_TRUE(torch::equal(f32.tensors[item.key()], item.value()));
    const torch::Tensor& h = f16.tensors[item.key()];
    // float16 file: every float tensor is the float32 one rounded to float16.
    EXPECT_TRUE(torch::equal(h, item.value().is_floating_point() ? item.value().to(torch::kFloat16) : item.value()));
  }
}

TEST(Safetensors, WrittenFilesReadBackEqualAndAreByteStable) {
  const asl::test::TempDir dir("asl_safetensors_test");
  asl::io::StateDict sd;
  torch::manual_seed(4);
  sd.insert("z.weight", torch::randn({3, 4}).t());  // not contiguous
  sd.insert("a.half", torch::randn({5}).to(torch::kFloat16));
  sd.insert("m.bf16", torch::randn({2, 2}).to(torch::kBFloat16));
  sd.insert("d.f64", torch::randn({3}, torch::kFloat64));
  sd.insert("b.num_batches_tracked", torch::tensor(int64_t{12345}));
  sd.insert("c.i32", torch::arange(6, torch::kInt32).view({2, 3}));
  sd.insert("e.u8", torch::tensor({0, 7, 255}, torch::kUInt8));
  sd.insert("f.i8", torch::tensor({-128, 0, 127}, torch::kInt8));
  sd.insert("g.i16", torch::tensor({-300, 300}, torch::kInt16));
  sd.insert("h.bool", torch::tensor({true, false, true}));
  sd.insert("y.empty", torch::empty({0, 3}));
  const std::string a = (dir.path() / "a.safetensors").string(), b = (dir.path() / "b.safetensors").string();
  asl::io::save_safetensors(a, sd);
  asl::io::save_safetensors(b, sd);
  EXPECT_EQ(asl::io::read_file(a), asl::io::read_file(b));
  const std::string bytes = asl::io::read_file(a);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ(n % 8, 0u);
  const auto f = asl::io::load_safetensors(a);
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(f.tensors.size(), sd.size());
  // Data in name order.
  std::vector<std::string> names = sd.keys();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(f.tensors.keys(), names);
  for (const auto& item : sd) {
    SCOPED_TRACE(item.key());
    EXPECT_EQ(f.tensors[item.key()].scalar_type(), item.value().scalar_type());
    EXPECT_TRUE(torch::equal(f.tensors[item.key()], item.value()));
  }
  // What safetensors cannot hold is refused, with no file left.
  asl::io::StateDict complex;
  complex.insert("c", torch::zeros({2}, torch::kComplexFloat));
  const std::string c = (dir.path() / "c.safetensors").string();
  EXPECT_NE(asl::test::error_of([&] { asl::io::save_safetensors(c, complex); }).find("'c'"), std::string::npos);
  EXPECT_FALSE(fs::exists(c));
}

}  // namespace
