// dropout: inverted dropout whose mask is never stored. The forward reserves numel values of the
// global Philox stream and remembers only (seed, offset); backward runs the same dropout kernel
// on the incoming gradient with that state, which regenerates exactly the forward's mask
// (see kernels/cpu/dropout.cpp for the element -> random number rule).
#include <cmath>

#include "core/tensor_internal.h"
#include "lathe/core/random.h"

namespace lathe {

namespace {

// The dropout kernel into a new tensor. f16/bf16 on the cpu run the f32 kernel on the widened
// values and round once (contiguous bf16: the cpu kernel does that itself, batch by batch): the
// mask depends only on the element index, and the cuda kernel scales in f32 too, so both devices
// agree.
Tensor run_dropout(const Tensor& in, double p, PhiloxState state, const char* op) {
  if (detail::half_via_f32(in) && !(in.dtype() == DType::BF16 && in.is_contiguous())) {
    return run_dropout(in.to(DType::F32), p, state, op).to(in.dtype());
  }
  Tensor out = empty(in.shape(), TensorOptions(in.dtype()).device(in.device()));
  if (in.numel() > 0) {
    LATHE_KERNEL(in.device(), dropout, op)
    (detail::make_view(in), detail::make_view(out), p, state);
  }
  return out;
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training) {
  const char* op = "dropout";
  detail::check_defined(x, op, "x");
  LATHE_CHECK(p >= 0.0 && p <= 1.0, op, ": probability p must be in [0, 1], got ", p, " (input ",
              detail::describe(x), ")");
  if (!training || p == 0.0) return x;
  detail::check_floating(x, op);
  // p == 1 goes through the kernel as well (it writes zeros), so the graph and the Philox stream
  // advance the same way for every p.
  return detail::dropout_with_state(x, p, philox_reserve(x.numel(), x.device()));
}

Tensor detail::dropout_with_state(const Tensor& x, double p, PhiloxState state) {
  const char* op = "dropout";
  Tensor out;
  {
    NoGradGuard no_grad;  // the node is recorded below
    out = run_dropout(x, p, state, op);
  }
  if (autograd::any_requires_grad({&x})) {
    autograd::record(op, {x}, {out}, [p, state](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{run_dropout(g[0], p, state, "dropout backward")};
    });
  }
  return out;
}

}  // namespace lathe
