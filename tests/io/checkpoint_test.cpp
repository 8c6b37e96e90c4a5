// Checkpoint reading and writing: fixtures from torch.save (zip and legacy), round trips through
// C++ and through Python's torch.load, hostile and damaged files, and state-dict loading.
// Values are compared exactly: a checkpoint stores bits, and every dtype in the fixtures
// (float16/bfloat16 included) converts to float64 without rounding.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <c10/core/CPUAllocator.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/io/file.h"
#include "asl/io/pickle.h"
#include "test_util.h"

namespace fs = std::filesystem;
using asl::io::PyValue;

// LibTorch 1.13's PyTorchStreamReader leaks its miniz state (~1 KB) when its constructor throws on a
// corrupt archive; that leak is not ours, so LeakSanitizer (ASL_SANITIZE builds) skips it.
extern "C" const char* __lsan_default_suppressions() { return "leak:libtorch_cpu.so\n"; }

namespace {

fs::path checkpoint_fixture(const std::string& name) { return asl::test::fixtures_dir() / "checkpoint" / name; }
fs::path tresnet_fixture(const std::string& name) { return asl::test::fixtures_dir() / "tresnet" / name; }

/// A scratch folder for this test binary, removed at exit of the test.
class ScratchDir {
 public:
  ScratchDir() {
    path_ = fs::temp_directory_path() / ("asl_ckpt_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

std::string bytes_from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

const PyValue& item_at(const PyValue& dict, const std::string& key) {
  const PyValue* v = dict.as_dict().find(key);
  if (v == nullptr) throw std::runtime_error("key '" + key + "' not found");
  return *v;
}

/// Checks every field of mixed.pth / mixed_legacy.pth against mixed_expected.json.
void check_mixed(const asl::io::LoadedCheckpoint& ck) {
  // ordered_json: the file lists the tensors in the checkpoint's order.
  std::ifstream in(checkpoint_fixture("mixed_expected.json"));
  ASSERT_TRUE(in.good());
  const nlohmann::ordered_json expected = nlohmann::ordered_json::parse(in);
  const auto& tensors = expected["tensors"];
  ASSERT_EQ(ck.model.size(), tensors.size());
  size_t index = 0;
  for (const auto& [name, spec] : tensors.items()) {
    SCOPED_TRACE(name);
    // Order is preserved: the OrderedDict's order is the fixture's.
    EXPECT_EQ(ck.model.keys()[index++], name);
    const torch::Tensor* t = ck.model.find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(asl::io::dtype_name(t->scalar_type()), spec["dtype"].get<std::string>());
    EXPECT_EQ(t->sizes().vec(), spec["shape"].get<std::vector<int64_t>>());
    std::vector<double> values;
    for (const auto& v : spec["values"]) values.push_back(v.is_boolean() ? (v.get<bool>() ? 1.0 : 0.0) : v.get<double>());
    const torch::Tensor want = torch::tensor(values, torch::kFloat64).reshape(spec["shape"].get<std::vector<int64_t>>());
    EXPECT_TRUE(torch::equal(t->to(torch::kFloat64), want)) << *t;
  }
  // Views share one storage and keep their offsets and strides (as torch.load reports them).
  const torch::Tensor& tr = ck.model["transposed"];
  const torch::Tensor& row = ck.model["row_view"];
  const torch::Tensor& nar = ck.model["narrow_view"];
  EXPECT_TRUE(tr.storage().is_alias_of(row.storage()));
  EXPECT_TRUE(tr.storage().is_alias_of(nar.storage()));
  EXPECT_EQ(tr.storage().nbytes(), 30u * 4u);
  EXPECT_EQ(tr.strides().vec(), (std::vector<int64_t>{1, 5}));
  EXPECT_EQ(tr.storage_offset(), 0);
  EXPECT_EQ(row.strides().vec(), (std::vector<int64_t>{1}));
  EXPECT_EQ(row.storage_offset(), 10);
  EXPECT_EQ(nar.strides().vec(), (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(nar.storage_offset(), 6);
  EXPECT_FALSE(tr.storage().is_alias_of(ck.model["fp32"].storage()));

  ASSERT_TRUE(ck.num_classes.has_value());
  EXPECT_EQ(*ck.num_classes, expected["num_classes"].get<int64_t>());
  ASSERT_EQ(ck.idx_to_class.size(), expected["idx_to_class"].size());
  for (const auto& [k, v] : expected["idx_to_class"].items()) {
    EXPECT_EQ(ck.idx_to_class.at(std::stoll(k)), v.get<std::string>());
  }
  const PyValue& root = ck.root;
  EXPECT_TRUE(item_at(root, "model").as_dict().ordered);
  EXPECT_FALSE(root.as_dict().ordered);
  EXPECT_EQ(item_at(root, "epoch").as_int(), expected["epoch"].get<int64_t>());
  EXPECT_EQ(item_at(root, "epoch").kind(), PyValue::Kind::Int);
  EXPECT_EQ(item_at(root, "lr").as_float(), expected["lr"].get<double>());
  EXPECT_EQ(item_at(root, "lr").kind(), PyValue::Kind::Float);
  EXPECT_EQ(item_at(root, "flag").as_bool(), expected["flag"].get<bool>());
  EXPECT_TRUE(item_at(root, "nothing").is_none());
  const PyValue& tup = item_at(root, "tuple");
  ASSERT_TRUE(tup.is_tuple());
  ASSERT_EQ(tup.items().size(), 3u);
  EXPECT_EQ(tup.items()[0].as_int(), 1);
  EXPECT_EQ(tup.items()[1].as_str(), "x");
  EXPECT_EQ(tup.items()[2].as_float(), 2.5);
  const PyValue& list = item_at(root, "list");
  ASSERT_TRUE(list.is_list());
  ASSERT_EQ(list.items().size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(list.items()[i].as_int(), i + 1);
  const PyValue& k = item_at(item_at(root, "nested"), "k");
  ASSERT_TRUE(k.is_list());
  ASSERT_EQ(k.items().size(), 2u);
  EXPECT_TRUE(torch::equal(k.items()[0].as_tensor(), torch::ones({2})));
  EXPECT_TRUE(torch::equal(item_at(k.items()[1], "deep").as_tensor(), torch::full({1}, 2.0f)));
  EXPECT_EQ(item_at(root, "idx_to_class").as_dict().find(2)->as_str(), "\xc3\xbc");  // 'ü', UTF-8
}

/// Writes `bytes` as a zip checkpoint whose data.pkl is `pickle`.
void write_zip_with_pickle(const fs::path& path, const std::string& pickle) {
  caffe2::serialize::PyTorchStreamWriter writer(path.string());
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeEndOfFile();
}

/// Loads `path`; a failure must be a std::runtime_error. Touches every tensor of a successful load.
void load_must_not_crash(const fs::path& path) {
  try {
    const asl::io::LoadedCheckpoint ck = asl::io::load_checkpoint(path.string());
    for (const auto& item : ck.model) {
      if (item.value().numel() > 0) (void)item.value().to(torch::kFloat64).sum().item<double>();
    }
    (void)ck.root.repr(1000);
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": unexpected exception type: " << e.what();
  }
}

}  // namespace

// ---- fixtures from torch.save --------------------------------------------------------------

TEST(CheckpointRead, MixedZip) {
  const auto ck = asl::io::load_checkpoint(checkpoint_fixture("mixed.pth").string());
  EXPECT_EQ(ck.format, "zip");
  check_mixed(ck);
}

TEST(CheckpointRead, MixedLegacy) {
  const auto ck = asl::io::load_checkpoint(checkpoint_fixture("mixed_legacy.pth").string());
  EXPECT_EQ(ck.format, "legacy");
  check_mixed(ck);
}

TEST(CheckpointRead, ZipAndLegacyTreesAreEqual) {
  const PyValue zip = asl::io::load(checkpoint_fixture("mixed.pth").string());
  const PyValue legacy = asl::io::load(checkpoint_fixture("mixed_legacy.pth").string());
  EXPECT_TRUE(zip.equals(legacy));
}

TEST(CheckpointRead, TresnetSmallZipEqualsLegacy) {
  const auto zip = asl::io::load_checkpoint(tresnet_fixture("small.pth").string());
  const auto legacy = asl::io::load_checkpoint(tresnet_fixture("small_legacy.pth").string());
  EXPECT_EQ(zip.format, "zip");
  EXPECT_EQ(legacy.format, "legacy");
  ASSERT_GT(zip.model.size(), 100u);
  ASSERT_EQ(zip.model.keys(), legacy.model.keys());
  for (const auto& item : zip.model) {
    EXPECT_TRUE(torch::equal(item.value(), legacy.model[item.key()])) << item.key();
  }
  EXPECT_EQ(zip.model.keys().front(), "body.conv1.0.weight");
  ASSERT_TRUE(zip.num_classes.has_value());
  EXPECT_EQ(zip.num_classes, legacy.num_classes);
  EXPECT_EQ(static_cast<int64_t>(zip.idx_to_class.size()), *zip.num_classes);
  EXPECT_EQ(zip.idx_to_class, legacy.idx_to_class);
  EXPECT_TRUE(zip.root.equals(legacy.root));
  // Every key and shape of the manifest-free small model is consistent with cases.json's class count.
  const nlohmann::json cases = asl::test::load_json(tresnet_fixture("cases.json"));
  (void)cases;
  EXPECT_EQ(zip.model["head.fc.weight"].size(0), *zip.num_classes);
}

TEST(CheckpointRead, TresnetBottleneckHead) {
  const auto ck = asl::io::load_checkpoint(tresnet_fixture("small_bhead.pth").string());
  EXPECT_TRUE(ck.model.contains("head.fc.embedding_generator.0.weight"));
  EXPECT_TRUE(ck.num_classes.has_value());
}

// ---- pickle details -------------------------------------------------------------------------

TEST(Unpickle, ProtocolsZeroTwoFourAgree) {
  // pickle.dumps({'a': [1, 2**70, -3.5, b'xy', None, True, ('t',)], 'b': 'ü', 'c': -2**63,
  //               'd': 2**63-1, 'e': -129}, protocol=P) for P = 0, 2, 4 (Python 3.11).
  const std::string p0 = bytes_from_hex(
      "286470300a56610a70310a286c70320a49310a614c313138303539313632303731373431313330333432344c0a61462d332e350a61635f"
      "636f646563730a656e636f64650a70330a285678790a70340a566c6174696e310a70350a7470360a5270370a614e614930310a612856"
      "740a70380a7470390a617356620a7031300a56fc0a7031310a7356630a7031320a4c2d393232333337323033363835343737353830384c"
      "0a7356640a7031330a4c393232333337323033363835343737353830374c0a7356650a7031340a492d3132390a732e");
  const std::string p2 = bytes_from_hex(
      "80027d71002858010000006171015d7102284b018a0900000000000000004047c00c000000000000635f636f646563730a656e636f64"
      "650a710358020000007879710458060000006c6174696e3171058671065271074e88580100000074710885710965580100000062710a"
      "5802000000c3bc710b580100000063710c8a080000000000000080580100000064710d8a08ffffffffffffff7f580100000065710e4a"
      "7fffffff752e");
  const std::string p4 = bytes_from_hex(
      "8004955e000000000000007d94288c0161945d94284b018a0900000000000000004047c00c00000000000043027879944e888c017494"
      "8594658c0162948c02c3bc948c0163948a0800000000000000808c0164948a08ffffffffffffff7f8c0165944a7fffffff752e");
  const PyValue v2 = asl::io::unpickle(p2);
  const PyValue& a = item_at(v2, "a");
  ASSERT_EQ(a.items().size(), 7u);
  EXPECT_EQ(a.items()[0].as_int(), 1);
  EXPECT_EQ(a.items()[1].kind(), PyValue::Kind::BigInt);
  EXPECT_EQ(a.items()[1].as_big_integer(), std::string("\0\0\0\0\0\0\0\0\x40", 9));
  EXPECT_EQ(a.items()[2].as_float(), -3.5);
  EXPECT_EQ(a.items()[3].as_bytes(), "xy");
  EXPECT_TRUE(a.items()[4].is_none());
  EXPECT_TRUE(a.items()[5].as_bool());
  EXPECT_EQ(a.items()[6].items()[0].as_str(), "t");
  EXPECT_EQ(item_at(v2, "b").as_str(), "\xc3\xbc");
  EXPECT_EQ(item_at(v2, "c").as_int(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(item_at(v2, "d").as_int(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(item_at(v2, "e").as_int(), -129);
  EXPECT_TRUE(asl::io::unpickle(p0).equals(v2)) << asl::io::unpickle(p0).repr();
  EXPECT_TRUE(asl::io::unpickle(p4).equals(v2)) << asl::io::unpickle(p4).repr();
  // Our pickler's output reads back the same.
  EXPECT_TRUE(asl::io::unpickle(asl::io::pickle(v2)).equals(v2));
}

TEST(Unpickle, NumpyScalarsBecomePlainNumbers) {
  // pickle.dumps({'acc': np.float64(0.5), 'n': np.int64(-7), 'b': np.bool_(True), 'f': np.float32(1.5),
  //               'u': np.uint8(200)}, protocol=2), NumPy 1.24.
  const PyValue v = asl::io::unpickle(bytes_from_hex(
        "80027d71002858030000006163637101636e756d70792e636f72652e6d756c746961727261790a7363616c61720a7102636e756d7079"
      "0a64747970650a71035802000000663871048988877105527106284b0358010000003c71074e4e4e4affffffff4affffffff4b007471"
      "0862635f636f646563730a656e636f64650a71095809000000000000000000c3a03f710a58060000006c6174696e31710b86710c5271"
      "0d86710e52710f58010000006e7110680268035802000000693871118988877112527113284b0368074e4e4e4affffffff4affffffff"
      "4b007471146268095810000000c3b9c3bfc3bfc3bfc3bfc3bfc3bfc3bf7115680b867116527117867118527119580100000062711a68"
      "02680358020000006231711b898887711c52711d284b0358010000007c711e4e4e4e4affffffff4affffffff4b0074711f6268095801"
      "000000017120680b8671215271228671235271245801000000667125680268035802000000663471268988877127527128284b036807"
      "4e4e4e4affffffff4affffffff4b0074712962680958050000000000c3803f712a680b86712b52712c86712d52712e58010000007571"
      "2f680268035802000000753171308988877131527132284b03681e4e4e4e4affffffff4affffffff4b007471336268095802000000c3"
      "887134680b867135527136867137527138752e"));
  EXPECT_EQ(item_at(v, "acc").as_float(), 0.5);
  EXPECT_EQ(item_at(v, "n").as_int(), -7);
  EXPECT_TRUE(item_at(v, "b").as_bool());
  EXPECT_EQ(item_at(v, "f").as_float(), 1.5);
  EXPECT_EQ(item_at(v, "u").as_int(), 200);
}

TEST(Unpickle, ForbiddenGlobalIsRefusedWithItsName) {
  // cos\nsystem\n ('echo pwned',) REDUCE: what a malicious "checkpoint" does.
  const std::string evil = std::string("\x80\x02") + "cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
  try {
    asl::io::unpickle(evil);
    FAIL() << "os.system accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("os.system"), std::string::npos) << e.what();
  }
  // STACK_GLOBAL spelling, inside a zip checkpoint.
  const std::string evil4("\x80\x04\x8c\x08" "builtins" "\x8c\x04" "eval" "\x93\x8c\x03" "1+1" "\x85" "R.");
  ScratchDir dir;
  write_zip_with_pickle(dir / "evil.pth", evil4);
  try {
    asl::io::load_checkpoint((dir / "evil.pth").string());
    FAIL() << "builtins.eval accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("builtins.eval"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("evil.pth"), std::string::npos) << e.what();
  }
}

TEST(Unpickle, RecursiveAndDeepStructuresAreRefused) {
  // l = []; l.append(l); pickle.dumps(l, protocol=2)
  EXPECT_THROW(asl::io::unpickle(bytes_from_hex("80025d71006800612e")), std::runtime_error);
  std::string deep = "\x80\x02";
  for (int i = 0; i < 5000; ++i) deep += ']';
  for (int i = 0; i < 4999; ++i) deep += 'a';
  deep += '.';
  EXPECT_THROW(asl::io::unpickle(deep), std::runtime_error);
  std::string ok = "\x80\x02";
  for (int i = 0; i < 500; ++i) ok += ']';
  for (int i = 0; i < 499; ++i) ok += 'a';
  ok += '.';
  EXPECT_TRUE(asl::io::unpickle(ok).is_list());
}

TEST(Unpickle, OversizedLengthsFailBeforeAllocating) {
  // BINUNICODE8 claiming 2^62 bytes, BINBYTES claiming 4 GiB - 1.
  EXPECT_THROW(asl::io::unpickle(std::string("\x80\x04\x8d\0\0\0\0\0\0\0\x40.", 12)), std::runtime_error);
  EXPECT_THROW(asl::io::unpickle(std::string("\x80\x03\x42\xff\xff\xff\xff.", 8)), std::runtime_error);
  EXPECT_THROW(asl::io::unpickle(std::string("\x80\x02h\x05.", 5)), std::runtime_error);  // memo never stored
  EXPECT_THROW(asl::io::unpickle(std::string("\x80\x02.", 3)), std::runtime_error);       // empty stack
  EXPECT_THROW(asl::io::unpickle(std::string("\x80\x02N", 3)), std::runtime_error);       // no STOP
}

TEST(Unpickle, TensorViewOutsideItsStorageIsRefused) {
  // A 4-element storage and a 2x3 view of it.
  asl::io::PyStorage st;
  st.storage = c10::Storage(c10::Storage::use_byte_size_t(), 16, c10::GetCPUAllocator(), false);
  st.dtype = torch::kFloat;
  st.numel = 4;
  st.key = "0";
  const PyValue storage = PyValue::storage(st);
  const std::string pkl = std::string("\x80\x02") + "ctorch._utils\n_rebuild_tensor_v2\n(" + "X\x01\x00\x00\x00" "0" +
                          "Q" + "K\x00" + "K\x02K\x03\x86" + "K\x03K\x01\x86" + "\x89" + "ccollections\nOrderedDict\n)R" +
                          "tR.";
  asl::io::UnpickleOptions options;
  options.persistent_load([&](const PyValue&) { return storage; });
  try {
    asl::io::unpickle(pkl, options);
    FAIL() << "out-of-bounds view accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("past the end"), std::string::npos) << e.what();
  }
}

// ---- writing -----------------------------------------------------------------------------------

TEST(CheckpointWrite, RoundTripThroughCpp) {
  ScratchDir dir;
  for (const char* fixture : {"mixed.pth", "mixed_legacy.pth"}) {
    SCOPED_TRACE(fixture);
    const PyValue original = asl::io::load(checkpoint_fixture(fixture).string());
    const fs::path out = dir / "round_trip.pth";
    asl::io::save(out.string(), original);
    const auto again = asl::io::load_checkpoint(out.string());
    EXPECT_EQ(again.format, "zip");
    EXPECT_TRUE(again.root.equals(original));
    check_mixed(again);
    // No temporary file is left behind.
    size_t files = 0;
    for (const auto& e : fs::directory_iterator(dir / "")) files += e.is_regular_file();
    EXPECT_EQ(files, 1u);
  }
}

TEST(CheckpointWrite, SaveCheckpointLayout) {
  ScratchDir dir;
  asl::io::StateDict model;
  const torch::Tensor w = torch::arange(12, torch::kFloat32).reshape({3, 4}) / 8;
  model.insert("w", w);
  model.insert("b", torch::tensor({1, -2, 3}, torch::kInt64));
  model.insert("h", torch::tensor({0.5, -1.25}, torch::kFloat16));
  model.insert("wt", w.t());
  const std::map<int64_t, std::string> classes = {{0, "cat"}, {1, "dog"}, {2, "zebra \xc3\xbc"}};
  const fs::path out = dir / "ck.pth";
  asl::io::save_checkpoint(out.string(), model, 3, classes);
  const auto ck = asl::io::load_checkpoint(out.string());
  EXPECT_EQ(ck.model.keys(), model.keys());
  for (const auto& item : model) EXPECT_TRUE(torch::equal(ck.model[item.key()], item.value())) << item.key();
  EXPECT_TRUE(ck.model["wt"].storage().is_alias_of(ck.model["w"].storage()));
  EXPECT_EQ(ck.num_classes, 3);
  EXPECT_EQ(ck.idx_to_class, classes);

  // Python's torch.load reads it, with the same values and storage sharing.
  const fs::path script = fs::path(__FILE__).parent_path() / "check_torch_load.py";
  const std::string cmd = "/usr/bin/python3 '" + script.string() + "' checkpoint '" + out.string() + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST(CheckpointWrite, PythonTorchLoadReadsWhatWeWrite) {
  ScratchDir dir;
  const fs::path script = fs::path(__FILE__).parent_path() / "check_torch_load.py";
  for (const char* fixture : {"mixed.pth", "mixed_legacy.pth"}) {
    SCOPED_TRACE(fixture);
    const fs::path out = dir / "ours.pth";
    asl::io::save(out.string(), asl::io::load(checkpoint_fixture(fixture).string()));
    const std::string cmd = "/usr/bin/python3 '" + script.string() + "' same '" + out.string() + "' '" +
                            checkpoint_fixture("mixed.pth").string() + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
}

TEST(CheckpointWrite, StateDictLocations) {
  ScratchDir dir;
  asl::io::StateDict sd;
  sd.insert("a.weight", torch::randn({2, 2}));
  // {"state_dict": ...}
  PyValue root = PyValue::dict();
  root.as_dict().set(PyValue::str("state_dict"), asl::io::state_dict_value(sd));
  root.as_dict().set(PyValue::str("epoch"), PyValue::integer(3));
  asl::io::save((dir / "a.pth").string(), root);
  auto ck = asl::io::load_checkpoint((dir / "a.pth").string());
  EXPECT_EQ(ck.model.keys(), sd.keys());
  EXPECT_FALSE(ck.num_classes.has_value());
  // A bare state dict.
  asl::io::save((dir / "b.pth").string(), asl::io::state_dict_value(sd));
  ck = asl::io::load_checkpoint((dir / "b.pth").string());
  EXPECT_EQ(ck.model.keys(), sd.keys());
  EXPECT_TRUE(torch::equal(ck.model["a.weight"], sd["a.weight"]));
}

TEST(CheckpointWrite, FailedSaveLeavesNoFile) {
  PyValue bad = PyValue::dict();
  bad.as_dict().set(PyValue::str("c"), PyValue::tensor(torch::zeros({2}, torch::kComplexFloat)));
  ScratchDir dir;
  EXPECT_THROW(asl::io::save((dir / "x.pth").string(), bad), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir / "x.pth"));
  EXPECT_THROW(asl::io::save("/nonexistent-dir/x.pth", PyValue::integer(1)), std::runtime_error);
}

// ---- damaged files ---------------------------------------------------------------------------

/// Every fixture checkpoint, both formats.
std::vector<fs::path> damage_sources() {
  return {checkpoint_fixture("mixed.pth"), checkpoint_fixture("mixed_legacy.pth"), tresnet_fixture("small.pth"),
          tresnet_fixture("small_legacy.pth")};
}

TEST(CheckpointRobustness, TruncatedFilesFailCleanly) {
  ScratchDir dir;
  for (const fs::path& src : damage_sources()) {
    const std::string bytes = asl::io::read_file(src.string());
    for (int i = 0; i < 200; ++i) {
      const size_t cut = bytes.size() * static_cast<size_t>(i) / 200;
      const fs::path out = dir / ("cut_" + std::to_string(i) + ".pth");
      asl::io::write_file_atomic(out.string(), bytes.substr(0, cut));
      SCOPED_TRACE(src.filename().string() + " cut at " + std::to_string(cut));
      load_must_not_crash(out);
      // A strictly shorter file can never load completely.
      EXPECT_THROW(asl::io::load(out.string()), std::runtime_error);
      fs::remove(out);
    }
  }
}

TEST(CheckpointRobustness, ByteFlipsFailCleanlyOrLoad) {
  ScratchDir dir;
  std::mt19937_64 rng(20240611);
  for (const fs::path& src : damage_sources()) {
    const std::string bytes = asl::io::read_file(src.string());
    for (int i = 0; i < 200; ++i) {
      std::string damaged = bytes;
      const size_t pos = rng() % damaged.size();
      damaged[pos] = static_cast<char>(damaged[pos] ^ static_cast<char>(1 + rng() % 255));
      const fs::path out = dir / ("flip_" + std::to_string(i) + ".pth");
      asl::io::write_file_atomic(out.string(), damaged);
      SCOPED_TRACE(src.filename().string() + " byte " + std::to_string(pos));
      load_must_not_crash(out);
      fs::remove(out);
    }
  }
}

TEST(CheckpointRead, AnyArchiveFolderNameAndDeflatedRecords) {
  // Python's zipfile rewrites mixed.pth with another folder name and compressed records.
  ScratchDir dir;
  const fs::path out = dir / "renamed.pth";
  const std::string cmd =
      "/usr/bin/python3 -c \"import sys, zipfile; s = zipfile.ZipFile(sys.argv[1]); "
      "d = zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED); "
      "[d.writestr('some_other_name/' + n.split('/', 1)[1], s.read(n)) for n in s.namelist()]; d.close()\" '" +
      checkpoint_fixture("mixed.pth").string() + "' '" + out.string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto ck = asl::io::load_checkpoint(out.string());
  EXPECT_EQ(ck.format, "zip");
  check_mixed(ck);
}

TEST(CheckpointRobustness, FuzzerRegressions) {
  // Inputs found by fuzz/fuzz_checkpoint: each must fail with a clean error or load.
  const fs::path dir = fs::path(__FILE__).parent_path() / "regressions";
  size_t count = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    SCOPED_TRACE(entry.path().string());
    load_must_not_crash(entry.path());
    ++count;
  }
  EXPECT_GT(count, 0u);
}

TEST(CheckpointRobustness, NotACheckpoint) {
  ScratchDir dir;
  asl::io::write_file_atomic((dir / "text.pth").string(), "hello world");
  try {
    asl::io::load_checkpoint((dir / "text.pth").string());
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not a PyTorch checkpoint"), std::string::npos) << e.what();
  }
  EXPECT_THROW(asl::io::load_checkpoint((dir / "missing.pth").string()), std::runtime_error);
}

// ---- state dicts -------------------------------------------------------------------------------

namespace {

torch::nn::Sequential small_net(int64_t out = 2) {
  return torch::nn::Sequential(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4), torch::nn::Linear(4, out));
}

}  // namespace

TEST(StateDict, ModuleStateDictOrderMatchesPyTorch) {
  auto net = small_net();
  const auto sd = asl::io::module_state_dict(*net);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                                 "1.running_var", "1.num_batches_tracked", "2.weight", "2.bias"}));
  EXPECT_TRUE(sd["0.weight"].is_same(net[0]->as<torch::nn::Linear>()->weight));
}

TEST(StateDict, StrictLoadCopiesWithDtypeConversion) {
  auto src = small_net();
  auto dst = small_net();
  asl::io::StateDict state;
  for (const auto& item : asl::io::module_state_dict(*src)) {
    state.insert(item.key(), item.key().find("num_batches") != std::string::npos ? item.value()
                                                                                   : item.value().to(torch::kFloat64));
  }
  const auto report = asl::io::load_state_dict(*dst, state);
  EXPECT_TRUE(report.missing.empty() && report.unexpected.empty() && report.mismatched.empty());
  const auto got = asl::io::module_state_dict(*dst);
  for (const auto& item : asl::io::module_state_dict(*src)) {
    EXPECT_TRUE(torch::equal(got[item.key()], item.value())) << item.key();
    EXPECT_EQ(got[item.key()].scalar_type(), item.value().scalar_type());
  }
  EXPECT_TRUE(got["0.weight"].requires_grad());
}

TEST(StateDict, StrictErrorListsEveryProblemOnce) {
  auto dst = small_net();
  const torch::Tensor before = dst[0]->as<torch::nn::Linear>()->weight.clone();
  asl::io::StateDict state;
  for (const auto& item : asl::io::module_state_dict(*small_net(5))) {
    if (item.key() == "0.bias" || item.key() == "1.num_batches_tracked") continue;  // missing (+ tolerated)
    state.insert(item.key(), item.value());
  }
  state.insert("extra.weight", torch::zeros({1}));
  state.insert("9.num_batches_tracked", torch::zeros({}, torch::kInt64));  // tolerated
  try {
    asl::io::load_state_dict(*dst, state);
    FAIL() << "strict load accepted a mismatching state dict";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("missing: 0.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected: extra.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2.weight: checkpoint [5, 4] vs module [2, 4]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2.bias: checkpoint [5] vs module [2]"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("num_batches_tracked"), std::string::npos) << msg;
  }
  // Nothing was copied.
  EXPECT_TRUE(torch::equal(dst[0]->as<torch::nn::Linear>()->weight, before));
}

TEST(StateDict, NonStrictLoadsWhatMatches) {
  auto src = small_net(5);
  auto dst = small_net();
  asl::io::StateDict state = asl::io::module_state_dict(*src);
  state.insert("extra", torch::zeros({1}));
  const auto report = asl::io::load_state_dict(*dst, state, asl::io::LoadStateDictOptions().strict(false));
  EXPECT_TRUE(report.missing.empty());
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"extra"});
  ASSERT_EQ(report.mismatched.size(), 2u);
  EXPECT_EQ(report.mismatched[0], "2.weight: checkpoint [5, 4] vs module [2, 4]");
  EXPECT_TRUE(torch::equal(dst[0]->as<torch::nn::Linear>()->weight, src[0]->as<torch::nn::Linear>()->weight));
  EXPECT_FALSE(torch::equal(dst[2]->as<torch::nn::Linear>()->bias, src[2]->as<torch::nn::Linear>()->bias.narrow(0, 0, 2)));
}

TEST(StateDict, KeyFilterDropsTheHeadForFineTuning) {
  auto src = small_net(5);  // a "pretrain" with another class count
  auto dst = small_net();
  const torch::Tensor head_before = dst[2]->as<torch::nn::Linear>()->weight.clone();
  const auto report = asl::io::load_state_dict(
      *dst, asl::io::module_state_dict(*src),
      asl::io::LoadStateDictOptions().key_filter([](const std::string& k) { return k.rfind("2.", 0) != 0; }));
  EXPECT_TRUE(report.missing.empty() && report.unexpected.empty() && report.mismatched.empty());
  EXPECT_TRUE(torch::equal(dst[1]->as<torch::nn::BatchNorm1d>()->running_var,
                           src[1]->as<torch::nn::BatchNorm1d>()->running_var));
  EXPECT_TRUE(torch::equal(dst[2]->as<torch::nn::Linear>()->weight, head_before));
}

TEST(StateDict, LoadsTheTresnetFixtureStateDictIntoItself) {
  // The fixture's tensors copied into same-shaped buffers of a plain module tree.
  const auto ck = asl::io::load_checkpoint(tresnet_fixture("small.pth").string());
  struct Holder : torch::nn::Module {
    explicit Holder(const asl::io::StateDict& sd) {
      for (const auto& item : sd) {
        std::string name = item.key();
        std::replace(name.begin(), name.end(), '.', '_');
        register_buffer(name, torch::zeros_like(item.value()));
      }
    }
  };
  auto holder = std::make_shared<Holder>(ck.model);
  asl::io::StateDict renamed;
  for (const auto& item : ck.model) {
    std::string name = item.key();
    std::replace(name.begin(), name.end(), '.', '_');
    renamed.insert(name, item.value());
  }
  asl::io::load_state_dict(*holder, renamed);
  for (const auto& item : holder->named_buffers()) EXPECT_TRUE(torch::equal(item.value(), renamed[item.key()]));
}
