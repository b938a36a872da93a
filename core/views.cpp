// View ops: new layouts over the same storage. Each records a backward that maps the gradient of
// the view back to the layout of its input (reshape back, inverse permutation, scatter into zeros
// for slices, sum over expanded dims).
#include <algorithm>
#include <numeric>
#include <optional>

#include "core/tensor_internal.h"

namespace lathe {

namespace {

Tensor make_view_of(const Tensor& base, Shape shape, Strides strides, int64_t offset) {
  return Tensor::from_storage(base.storage(), std::move(shape), std::move(strides), offset,
                              base.dtype());
}

// Strides that let `new_shape` view memory laid out as (old_shape, old_strides), if any.
std::optional<Strides> view_strides(const Shape& old_shape, const Strides& old_strides,
                                    const Shape& new_shape) {
  if (old_shape.empty() || shape_numel(old_shape) == 0) return contiguous_strides(new_shape);
  Strides new_strides(new_shape.size());
  int64_t view_d = int64_t(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t tensor_d = int64_t(old_shape.size()) - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= old_shape[size_t(tensor_d)];
    bool chunk_ends =
        tensor_d == 0 || (old_shape[size_t(tensor_d - 1)] != 1 &&
                          old_strides[size_t(tensor_d - 1)] != tensor_numel * chunk_base_stride);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (view_numel < tensor_numel || new_shape[size_t(view_d)] == 1)) {
      new_strides[size_t(view_d)] = view_numel * chunk_base_stride;
      view_numel *= new_shape[size_t(view_d)];
      --view_d;
    }
    if (view_numel != tensor_numel) return std::nullopt;
    if (tensor_d > 0) {
      chunk_base_stride = old_strides[size_t(tensor_d - 1)];
      tensor_numel = 1;
      view_numel = 1;
    }
  }
  if (view_d != -1) return std::nullopt;
  return new_strides;
}

Shape infer_shape(const Shape& requested, int64_t numel, const char* op, const Shape& from) {
  Shape shape = requested;
  int64_t known = 1;
  int infer_at = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LATHE_CHECK(infer_at < 0, op, ": only one dim can be -1 in ", shape_str(requested));
      infer_at = int(i);
    } else {
      LATHE_CHECK(shape[i] >= 0, op, ": invalid size in ", shape_str(requested));
      known *= shape[i];
    }
  }
  if (infer_at >= 0) {
    LATHE_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(requested),
                " is invalid for a tensor of shape ", shape_str(from));
    shape[size_t(infer_at)] = numel / known;
  }
  LATHE_CHECK(shape_numel(shape) == numel, op, ": shape ", shape_str(requested),
              " is invalid for a tensor of shape ", shape_str(from), " (", numel, " elements)");
  return shape;
}

// Gradient of a view that only changed the shape: reshape it back.
void record_reshape_like(const char* op, const Tensor& input, const Tensor& out) {
  if (!autograd::any_requires_grad({&input})) return;
  autograd::record(op, {input}, {out}, [in_shape = input.shape()](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{g[0].reshape(in_shape)};
  });
}

}  // namespace

Tensor Tensor::view(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), "view", this->shape());
  auto strides = view_strides(this->shape(), this->strides(), shape);
  LATHE_CHECK(strides.has_value(), "view: cannot view a tensor of shape ", shape_str(this->shape()),
              " with strides ", shape_str(this->strides()), " as ", shape_str(shape),
              "; use reshape() (which copies) instead");
  Tensor out = make_view_of(*this, shape, *strides, offset());
  record_reshape_like("view", *this, out);
  return out;
}

Tensor Tensor::reshape(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), "reshape", this->shape());
  if (auto strides = view_strides(this->shape(), this->strides(), shape)) {
    Tensor out = make_view_of(*this, shape, *strides, offset());
    record_reshape_like("reshape", *this, out);
    return out;
  }
  return contiguous().view(shape);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  int64_t s = wrap_dim(start_dim, dim(), "flatten"), e = wrap_dim(end_dim, dim(), "flatten");
  LATHE_CHECK(s <= e, "flatten: start_dim ", start_dim, " comes after end_dim ", end_dim);
  Shape shape(this->shape().begin(), this->shape().begin() + s);
  int64_t n = 1;
  for (int64_t i = s; i <= e; ++i) n *= this->shape()[size_t(i)];
  shape.push_back(n);
  shape.insert(shape.end(), this->shape().begin() + e + 1, this->shape().end());
  return reshape(shape);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  LATHE_CHECK(int64_t(dims.size()) == dim(), "permute: got ", dims.size(), " dims ",
              shape_str(dims), " for a tensor of shape ", shape_str(shape()));
  std::vector<int64_t> perm(dims.size());
  std::vector<bool> used(dims.size(), false);
  Shape shape(dims.size());
  Strides strides(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], dim(), "permute");
    LATHE_CHECK(!used[size_t(d)], "permute: dim ", d, " repeated in ", shape_str(dims));
    used[size_t(d)] = true;
    perm[i] = d;
    shape[i] = this->shape()[size_t(d)];
    strides[i] = this->strides()[size_t(d)];
  }
  Tensor out = make_view_of(*this, shape, strides, offset());
  if (autograd::any_requires_grad({this})) {
    std::vector<int64_t> inverse(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) inverse[size_t(perm[i])] = int64_t(i);
    autograd::record("permute", {*this}, {out}, [inverse](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].permute(inverse)};
    });
  }
  return out;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  if (dim() == 0) return *this;
  std::vector<int64_t> perm(static_cast<size_t>(dim()));
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[size_t(wrap_dim(a, dim(), "transpose"))],
            perm[size_t(wrap_dim(b, dim(), "transpose"))]);
  return permute(perm);
}

Tensor Tensor::t() const {
  LATHE_CHECK(dim() <= 2, "t: expects a tensor with at most 2 dims, got ", shape_str(shape()));
  return dim() < 2 ? *this : transpose(0, 1);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  LATHE_CHECK(dim() > 0, "slice: cannot slice a 0-dim tensor");
  d = wrap_dim(d, dim(), "slice");
  LATHE_CHECK(step > 0, "slice: step must be positive, got ", step);
  int64_t n = shape()[size_t(d)];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = this->shape();
  Strides strides = this->strides();
  shape[size_t(d)] = (end - start + step - 1) / step;
  strides[size_t(d)] *= step;
  Tensor out = make_view_of(*this, shape, strides, offset() + start * this->strides()[size_t(d)]);
  if (autograd::any_requires_grad({this})) {
    autograd::record(
        "slice", {*this}, {out}, [in = *this, d, start, end, step](const std::vector<Tensor>& g) {
          Tensor gx = zeros(in.shape(), TensorOptions(g[0].dtype()).device(g[0].device()));
          gx.slice(d, start, end, step).copy_(g[0]);
          return std::vector<Tensor>{gx};
        });
  }
  return out;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  LATHE_CHECK(dim() > 0, "narrow: cannot narrow a 0-dim tensor");
  d = wrap_dim(d, dim(), "narrow");
  int64_t n = shape()[size_t(d)];
  if (start < 0) start += n;
  LATHE_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: range [", start, ", ",
              start + length, ") out of bounds for dim ", d, " of size ", n);
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  LATHE_CHECK(dim() > 0, "select: cannot select from a 0-dim tensor");
  d = wrap_dim(d, dim(), "select");
  int64_t n = shape()[size_t(d)];
  LATHE_CHECK(index >= -n && index < n, "select: index ", index, " out of range for dim ", d,
              " of size ", n, " (shape ", shape_str(shape()), ")");
  if (index < 0) index += n;
  Shape shape = this->shape();
  Strides strides = this->strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  Tensor out = make_view_of(*this, shape, strides, offset() + index * this->strides()[size_t(d)]);
  if (autograd::any_requires_grad({this})) {
    autograd::record("select", {*this}, {out},
                     [in_shape = this->shape(), d, index](const std::vector<Tensor>& g) {
                       Tensor gx =
                           zeros(in_shape, TensorOptions(g[0].dtype()).device(g[0].device()));
                       gx.select(d, index).copy_(g[0]);
                       return std::vector<Tensor>{gx};
                     });
  }
  return out;
}

Tensor Tensor::expand(const Shape& requested) const {
  LATHE_CHECK(requested.size() >= size_t(dim()), "expand: target ", shape_str(requested),
              " has fewer dims than the tensor's shape ", shape_str(shape()));
  size_t lead = requested.size() - size_t(dim());
  Shape shape(requested.size());
  Strides strides(requested.size());
  for (size_t i = 0; i < requested.size(); ++i) {
    if (i < lead) {
      LATHE_CHECK(requested[i] >= 0, "expand: -1 is not allowed for new leading dims in ",
                  shape_str(requested));
      shape[i] = requested[i];
      strides[i] = 0;
      continue;
    }
    int64_t have = this->shape()[i - lead];
    LATHE_CHECK(requested[i] >= -1, "expand: invalid size ", requested[i], " in ",
                shape_str(requested));
    int64_t want = requested[i] == -1 ? have : requested[i];
    LATHE_CHECK(have == want || have == 1, "expand: cannot expand ", shape_str(this->shape()),
                " to ", shape_str(requested), " (dim ", i, ": ", have, " -> ", want, ")");
    shape[i] = want;
    strides[i] = have == want ? this->strides()[i - lead] : 0;
  }
  Tensor out = make_view_of(*this, shape, strides, offset());
  if (autograd::any_requires_grad({this})) {
    autograd::record("expand", {*this}, {out},
                     [in_shape = this->shape()](const std::vector<Tensor>& g) {
                       return std::vector<Tensor>{sum_to(g[0], in_shape)};
                     });
  }
  return out;
}

Tensor Tensor::broadcast_to(const Shape& shape) const {
  return expand(shape);
}

Tensor Tensor::squeeze() const {
  Shape shape;
  for (int64_t s : this->shape()) {
    if (s != 1) shape.push_back(s);
  }
  return shape.size() == size_t(dim()) ? *this : reshape(shape);
}

Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) return *this;
  d = wrap_dim(d, dim(), "squeeze");
  if (shape()[size_t(d)] != 1) return *this;
  Shape shape = this->shape();
  shape.erase(shape.begin() + d);
  return reshape(shape);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape shape = this->shape();
  shape.insert(shape.begin() + d, 1);
  return reshape(shape);
}

}  // namespace lathe
