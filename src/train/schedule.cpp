// One-cycle schedule: PyTorch 1.13 OneCycleLR's phases and annealing, evaluated per step.
#include "asl/train/schedule.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace asl::train {
namespace {

constexpr double kPi = 3.14159265358979323846;

[[noreturn]] void fail(const std::string& field, const std::string& what) {
  throw std::runtime_error("one-cycle schedule: " + field + ": " + what);
}

double anneal(Anneal how, double start, double end, double pct) {
  if (how == Anneal::cos) {
    const double cos_out = std::cos(kPi * pct) + 1.0;
    return end + (start - end) / 2.0 * cos_out;
  }
  return (end - start) * pct + start;
}

}  // namespace

OneCycleSchedule::OneCycleSchedule(const OneCycleOptions& options) : options_(options) {
  const OneCycleOptions& o = options_;
  if (o.total_steps < 1) fail("total_steps", "value " + std::to_string(o.total_steps) + " is not positive");
  if (!(o.pct_start >= 0.0 && o.pct_start <= 1.0)) {
    fail("pct_start", "value " + std::to_string(o.pct_start) + " is outside [0, 1]");
  }
  if (!(o.max_lr > 0.0)) fail("max_lr", "value " + std::to_string(o.max_lr) + " is not positive");
  if (!(o.div_factor > 0.0)) fail("div_factor", "value " + std::to_string(o.div_factor) + " is not positive");
  if (!(o.final_div_factor > 0.0)) {
    fail("final_div_factor", "value " + std::to_string(o.final_div_factor) + " is not positive");
  }
  initial_lr_ = o.max_lr / o.div_factor;
  min_lr_ = initial_lr_ / o.final_div_factor;
  const double total = static_cast<double>(o.total_steps);
  const double up_end = o.pct_start * total - 1.0;
  if (o.three_phase) {
    phases_[0] = {up_end, initial_lr_, o.max_lr, o.max_momentum, o.base_momentum};
    phases_[1] = {2.0 * o.pct_start * total - 2.0, o.max_lr, initial_lr_, o.base_momentum, o.max_momentum};
    phases_[2] = {total - 1.0, initial_lr_, min_lr_, o.max_momentum, o.max_momentum};
    num_phases_ = 3;
  } else {
    phases_[0] = {up_end, initial_lr_, o.max_lr, o.max_momentum, o.base_momentum};
    phases_[1] = {total - 1.0, o.max_lr, min_lr_, o.base_momentum, o.max_momentum};
    num_phases_ = 2;
  }
  // PyTorch divides by (end_step - start_step) of the phase a step falls in; refuse, up front, any
  // step that would land in a zero-length phase (PyTorch raises ZeroDivisionError there).
  for (int64_t step = 0; step <= o.total_steps; ++step) {
    double start_step = 0.0;
    for (int i = 0; i < num_phases_; ++i) {
      const double end_step = phases_[i].end_step;
      if (static_cast<double>(step) <= end_step || i == num_phases_ - 1) {
        if (end_step == start_step) {
          fail("total_steps", "value " + std::to_string(o.total_steps) + " with pct_start " +
                                  std::to_string(o.pct_start) + " gives phase " + std::to_string(i) +
                                  " zero length at step " + std::to_string(step) +
                                  " (PyTorch's OneCycleLR divides by zero); use more steps");
        }
        break;
      }
      start_step = end_step;
    }
  }
}

OneCyclePoint OneCycleSchedule::at(int64_t step) const {
  if (step < 0 || step > options_.total_steps) {
    throw std::runtime_error("one-cycle schedule: step " + std::to_string(step) + " is outside [0, " +
                             std::to_string(options_.total_steps) + "]");
  }
  const double s = static_cast<double>(step);
  double start_step = 0.0;
  for (int i = 0; i < num_phases_; ++i) {
    const Phase& p = phases_[i];
    if (s <= p.end_step || i == num_phases_ - 1) {
      const double pct = (s - start_step) / (p.end_step - start_step);
      OneCyclePoint out;
      out.lr = anneal(options_.anneal, p.start_lr, p.end_lr, pct);
      out.momentum = options_.cycle_momentum ? anneal(options_.anneal, p.start_momentum, p.end_momentum, pct)
                                             : options_.max_momentum;
      return out;
    }
    start_step = p.end_step;
  }
  return {};  // unreachable: the last phase always matches
}

}  // namespace asl::train
