// bias_gelu(x, bias) = gelu(x + bias) with bias broadcast over the last dim: the first half of a
// transformer's feed-forward block (Linear without its bias add, then this), one kernel each way.
// Forward reads x once and writes y; backward reads x and dy once, writes dx and reduces dbias
// in the same pass (kernels/cuda/bias_gelu.cu). x + bias is recomputed in backward instead of
// saved, so the op keeps only its inputs alive. A bias of another floating dtype is cast to x's
// first (under autocast a bf16 activation meets an f32 bias, as in linear). f16/bf16 compute in
// f32 (widened on the cpu) and round once; without the kernels the op is gelu(x + bias).
#include "core/tensor_internal.h"

namespace lathe {

namespace {

// The fields the forward and the backward kernel arguments share: x [rows, cols] and bias [cols]
// (contiguous, of x's dtype) and the form of GELU.
template <class Args>
Args bias_gelu_args(const Tensor& x, const Tensor& bias, int64_t rows, int64_t cols,
                    bool tanh_form) {
  Args a;
  a.dtype = x.dtype();
  a.rows = rows;
  a.cols = cols;
  a.x = x.data_ptr();
  a.bias = bias.data_ptr();
  a.tanh = tanh_form;
  return a;
}

}  // namespace

Tensor bias_gelu(const Tensor& x, const Tensor& bias, GeluApproximation approximate) {
  const char* op = "bias_gelu";
  detail::check_defined(x, op, "x");
  detail::check_defined(bias, op, "bias");
  detail::check_floating(x, op);
  detail::check_floating(bias, op);
  detail::check_same_device(x, bias, op);
  LATHE_CHECK(x.dim() >= 1 && bias.dim() == 1 && x.size(-1) == bias.size(0), op, ": bias ",
              detail::describe(bias), " must be 1-d with the size of the last dim of x ",
              detail::describe(x));
  const Tensor b = bias.dtype() == x.dtype() ? bias : bias.to(x.dtype());
  const kernels::KernelTable& k = detail::kernels_of(x);
  if (!k.bias_gelu_forward || !k.bias_gelu_backward || x.numel() == 0) {
    return gelu(x + b, approximate);
  }
  if (detail::half_via_f32(x) && x.dtype() != DType::BF16) {  // the cpu kernel takes bf16 itself
    return bias_gelu(x.to(DType::F32), b.to(DType::F32), approximate).to(x.dtype());
  }
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  const bool tanh_form = approximate == GeluApproximation::Tanh;
  const TensorOptions opts = TensorOptions(x.dtype()).device(x.device());
  Tensor xc = x.detach().contiguous();
  Tensor bc = b.detach().contiguous();
  Tensor out = empty(x.shape(), opts);
  auto args = bias_gelu_args<kernels::BiasGeluArgs>(xc, bc, rows, cols, tanh_form);
  args.y = out.data_ptr();
  LATHE_KERNEL(x.device(), bias_gelu_forward, op)(args);

  if (autograd::any_requires_grad({&x, &b})) {
    const bool need_x = x.requires_grad(), need_b = b.requires_grad();
    autograd::record(
        op, {x, b}, {out},
        [saved_x = autograd::SavedTensor(xc, op), saved_b = autograd::SavedTensor(bc, op), rows,
         cols, tanh_form, need_x, need_b](const std::vector<Tensor>& g) {
          const Tensor& xs = saved_x.get();
          const Tensor& bs = saved_b.get();
          const TensorOptions o = TensorOptions(xs.dtype()).device(xs.device());
          Tensor gy = g[0].to(xs.dtype()).contiguous();
          Tensor gx = need_x ? empty(xs.shape(), o) : Tensor();
          Tensor gb = need_b ? empty({cols}, o) : Tensor();
          auto bargs = bias_gelu_args<kernels::BiasGeluBackwardArgs>(xs, bs, rows, cols, tanh_form);
          bargs.grad_y = gy.data_ptr();
          bargs.grad_x = need_x ? gx.data_ptr() : nullptr;
          bargs.grad_bias = need_b ? gb.data_ptr() : nullptr;
          LATHE_KERNEL(xs.device(), bias_gelu_backward, "bias_gelu backward")(bargs);
          return std::vector<Tensor>{gx, gb};
        });
  }
  return out;
}

}  // namespace lathe
