// Shared test helpers: fixture location, cases.json loading, tolerance comparisons.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/npy.h"

namespace asl::test {

/// The fixtures folder: $ASL_FIXTURES, else the CMake default passed by ctest. Missing is a failure.
inline std::filesystem::path fixtures_dir() {
  const char* env = std::getenv("ASL_FIXTURES");
  if (env == nullptr || *env == '\0') env = std::getenv("ASL_FIXTURES_DEFAULT");
  std::filesystem::path dir = env != nullptr ? env : ASL_FIXTURES_FALLBACK;
  if (!std::filesystem::is_directory(dir)) {
    throw std::runtime_error("fixtures folder not found: '" + dir.string() +
                             "' (set ASL_FIXTURES to the shared/fixtures folder)");
  }
  return dir;
}

inline nlohmann::json load_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return nlohmann::json::parse(in);
}

/// A tensor from a fixture subfolder.
inline torch::Tensor fixture_npy(const std::string& sub, const std::string& file) {
  return asl::io::load_npy((fixtures_dir() / sub / file).string());
}

/// The message of the std::runtime_error that `f()` throws, or "<no error>".
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "<no error>";
}

/// A fresh temporary folder, removed with everything in it when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "asl_test") {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            (tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  /// Writes `bytes` to path()/name and returns that path.
  std::filesystem::path write(const std::string& name, const std::string& bytes) const {
    const std::filesystem::path p = path_ / name;
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Asserts |actual - expected| <= atol + rtol * |expected| elementwise, reporting the worst element.
inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected, double atol,
                                            double rtol) {
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream s;
    s << "shape " << actual.sizes() << " != expected " << expected.sizes();
    return ::testing::AssertionFailure() << s.str();
  }
  const torch::Tensor a = actual.to(torch::kFloat64).flatten();
  const torch::Tensor e = expected.to(torch::kFloat64).flatten();
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  const torch::Tensor excess = (a - e).abs() - (atol + rtol * e.abs());
  const torch::Tensor bad = excess.gt(0).logical_or(a.isnan() != e.isnan());
  if (!bad.any().item<bool>()) return ::testing::AssertionSuccess();
  const int64_t i = torch::where(excess.isnan(), torch::full_like(excess, 1e300), excess).argmax().item<int64_t>();
  std::ostringstream s;
  s.precision(17);
  s << bad.sum().item<int64_t>() << " of " << a.numel() << " elements out of tolerance (atol " << atol << ", rtol "
    << rtol << "); worst at flat index " << i << ": actual " << a[i].item<double>() << ", expected "
    << e[i].item<double>();
  return ::testing::AssertionFailure() << s.str();
}

/// Relative closeness of two scalars.
inline ::testing::AssertionResult rel_close(double actual, double expected, double rtol) {
  if (std::abs(actual - expected) <= rtol * std::abs(expected)) return ::testing::AssertionSuccess();
  std::ostringstream s;
  s.precision(17);
  s << "actual " << actual << ", expected " << expected << ", relative error "
    << std::abs(actual - expected) / std::abs(expected) << " > " << rtol;
  return ::testing::AssertionFailure() << s.str();
}

}  // namespace asl::test
