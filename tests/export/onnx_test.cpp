// asl export against ONNX Runtime (../shared/bench/ort_run.js, npm onnxruntime-node): every fixture model,
// fused and with BatchNormalization nodes, at batch 1 and at the fixture's batch, gives asl's logits and the
// fixtures' eval_logits within 1e-4 x max(1, |logit|); fixed batches, sigmoid output, metadata, refusals.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/export/onnx.h"
#include "asl/io/file.h"
#include "asl/io/npy.h"
#include "asl/models/pretrained.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

fs::path fixture(const std::string& sub) { return asl::test::fixtures_dir() / sub; }

std::string ort_modules() {
  const char* m = std::getenv("ASL_ORT_MODULES");
  if (m == nullptr || !fs::exists(fs::path(m) / "onnxruntime-node")) {
    throw std::runtime_error(std::string("onnxruntime-node not found in '") + (m ? m : "(ASL_ORT_MODULES unset)") +
                             "': run scripts/setup.sh");
  }
  return m;
}

// Runs `model` in ONNX Runtime on `input`, returns its output.
torch::Tensor ort_run(const fs::path& model, const torch::Tensor& input, const fs::path& dir) {
  const fs::path in = dir / "ort_in.npy", out = dir / "ort_out.npy", log = dir / "ort.log";
  asl::io::save_npy(in.string(), input.contiguous());
  const std::string cmd = "node " + (asl::test::fixtures_dir().parent_path() / "bench" / "ort_run.js").string() +
                          " run " + model.string() + " " + in.string() + " " + out.string() + " --threads 2 --modules " +
                          ort_modules() + " >" + log.string() + " 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    std::ifstream f(log);
    std::stringstream s;
    s << f.rdbuf();
    throw std::runtime_error("ort_run.js failed: " + s.str());
  }
  return asl::io::load_npy(out.string());
}

// |got - want| <= bound * max(1, |want|) everywhere: 1e-4 in float32 (the bound); in float16, 1e-2,
// about 20 float16 roundings (2^-11) of a logit after the ~20 layers of these models.
::testing::AssertionResult within_onnx_bound(const torch::Tensor& got, const torch::Tensor& want, double bound = 1e-4) {
  if (got.sizes() != want.sizes()) return ::testing::AssertionFailure() << got.sizes() << " vs " << want.sizes();
  const torch::Tensor g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  const torch::Tensor excess = (g - w).abs() - bound * w.abs().clamp_min(1.0);
  const double worst = excess.max().item<double>();
  if (worst <= 0 && !g.isnan().any().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |diff| " << (g - w).abs().max().item<double>() << " beyond the bound by "
                                       << worst;
}

std::map<std::string, std::string> metadata_of(const fs::path& file) {
  onnx::ModelProto m;
  const std::string bytes = asl::io::read_file(file.string());
  EXPECT_TRUE(m.ParseFromString(bytes));
  std::map<std::string, std::string> out;
  for (const auto& p : m.metadata_props()) out[p.key()] = p.value();
  return out;
}

struct Case {
  const char* weights;
  const char* input;
  const char* logits;
};

}  // namespace

TEST(OnnxExport, EveryFixtureModelRunsInOnnxRuntimeWithTheSameLogits) {
  asl::test::TempDir dir("asl_onnx");
  const Case cases[] = {
      {"tresnet/small.pth", "tresnet/small_input.npy", "tresnet/small_eval_logits.npy"},
      {"tresnet/small_bhead.pth", "tresnet/small_bhead_input.npy", "tresnet/small_bhead_eval_logits.npy"},
      {"timm/small_v1.safetensors", "timm/small_v1_input.npy", "timm/small_v1_eval_logits.npy"},
      {"timm/small_v2.safetensors", "timm/small_v2_input.npy", "timm/small_v2_eval_logits.npy"},
  };
  for (const auto& c : cases) {
    asl::models::ClassifierOptions co;
    co.fuse = false;
    asl::models::Classifier model = asl::models::load_classifier(fixture(c.weights).string(), co);
    const torch::Tensor x = asl::io::load_npy(fixture(c.input).string());
    const torch::Tensor want = asl::io::load_npy(fixture(c.logits).string());
    const torch::Tensor own = model.logits(x);
    for (const bool fuse : {true, false}) {
      SCOPED_TRACE(std::string(c.weights) + (fuse ? " fused" : " BatchNormalization"));
      const fs::path file = dir.path() / "model.onnx";
      const auto info = asl::exporter::export_onnx(
          model.model, model.class_names, file.string(),
          asl::exporter::OnnxExportOptions().image_size(x.size(2)).fuse(fuse).architecture(model.model_name));
      EXPECT_GT(info.nodes, 10);
      const torch::Tensor got = ort_run(file, x, dir.path());
      EXPECT_TRUE(within_onnx_bound(got, own));
      EXPECT_TRUE(within_onnx_bound(got, want));
      const torch::Tensor one = ort_run(file, x.slice(0, 1, 2), dir.path());
      EXPECT_TRUE(within_onnx_bound(one, want.slice(0, 1, 2)));
      // float16 weights and activations, float32 at the ends.
      asl::exporter::export_onnx(model.model, model.class_names, file.string(),
                                 asl::exporter::OnnxExportOptions().image_size(x.size(2)).fuse(fuse).float16(true));
      const torch::Tensor half = ort_run(file, x, dir.path());
      EXPECT_EQ(half.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(within_onnx_bound(half, want, 1e-2));
      EXPECT_FALSE(within_onnx_bound(half, want, 1e-7)) << "float16 computed like float32: not a float16 graph?";
    }
  }
}

TEST(OnnxExport, FixedBatchSigmoidAndMetadata) {
  asl::test::TempDir dir("asl_onnx");
  asl::models::ClassifierOptions co;
  co.fuse = false;
  asl::models::Classifier model = asl::models::load_classifier(fixture("tresnet/small.pth").string(), co);
  const torch::Tensor x = asl::io::load_npy(fixture("tresnet/small_input.npy").string());
  const fs::path file = dir.path() / "fixed.onnx";
  asl::exporter::export_onnx(model.model, model.class_names, file.string(),
                             asl::exporter::OnnxExportOptions().image_size(x.size(2)).batch(2).with_sigmoid(true).opset(13));
  const torch::Tensor scores = ort_run(file, x, dir.path());
  EXPECT_TRUE(asl::test::all_close(scores, torch::sigmoid(model.logits(x)), 1e-5, 1e-5));
  const auto meta = metadata_of(file);
  EXPECT_EQ(meta.at("image_size"), std::to_string(x.size(2)));
  EXPECT_EQ(meta.at("num_classes"), "21");
  EXPECT_EQ(nlohmann::json::parse(meta.at("class_names")).get<std::vector<std::string>>(), model.class_names);
  EXPECT_NE(meta.at("output").find("scores"), std::string::npos);
  EXPECT_NE(meta.at("preprocessing").find("1/255"), std::string::npos);
}

TEST(OnnxExport, TheCommandWritesMetadataAndRefusesWhatItCannotExport) {
  asl::test::TempDir dir("asl_onnx");
  const char* bin = std::getenv("ASL_BINARY_DIR");
  ASSERT_NE(bin, nullptr);
  const auto asl = [&](const std::string& args) {
    return std::system((std::string(bin) + "/asl " + args + " >" + (dir.path() / "out").string() + " 2>" +
                        (dir.path() / "err").string())
                           .c_str());
  };
  const auto err = [&] { return asl::io::read_file((dir.path() / "err").string()); };
  const fs::path ok = dir.path() / "bhead.onnx";
  ASSERT_EQ(asl("export " + fixture("tresnet/small_bhead.pth").string() + " " + ok.string() + " --image-size 224"), 0)
      << err();
  const auto meta = metadata_of(ok);
  EXPECT_EQ(meta.at("default_threshold"), "0.995");  // the Open Images head
  EXPECT_EQ(meta.at("layout"), "asl");
  const fs::path bad = dir.path() / "bad.onnx";
  EXPECT_NE(asl("export " + fixture("tresnet/small.pth").string() + " " + bad.string() + " --opset 12"), 0);
  EXPECT_NE(err().find("opset must be 13 to 17"), std::string::npos) << err();
  EXPECT_NE(asl("export " + fixture("tresnet/small.pth").string() + " " + bad.string() + " --image-size 100"), 0);
  EXPECT_NE(err().find("multiple of 32"), std::string::npos) << err();
  EXPECT_NE(asl("export " + fixture("checkpoint/mixed.pth").string() + " " + bad.string()), 0);
  EXPECT_NE(err().find("mixed.pth"), std::string::npos) << err();
  EXPECT_NE(asl("export " + fixture("tresnet/small.pth").string() + " " + bad.string() + " --batch 0"), 0);
  EXPECT_NE(err().find("--batch"), std::string::npos) << err();
  EXPECT_FALSE(fs::exists(bad));
}
