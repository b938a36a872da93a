// GradScaler: torch.amp.GradScaler's state machine and arithmetic. The scale is an f32 value and
// every update computes in double and rounds to f32, as PyTorch's _amp_update_scale_ kernels do,
// so a run and its resume (and PyTorch's run) see the same sequence of scales.
#include "lathe/optim/grad_scaler.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "lathe/core/autocast.h"
#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"

namespace lathe::optim {

namespace {

using json = nlohmann::json;

constexpr const char* kStateKey = "grad_scaler/state";

void check_options(const GradScalerOptions& o, const std::string& who) {
  LATHE_CHECK(std::isfinite(o.init_scale) && o.init_scale > 0 &&
                  std::isfinite(float(o.init_scale)) && float(o.init_scale) > 0,
              who, ": scale must be finite and > 0 in f32, got ", o.init_scale);
  LATHE_CHECK(std::isfinite(o.growth_factor) && o.growth_factor > 1.0, who,
              ": growth_factor must be > 1, got ", o.growth_factor);
  LATHE_CHECK(o.backoff_factor > 0.0 && o.backoff_factor < 1.0, who,
              ": backoff_factor must be in (0, 1), got ", o.backoff_factor);
  LATHE_CHECK(o.growth_interval >= 1, who, ": growth_interval must be >= 1, got ",
              o.growth_interval);
}

}  // namespace

GradScaler::GradScaler(GradScalerOptions options)
    : options_(options), scale_(float(options.init_scale)) {
  check_options(options_, "GradScaler");
}

double GradScaler::scale() const {
  return options_.enabled ? double(scale_) : 1.0;
}

Tensor GradScaler::scale(const Tensor& loss) const {
  LATHE_CHECK(loss.defined(), "GradScaler::scale: the loss is an undefined tensor");
  if (!options_.enabled) return loss;
  LATHE_CHECK(is_floating(loss.dtype()), "GradScaler::scale: the loss must be floating, got ",
              loss.dtype(), " ", shape_str(loss.shape()));
  NoAutocastGuard no_autocast;
  // An f32 factor: promotion makes an f16/bf16 loss f32 (65536 * loss would overflow f16).
  const DType dtype = loss.dtype() == DType::F64 ? DType::F64 : DType::F32;
  return loss * scalar_tensor(double(scale_), TensorOptions(dtype).device(loss.device()));
}

void GradScaler::unscale_(Optimizer& optimizer) {
  if (!options_.enabled) return;
  auto it = per_optimizer_.find(&optimizer);
  const Stage stage = it == per_optimizer_.end() ? Stage::Ready : it->second.stage;
  LATHE_CHECK(stage != Stage::Unscaled, "GradScaler::unscale_: already called on this ",
              optimizer.name(), " optimizer since the last update()");
  LATHE_CHECK(stage != Stage::Stepped, "GradScaler::unscale_: called after step() on this ",
              optimizer.name(), " optimizer (unscale_ before step, once per update())");
  // PyTorch: _scale.double().reciprocal().float().
  const double inv_scale = double(float(1.0 / double(scale_)));
  NoGradGuard no_grad;
  NoAutocastGuard no_autocast;
  // Per device, one 0-dim sum(g * 0) per gradient: exactly 0 when g is finite, NaN when it holds
  // an inf or NaN (a plain sum could overflow for finite values). One host read per device.
  std::vector<std::pair<Device, std::vector<Tensor>>> checks;
  for (ParamGroup& group : optimizer.param_groups()) {
    for (size_t i = 0; i < group.params.size(); ++i) {
      Tensor g = group.params[i].grad();
      if (!g.defined()) continue;
      LATHE_CHECK(g.dtype() != DType::F16, "GradScaler::unscale_: parameter '",
                  group.param_names[i], "' has an f16 gradient ", shape_str(g.shape()),
                  "; unscaling in f16 would lose what the scale protected (keep f32 parameters "
                  "and let autocast cast them)");
      Tensor check = sum(g * 0.0).to(DType::F32);
      auto same = std::find_if(checks.begin(), checks.end(),
                               [&](const auto& c) { return c.first == g.device(); });
      if (same == checks.end()) {
        checks.emplace_back(g.device(), std::vector<Tensor>{check});
      } else {
        same->second.push_back(check);
      }
      if (inv_scale != 1.0) g.mul_(inv_scale);
    }
  }
  LATHE_CHECK(!checks.empty(), "GradScaler::unscale_: no parameter of this ", optimizer.name(),
              " optimizer has a gradient (nothing to check for inf/NaN; run backward first)");
  bool found = false;
  for (const auto& [device, parts] : checks) {
    found = found || std::isnan(stack(parts).sum().item<double>());
  }
  // Recorded only now, so a failed call leaves no half-made inf check behind for update().
  per_optimizer_[&optimizer] = PerOptimizer{Stage::Unscaled, found};
}

bool GradScaler::step(Optimizer& optimizer) {
  if (!options_.enabled) {
    optimizer.step();
    return true;
  }
  auto it = per_optimizer_.find(&optimizer);
  LATHE_CHECK(it == per_optimizer_.end() || it->second.stage != Stage::Stepped,
              "GradScaler::step: already called on this ", optimizer.name(),
              " optimizer since the last update()");
  if (it == per_optimizer_.end()) unscale_(optimizer);
  PerOptimizer& state = per_optimizer_.at(&optimizer);
  const bool run = !state.found_inf;
  if (run) optimizer.step();
  state.stage = Stage::Stepped;
  return run;
}

void GradScaler::update() {
  if (!options_.enabled) return;
  LATHE_CHECK(!per_optimizer_.empty(),
              "GradScaler::update: no inf checks were recorded since the last update() (call "
              "step() or unscale_() first)");
  bool found = false;
  for (const auto& [optimizer, state] : per_optimizer_) found = found || state.found_inf;
  if (found) {
    scale_ = float(double(scale_) * options_.backoff_factor);
    growth_tracker_ = 0;
  } else if (growth_tracker_ + 1 == options_.growth_interval) {
    const float grown = float(double(scale_) * options_.growth_factor);
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  } else {
    ++growth_tracker_;
  }
  per_optimizer_.clear();
}

void GradScaler::update(double new_scale) {
  if (!options_.enabled) return;
  LATHE_CHECK(std::isfinite(new_scale) && new_scale > 0 && std::isfinite(float(new_scale)) &&
                  float(new_scale) > 0,
              "GradScaler::update: new scale must be finite and > 0 in f32, got ", new_scale);
  scale_ = float(new_scale);
  per_optimizer_.clear();
}

std::optional<bool> GradScaler::found_inf(const Optimizer& optimizer) const {
  auto it = per_optimizer_.find(&optimizer);
  if (it == per_optimizer_.end() || it->second.stage == Stage::Ready) return std::nullopt;
  return it->second.found_inf;
}

StateDict GradScaler::state_dict() const {
  StateDict sd;
  // nlohmann::json writes doubles so that they parse back to the same bits; the f32 scale is
  // exact as a double.
  sd.metadata[kStateKey] = json{
      {"scale", double(scale_)},
      {"growth_factor", options_.growth_factor},
      {"backoff_factor", options_.backoff_factor},
      {"growth_interval", options_.growth_interval},
      {"growth_tracker", growth_tracker_},
      {"enabled",
       options_.enabled}}.dump();
  return sd;
}

void GradScaler::load_state_dict(const StateDict& state, const std::string& source) {
  const std::string what = "GradScaler load_state_dict from " + source;
  auto it = state.metadata.find(kStateKey);
  LATHE_CHECK(it != state.metadata.end(), what, ": no '", kStateKey,
              "' metadata (no GradScaler state there)");
  GradScalerOptions o = options_;
  int64_t tracker = 0;
  bool enabled = true;
  try {
    const json j = json::parse(it->second);
    o.init_scale = j.at("scale").get<double>();
    o.growth_factor = j.at("growth_factor").get<double>();
    o.backoff_factor = j.at("backoff_factor").get<double>();
    o.growth_interval = j.at("growth_interval").get<int64_t>();
    tracker = j.at("growth_tracker").get<int64_t>();
    enabled = j.at("enabled").get<bool>();
  } catch (const json::exception& e) {
    LATHE_FAIL(what, ": invalid metadata '", it->second, "': ", e.what());
  }
  // As PyTorch: a disabled scaler ignores the state; a state saved by a disabled one is refused.
  if (!options_.enabled) return;
  LATHE_CHECK(enabled, what, ": it was saved by a disabled GradScaler (no scale to resume)");
  check_options(o, what);
  LATHE_CHECK(tracker >= 0 && tracker < o.growth_interval, what, ": growth_tracker ", tracker,
              " is outside [0, growth_interval ", o.growth_interval, ")");
  options_ = o;
  scale_ = float(o.init_scale);
  growth_tracker_ = tracker;
  per_optimizer_.clear();
}

}  // namespace lathe::optim
