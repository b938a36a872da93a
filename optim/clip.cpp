// clip_grad_norm_ as torch.nn.utils.clip_grad_norm_. The gradients of each device go to the
// multi-tensor kernels (kernels/kernel_api.h: one norm partial per tensor in f64 from one or two
// launches, then one scaling launch), the way PyTorch's foreach path works: a BERT has ~200
// parameters, and a square, a sum and a cast per tensor were 600 launches per step on a GPU.
// Devices without those kernels, and non-contiguous gradients, take the composed path: each
// gradient reduced on its device to one 0-dim partial, the partials stacked and reduced there.
// Either way the host waits once per device.
#include <cmath>
#include <limits>
#include <map>

#include "core/tensor_internal.h"
#include "lathe/optim/optimizer.h"

namespace lathe::optim {

namespace {

// The composed path: one partial per gradient, stacked and reduced on the device.
double composed_partial(const std::vector<Tensor>& grads, double norm_type, bool inf_norm) {
  std::vector<Tensor> parts;
  for (const Tensor& g : grads) {
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
    parts.push_back(part.to(DType::F64));
  }
  const Tensor all = stack(parts);
  return inf_norm ? all.max().item<double>() : all.sum().item<double>();
}

std::vector<kernels::MultiTensor> multi_tensors(const std::vector<Tensor>& grads) {
  std::vector<kernels::MultiTensor> list;
  for (const Tensor& g : grads) list.push_back({g.data_ptr(), g.numel(), g.dtype()});
  return list;
}

bool all_contiguous(const std::vector<Tensor>& grads) {
  for (const Tensor& g : grads) {
    if (!g.is_contiguous()) return false;
  }
  return true;
}

}  // namespace

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  LATHE_CHECK(!std::isnan(norm_type) && norm_type > 0, "clip_grad_norm_: norm_type must be ",
              "positive (or infinity), got ", norm_type);
  LATHE_CHECK(!std::isnan(max_norm), "clip_grad_norm_: max_norm is NaN");
  NoGradGuard no_grad;
  const bool inf_norm = std::isinf(norm_type);
  std::vector<Tensor> grads;
  std::map<std::string, std::vector<Tensor>> by_device;
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    const Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    LATHE_CHECK(is_floating(g.dtype()), "clip_grad_norm_: gradient ", detail::describe(g),
                " is not floating");
    grads.push_back(g);
    by_device[g.device().str()].push_back(g);
  }
  if (grads.empty()) return 0.0;
  double acc = 0.0;
  auto add = [&](double v) {
    if (std::isnan(acc)) return;
    acc = std::isnan(v) ? v : inf_norm ? std::max(acc, v) : acc + v;  // max would drop a NaN
  };
  for (const auto& [device, list] : by_device) {
    const auto norm_fn = kernels::kernel_table(list.front().device().type).multi_tensor_norm;
    if (norm_fn && all_contiguous(list)) {
      const std::vector<kernels::MultiTensor> tensors = multi_tensors(list);
      std::vector<double> norms(tensors.size());
      kernels::MultiTensorNormArgs args;
      args.tensors = tensors.data();
      args.count = int64_t(tensors.size());
      args.norm_type = norm_type;
      args.norms = norms.data();
      norm_fn(args);
      double v = 0.0;
      for (double n : norms) {
        v = std::isnan(v) || std::isnan(n) ? std::numeric_limits<double>::quiet_NaN()
            : inf_norm                     ? std::max(v, n)
                                           : v + n;
      }
      add(v);
    } else {
      add(composed_partial(list, norm_type, inf_norm));
    }
  }
  const double total = inf_norm ? acc : std::pow(acc, 1.0 / norm_type);
  const double coef = max_norm / (total + 1e-6);
  // Only a coefficient below 1 changes anything (PyTorch multiplies by the coefficient clamped to
  // 1); NaN fails the test on purpose, so a NaN norm poisons the gradients as in PyTorch.
  if (!(coef >= 1.0)) {
    for (const auto& [device, list] : by_device) {
      const auto scale_fn = kernels::kernel_table(list.front().device().type).multi_tensor_scale;
      if (scale_fn && all_contiguous(list)) {
        const std::vector<kernels::MultiTensor> tensors = multi_tensors(list);
        scale_fn(tensors.data(), int64_t(tensors.size()), coef);
      } else {
        for (Tensor g : list) g.mul_(coef);
      }
    }
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
