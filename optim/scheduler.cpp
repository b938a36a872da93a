// Schedules with the exact formulas of transformers.optimization (evaluated in double, as Python
// does), a LambdaLR-style scheduler, and optimizer + scheduler state files.
#include "lathe/optim/scheduler.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numbers>
#include <sstream>

#include "lathe/io/safetensors.h"

namespace lathe::optim {

using json = nlohmann::json;

namespace {

void check_steps(const char* who, int64_t warmup, int64_t total) {
  LATHE_CHECK(warmup >= 0, who, ": num_warmup_steps must be >= 0, got ", warmup);
  LATHE_CHECK(total >= 0, who, ": num_training_steps must be >= 0, got ", total);
}

double warmup_factor(int64_t step, int64_t warmup) {
  return double(step) / double(std::max<int64_t>(1, warmup));
}

std::string describe(const char* name, std::initializer_list<std::pair<const char*, double>> args) {
  std::ostringstream os;
  os << name << "(";
  bool first = true;
  for (const auto& [k, v] : args) {
    os << (first ? "" : ", ") << k << "=" << v;
    first = false;
  }
  os << ")";
  return os.str();
}

}  // namespace

Schedule constant_schedule() {
  return {"constant()", [](int64_t) { return 1.0; }};
}

Schedule constant_schedule_with_warmup(int64_t num_warmup_steps) {
  check_steps("constant_schedule_with_warmup", num_warmup_steps, 0);
  return {describe("constant_with_warmup", {{"num_warmup_steps", double(num_warmup_steps)}}),
          [warmup = num_warmup_steps](int64_t step) {
            return step < warmup ? warmup_factor(step, warmup) : 1.0;
          }};
}

Schedule linear_schedule_with_warmup(int64_t num_warmup_steps, int64_t num_training_steps) {
  check_steps("linear_schedule_with_warmup", num_warmup_steps, num_training_steps);
  return {describe("linear_with_warmup", {{"num_warmup_steps", double(num_warmup_steps)},
                                          {"num_training_steps", double(num_training_steps)}}),
          [warmup = num_warmup_steps, total = num_training_steps](int64_t step) {
            if (step < warmup) return warmup_factor(step, warmup);
            return std::max(0.0,
                            double(total - step) / double(std::max<int64_t>(1, total - warmup)));
          }};
}

Schedule cosine_schedule_with_warmup(int64_t num_warmup_steps, int64_t num_training_steps,
                                     double num_cycles) {
  check_steps("cosine_schedule_with_warmup", num_warmup_steps, num_training_steps);
  LATHE_CHECK(std::isfinite(num_cycles), "cosine_schedule_with_warmup: num_cycles must be finite, ",
              "got ", num_cycles);
  return {describe("cosine_with_warmup", {{"num_warmup_steps", double(num_warmup_steps)},
                                          {"num_training_steps", double(num_training_steps)},
                                          {"num_cycles", num_cycles}}),
          [warmup = num_warmup_steps, total = num_training_steps, num_cycles](int64_t step) {
            if (step < warmup) return warmup_factor(step, warmup);
            const double progress =
                double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
            return std::max(0.0,
                            0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
          }};
}

LRScheduler::LRScheduler(Optimizer& optimizer, Schedule schedule)
    : optimizer_(optimizer), schedule_(std::move(schedule)) {
  LATHE_CHECK(schedule_.factor != nullptr, "LRScheduler: the schedule '", schedule_.description,
              "' has no factor function");
  for (const ParamGroup& g : optimizer_.param_groups()) base_lrs_.push_back(g.lr);
  apply();
}

void LRScheduler::apply() {
  std::vector<ParamGroup>& groups = optimizer_.param_groups();
  LATHE_CHECK(groups.size() == base_lrs_.size(), "LRScheduler: the optimizer has ", groups.size(),
              " parameter groups, the scheduler was made for ", base_lrs_.size());
  const double f = schedule_.factor(step_);
  LATHE_CHECK(std::isfinite(f) && f >= 0, "LRScheduler: schedule ", schedule_.description,
              " gave an invalid factor ", f, " at step ", step_);
  last_lrs_.resize(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) {
    groups[i].lr = base_lrs_[i] * f;
    last_lrs_[i] = groups[i].lr;
  }
}

void LRScheduler::step() {
  ++step_;
  apply();
}

StateDict LRScheduler::state_dict() const {
  StateDict sd;
  sd.metadata["scheduler/step"] = std::to_string(step_);
  sd.metadata["scheduler/base_lrs"] = json(base_lrs_).dump();
  sd.metadata["scheduler/schedule"] = schedule_.description;
  return sd;
}

namespace {

struct SchedulerState {
  int64_t step = 0;
  std::vector<double> base_lrs;
};

// Parses and checks a scheduler state without touching any scheduler or optimizer.
SchedulerState parse_scheduler_state(const StateDict& state, const std::string& source,
                                     size_t num_groups) {
  const std::string what = "LRScheduler load_state_dict from " + source;
  auto step = state.metadata.find("scheduler/step");
  auto base = state.metadata.find("scheduler/base_lrs");
  LATHE_CHECK(step != state.metadata.end() && base != state.metadata.end(), what,
              ": no 'scheduler/step' and 'scheduler/base_lrs' metadata (no scheduler state there)");
  SchedulerState s;
  try {
    size_t used = 0;
    s.step = std::stoll(step->second, &used);
    LATHE_CHECK(used == step->second.size() && s.step >= 0, what, ": invalid step '", step->second,
                "'");
    s.base_lrs = json::parse(base->second).get<std::vector<double>>();
  } catch (const std::logic_error& e) {  // std::invalid_argument, std::out_of_range, json errors
    LATHE_FAIL(what, ": invalid scheduler metadata (step '", step->second, "', base_lrs '",
               base->second, "'): ", e.what());
  }
  LATHE_CHECK(s.base_lrs.size() == num_groups, what, ": it has ", s.base_lrs.size(),
              " base lrs, the optimizer has ", num_groups, " parameter groups");
  for (double lr : s.base_lrs) {
    LATHE_CHECK(std::isfinite(lr) && lr >= 0, what, ": invalid base lr ", lr);
  }
  return s;
}

}  // namespace

void LRScheduler::load_state_dict(const StateDict& state, const std::string& source) {
  SchedulerState s = parse_scheduler_state(state, source, optimizer_.param_groups().size());
  base_lrs_ = std::move(s.base_lrs);
  step_ = s.step;
  apply();
}

void save_state(const std::string& path, const Optimizer& optimizer, const LRScheduler* scheduler) {
  StateDict sd = optimizer.state_dict();
  if (scheduler) {
    StateDict s = scheduler->state_dict();
    sd.metadata.insert(s.metadata.begin(), s.metadata.end());
  }
  sd.metadata["format"] = "lathe.optim";
  io::save_safetensors(path, sd.tensors, sd.metadata);
}

void load_state(const std::string& path, Optimizer& optimizer, LRScheduler* scheduler) {
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  StateDict sd;
  sd.metadata = file.metadata();
  sd.tensors = file.tensors();
  // The scheduler's part is checked before the optimizer changes, so a file without a valid
  // scheduler state leaves both untouched.
  if (scheduler) parse_scheduler_state(sd, path, optimizer.param_groups().size());
  optimizer.load_state_dict(sd, path);
  if (scheduler) scheduler->load_state_dict(sd, path);
}

}  // namespace lathe::optim
