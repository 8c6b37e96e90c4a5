// A progress line on stderr: redrawn in place on a terminal, a plain line every 10% otherwise.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace asl::cli {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "images")
      : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(::isatty(STDERR_FILENO) == 1),
        start_(std::chrono::steady_clock::now()) {}

  /// `done` items of `total` are finished; `extra` is appended (e.g. "loss 0.123").
  void update(int64_t done, const std::string& extra = "") {
    const double elapsed = seconds();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
    const int percent = total_ > 0 ? static_cast<int>(100 * done / total_) : 100;
    if (!tty_ && percent < next_percent_ && done < total_) return;
    next_percent_ = (percent / 10 + 1) * 10;
    std::fprintf(stderr, "%s%s %3d%% %lld/%lld %s  %.1f %s/s  ETA %s%s%s", tty_ ? "\r" : "", label_.c_str(), percent,
                 static_cast<long long>(done), static_cast<long long>(total_), unit_.c_str(), rate, unit_.c_str(),
                 clock(eta).c_str(), extra.empty() ? "" : "  ", extra.c_str());
    std::fputs(tty_ ? "\033[K" : "\n", stderr);
    std::fflush(stderr);
  }

  void finish() {
    if (tty_) std::fputs("\n", stderr);
  }

  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  static std::string clock(double s) {
    const long long t = static_cast<long long>(s + 0.5);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", t / 3600, (t / 60) % 60, t % 60);
    return buf;
  }
  std::string label_, unit_;
  int64_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  int next_percent_ = 0;
};

}  // namespace asl::cli
