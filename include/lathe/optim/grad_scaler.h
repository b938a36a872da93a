// Dynamic loss scaling for f16 mixed precision, with the semantics of torch.amp.GradScaler.
//
// f16 has 5 exponent bits: gradients below ~6e-8 flush to zero. Multiplying the loss by a large
// scale S before backward() lifts them into range; unscale_() divides every gradient by S again
// before the optimizer sees it. If any gradient is inf or NaN (S was too large), step() skips the
// update and update() multiplies S by backoff_factor; after growth_interval consecutive clean
// steps it multiplies S by growth_factor. bf16 has f32's exponent range and needs no scaling
// (a disabled scaler passes everything through, so one training loop serves both).
//
//   optim::GradScaler scaler;
//   { AutocastGuard amp(DType::F16); loss = cross_entropy(model(x), y); }
//   scaler.scale(loss).backward();
//   scaler.unscale_(optimizer);          // optional: only to clip or inspect real gradients
//   optim::clip_grad_norm_(optimizer, 1.0);
//   scaler.step(optimizer);              // skipped when a gradient is inf/NaN
//   scaler.update();
//   optimizer.zero_grad();
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "lathe/core/tensor.h"
#include "lathe/optim/optimizer.h"

namespace lathe::optim {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  bool enabled = true;  // false: scale() returns the loss, step() just steps, update() does nothing
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  // loss * scale, differentiable (f32 or f64: an f16/bf16 loss is promoted to f32, so the scaled
  // loss itself cannot overflow f16). The loss when disabled.
  Tensor scale(const Tensor& loss) const;

  // Divides every gradient of `optimizer`'s parameters by the scale, in place, and records whether
  // any of them held an inf or NaN (checked before dividing). At most once per optimizer between
  // update()s, and not after step(); f16 gradients are refused, as in PyTorch (unscaling them in
  // f16 loses the small values the scale protected: keep f32 parameters, cast by autocast).
  void unscale_(Optimizer& optimizer);

  // unscale_()s the optimizer unless that was done already, then runs optimizer.step() unless an
  // inf/NaN gradient was found. Returns whether the step ran. Once per optimizer between update()s.
  bool step(Optimizer& optimizer);

  // Adjusts the scale from the inf checks recorded since the last update (at least one is needed)
  // and resets them: backoff on any inf/NaN, growth after growth_interval clean updates in a row.
  // The scale is kept in f32 and a growth that would overflow f32 is not applied, as in PyTorch.
  void update();
  // Sets the scale to `new_scale` instead (finite, > 0); the growth count is kept.
  void update(double new_scale);

  // The current scale (1 when disabled, like PyTorch's get_scale()).
  double scale() const;
  // Clean updates since the last backoff or growth.
  int64_t growth_tracker() const { return growth_tracker_; }
  bool is_enabled() const { return options_.enabled; }
  const GradScalerOptions& options() const { return options_; }
  // Whether the inf check recorded for `optimizer` since the last update found an inf/NaN
  // (nullopt when it has not been unscaled since).
  std::optional<bool> found_inf(const Optimizer& optimizer) const;

  // Metadata "grad_scaler/state": JSON with scale, growth_factor, backoff_factor,
  // growth_interval, growth_tracker and enabled. Merge it into the optimizer's StateDict to save
  // both in one checkpoint.
  StateDict state_dict() const;
  // Restores a state_dict() (hyperparameters too, as PyTorch's load_state_dict does). Call between
  // iterations: pending inf checks are dropped. `source` names the state in errors.
  void load_state_dict(const StateDict& state, const std::string& source = "state dict");

 private:
  enum class Stage { Ready, Unscaled, Stepped };
  struct PerOptimizer {
    Stage stage = Stage::Ready;
    bool found_inf = false;
  };
  GradScalerOptions options_;
  float scale_;  // f32, as PyTorch's scale tensor, so values and resumes agree bit for bit
  int64_t growth_tracker_ = 0;
  std::map<const Optimizer*, PerOptimizer> per_optimizer_;
};

}  // namespace lathe::optim
