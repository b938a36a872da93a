// dropout: inverted dropout whose mask is never stored. The forward reserves numel values of the
// global Philox stream and remembers only (seed, offset); backward runs the same dropout kernel
// on the incoming gradient with that state, which regenerates exactly the forward's mask
// (see kernels/cpu/dropout.cpp for the element -> random number rule).
#include <cmath>

#include "core/tensor_internal.h"
#include "lathe/core/random.h"

namespace lathe {

Tensor dropout(const Tensor& x, double p, bool training) {
  const char* op = "dropout";
  detail::check_defined(x, op, "x");
  LATHE_CHECK(p >= 0.0 && p <= 1.0, op, ": probability p must be in [0, 1], got ", p, " (input ",
              detail::describe(x), ")");
  if (!training || p == 0.0) return x;
  LATHE_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64, op,
              ": expected an f32 or f64 tensor, got ", detail::describe(x));
  // p == 1 goes through the kernel as well (it writes zeros), so the graph and the Philox stream
  // advance the same way for every p.
  const PhiloxState state = philox_reserve(x.numel());
  Tensor out = empty(x.shape(), TensorOptions(x.dtype()).device(x.device()));
  if (x.numel() > 0) {
    LATHE_KERNEL(x.device(), dropout, op)
    (detail::make_view(x), detail::make_view(out), p, state.seed, state.offset);
  }
  if (autograd::any_requires_grad({&x})) {
    autograd::record(op, {x}, {out}, [p, state](const std::vector<Tensor>& g) {
      const Tensor& gy = g[0];
      Tensor gx = empty(gy.shape(), TensorOptions(gy.dtype()).device(gy.device()));
      if (gy.numel() > 0) {
        LATHE_KERNEL(gy.device(), dropout, "dropout backward")
        (detail::make_view(gy), detail::make_view(gx), p, state.seed, state.offset);
      }
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}

}  // namespace lathe
