// fused_adamw_: validates the tensor lists and hands raw pointers to the device's `adamw` kernel
// (kernels/cpu/adamw.cpp, kernels/cuda/adamw.cu). It writes through the pointers, so it bumps the
// storage versions itself, as the in-place Tensor methods do.
#include "lathe/optim/fused_adamw.h"

#include <cmath>

#include "core/graph_internal.h"
#include "core/tensor_internal.h"
#include "optim/fused_adamw_internal.h"

namespace lathe::optim {

namespace {

bool is_16bit(DType t) {
  return t == DType::F16 || t == DType::BF16;
}

}  // namespace

bool fused_adamw_supports(const Tensor& param, const Tensor& grad, std::string* why) {
  auto fail = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  if (param.dtype() != DType::F32 && !is_16bit(param.dtype())) {
    return fail("the parameter is " + detail::describe(param) +
                " (the kernel takes f32, f16, bf16)");
  }
  if (grad.dtype() != param.dtype()) {
    return fail("the gradient " + detail::describe(grad) +
                " has another dtype than the parameter " + detail::describe(param));
  }
  if (grad.device() != param.device()) {
    return fail("the gradient " + detail::describe(grad) +
                " is on another device than the parameter");
  }
  if (grad.shape() != param.shape()) {
    return fail("the gradient " + detail::describe(grad) +
                " has another shape than the parameter " + detail::describe(param));
  }
  if (!param.is_contiguous() || !grad.is_contiguous()) {
    return fail("the parameter or its gradient is not contiguous");
  }
  if (kernels::kernel_table(param.device().type).adamw == nullptr) {
    return fail("device " + param.device().str() + " has no 'adamw' kernel in this build");
  }
  return true;
}

void fused_adamw_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                  const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                  const std::vector<Tensor>& masters, const FusedAdamWStep& s) {
  LATHE_CHECK(params.empty() || !params[0].defined() ||
                  !lathe::detail::capturing_device(params[0].device()),
              "fused_adamw_ inside CudaGraph::capture: the graph would repeat this step's lr and "
              "step count at every replay; capture AdamW::step, which sets them per replay");
  internal::fused_adamw_launch(params, grads, exp_avgs, exp_avg_sqs, masters, s, nullptr);
}

void internal::fused_adamw_launch(const std::vector<Tensor>& params,
                                  const std::vector<Tensor>& grads,
                                  const std::vector<Tensor>& exp_avgs,
                                  const std::vector<Tensor>& exp_avg_sqs,
                                  const std::vector<Tensor>& masters, const FusedAdamWStep& s,
                                  const kernels::AdamWStepScalars* device_step_scalars) {
  const char* op = "fused_adamw_";
  const size_t n = params.size();
  LATHE_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n, op,
              ": expected as many grads, exp_avgs and exp_avg_sqs as params (", n, "), got ",
              grads.size(), ", ", exp_avgs.size(), " and ", exp_avg_sqs.size());
  LATHE_CHECK(s.step >= 1, op, ": step must be >= 1, got ", s.step);
  LATHE_CHECK(std::isfinite(s.lr) && std::isfinite(s.weight_decay) && std::isfinite(s.eps) &&
                  s.beta1 >= 0 && s.beta1 < 1 && s.beta2 >= 0 && s.beta2 < 1,
              op, ": invalid hyperparameters (lr ", s.lr, ", betas ", s.beta1, ", ", s.beta2,
              ", eps ", s.eps, ", weight_decay ", s.weight_decay, ")");
  if (n == 0) return;
  const DType dtype = params[0].dtype();
  const Device device = params[0].device();
  const bool need_master = is_16bit(dtype);
  LATHE_CHECK(masters.size() == (need_master ? n : 0), op, ": ", dtype, " params need ",
              need_master ? n : 0, " f32 master tensors, got ", masters.size());
  std::vector<kernels::AdamWTensor> list(n);
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = params[i];
    detail::check_defined(p, op, "params[i]");
    detail::check_defined(grads[i], op, "grads[i]");
    std::string why;
    LATHE_CHECK(fused_adamw_supports(p, grads[i], &why), op, ": params[", i, "]: ", why);
    LATHE_CHECK(p.dtype() == dtype && p.device() == device, op, ": params[", i, "] is ",
                detail::describe(p), " but params[0] is ", detail::describe(params[0]),
                " (one dtype and device per call)");
    auto check_state = [&](const Tensor& t, const char* what) {
      detail::check_defined(t, op, what);
      LATHE_CHECK(t.dtype() == DType::F32 && t.device() == device && t.shape() == p.shape() &&
                      t.is_contiguous(),
                  op, ": ", what, "[", i, "] must be a contiguous f32 tensor of the parameter's ",
                  "shape on its device; got ", detail::describe(t), " for parameter ",
                  detail::describe(p));
    };
    check_state(exp_avgs[i], "exp_avgs");
    check_state(exp_avg_sqs[i], "exp_avg_sqs");
    if (need_master) check_state(masters[i], "masters");
    list[i].param = p.data_ptr();
    list[i].grad = grads[i].data_ptr();
    list[i].exp_avg = static_cast<float*>(exp_avgs[i].data_ptr());
    list[i].exp_avg_sq = static_cast<float*>(exp_avg_sqs[i].data_ptr());
    list[i].master = need_master ? static_cast<float*>(masters[i].data_ptr()) : nullptr;
    list[i].numel = p.numel();
  }
  kernels::AdamWArgs args;
  args.param_dtype = dtype;
  args.tensors = list.data();
  args.count = static_cast<int64_t>(n);
  args.lr = s.lr;
  args.beta1 = s.beta1;
  args.beta2 = s.beta2;
  args.eps = s.eps;
  args.weight_decay = s.weight_decay;
  args.decoupled_weight_decay = s.decoupled_weight_decay;
  args.bias_correction1 = 1.0 - std::pow(s.beta1, double(s.step));
  args.bias_correction2 = 1.0 - std::pow(s.beta2, double(s.step));
  args.device_step_scalars = device_step_scalars;
  LATHE_KERNEL(device, adamw, op)(args);
  for (size_t i = 0; i < n; ++i) {
    params[i].storage()->bump_version();
    exp_avgs[i].storage()->bump_version();
    exp_avg_sqs[i].storage()->bump_version();
    if (need_master) masters[i].storage()->bump_version();
  }
}

}  // namespace lathe::optim
