// Adam and AdamW. A group whose parameters all qualify (contiguous f32 or f16/bf16 with their
// gradients, one device) is updated by the fused multi-tensor kernel (fused_adamw_), which
// allocates nothing per step; otherwise each parameter takes the composed path, torch.optim.Adam's
// single-tensor formulas written with lathe's elementwise ops. Both evaluate the same expressions
// (documented on kernels::AdamWArgs), so they agree to rounding.
//
// Parameters of one group can have different step counts (one that had no gradient in some step
// was skipped), and the bias corrections depend on the step, so the fused path launches once per
// distinct step count in the group (almost always once).
#include <cmath>
#include <cstring>

#include "core/graph_internal.h"
#include "core/tensor_internal.h"
#include "lathe/optim/fused_adamw.h"
#include "lathe/optim/optimizer.h"
#include "optim/fused_adamw_internal.h"

namespace lathe::optim {

namespace {

bool is_16bit(DType t) {
  return t == DType::F16 || t == DType::BF16;
}

// Moments (and the master copy) are f32 for 16-bit parameters, the parameter's dtype otherwise.
DType state_dtype(DType param) {
  return is_16bit(param) ? DType::F32 : param;
}

void check_options(const AdamOptions& o, const char* who) {
  LATHE_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, who,
              ": betas must be in [0, 1), got (", o.beta1, ", ", o.beta2, ")");
  LATHE_CHECK(std::isfinite(o.eps) && o.eps >= 0, who, ": invalid eps ", o.eps,
              " (must be finite and >= 0)");
}

struct Item {
  Tensor param, grad;
  ParamState* state;
};

}  // namespace

Adam::Adam(std::vector<ParamGroup> groups, AdamOptions options, bool decoupled)
    : Optimizer(std::move(groups), decoupled ? "AdamW" : "Adam"),
      options_(options),
      decoupled_(decoupled) {
  check_options(options_, name());
}

Adam::Adam(std::vector<ParamGroup> groups, AdamOptions options)
    : Adam(std::move(groups), options, false) {}

Adam::Adam(const NamedParameters& named, AdamOptions options)
    : Adam(std::vector<ParamGroup>{make_param_group(named, options.lr, options.weight_decay)},
           options, false) {}

AdamW::AdamW(std::vector<ParamGroup> groups, AdamOptions options)
    : Adam(std::move(groups), options, true) {}

AdamW::AdamW(const NamedParameters& named, AdamOptions options)
    : Adam(std::vector<ParamGroup>{make_param_group(named, options.lr, options.weight_decay)},
           options, true) {}

void Adam::step() {
  const std::string who = std::string(name()) + " step";
  check_groups(who.c_str());
  check_options(options_, who.c_str());
  NoGradGuard no_grad;
  const double beta1 = options_.beta1, beta2 = options_.beta2, eps = options_.eps;
  for (size_t group_index = 0; group_index < groups_.size(); ++group_index) {
    ParamGroup& group = groups_[group_index];
    const double lr = group.lr, wd = group.weight_decay;
    // Validate and decide the path before touching the group's state, so an error leaves the
    // group as it was.
    std::vector<Item> items;
    std::vector<const std::string*> names;
    for (size_t i = 0; i < group.params.size(); ++i) {
      const Tensor& p = group.params[i];
      Tensor g = p.grad();
      if (!g.defined()) continue;
      const std::string& pname = group.param_names[i];
      LATHE_CHECK(g.shape() == p.shape() && g.device() == p.device(), who, ": gradient of '", pname,
                  "' is ", detail::describe(g), ", parameter ", detail::describe(p));
      items.push_back({p, g, nullptr});
      names.push_back(&pname);
    }
    if (items.empty()) continue;

    // Inside a capture of the group's device the graph records the update, and each replay
    // takes the step: the step counts advance then, and lr and weight decay are read then.
    const bool captured = lathe::detail::capturing_device(items[0].param.device());
    bool fused = options_.fused != FusedMode::Never;
    std::string why = "FusedMode::Never";
    if (fused) {
      for (size_t k = 0; k < items.size() && fused; ++k) {
        const Item& it = items[k];
        fused = fused_adamw_supports(it.param, it.grad, &why);
        if (fused && it.param.device() != items[0].param.device()) {
          fused = false;
          why = "the group's parameters are on more than one device";
        }
        if (fused && it.param.dtype() != items[0].param.dtype()) {
          fused = false;
          why = "the group's parameters have more than one dtype";
        }
        LATHE_CHECK(fused || options_.fused != FusedMode::Always, who,
                    ": fused update requested (FusedMode::Always) but in group '", group.name, "' ",
                    why, " (parameter '", *names[k], "')");
      }
    }
    // The composed update's lr and bias corrections are scalar arguments of its ops.
    LATHE_CHECK(!captured || fused, who,
                " inside CudaGraph::capture takes the fused update only (lr and step count change "
                "per replay), but in group '",
                group.name, "' ", why);

    for (size_t k = 0; k < items.size() && captured; ++k) {
      auto found = state_.find(*names[k]);
      LATHE_CHECK(found != state_.end() && !found->second.tensors.empty(), who,
                  " inside CudaGraph::capture: parameter '", *names[k],
                  "' has no optimizer state yet (the capture would record its zero start, and "
                  "every replay would restart from it); take one step before capturing");
    }
    for (size_t k = 0; k < items.size(); ++k) {
      const Tensor& p = items[k].param;
      ParamState& st = state_[*names[k]];
      if (st.tensors.empty()) {
        const TensorOptions opts = TensorOptions(state_dtype(p.dtype())).device(p.device());
        st.tensors["exp_avg"] = zeros(p.shape(), opts);
        st.tensors["exp_avg_sq"] = zeros(p.shape(), opts);
        if (is_16bit(p.dtype())) st.tensors["master"] = p.to(DType::F32).contiguous().clone();
      }
      if (!captured) ++st.step;
      items[k].state = &st;
    }

    if (fused) {
      // The step each parameter takes now (captured: at the first replay).
      std::map<int64_t, std::vector<const Item*>> by_step;
      for (const Item& it : items) by_step[it.state->step + (captured ? 1 : 0)].push_back(&it);
      for (const auto& [step, list] : by_step) {
        std::vector<Tensor> params, grads, exp_avgs, exp_avg_sqs, masters;
        for (const Item* it : list) {
          params.push_back(it->param);
          grads.push_back(it->grad);
          exp_avgs.push_back(it->state->tensors.at("exp_avg"));
          exp_avg_sqs.push_back(it->state->tensors.at("exp_avg_sq"));
          if (is_16bit(it->param.dtype())) masters.push_back(it->state->tensors.at("master"));
        }
        FusedAdamWStep s;
        s.lr = lr;
        s.beta1 = beta1;
        s.beta2 = beta2;
        s.eps = eps;
        s.weight_decay = wd;
        s.decoupled_weight_decay = decoupled_;
        s.step = step;
        const kernels::AdamWStepScalars* device_step = nullptr;
        if (captured) {
          std::vector<std::string> list_names;
          for (const Item* it : list) list_names.push_back(*names[size_t(it - items.data())]);
          device_step =
              replay_step(group_index, std::move(list_names), exp_avgs, items[0].param.device());
        }
        internal::fused_adamw_launch(params, grads, exp_avgs, exp_avg_sqs, masters, s, device_step);
      }
      continue;
    }

    for (Item& it : items) {
      const bool has_master = it.state->tensors.count("master") > 0;
      Tensor w = has_master ? it.state->tensors.at("master") : it.param;
      Tensor g = it.grad.dtype() == w.dtype() ? it.grad : it.grad.to(w.dtype());
      Tensor& m = it.state->tensors.at("exp_avg");
      Tensor& v = it.state->tensors.at("exp_avg_sq");
      const double t = double(it.state->step);
      const double bc1 = 1.0 - std::pow(beta1, t), bc2 = 1.0 - std::pow(beta2, t);
      if (wd != 0) {
        if (decoupled_) {
          w.mul_(1.0 - lr * wd);
        } else {
          g = g + w * wd;
        }
      }
      m.add_(g - m, 1.0 - beta1);
      v.mul_(beta2).add_(g * g, 1.0 - beta2);
      Tensor denom = sqrt(v) / std::sqrt(bc2) + eps;
      w.add_(m / denom, -lr / bc1);
      if (has_master) it.param.copy_(w);
    }
  }
}

const kernels::AdamWStepScalars* Adam::replay_step(size_t group_index,
                                                   std::vector<std::string> param_names,
                                                   const std::vector<Tensor>& exp_avgs,
                                                   Device device) {
  std::vector<const void*> moments;
  for (const Tensor& m : exp_avgs) moments.push_back(m.data_ptr());
  const std::string kind = name();
  const AdamOptions captured_options = options_;
  auto fill = [this, alive = std::weak_ptr<const bool>(alive_), kind, group_index,
               param_names = std::move(param_names), moments = std::move(moments),
               captured_options](uint64_t* words) {
    LATHE_CHECK(!alive.expired(), "CudaGraph::replay: the ", kind,
                " optimizer whose step the graph captured has been destroyed");
    const ParamGroup& group = groups_[group_index];
    const char* who = "CudaGraph::replay of a captured optimizer step";
    LATHE_CHECK(std::isfinite(group.lr) && group.lr >= 0 && std::isfinite(group.weight_decay) &&
                    group.weight_decay >= 0,
                who, ": group '", group.name, "' has lr ", group.lr, " and weight_decay ",
                group.weight_decay, " (must be finite and >= 0)");
    // Validate everything before advancing any step count. (Betas and eps are the capture's: only
    // load_state_dict changes them, and it replaces the state, which is caught here.)
    std::vector<ParamState*> states;
    for (size_t k = 0; k < param_names.size(); ++k) {
      auto it = state_.find(param_names[k]);
      LATHE_CHECK(it != state_.end() && it->second.tensors.count("exp_avg") &&
                      it->second.tensors.at("exp_avg").data_ptr() == moments[k],
                  who, ": the ", kind, " state of parameter '", param_names[k],
                  "' was replaced since the capture (load_state_dict); capture the step again");
      states.push_back(&it->second);
      LATHE_CHECK(states[k]->step == states[0]->step, who, ": parameters '", param_names[0],
                  "' and '", param_names[k], "' were captured at one step count but have taken ",
                  states[0]->step, " and ", states[k]->step,
                  " steps since (an eager step left one out)");
    }
    for (ParamState* st : states) ++st->step;
    const double t = double(states[0]->step);
    const kernels::AdamWStepScalars scalars = kernels::adamw_step_scalars(
        group.lr, group.weight_decay, 1.0 - std::pow(captured_options.beta1, t),
        1.0 - std::pow(captured_options.beta2, t));
    static_assert(sizeof(scalars) == 2 * sizeof(uint64_t));
    std::memcpy(words, &scalars, sizeof(scalars));
  };
  uint64_t* slot = lathe::detail::replay_slot(device, 2, std::move(fill));
  return reinterpret_cast<const kernels::AdamWStepScalars*>(slot);
}

std::map<std::string, double> Adam::hyperparameters() const {
  return {{"beta1", options_.beta1}, {"beta2", options_.beta2}, {"eps", options_.eps}};
}

void Adam::set_hyperparameters(const std::map<std::string, double>& v) {
  AdamOptions o = options_;
  o.beta1 = v.at("beta1");
  o.beta2 = v.at("beta2");
  o.eps = v.at("eps");
  check_options(o, name());
  options_ = o;
}

std::map<std::string, DType> Adam::state_keys(DType param_dtype) const {
  std::map<std::string, DType> keys{{"exp_avg", state_dtype(param_dtype)},
                                    {"exp_avg_sq", state_dtype(param_dtype)}};
  if (is_16bit(param_dtype)) keys["master"] = DType::F32;
  return keys;
}

}  // namespace lathe::optim
