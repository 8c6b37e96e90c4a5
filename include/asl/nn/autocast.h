// A scope in which CPU autocast runs the eligible ops (convolutions, matrix products) in bfloat16.
#pragma once

#include <ATen/autocast_mode.h>

namespace asl::nn {

/// bfloat16 CPU autocast for the guard's lifetime when `enabled` (the reference's torch.cuda.amp.autocast()
/// on the CPU); restores the previous state on exit. Where oneDNN cannot run bfloat16, asl's convolutions
/// and linear layers emulate it (functional::conv2d).
class BFloat16Autocast {
 public:
  explicit BFloat16Autocast(bool enabled) : enabled_(enabled) {
    if (!enabled_) return;
    previous_ = at::autocast::is_cpu_enabled();
    previous_dtype_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~BFloat16Autocast() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_cpu_enabled(previous_);
    at::autocast::set_autocast_cpu_dtype(previous_dtype_);
  }
  BFloat16Autocast(const BFloat16Autocast&) = delete;
  BFloat16Autocast& operator=(const BFloat16Autocast&) = delete;

 private:
  bool enabled_;
  bool previous_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
};

}  // namespace asl::nn
