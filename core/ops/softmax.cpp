// softmax and log_softmax along any dim. The kernels work on the last dim of contiguous rows, so
// another dim is swapped to the end (transpose + contiguous copy), normalized, and swapped back
// into a contiguous result of the input's shape. The output is saved for backward (both gradients
// are functions of the output alone), which the softmax_backward kernel evaluates in the same
// transposed layout.
#include "core/tensor_internal.h"

namespace lathe {

namespace {

// The tensor with `dim` swapped to the last position, contiguous, cut from the graph.
Tensor to_rows(const Tensor& t, int64_t dim) {
  Tensor d = t.detach();
  if (dim != d.dim() - 1) d = d.transpose(dim, d.dim() - 1);
  return d.contiguous();
}

// The inverse of to_rows: a contiguous tensor in the original layout.
Tensor from_rows(const Tensor& rows, int64_t dim) {
  if (dim == rows.dim() - 1) return rows;
  return rows.transpose(dim, rows.dim() - 1).contiguous();
}

Tensor softmax_impl(const Tensor& x, int64_t dim_in, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  detail::check_defined(x, op, "x");
  LATHE_CHECK(is_floating(x.dtype()), op,
              ": expected a floating tensor (f32, f64, f16, bf16), got ", detail::describe(x));
  // A 0-dim tensor is treated as one row of one element (dim 0 or -1), as in PyTorch.
  Tensor x_nd = x.dim() == 0 ? x.detach().reshape({1}) : x;
  LATHE_CHECK(dim_in >= -x_nd.dim() && dim_in < x_nd.dim(), op, ": dim ", dim_in,
              " is out of range for ", detail::describe(x));
  const int64_t dim = wrap_dim(dim_in, x_nd.dim(), op);

  // A device without the fused kernels (the cuda device until its transformer kernels land)
  // composes the op from primitives; autograd differentiates the composition.
  if (!detail::kernels_of(x).softmax_forward) {
    if (x.numel() == 0) return x * 0.0;
    Tensor xs = x.dim() == 0 ? x.reshape({1}) : x;
    Tensor shifted = xs - xs.max({dim}, true).detach();
    Tensor log_p = shifted - lathe::log(lathe::exp(shifted).sum({dim}, true));
    Tensor out = log ? log_p : lathe::exp(log_p);
    return x.dim() == 0 ? out.reshape({}) : out;
  }

  // f16/bf16 on the cpu: the f32 op on the widened values, rounded once (the cuda kernels compute
  // in f32 registers); autograd goes through the casts.
  if (detail::half_via_f32(x)) return softmax_impl(x.to(DType::F32), dim_in, log).to(x.dtype());

  Tensor out;
  if (x.numel() == 0) {
    out = empty(x.shape(), TensorOptions(x.dtype()).device(x.device()));
  } else {
    Tensor xr = to_rows(x_nd, dim);
    Tensor yr = empty(xr.shape(), TensorOptions(x.dtype()).device(x.device()));
    LATHE_KERNEL(x.device(), softmax_forward, op)
    (detail::make_view(xr), detail::make_view(yr), log);
    out = from_rows(yr, dim);
    if (x.dim() == 0) out = out.reshape({});
  }
  if (autograd::any_requires_grad({&x})) {
    autograd::record(op, {x}, {out},
                     [saved = autograd::SavedTensor(out, op), dim, log, op,
                      scalar = x.dim() == 0](const std::vector<Tensor>& g) {
                       const Tensor& y = saved.get();
                       if (y.numel() == 0) return std::vector<Tensor>{zeros_like(y)};
                       Tensor y_nd = scalar ? y.reshape({1}) : y;
                       Tensor g_nd = scalar ? g[0].reshape({1}) : g[0];
                       Tensor yr = to_rows(y_nd, dim);
                       Tensor gr = to_rows(g_nd.to(y.dtype()), dim);
                       Tensor gxr = empty(yr.shape(), TensorOptions(y.dtype()).device(y.device()));
                       LATHE_KERNEL(y.device(), softmax_backward, op)
                       (detail::make_view(yr), detail::make_view(gr), detail::make_view(gxr), log);
                       Tensor gx = from_rows(gxr, dim);
                       return std::vector<Tensor>{scalar ? gx.reshape({}) : gx};
                     });
  }
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) {
  if (auto cast = detail::autocast_inputs("softmax", {&x})) {
    NoAutocastGuard inside;
    return softmax((*cast)[0], dim);
  }
  return softmax_impl(x, dim, false);
}
Tensor log_softmax(const Tensor& x, int64_t dim) {
  if (auto cast = detail::autocast_inputs("log_softmax", {&x})) {
    NoAutocastGuard inside;
    return log_softmax((*cast)[0], dim);
  }
  return softmax_impl(x, dim, true);
}

}  // namespace lathe
