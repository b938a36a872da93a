// layer_norm: the fused op (one kernel each way, mean/rstd saved in the accumulation type) and
// layer_norm_slow, its composite twin built from mean, var, rsqrt, mul and add whose gradient comes
// from autograd of those primitives. Tests hold the two against each other. add_layer_norm fuses a
// residual add into the forward (post-LN transformer blocks). f16/bf16 are storage types: the cuda
// kernels compute in f32 registers, the cpu widens to f32 and rounds the result once.
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
  LATHE_CHECK(is_floating(x.dtype()), op, ": expected a floating input (f32, f64, f16, bf16), got ",
              detail::describe(x));
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

Tensor widened(const Tensor& t) {
  return t.defined() ? t.to(DType::F32) : Tensor();
}

// Saved statistics: f64 for f64 data, f32 otherwise (f16/bf16 are storage types).
DType stats_dtype(DType t) {
  return t == DType::F64 ? DType::F64 : DType::F32;
}

// The contiguous inputs and the statistics outputs of the forward kernel of layer_norm and
// add_layer_norm (statistics in the accumulation type: f32 for f32/f16/bf16, f64 for f64).
struct ForwardInputs {
  Tensor x, w, b, mean, rstd;
  LayerNormShape s;
  ForwardInputs(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                const LayerNormShape& shape)
      : x(x_in.detach().contiguous()),
        w(weight.defined() ? weight.detach().contiguous() : Tensor()),
        b(bias.defined() ? bias.detach().contiguous() : Tensor()),
        s(shape) {
    const TensorOptions stat_opts = TensorOptions(stats_dtype(x.dtype())).device(x.device());
    mean = empty({s.rows}, stat_opts);
    rstd = empty({s.rows}, stat_opts);
  }
  // The kernel arguments both forwards share (LayerNormForwardArgs, AddLayerNormForwardArgs).
  template <class Args>
  Args args(const Tensor& out, double eps) const {
    Args a;
    a.dtype = x.dtype();
    a.rows = s.rows;
    a.cols = s.cols;
    a.x = x.data_ptr();
    a.weight = data_or_null(w);
    a.bias = data_or_null(b);
    a.y = out.data_ptr();
    a.mean = mean.data_ptr();
    a.rstd = rstd.data_ptr();
    a.eps = eps;
    return a;
  }
};

// The backward of layer_norm and add_layer_norm: the layer_norm_backward kernel on the normalized
// input `xs` (add_layer_norm's saved sum), gradients of dtype xs.dtype().
struct LayerNormBackwardInputs {
  LayerNormShape s;
  bool need_x = false, need_w = false, need_b = false;
};

std::vector<Tensor> layer_norm_backward_of(const Tensor& xs, const Tensor& ws, const Tensor& mean,
                                           const Tensor& rstd, const Tensor& grad,
                                           const LayerNormBackwardInputs& in) {
  const LayerNormShape& s = in.s;
  const TensorOptions o = TensorOptions(xs.dtype()).device(xs.device());
  Tensor gy = grad.to(xs.dtype()).contiguous();
  Tensor gx = in.need_x ? empty(xs.shape(), o) : Tensor();
  const Shape param_shape(xs.shape().end() - s.normalized_dims, xs.shape().end());
  Tensor gw = in.need_w ? empty(param_shape, o) : Tensor();
  Tensor gb = in.need_b ? empty(param_shape, o) : Tensor();
  kernels::LayerNormBackwardArgs bargs;
  bargs.dtype = xs.dtype();
  bargs.rows = s.rows;
  bargs.cols = s.cols;
  bargs.x = xs.data_ptr();
  bargs.weight = data_or_null(ws);
  bargs.mean = mean.data_ptr();
  bargs.rstd = rstd.data_ptr();
  bargs.grad_y = gy.data_ptr();
  bargs.grad_x = in.need_x ? gx.data_ptr() : nullptr;
  bargs.grad_weight = in.need_w ? gw.data_ptr() : nullptr;
  bargs.grad_bias = in.need_b ? gb.data_ptr() : nullptr;
  LATHE_KERNEL(xs.device(), layer_norm_backward, "layer_norm backward")(bargs);
  return {gx, gw, gb};
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
  // f16/bf16 on the cpu, whose kernels only store them: the f32 op on the widened values, rounded
  // once (what the cuda kernels do in registers); autograd goes through the casts.
  if (detail::half_via_f32(x)) {
    return layer_norm(x.to(DType::F32), widened(weight), widened(bias), eps).to(x.dtype());
  }
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
  const ForwardInputs f(x, weight, bias, s);
  const Tensor &xc = f.x, &w = f.w, &mean = f.mean, &rstd = f.rstd;
  auto args = f.args<kernels::LayerNormForwardArgs>(out, eps);
  LATHE_KERNEL(x.device(), layer_norm_forward, op)(args);

  if (autograd::any_requires_grad({&x, &weight, &bias})) {
    const bool need_x = x.requires_grad();
    const bool need_w = weight.defined() && weight.requires_grad();
    const bool need_b = bias.defined() && bias.requires_grad();
    autograd::record(
        op, {x, weight, bias}, {out},
        [saved_x = autograd::SavedTensor(xc, op), saved_w = autograd::SavedTensor(w, op), mean,
         rstd,
         in = LayerNormBackwardInputs{s, need_x, need_w, need_b}](const std::vector<Tensor>& g) {
          Tensor ws = saved_w.defined() ? saved_w.get() : Tensor();
          return layer_norm_backward_of(saved_x.get(), ws, mean, rstd, g[0], in);
        });
  }
  return out;
}

// y = layer_norm(x + residual). One kernel forward (add_layer_norm_forward) reads x and residual
// once and writes y, plus the sum s = x + residual (rounded to the dtype, as a separate add would
// store it) when a backward will run; the backward is layer_norm's kernel on the saved s, and the
// gradient of x and of residual are the same tensor. Saving s rather than recomputing it from x and
// residual in backward costs one write forward and saves two reads backward (the dx pass and the
// parameter pass each read s once instead of x and residual), and the memory is the same: s is
// kept instead of x (the residual is kept by its own consumers anyway).
Tensor add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                      const Tensor& bias, double eps) {
  const char* op = "add_layer_norm";
  if (auto cast = detail::autocast_inputs(op, {&x, &residual, &weight, &bias})) {
    NoAutocastGuard inside;
    return add_layer_norm((*cast)[0], (*cast)[1], (*cast)[2], (*cast)[3], eps);
  }
  detail::check_defined(x, op, "x");
  detail::check_defined(residual, op, "residual");
  detail::check_same_device(x, residual, op);
  LATHE_CHECK(x.shape() == residual.shape(), op, ": x ", detail::describe(x), " and residual ",
              detail::describe(residual), " must have the same shape");
  detail::check_same_dtype(x, residual, op);
  const LayerNormShape s = check_layer_norm(x, weight, bias, eps, op);
  const kernels::KernelTable& k = detail::kernels_of(x);
  // Without the fused kernel, and for f16/bf16 on the cpu (whose layer_norm widens them): the add
  // (rounded to the dtype), then layer_norm, which computes the same values.
  if (!k.add_layer_norm_forward || !k.layer_norm_backward || detail::half_via_f32(x)) {
    return layer_norm(x + residual, weight, bias, eps);
  }
  const TensorOptions opts = TensorOptions(x.dtype()).device(x.device());
  Tensor out = empty(x.shape(), opts);
  const bool grad = autograd::any_requires_grad({&x, &residual, &weight, &bias});
  if (x.numel() == 0) {
    if (grad) {
      autograd::record(op, {x, residual, weight, bias}, {out}, [](const std::vector<Tensor>&) {
        return std::vector<Tensor>{Tensor(), Tensor(), Tensor(), Tensor()};
      });
    }
    return out;
  }
  const ForwardInputs f(x, weight, bias, s);
  const Tensor &w = f.w, &mean = f.mean, &rstd = f.rstd;
  Tensor rc = residual.detach().contiguous();
  Tensor sum = grad ? empty(x.shape(), opts) : Tensor();
  auto args = f.args<kernels::AddLayerNormForwardArgs>(out, eps);
  args.residual = rc.data_ptr();
  args.sum = sum.defined() ? sum.data_ptr() : nullptr;
  LATHE_KERNEL(x.device(), add_layer_norm_forward, op)(args);

  if (grad) {
    const bool need_x = x.requires_grad(), need_r = residual.requires_grad();
    const bool need_w = weight.defined() && weight.requires_grad();
    const bool need_b = bias.defined() && bias.requires_grad();
    autograd::record(
        op, {x, residual, weight, bias}, {out},
        [saved_sum = autograd::SavedTensor(sum, op), saved_w = autograd::SavedTensor(w, op), mean,
         rstd, need_x, need_r, in = LayerNormBackwardInputs{s, need_x || need_r, need_w, need_b}](
            const std::vector<Tensor>& g) {
          Tensor ws = saved_w.defined() ? saved_w.get() : Tensor();
          std::vector<Tensor> r = layer_norm_backward_of(saved_sum.get(), ws, mean, rstd, g[0], in);
          return std::vector<Tensor>{need_x ? r[0] : Tensor(), need_r ? r[0] : Tensor(), r[1],
                                     r[2]};
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
