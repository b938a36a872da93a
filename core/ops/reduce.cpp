// Reductions. sum/max/min run the reduce kernel into the keepdim shape; their gradients expand the
// output gradient back over the reduced dims (max/min share it equally between tied elements, as
// torch.amax does). mean and var are composites of sum.
#include "core/tensor_internal.h"

namespace lathe {

namespace {

using kernels::ReduceOp;

Tensor reduce_forward(ReduceOp op, const char* name, const Tensor& x,
                      const std::vector<int64_t>& dims, bool keepdim) {
  detail::check_defined(x, name, "x");
  std::vector<int64_t> d = detail::normalize_dims(dims, x.dim(), name);
  Shape keep = detail::keepdim_shape(x.shape(), d);
  if (op != ReduceOp::Sum) {
    for (int64_t i : d) {
      LATHE_CHECK(x.shape()[size_t(i)] > 0, name, ": cannot reduce over dim ", i, " of size 0 (",
                  detail::describe(x), ")");
    }
  }
  DType out_dtype = x.dtype() == DType::Bool ? DType::I64 : x.dtype();
  NoGradGuard no_grad;  // the op records its own node
  Tensor xs = x.dtype() == out_dtype ? x : x.to(out_dtype);
  // f16/bf16 on the cpu: reduce the widened values in f32 and round once.
  if (detail::half_via_f32(xs)) xs = xs.to(DType::F32);
  Tensor out = Tensor::empty(keep, TensorOptions(xs.dtype()).device(x.device()));
  if (out.numel() > 0) {
    LATHE_KERNEL(x.device(), reduce, name)(op, detail::make_view(xs), detail::make_view(out));
  }
  if (out.dtype() != out_dtype) out = out.to(out_dtype);
  return keepdim ? out : out.view(detail::reduced_shape(x.shape(), d));
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  if (auto cast = detail::autocast_inputs("sum", {&x})) {
    NoAutocastGuard inside;
    return sum((*cast)[0], dims, keepdim);
  }
  Tensor out = reduce_forward(ReduceOp::Sum, "sum", x, dims, keepdim);
  if (autograd::any_requires_grad({&x})) {
    std::vector<int64_t> d = detail::normalize_dims(dims, x.dim(), "sum");
    autograd::record("sum", {x}, {out},
                     [keep = detail::keepdim_shape(x.shape(), d),
                      shape = x.shape()](const std::vector<Tensor>& g) {
                       return std::vector<Tensor>{g[0].reshape(keep).expand(shape)};
                     });
  }
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  if (auto cast = detail::autocast_inputs("mean", {&x})) {
    NoAutocastGuard inside;
    return mean((*cast)[0], dims, keepdim);
  }
  detail::check_defined(x, "mean", "x");
  detail::check_floating(x, "mean");
  std::vector<int64_t> d = detail::normalize_dims(dims, x.dim(), "mean");
  int64_t count = 1;
  for (int64_t i : d) count *= x.shape()[size_t(i)];
  return sum(x, dims, keepdim) / double(count);
}

namespace {
Tensor extremum(ReduceOp op, const char* name, const Tensor& x, const std::vector<int64_t>& dims,
                bool keepdim) {
  Tensor out = reduce_forward(op, name, x, dims, keepdim);
  if (autograd::any_requires_grad({&x})) {
    std::vector<int64_t> d = detail::normalize_dims(dims, x.dim(), name);
    autograd::record(
        name, {x}, {out},
        [name, keep = detail::keepdim_shape(x.shape(), d), d, sx = autograd::SavedTensor(x, name),
         so = autograd::SavedTensor(out.detach(), name)](const std::vector<Tensor>& g) {
          const Tensor& xv = sx.get();
          Tensor hit = eq(xv, so.get().reshape(keep)).to(xv.dtype());
          Tensor share = hit / sum(hit, d, true);
          return std::vector<Tensor>{g[0].reshape(keep) * share};
        });
  }
  return out;
}
}  // namespace

Tensor max(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extremum(ReduceOp::Max, "max", x, dims, keepdim);
}
Tensor min(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extremum(ReduceOp::Min, "min", x, dims, keepdim);
}

Tensor var(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, int64_t correction) {
  if (auto cast = detail::autocast_inputs("var", {&x})) {
    NoAutocastGuard inside;
    return var((*cast)[0], dims, keepdim, correction);
  }
  detail::check_defined(x, "var", "x");
  detail::check_floating(x, "var");
  LATHE_CHECK(correction >= 0, "var: correction must be >= 0, got ", correction);
  std::vector<int64_t> d = detail::normalize_dims(dims, x.dim(), "var");
  int64_t count = 1;
  for (int64_t i : d) count *= x.shape()[size_t(i)];
  Tensor centered = x - mean(x, dims, true);
  // Like PyTorch, fewer elements than the correction gives inf/nan rather than an error.
  double denominator = double(std::max<int64_t>(count - correction, 0));
  return sum(centered * centered, dims, keepdim) / denominator;
}

namespace {
Tensor arg_extremum(ReduceOp op, const char* name, const Tensor& x, int64_t dim, bool keepdim) {
  detail::check_defined(x, name, "x");
  LATHE_CHECK(x.numel() > 0, name, ": cannot take ", name, " of an empty tensor ",
              detail::describe(x));
  if (x.dim() == 0) return zeros({}, TensorOptions(DType::I64).device(x.device()));
  int64_t d = wrap_dim(dim, x.dim(), name);
  Shape keep = x.shape();
  keep[size_t(d)] = 1;
  Tensor out = Tensor::empty(keep, TensorOptions(DType::I64).device(x.device()));
  // Widening f16/bf16 on the cpu is exact, so the winning index is the same.
  const Tensor xs = detail::half_via_f32(x) ? x.detach().to(DType::F32) : x;
  LATHE_KERNEL(x.device(), arg_reduce, name)
  (op, detail::make_view(xs), int(d), detail::make_view(out));
  return keepdim ? out : out.squeeze(d);
}
}  // namespace

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extremum(ReduceOp::Max, "argmax", x, dim, keepdim);
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extremum(ReduceOp::Min, "argmin", x, dim, keepdim);
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  detail::check_defined(x, "sum_to", "x");
  if (x.shape() == shape) return x;
  LATHE_CHECK(shape.size() <= size_t(x.dim()), "sum_to: cannot reduce ", detail::describe(x),
              " to shape ", shape_str(shape));
  size_t lead = size_t(x.dim()) - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < size_t(x.dim()); ++i) {
    if (i < lead) {
      dims.push_back(int64_t(i));
    } else if (shape[i - lead] == 1 && x.shape()[i] != 1) {
      dims.push_back(int64_t(i));
    } else {
      LATHE_CHECK(shape[i - lead] == x.shape()[i], "sum_to: cannot reduce ", detail::describe(x),
                  " to shape ", shape_str(shape));
    }
  }
  if (dims.empty()) return x.reshape(shape);
  return sum(x, dims, true).reshape(shape);
}

// ---- Tensor method forms ----
Tensor Tensor::sum(const std::vector<int64_t>& dims, bool keepdim) const {
  return lathe::sum(*this, dims, keepdim);
}
Tensor Tensor::mean(const std::vector<int64_t>& dims, bool keepdim) const {
  return lathe::mean(*this, dims, keepdim);
}
Tensor Tensor::max(const std::vector<int64_t>& dims, bool keepdim) const {
  return lathe::max(*this, dims, keepdim);
}
Tensor Tensor::min(const std::vector<int64_t>& dims, bool keepdim) const {
  return lathe::min(*this, dims, keepdim);
}
Tensor Tensor::var(const std::vector<int64_t>& dims, bool keepdim, int64_t correction) const {
  return lathe::var(*this, dims, keepdim, correction);
}
Tensor Tensor::argmax(int64_t dim, bool keepdim) const {
  return lathe::argmax(*this, dim, keepdim);
}

}  // namespace lathe
