// The two weight layouts against fixtures/timm (timm 0.9.16's TResNet): every file loads and gives its
// eval logits, published <-> timm conversion is bit-exact where allowed and refused where not, full-size
// architectures produce timm's state-dict manifests, plain norms compute plain batch norm.
#include <gtest/gtest.h>

#include <caffe2/serialize/inline_container.h>

#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/io/file.h"
#include "asl/io/safetensors.h"
#include "asl/models/pretrained.h"
#include "asl/models/registry.h"
#include "asl/models/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;
using asl::models::Layout;

namespace {

fs::path timm(const std::string& name) { return asl::test::fixtures_dir() / "timm" / name; }

nlohmann::json cases() { return asl::test::load_json(timm("cases.json")); }

// True when both state dicts have the same keys in the same order and bit-identical tensors.
::testing::AssertionResult same_state(const asl::io::StateDict& a, const asl::io::StateDict& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << a.size() << " vs " << b.size() << " tensors";
  for (size_t i = 0; i < a.size(); ++i) {
    const auto& x = a[i];
    const auto& y = b[i];
    if (x.key() != y.key()) return ::testing::AssertionFailure() << "key " << i << ": " << x.key() << " vs " << y.key();
    if (x.value().scalar_type() != y.value().scalar_type() || !x.value().equal(y.value())) {
      return ::testing::AssertionFailure() << x.key() << " differs";
    }
  }
  return ::testing::AssertionSuccess();
}

void expect_logits(const std::string& file, bool use_ema, const std::string& input, const std::string& logits,
                   const nlohmann::json& tolerance) {
  const torch::Tensor x = asl::test::fixture_npy("timm", input);
  const torch::Tensor want = asl::test::fixture_npy("timm", logits);
  const double atol = tolerance.at("atol"), rtol = tolerance.at("rtol");
  for (const bool fuse : {false, true}) {
    SCOPED_TRACE(file + (use_ema ? " (EMA)" : "") + (fuse ? ", fused" : ", unfused"));
    asl::models::ClassifierOptions o;
    o.fuse = fuse;
    o.use_ema = use_ema;
    asl::models::Classifier c = asl::models::load_classifier(timm(file).string(), o);
    EXPECT_TRUE(asl::test::all_close(c.logits(x), want, atol, rtol));
  }
}

}  // namespace

TEST(Weights, EveryFixtureFileGivesItsEvalLogits) {
  int checked = 0;
  const nlohmann::json all = cases();
  for (const auto& [model, spec] : all.items()) {
    if (!spec.contains("timm_constructor")) continue;  // "manifests", "bad": not models
    for (const auto& [file, f] : spec.at("files").items()) {
      if (f.contains("weights")) {  // a timm training checkpoint: state_dict and state_dict_ema
        for (const auto& [which, w] : f.at("weights").items()) {
          expect_logits(file, which == "state_dict_ema", spec.at("input"), w.at("eval_logits"), w.at("tolerance"));
          ++checked;
        }
      } else {
        expect_logits(file, false, spec.at("input"), f.at("eval_logits"), f.at("tolerance"));
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 8);
}

TEST(Weights, FilesAreDescribed) {
  const auto train = asl::models::read_weights(timm("small_v2_train.pth.tar").string());
  EXPECT_EQ(train.layout, Layout::Timm);
  EXPECT_EQ(train.prefixed_keys, 116);
  EXPECT_TRUE(train.has_ema);
  EXPECT_EQ(train.arch, "tresnet_v2_l");
  EXPECT_NE(train.container.find("timm training checkpoint, state_dict"), std::string::npos) << train.container;
  EXPECT_TRUE(train.state.contains("body.layer1.0.downsample.0.conv.weight"));
  const auto ema = asl::models::read_weights(timm("small_v2_train.pth.tar").string(),
                                             asl::models::ReadWeightsOptions().use_ema(true));
  EXPECT_EQ(ema.prefixed_keys, 0);
  EXPECT_FALSE(ema.state["head.fc.bias"].equal(train.state["head.fc.bias"]));

  const auto st = asl::models::read_weights(timm("small_v2.safetensors").string());
  EXPECT_EQ(st.format, "safetensors");
  EXPECT_EQ(st.layout, Layout::Timm);
  const auto detected = asl::models::detect_weights(st);
  EXPECT_TRUE(detected.options.v2());
  EXPECT_TRUE(detected.options.plain_norms());
  EXPECT_EQ(asl::models::base_width(detected.options), 8);
  EXPECT_EQ(detected.options.layers(), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(detected.options.num_classes(), 7);

  const auto pub = asl::models::read_weights(timm("small_v1_pos_published.pth").string());
  EXPECT_EQ(pub.layout, Layout::Published);
  EXPECT_FALSE(asl::models::detect_weights(pub).options.plain_norms());
  EXPECT_EQ(pub.idx_to_class.at(0), "person");

  for (const char* file : {"small_v2.safetensors", "small_v1.pth"}) {
    const std::string path = timm(file).string();
    const std::string error = asl::test::error_of(
        [&] { asl::models::read_weights(path, asl::models::ReadWeightsOptions().use_ema(true)); });
    EXPECT_NE(error.find(path), std::string::npos) << error;
    EXPECT_NE(error.find("--use-ema"), std::string::npos) << error;
  }
}

TEST(Weights, TimmKeysOfTheFixtureExamples) {
  const nlohmann::json all = cases();
  for (const auto& pair : all.at("small_v1_pos").at("conversion").at("rename_examples_published_to_timm")) {
    EXPECT_EQ(asl::models::timm_key(pair[0]), pair[1].get<std::string>());
  }
  EXPECT_EQ(asl::models::timm_key("body.layer1.0.downsample.0.0.weight"), "body.layer1.0.downsample.0.conv.weight");
  EXPECT_EQ(asl::models::timm_key("body.layer2.0.downsample.1.1.running_var"), "body.layer2.0.downsample.1.bn.running_var");
  EXPECT_EQ(asl::models::timm_key("head.fc.embedding_generator.0.weight"), "head.fc.embedding_generator.0.weight");
}

TEST(Weights, PublishedAndTimmConvertBitExactlyBothWays) {
  const std::string pub_path = timm("small_v1_pos_published.pth").string();
  const std::string timm_path = timm("small_v1_pos.safetensors").string();
  const asl::models::Classifier from_pub = asl::models::load_classifier(pub_path, {"auto", false, false});
  const asl::models::Classifier from_timm = asl::models::load_classifier(timm_path, {"auto", false, false});
  EXPECT_FALSE(from_pub.options.plain_norms());
  EXPECT_TRUE(from_timm.options.plain_norms());

  // published -> timm: w = |w| + 1e-5, every other tensor as is; num_batches_tracked 0 (timm's loader's value).
  const asl::io::StateDict want_timm = asl::io::load_safetensors(timm_path).tensors;
  const asl::io::StateDict got_timm = asl::models::state_in_layout(from_pub.model, Layout::Timm);
  ASSERT_EQ(got_timm.size(), want_timm.size());
  for (const auto& item : want_timm) {
    SCOPED_TRACE(item.key());
    ASSERT_TRUE(got_timm.contains(item.key()));
    const torch::Tensor& got = got_timm[item.key()];
    if (item.key().find("num_batches_tracked") != std::string::npos) {
      EXPECT_EQ(got.scalar_type(), torch::kLong);
      EXPECT_EQ(got.item<int64_t>(), 0);
    } else {
      EXPECT_TRUE(got.equal(item.value()));
    }
  }
  // timm -> published: w - 1e-5, keys in the reference model's order.
  const asl::io::StateDict want_pub = asl::io::load_checkpoint(pub_path).model;
  EXPECT_TRUE(same_state(asl::models::state_in_layout(from_timm.model, Layout::Published), want_pub));
  // And the timm-loaded model written back in its own layout is the file (counters included).
  const asl::io::StateDict own = asl::models::state_in_layout(from_timm.model, Layout::Timm);
  ASSERT_EQ(own.size(), want_timm.size());
  for (const auto& item : want_timm) EXPECT_TRUE(own[item.key()].equal(item.value())) << item.key();
}

TEST(Weights, PlainNormsWithoutAnInPlaceAbnEquivalentAreRefused) {
  const asl::models::Classifier v1 =
      asl::models::load_classifier(timm("small_v1.safetensors").string(), {"auto", false, false});
  const std::string error = asl::test::error_of([&] { asl::models::state_in_layout(v1.model, Layout::Published); });
  EXPECT_NE(error.find("body.conv1.bn.weight"), std::string::npos) << error;
  EXPECT_NE(error.find("below eps"), std::string::npos) << error;
  const asl::models::Classifier v2 =
      asl::models::load_classifier(timm("small_v2.safetensors").string(), {"auto", false, false});
  EXPECT_NE(asl::test::error_of([&] { asl::models::state_in_layout(v2.model, Layout::Published); }).find("TResNet-v2"),
            std::string::npos);
  // Loading timm weights into an InPlaceABN model needs every weight >= eps too.
  asl::models::TResNet abs_model(asl::models::detect_weights(asl::models::read_weights(timm("small_v1.pth").string()))
                                     .options.plain_norms(false));
  const auto state = asl::models::read_weights(timm("small_v1.pth").string()).state;
  EXPECT_NE(asl::test::error_of([&] { asl::models::state_for_model(state, Layout::Timm, abs_model, "small_v1.pth"); })
                .find("cannot represent"),
            std::string::npos);
}

TEST(Weights, SafetensorsWrittenByAslReadBackAndAreStable) {
  asl::test::TempDir dir;
  const asl::models::Classifier c = asl::models::load_classifier(timm("small_v2_train.pth.tar").string(), {"auto", false, false});
  std::map<int64_t, std::string> names;
  for (int64_t i = 0; i < 7; ++i) names[i] = "name " + std::to_string(i) + " \"quoted\"";
  const auto o = asl::models::SaveWeightsOptions()
                     .layout(Layout::Timm)
                     .format(asl::models::WeightsFormat::Safetensors)
                     .arch("tresnet_v2_l");
  const std::string a = (dir.path() / "a.safetensors").string(), b = (dir.path() / "b.safetensors").string();
  asl::models::save_model(a, c.model, names, o);
  asl::models::save_model(b, c.model, names, o);
  EXPECT_EQ(asl::io::read_file(a), asl::io::read_file(b));
  const auto back = asl::models::read_weights(a);
  EXPECT_EQ(back.idx_to_class, names);
  EXPECT_EQ(back.num_classes, 7);
  EXPECT_EQ(back.arch, "tresnet_v2_l");
  const auto want = asl::models::read_weights(timm("small_v2.safetensors").string()).state;
  ASSERT_EQ(back.state.size(), want.size());
  for (const auto& item : want) EXPECT_TRUE(back.state[item.key()].equal(item.value())) << item.key();
  // The .pth form carries the same tensors and class names.
  const std::string p = (dir.path() / "c.pth").string();
  asl::models::save_model(p, c.model, names, asl::models::SaveWeightsOptions().layout(Layout::Timm));
  const auto pth = asl::models::read_weights(p);
  EXPECT_EQ(pth.layout, Layout::Timm);
  EXPECT_EQ(pth.idx_to_class, names);
  for (const auto& item : want) EXPECT_TRUE(pth.state[item.key()].equal(item.value())) << item.key();
}

TEST(Weights, FullSizeArchitecturesMatchTimmManifests) {
  for (const char* name : {"tresnet_m", "tresnet_l", "tresnet_v2_l"}) {
    SCOPED_TRACE(name);
    const nlohmann::json m = asl::test::load_json(timm(std::string("manifest_") + name + ".json"));
    torch::NoGradGuard guard;
    const asl::models::TResNet model = asl::models::create_model(name, m.at("num_classes").get<int64_t>());
    EXPECT_EQ(model->options.v2(), m.at("v2").get<bool>());
    const asl::io::StateDict sd = asl::models::state_in_layout(model, Layout::Timm);
    const auto& want = m.at("state_dict");
    ASSERT_EQ(sd.size(), want.size());
    for (const auto& entry : want) {
      const std::string key = entry[0];
      ASSERT_TRUE(sd.contains(key)) << key;
      EXPECT_EQ(sd[key].sizes().vec(), entry[1].get<std::vector<int64_t>>()) << key;
      EXPECT_EQ(sd[key].scalar_type(), entry[2] == "int64" ? torch::kLong : torch::kFloat32) << key;
    }
    // The detected architecture of timm's keys is the registered one.
    EXPECT_EQ(asl::models::detect_model(sd).name, name);
  }
}

TEST(Weights, PlainNormIsBatchNormWithSignedWeights) {
  auto o = asl::nn::ActivatedBatchNormOptions(3).abs_weight(false).activation(asl::nn::Activation::Identity);
  asl::nn::ActivatedBatchNorm norm(o);
  torch::NoGradGuard guard;
  norm->weight.copy_(torch::tensor({-2.0f, 0.5f, 0.0f}));
  norm->bias.copy_(torch::tensor({0.25f, -1.0f, 3.0f}));
  norm->running_mean.copy_(torch::tensor({1.0f, -2.0f, 0.5f}));
  norm->running_var.copy_(torch::tensor({4.0f, 0.25f, 2.0f}));
  norm->eval();
  const torch::Tensor x = torch::randn({2, 3, 4, 4}, torch::kFloat64);
  const torch::Tensor got = norm->forward(x.to(torch::kFloat32));
  const auto c = [](const torch::Tensor& t) { return t.to(torch::kFloat64).view({1, 3, 1, 1}); };
  const torch::Tensor want =
      c(norm->weight) * (x - c(norm->running_mean)) / (c(norm->running_var) + 1e-5).sqrt() + c(norm->bias);
  EXPECT_TRUE(asl::test::all_close(got, want, 1e-5, 1e-5));
  // Training counts batches as BatchNorm2d does.
  norm->train();
  norm->forward(x.to(torch::kFloat32));
  norm->forward(x.to(torch::kFloat32));
  EXPECT_EQ(norm->num_batches_tracked.item<int64_t>(), 2);
}

TEST(Weights, HostilePickleInATrainingCheckpointIsRefused) {
  asl::test::TempDir dir;
  const std::string path = (dir.path() / "evil.pth.tar").string();
  // {"args": posix.system("id")}: a training checkpoint whose "args" runs a command when unpickled.
  const std::string pkl = std::string("\x80\x02}q\x00X\x04\x00\x00\x00", 10) + "argsq\x01" + "cposix\nsystem\nq\x02" +
                          std::string("X\x02\x00\x00\x00", 5) + "idq\x03\x85q\x04Rq\x05s.";
  {
    caffe2::serialize::PyTorchStreamWriter writer(path);
    writer.writeRecord("data.pkl", pkl.data(), pkl.size());
    writer.writeEndOfFile();
  }
  const std::string error = asl::test::error_of([&] { asl::models::read_weights(path); });
  EXPECT_NE(error.find("posix.system"), std::string::npos) << error;
  EXPECT_NE(error.find(path), std::string::npos) << error;
}

TEST(Weights, ClassNamesFile) {
  asl::test::TempDir dir;
  const auto ok = dir.write("names.txt", "person\r\nbicycle\ncar\n");
  EXPECT_EQ(asl::models::read_class_names(ok.string(), 3), (std::vector<std::string>{"person", "bicycle", "car"}));
  const std::string count = asl::test::error_of([&] { asl::models::read_class_names(ok.string(), 4); });
  EXPECT_NE(count.find("has 3 class names, the model has 4"), std::string::npos) << count;
  const auto gap = dir.write("gap.txt", "a\n\nb\n");
  EXPECT_NE(asl::test::error_of([&] { asl::models::read_class_names(gap.string()); }).find("line 2 is empty"),
            std::string::npos);
  EXPECT_NE(asl::test::error_of([&] { asl::models::read_class_names((dir.path() / "none.txt").string()); })
                .find("cannot open"),
            std::string::npos);
}
