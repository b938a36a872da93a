// SGD with momentum, dampening, Nesterov and L2 weight decay, following torch.optim.SGD's
// single-tensor implementation step for step (the first momentum step copies the gradient into
// the buffer without dampening, as PyTorch does).
#include <cmath>

#include "core/graph_internal.h"
#include "core/tensor_internal.h"
#include "lathe/optim/optimizer.h"

namespace lathe::optim {

namespace {

void check_options(const SGDOptions& o) {
  LATHE_CHECK(std::isfinite(o.momentum) && o.momentum >= 0, "SGD: invalid momentum ", o.momentum,
              " (must be finite and >= 0)");
  LATHE_CHECK(std::isfinite(o.dampening), "SGD: invalid dampening ", o.dampening);
  LATHE_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "SGD: Nesterov momentum ",
              "needs momentum > 0 and dampening 0, got momentum ", o.momentum, " and dampening ",
              o.dampening);
}

std::vector<ParamGroup> check_dtypes(std::vector<ParamGroup> groups) {
  for (const ParamGroup& g : groups) {
    for (size_t i = 0; i < g.params.size(); ++i) {
      const Tensor& p = g.params[i];
      LATHE_CHECK(!p.defined() || p.dtype() == DType::F32 || p.dtype() == DType::F64,
                  "SGD: parameter '", i < g.param_names.size() ? g.param_names[i] : "", "' is ",
                  detail::describe(p),
                  "; SGD updates f32 and f64 parameters (Adam/AdamW keep f32 master weights for "
                  "16-bit ones)");
    }
  }
  return groups;
}

}  // namespace

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions options)
    : Optimizer(check_dtypes(std::move(groups)), "SGD"), options_(options) {
  check_options(options_);
}

SGD::SGD(const NamedParameters& named, SGDOptions options)
    : SGD(std::vector<ParamGroup>{make_param_group(named, options.lr, options.weight_decay)},
          options) {}

void SGD::step() {
  check_groups("SGD step");
  check_options(options_);
  NoGradGuard no_grad;
  const double momentum = options_.momentum, dampening = options_.dampening;
  // Every gradient is checked before any parameter changes, so an error leaves all as it was.
  for (const ParamGroup& group : groups_) {
    for (size_t i = 0; i < group.params.size(); ++i) {
      const Tensor& p = group.params[i];
      const Tensor g = p.grad();
      LATHE_CHECK(!g.defined() || (g.shape() == p.shape() && g.device() == p.device()),
                  "SGD step: gradient of '", group.param_names[i], "' is ", detail::describe(g),
                  ", parameter ", detail::describe(p));
      // Its lr would be a kernel argument, repeated by every replay (AdamW reads it per replay).
      LATHE_CHECK(!g.defined() || !detail::capturing_device(p.device()),
                  "SGD step inside CudaGraph::capture (parameter '", group.param_names[i], "' on ",
                  p.device().str(),
                  "): every replay would repeat the captured lr; capture AdamW::step instead");
    }
  }
  for (ParamGroup& group : groups_) {
    for (size_t i = 0; i < group.params.size(); ++i) {
      Tensor& p = group.params[i];
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (g.dtype() != p.dtype()) g = g.to(p.dtype());
      ParamState& st = state_[group.param_names[i]];
      ++st.step;
      if (group.weight_decay != 0) g = g + p * group.weight_decay;
      if (momentum != 0) {
        auto it = st.tensors.find("momentum_buffer");
        if (it == st.tensors.end()) {
          Tensor buf = g.clone();
          st.tensors["momentum_buffer"] = buf;
          g = options_.nesterov ? g + buf * momentum : buf;
        } else {
          Tensor& buf = it->second;
          buf.mul_(momentum).add_(g, 1.0 - dampening);
          g = options_.nesterov ? g + buf * momentum : buf;
        }
      }
      p.add_(g, -group.lr);
    }
  }
}

std::map<std::string, double> SGD::hyperparameters() const {
  return {{"momentum", options_.momentum},
          {"dampening", options_.dampening},
          {"nesterov", options_.nesterov ? 1.0 : 0.0}};
}

void SGD::set_hyperparameters(const std::map<std::string, double>& v) {
  SGDOptions o = options_;
  o.momentum = v.at("momentum");
  o.dampening = v.at("dampening");
  o.nesterov = v.at("nesterov") != 0.0;
  check_options(o);
  options_ = o;
}

std::map<std::string, DType> SGD::state_keys(DType param_dtype) const {
  return {{"momentum_buffer", param_dtype}};
}

}  // namespace lathe::optim
