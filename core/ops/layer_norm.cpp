// layer_norm: the fused op (one kernel each way, mean/rstd saved in the accumulation type) and
// layer_norm_slow, its composite twin built from mean, var, rsqrt, mul and add whose gradient comes
// from autograd of those primitives. Tests hold the two against each other.
//
// Normalized shape: the trailing weight.dim() dims of x; without a weight the trailing bias.dim()
// dims; with neither, the last dim. x is viewed as [rows, cols] with cols = product of those dims.
#include "core/tensor_internal.h"

namespace lathe {

namespace {

struct LayerNormShape {
  int64_t normalized_dims = 1;
  int64_t rows = 0, cols = 0;
};

LayerNormShape check_layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                double eps, const char* op) {
  detail::check_defined(x, op, "x");
  LATHE_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64, op,
              ": expected an f32 or f64 input, got ", detail::describe(x));
  LATHE_CHECK(eps >= 0.0, op, ": eps must be non-negative, got ", eps);
  LayerNormShape s;
  const Tensor& param = weight.defined() ? weight : bias;
  if (param.defined()) s.normalized_dims = param.dim();
  if (weight.defined() && bias.defined()) {
    LATHE_CHECK(weight.shape() == bias.shape(), op, ": weight ", detail::describe(weight),
                " and bias ", detail::describe(bias), " must have the same shape");
  }
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    detail::check_same_device(x, *p, op);
    detail::check_same_dtype(x, *p, op);
  }
  LATHE_CHECK(s.normalized_dims >= 1, op, ": weight/bias must have at least one dim, got ",
              detail::describe(param));
  LATHE_CHECK(x.dim() >= s.normalized_dims, op, ": input ", detail::describe(x),
              " has fewer dims than the normalized shape ",
              param.defined() ? shape_str(param.shape()) : std::string("[last dim]"));
  const Shape trailing(x.shape().end() - s.normalized_dims, x.shape().end());
  if (param.defined()) {
    LATHE_CHECK(trailing == param.shape(), op, ": weight/bias shape ", shape_str(param.shape()),
                " does not match the trailing dims ", shape_str(trailing), " of input ",
                detail::describe(x));
  }
  s.cols = shape_numel(trailing);
  s.rows = s.cols == 0 ? 0 : x.numel() / s.cols;
  return s;
}

const void* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr() : nullptr;
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "layer_norm";
  if (auto cast = detail::autocast_inputs(op, {&x, &weight, &bias})) {
    NoAutocastGuard inside;
    return layer_norm((*cast)[0], (*cast)[1], (*cast)[2], eps);
  }
  LayerNormShape s = check_layer_norm(x, weight, bias, eps, op);
  // Devices without the fused kernel use the composite twin (same values, autograd gradients).
  if (!detail::kernels_of(x).layer_norm_forward) return layer_norm_slow(x, weight, bias, eps);
  const TensorOptions opts = TensorOptions(x.dtype()).device(x.device());
  Tensor out = empty(x.shape(), opts);
  if (x.numel() == 0) {
    // Nothing to normalize; still connect the graph so gradients (zeros) reach the inputs.
    if (autograd::any_requires_grad({&x, &weight, &bias})) {
      autograd::record(op, {x, weight, bias}, {out}, [](const std::vector<Tensor>&) {
        return std::vector<Tensor>{Tensor(), Tensor(), Tensor()};
      });
    }
    return out;
  }
  Tensor xc = x.detach().contiguous();
  Tensor w = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  // Statistics in the accumulation type, which equals the data type for f32 and f64.
  Tensor mean = empty({s.rows}, opts);
  Tensor rstd = empty({s.rows}, opts);

  kernels::LayerNormForwardArgs args;
  args.dtype = x.dtype();
  args.rows = s.rows;
  args.cols = s.cols;
  args.x = xc.data_ptr();
  args.weight = data_or_null(w);
  args.bias = data_or_null(b);
  args.y = out.data_ptr();
  args.mean = mean.data_ptr();
  args.rstd = rstd.data_ptr();
  args.eps = eps;
  LATHE_KERNEL(x.device(), layer_norm_forward, op)(args);

  if (autograd::any_requires_grad({&x, &weight, &bias})) {
    const bool need_x = x.requires_grad();
    const bool need_w = weight.defined() && weight.requires_grad();
    const bool need_b = bias.defined() && bias.requires_grad();
    autograd::record(
        op, {x, weight, bias}, {out},
        [saved_x = autograd::SavedTensor(xc, op), saved_w = autograd::SavedTensor(w, op), mean,
         rstd, s, need_x, need_w, need_b](const std::vector<Tensor>& g) {
          const Tensor& xs = saved_x.get();
          Tensor ws = saved_w.defined() ? saved_w.get() : Tensor();
          const TensorOptions o = TensorOptions(xs.dtype()).device(xs.device());
          Tensor gy = g[0].to(xs.dtype()).contiguous();
          Tensor gx = need_x ? empty(xs.shape(), o) : Tensor();
          const Shape param_shape(xs.shape().end() - s.normalized_dims, xs.shape().end());
          Tensor gw = need_w ? empty(param_shape, o) : Tensor();
          Tensor gb = need_b ? empty(param_shape, o) : Tensor();
          kernels::LayerNormBackwardArgs bargs;
          bargs.dtype = xs.dtype();
          bargs.rows = s.rows;
          bargs.cols = s.cols;
          bargs.x = xs.data_ptr();
          bargs.weight = data_or_null(ws);
          bargs.mean = mean.data_ptr();
          bargs.rstd = rstd.data_ptr();
          bargs.grad_y = gy.data_ptr();
          bargs.grad_x = need_x ? gx.data_ptr() : nullptr;
          bargs.grad_weight = need_w ? gw.data_ptr() : nullptr;
          bargs.grad_bias = need_b ? gb.data_ptr() : nullptr;
          LATHE_KERNEL(xs.device(), layer_norm_backward, "layer_norm backward")(bargs);
          return std::vector<Tensor>{gx, gw, gb};
        });
  }
  return out;
}

Tensor layer_norm_slow(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  if (auto cast = detail::autocast_inputs("layer_norm_slow", {&x, &weight, &bias})) {
    NoAutocastGuard inside;
    return layer_norm_slow((*cast)[0], (*cast)[1], (*cast)[2], eps);
  }
  LayerNormShape s = check_layer_norm(x, weight, bias, eps, "layer_norm_slow");
  std::vector<int64_t> dims;
  for (int64_t d = x.dim() - s.normalized_dims; d < x.dim(); ++d) dims.push_back(d);
  Tensor mu = mean(x, dims, /*keepdim=*/true);
  Tensor centered = x - mu;
  Tensor variance = var(x, dims, /*keepdim=*/true, /*correction=*/0);
  Tensor y = centered * rsqrt(variance + eps);
  if (weight.defined()) y = y * weight;
  if (bias.defined()) y = y + bias;
  return y;
}

}  // namespace lathe
