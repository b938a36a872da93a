// Joining and indexing ops: cat, stack, index_select, gather, where, masked_fill.
//
// cat copies each input into a slice of one output (the copy kernel does the strided work), so its
// backward is just slices of the gradient. index_select and gather have dedicated deterministic
// backward kernels (index_add, scatter_add into zeros). where and masked_fill broadcast all
// operands and route the gradient with where itself, reduced back to each input's shape.
//
// Integer indices may be i32 or i64; they are converted to i64 once here so the kernels handle one
// index type. Index values are validated by the kernels (which see them without another pass).
#include <string>

#include "core/tensor_internal.h"

namespace lathe {

namespace {

// The index as an i64 tensor, or an error naming the op and the index's dtype.
Tensor as_index(const Tensor& index, const char* op) {
  LATHE_CHECK(is_integral(index.dtype()), op,
              ": index must be an integer tensor (i32 or i64), got ", detail::describe(index));
  return index.dtype() == DType::I64 ? index : index.to(DType::I64);
}

std::string describe_all(const std::vector<Tensor>& tensors) {
  std::string out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    out += (i ? ", " : "") + detail::describe(tensors[i]);
  }
  return out;
}

Tensor zeros_of(const Shape& shape, const Tensor& like) {
  return zeros(shape, TensorOptions(like.dtype()).device(like.device()));
}

}  // namespace

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  LATHE_CHECK(!tensors.empty(), "cat: expected a non-empty list of tensors");
  for (const Tensor& t : tensors) detail::check_defined(t, "cat", "tensors");
  const Tensor& first = tensors[0];
  LATHE_CHECK(first.dim() > 0, "cat: zero-dimensional tensors cannot be concatenated (",
              describe_all(tensors), "); use stack()");
  const int64_t d = wrap_dim(dim, first.dim(), "cat");
  Shape out_shape = first.shape();
  out_shape[size_t(d)] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    LATHE_CHECK(t.dtype() == first.dtype() && t.device() == first.device(),
                "cat: all tensors must have the same dtype and device, got ",
                describe_all(tensors));
    bool same = t.dim() == first.dim();
    for (int64_t k = 0; same && k < t.dim(); ++k) {
      same = k == d || t.shape()[size_t(k)] == first.shape()[size_t(k)];
    }
    LATHE_CHECK(same, "cat: shapes must match except in dim ", d, ", but tensor ", i, " is ",
                shape_str(t.shape()), " and tensor 0 is ", shape_str(first.shape()), " (",
                describe_all(tensors), ")");
    out_shape[size_t(d)] += t.shape()[size_t(d)];
  }

  Tensor out = Tensor::empty(out_shape, TensorOptions(first.dtype()).device(first.device()));
  std::vector<int64_t> offsets;
  int64_t offset = 0;
  for (const Tensor& t : tensors) {
    offsets.push_back(offset);
    int64_t n = t.shape()[size_t(d)];
    if (n > 0) detail::copy_into(t, out.slice(d, offset, offset + n));
    offset += n;
  }

  if (autograd::any_requires_grad(tensors)) {
    std::vector<int64_t> sizes;
    std::vector<bool> needs;
    for (const Tensor& t : tensors) {
      sizes.push_back(t.shape()[size_t(d)]);
      needs.push_back(t.requires_grad());
    }
    autograd::record("cat", tensors, {out},
                     [d, offsets, sizes, needs](const std::vector<Tensor>& g) {
                       std::vector<Tensor> grads(offsets.size());
                       for (size_t i = 0; i < offsets.size(); ++i) {
                         if (needs[i]) grads[i] = g[0].slice(d, offsets[i], offsets[i] + sizes[i]);
                       }
                       return grads;
                     });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  LATHE_CHECK(!tensors.empty(), "stack: expected a non-empty list of tensors");
  for (const Tensor& t : tensors) detail::check_defined(t, "stack", "tensors");
  for (const Tensor& t : tensors) {
    LATHE_CHECK(t.shape() == tensors[0].shape(),
                "stack: all tensors must have the same shape, got ", describe_all(tensors));
  }
  const int64_t d = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor> expanded;
  expanded.reserve(tensors.size());
  for (const Tensor& t : tensors) expanded.push_back(t.unsqueeze(d));
  return cat(expanded, d);
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  detail::check_defined(x, "index_select", "x");
  detail::check_defined(index, "index_select", "index");
  detail::check_same_device(x, index, "index_select");
  LATHE_CHECK(index.dim() <= 1, "index_select: index must be 0-d or 1-d, got ",
              detail::describe(index));
  LATHE_CHECK(x.dim() > 0, "index_select: cannot index a 0-dim tensor (", detail::describe(x), ")");
  const int64_t d = wrap_dim(dim, x.dim(), "index_select");
  Tensor idx = as_index(index, "index_select").reshape({index.numel()});
  Shape out_shape = x.shape();
  out_shape[size_t(d)] = idx.numel();
  Tensor out = Tensor::empty(out_shape, TensorOptions(x.dtype()).device(x.device()));
  if (idx.numel() > 0) {
    LATHE_KERNEL(x.device(), index_select, "index_select")
    (detail::make_view(x), int(d), detail::make_view(idx), detail::make_view(out));
  }
  if (autograd::any_requires_grad({&x})) {
    autograd::record(
        "index_select", {x}, {out},
        [d, in_shape = x.shape(),
         saved = autograd::SavedTensor(idx, "index_select")](const std::vector<Tensor>& g) {
          const Tensor& i = saved.get();
          Tensor gx = zeros_of(in_shape, g[0]);
          if (i.numel() > 0) {
            LATHE_KERNEL(gx.device(), index_add, "index_select backward")
            (detail::make_view(gx), int(d), detail::make_view(i), detail::make_view(g[0]));
          }
          return std::vector<Tensor>{gx};
        });
  }
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  detail::check_defined(x, "gather", "x");
  detail::check_defined(index, "gather", "index");
  detail::check_same_device(x, index, "gather");
  LATHE_CHECK(x.dim() > 0, "gather: cannot gather from a 0-dim tensor (", detail::describe(x), ")");
  Tensor idx = as_index(index, "gather");
  LATHE_CHECK(idx.dim() == x.dim(), "gather: index must have as many dims as the input, got ",
              detail::describe(x), " and index ", detail::describe(index));
  const int64_t d = wrap_dim(dim, x.dim(), "gather");
  for (int64_t k = 0; k < x.dim(); ++k) {
    LATHE_CHECK(k == d || idx.shape()[size_t(k)] <= x.shape()[size_t(k)], "gather: index ",
                detail::describe(index), " is larger than the input ", detail::describe(x),
                " in dim ", k, " (only dim ", d, " may differ freely)");
  }
  Tensor out = Tensor::empty(idx.shape(), TensorOptions(x.dtype()).device(x.device()));
  if (out.numel() > 0) {
    LATHE_KERNEL(x.device(), gather, "gather")
    (detail::make_view(x), int(d), detail::make_view(idx), detail::make_view(out));
  }
  if (autograd::any_requires_grad({&x})) {
    autograd::record("gather", {x}, {out},
                     [d, in_shape = x.shape(),
                      saved = autograd::SavedTensor(idx, "gather")](const std::vector<Tensor>& g) {
                       const Tensor& i = saved.get();
                       Tensor gx = zeros_of(in_shape, g[0]);
                       if (i.numel() > 0) {
                         LATHE_KERNEL(gx.device(), scatter_add, "gather backward")
                         (detail::make_view(gx), int(d), detail::make_view(i),
                          detail::make_view(g[0]));
                       }
                       return std::vector<Tensor>{gx};
                     });
  }
  return out;
}

namespace {

// where() under the name of the calling op (so masked_fill's errors and graph nodes say so).
Tensor where_impl(const char* op, const Tensor& cond, const Tensor& a, const Tensor& b) {
  LATHE_CHECK(cond.dtype() == DType::Bool, op, ": condition must be bool, got ",
              detail::describe(cond));
  LATHE_CHECK(a.dtype() == b.dtype(), op, ": a and b must have the same dtype, got ",
              detail::describe(a), " and ", detail::describe(b));
  LATHE_CHECK(cond.device() == a.device() && a.device() == b.device(), op,
              ": tensors are on different devices (", detail::describe(cond), ", ",
              detail::describe(a), ", ", detail::describe(b), ")");
  const Shape shape =
      broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), op), b.shape(), op);
  Tensor out = Tensor::empty(shape, TensorOptions(a.dtype()).device(a.device()));
  if (out.numel() > 0) {
    LATHE_KERNEL(out.device(), where, op)
    (detail::make_broadcast_view(cond, shape), detail::make_broadcast_view(a, shape),
     detail::make_broadcast_view(b, shape), detail::make_view(out));
  }
  if (autograd::any_requires_grad({&a, &b})) {
    autograd::record(
        op, {cond, a, b}, {out},
        [saved = autograd::SavedTensor(cond, op), a_shape = a.shape(), b_shape = b.shape(),
         need_a = a.requires_grad(), need_b = b.requires_grad()](const std::vector<Tensor>& g) {
          const Tensor& c = saved.get();
          Tensor zero = zeros_of({}, g[0]);
          std::vector<Tensor> grads(3);
          if (need_a) grads[1] = sum_to(where(c, g[0], zero), a_shape);
          if (need_b) grads[2] = sum_to(where(c, zero, g[0]), b_shape);
          return grads;
        });
  }
  return out;
}

}  // namespace

Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b) {
  detail::check_defined(condition, "where", "condition");
  detail::check_defined(a, "where", "a");
  detail::check_defined(b, "where", "b");
  return where_impl("where", condition, a, b);
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  detail::check_defined(x, "masked_fill", "x");
  detail::check_defined(mask, "masked_fill", "mask");
  LATHE_CHECK(mask.dtype() == DType::Bool, "masked_fill: mask must be bool, got ",
              detail::describe(mask));
  detail::check_same_device(x, mask, "masked_fill");
  LATHE_CHECK(broadcast_shapes(x.shape(), mask.shape(), "masked_fill") == x.shape(),
              "masked_fill: mask ", detail::describe(mask), " does not broadcast to the shape of ",
              detail::describe(x));
  Tensor fill = scalar_tensor(value, TensorOptions(x.dtype()).device(x.device()));
  return where_impl("masked_fill", mask, fill, x);
}

}  // namespace lathe
