// Learning-rate schedules (the Hugging Face transformers ones) and a scheduler with the semantics
// of torch.optim.lr_scheduler.LambdaLR, plus saving and loading optimizer + scheduler state for
// exact resume.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lathe/optim/optimizer.h"

namespace lathe::optim {

// lr = base_lr * factor(step). `description` names the schedule and its arguments (it is saved
// with the scheduler state for inspection).
struct Schedule {
  std::string description;
  std::function<double(int64_t step)> factor;
};

// factor = 1.
Schedule constant_schedule();
// step / warmup during warmup, then 1 (get_constant_schedule_with_warmup).
Schedule constant_schedule_with_warmup(int64_t num_warmup_steps);
// step / max(1, warmup) during warmup, then max(0, (total - step) / max(1, total - warmup))
// (get_linear_schedule_with_warmup).
Schedule linear_schedule_with_warmup(int64_t num_warmup_steps, int64_t num_training_steps);
// step / max(1, warmup) during warmup, then with progress = (step - warmup) / max(1, total -
// warmup): max(0, 0.5 * (1 + cos(pi * num_cycles * 2 * progress)))
// (get_cosine_schedule_with_warmup; num_cycles 0.5 decays to 0 at the last step).
Schedule cosine_schedule_with_warmup(int64_t num_warmup_steps, int64_t num_training_steps,
                                     double num_cycles = 0.5);

// Holds the optimizer (which must outlive it), each group's base lr and a step counter. Like
// LambdaLR: construction records every group's current lr as its base lr and sets
// lr = base * factor(0); each step() advances the counter and sets lr = base * factor(counter).
// The usual loop is backward(), optimizer.step(), scheduler.step().
class LRScheduler {
 public:
  LRScheduler(Optimizer& optimizer, Schedule schedule);

  void step();
  // How many times step() has run (LambdaLR's last_epoch).
  int64_t last_step() const { return step_; }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  // The lr of each group as last set by the scheduler.
  const std::vector<double>& last_lrs() const { return last_lrs_; }
  const Schedule& schedule() const { return schedule_; }

  // Metadata "scheduler/step", "scheduler/base_lrs" (JSON), "scheduler/schedule".
  StateDict state_dict() const;
  // Restores the step counter and base lrs (the group count must match) and sets every group's lr
  // to base * factor(step).
  void load_state_dict(const StateDict& state, const std::string& source = "state dict");

 private:
  void apply();
  Optimizer& optimizer_;
  Schedule schedule_;
  std::vector<double> base_lrs_;
  std::vector<double> last_lrs_;
  int64_t step_ = 0;
};

// Writes the optimizer's and (when given) the scheduler's state dicts as one safetensors file,
// atomically (io::save_safetensors).
void save_state(const std::string& path, const Optimizer& optimizer,
                const LRScheduler* scheduler = nullptr);
// Loads a file written by save_state into an optimizer over the same parameters (and the
// scheduler, which then must be in the file). Errors name the file and every mismatch.
void load_state(const std::string& path, Optimizer& optimizer, LRScheduler* scheduler = nullptr);

}  // namespace lathe::optim
