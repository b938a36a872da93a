// clip_grad_norm_ as torch.nn.utils.clip_grad_norm_. Each gradient is reduced on its own device
// to one 0-dim partial (sum of |g|^p, or max |g|); the partials of a device are stacked and
// reduced there, so the host waits once per device instead of once per parameter.
#include <cmath>
#include <limits>
#include <map>

#include "core/tensor_internal.h"
#include "lathe/optim/optimizer.h"

namespace lathe::optim {

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  LATHE_CHECK(!std::isnan(norm_type) && norm_type > 0, "clip_grad_norm_: norm_type must be ",
              "positive (or infinity), got ", norm_type);
  LATHE_CHECK(!std::isnan(max_norm), "clip_grad_norm_: max_norm is NaN");
  NoGradGuard no_grad;
  const bool inf_norm = std::isinf(norm_type);
  std::vector<Tensor> grads;
  std::map<std::string, std::vector<Tensor>> partials;  // by device
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    const Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    LATHE_CHECK(is_floating(g.dtype()), "clip_grad_norm_: gradient ", detail::describe(g),
                " is not floating");
    grads.push_back(g);
    // 16-bit storage types have no arithmetic kernels on every device; reduce them in f32.
    const Tensor x = g.dtype() == DType::F16 || g.dtype() == DType::BF16 ? g.to(DType::F32) : g;
    Tensor part;
    if (inf_norm) {
      part = max(abs(x));
    } else if (norm_type == 2.0) {
      part = sum(x * x);
    } else if (norm_type == 1.0) {
      part = sum(abs(x));
    } else {
      part = sum(pow(abs(x), norm_type));
    }
    partials[g.device().str()].push_back(part.to(DType::F64));
  }
  if (grads.empty()) return 0.0;
  double acc = 0.0;
  for (const auto& [device, parts] : partials) {
    const Tensor all = stack(parts);
    const double v = inf_norm ? all.max().item<double>() : all.sum().item<double>();
    acc = inf_norm ? std::max(acc, v) : acc + v;
    if (std::isnan(v)) acc = v;  // std::max would drop a NaN
  }
  const double total = inf_norm ? acc : std::pow(acc, 1.0 / norm_type);
  const double coef = max_norm / (total + 1e-6);
  // Only a coefficient below 1 changes anything (PyTorch multiplies by the coefficient clamped to
  // 1); NaN fails the test on purpose, so a NaN norm poisons the gradients as in PyTorch.
  if (!(coef >= 1.0)) {
    for (Tensor& g : grads) g.mul_(coef);
  }
  return total;
}

double clip_grad_norm_(const NamedParameters& named, double max_norm, double norm_type) {
  std::vector<Tensor> params;
  for (const auto& [name, t] : named) params.push_back(t);
  return clip_grad_norm_(params, max_norm, norm_type);
}

double clip_grad_norm_(const Optimizer& optimizer, double max_norm, double norm_type) {
  std::vector<Tensor> params;
  for (const ParamGroup& g : optimizer.param_groups()) {
    params.insert(params.end(), g.params.begin(), g.params.end());
  }
  return clip_grad_norm_(params, max_norm, norm_type);
}

}  // namespace lathe::optim
