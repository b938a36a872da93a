// clip_grad_norm_ as torch.nn.utils.clip_grad_norm_. The gradients of each device go to the
// multi-tensor kernels (kernels/kernel_api.h: one norm partial per tensor in f64 from one or two
// launches, then one scaling launch), the way PyTorch's foreach path works: a BERT has ~200
// parameters, and a square, a sum and a cast per tensor were 600 launches per step on a GPU.
// Devices without those kernels, and non-contiguous gradients, take the composed path: each
// gradient reduced on its device to one 0-dim partial, the partials stacked and reduced there.
// The total norm and the clipping coefficient are computed with tensor ops on the device and the
// scaling kernel reads the coefficient there, so on cuda nothing waits for the device (a training
// step makes no host wait; tests/cuda/test_multi_tensor.cpp). Only gradients spread over several
// devices copy partials between them.
#include <cmath>
#include <utility>
#include <vector>

#include "core/tensor_internal.h"
#include "lathe/optim/optimizer.h"

namespace lathe::optim {

namespace {

// The composed path: one partial per gradient, stacked and reduced on the device.
Tensor composed_partial(const std::vector<Tensor>& grads, double norm_type, bool inf_norm) {
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
  return inf_norm ? all.max() : all.sum();
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

// The sum of |g|^p over the gradients of one device (max |g| for the inf-norm), as a 0-dim f64
// tensor on that device.
Tensor device_partial(const std::vector<Tensor>& list, double norm_type, bool inf_norm) {
  const Device device = list.front().device();
  const auto norm_fn = kernels::kernel_table(device).multi_tensor_norm;
  if (!norm_fn || !all_contiguous(list)) return composed_partial(list, norm_type, inf_norm);
  const std::vector<kernels::MultiTensor> tensors = multi_tensors(list);
  const TensorOptions f64 = TensorOptions(DType::F64).device(device);
  const Tensor norms = empty({int64_t(tensors.size())}, f64);
  Tensor partial = empty({}, f64);
  kernels::MultiTensorNormArgs args;
  args.tensors = tensors.data();
  args.count = int64_t(tensors.size());
  args.norm_type = norm_type;
  args.norms = static_cast<double*>(norms.data_ptr());
  args.total = static_cast<double*>(partial.data_ptr());
  norm_fn(args);
  return partial;
}

// Multiplies the gradients of one device by `coef` (0-dim f64 on that device) unless it is >= 1.
void scale_device(const std::vector<Tensor>& list, const Tensor& coef) {
  const auto scale_fn = kernels::kernel_table(list.front().device()).multi_tensor_scale;
  if (scale_fn && all_contiguous(list)) {
    const std::vector<kernels::MultiTensor> tensors = multi_tensors(list);
    scale_fn(tensors.data(), int64_t(tensors.size()), static_cast<const double*>(coef.data_ptr()));
    return;
  }
  // min(coef, 1) keeps a NaN; multiplying by 1 leaves every value's bits as they are.
  const Tensor clamped = clamp(coef, std::nullopt, 1.0);
  for (Tensor g : list) g.copy_(g * clamped.to(g.dtype()));
}

}  // namespace

Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  LATHE_CHECK(!std::isnan(norm_type) && norm_type > 0, "clip_grad_norm_: norm_type must be ",
              "positive (or infinity), got ", norm_type);
  LATHE_CHECK(!std::isnan(max_norm), "clip_grad_norm_: max_norm is NaN");
  NoGradGuard no_grad;
  const bool inf_norm = std::isinf(norm_type);
  // Devices in the order their first gradient appears: the first is where the total lives, as in
  // PyTorch.
  std::vector<std::pair<Device, std::vector<Tensor>>> by_device;
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    const Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    LATHE_CHECK(is_floating(g.dtype()), "clip_grad_norm_: gradient ", detail::describe(g),
                " is not floating");
    auto it = by_device.begin();
    while (it != by_device.end() && !(it->first == g.device())) ++it;
    if (it == by_device.end()) {
      by_device.push_back({g.device(), {g}});
    } else {
      it->second.push_back(g);
    }
  }
  if (by_device.empty()) return scalar_tensor(0.0, TensorOptions(DType::F64));
  const Device first = by_device.front().first;
  std::vector<Tensor> partials;
  for (const auto& [device, list] : by_device) {
    partials.push_back(device_partial(list, norm_type, inf_norm).to(first));
  }
  Tensor acc = partials.front();
  if (partials.size() > 1) {
    // A stacked sum adds in order from 0, as the loop over devices this replaced; max keeps NaN.
    const Tensor all = stack(partials);
    acc = inf_norm ? all.max() : all.sum();
  }
  const Tensor total = inf_norm ? acc : pow(acc, 1.0 / norm_type);
  // PyTorch's formula, in the same f64 operations as on the host: max_norm / (total + 1e-6).
  const Tensor coef = max_norm / (total + 1e-6);
  for (const auto& [device, list] : by_device) scale_device(list, coef.to(device));
  return total;
}

Tensor clip_grad_norm_(const NamedParameters& named, double max_norm, double norm_type) {
  std::vector<Tensor> params;
  for (const auto& [name, t] : named) params.push_back(t);
  return clip_grad_norm_(params, max_norm, norm_type);
}

Tensor clip_grad_norm_(const Optimizer& optimizer, double max_norm, double norm_type) {
  std::vector<Tensor> params;
  for (const ParamGroup& g : optimizer.param_groups()) {
    params.insert(params.end(), g.params.begin(), g.params.end());
  }
  return clip_grad_norm_(params, max_norm, norm_type);
}

}  // namespace lathe::optim
