// The one-cycle learning-rate (and Adam beta1) schedule of PyTorch 1.13's OneCycleLR.
#pragma once

#include <cstdint>

namespace asl::train {

/// How OneCycleSchedule interpolates inside a phase.
enum class Anneal {
  /// end + (start - end) / 2 · (cos(π · pct) + 1)
  cos,
  /// start + (end - start) · pct
  linear,
};

/// Arguments of OneCycleSchedule; defaults are PyTorch's except pct_start, which is the reference's 0.2.
struct OneCycleOptions {
  /// The peak learning rate.
  double max_lr = 1e-4;
  /// Steps of the whole cycle (epochs × steps per epoch in the reference).
  int64_t total_steps = 1;
  /// Fraction of total_steps spent rising to max_lr.
  double pct_start = 0.2;
  /// Interpolation inside each phase.
  Anneal anneal = Anneal::cos;
  /// The first learning rate is max_lr / div_factor.
  double div_factor = 25.0;
  /// The last learning rate is max_lr / div_factor / final_div_factor.
  double final_div_factor = 1e4;
  /// Cycle the momentum (Adam's beta1) inversely to the learning rate.
  bool cycle_momentum = true;
  /// Momentum at the learning-rate peak.
  double base_momentum = 0.85;
  /// Momentum at the start and the end.
  double max_momentum = 0.95;
  /// PyTorch's three_phase: rise, fall back to the initial rate, then anneal to the minimum.
  bool three_phase = false;
};

/// The learning rate and momentum at one step.
struct OneCyclePoint {
  double lr = 0;
  /// The momentum (Adam's beta1); meaningful only with cycle_momentum.
  double momentum = 0;
};

/// torch.optim.lr_scheduler.OneCycleLR of PyTorch 1.13, as a pure function of the step. Step 0 is the
/// value set at construction (used by the first optimizer step); step k the value after k calls of
/// scheduler.step(), for k up to total_steps (PyTorch raises beyond). Phase boundaries, the interpolation
/// formulas and their order of operations follow PyTorch, so values agree to the last bit or nearly.
class OneCycleSchedule {
 public:
  /// Throws std::runtime_error for total_steps < 1, pct_start outside [0, 1], non-positive max_lr,
  /// div_factor or final_div_factor, and for the configurations where PyTorch divides by zero
  /// (a phase of zero length, e.g. total_steps 5 with pct_start 0.2).
  explicit OneCycleSchedule(const OneCycleOptions& options);

  /// Learning rate and momentum at `step` (0 ≤ step ≤ total_steps; throws std::runtime_error otherwise).
  OneCyclePoint at(int64_t step) const;
  /// at(step).lr
  double lr(int64_t step) const { return at(step).lr; }
  /// at(step).momentum
  double momentum(int64_t step) const { return at(step).momentum; }

  const OneCycleOptions& options() const { return options_; }
  /// max_lr / div_factor
  double initial_lr() const { return initial_lr_; }
  /// initial_lr / final_div_factor
  double min_lr() const { return min_lr_; }

 private:
  struct Phase {
    double end_step;
    double start_lr, end_lr;
    double start_momentum, end_momentum;
  };
  OneCycleOptions options_;
  double initial_lr_ = 0;
  double min_lr_ = 0;
  Phase phases_[3];
  int num_phases_ = 0;
};

}  // namespace asl::train
