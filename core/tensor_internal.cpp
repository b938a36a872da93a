#include "core/tensor_internal.h"

#include <algorithm>
#include <sstream>

namespace lathe::detail {

kernels::View make_view(const Tensor& t) {
  kernels::View v;
  v.data = t.data_ptr();
  v.dtype = t.dtype();
  v.ndim = int(t.dim());
  for (int i = 0; i < v.ndim; ++i) {
    v.size[i] = t.shape()[size_t(i)];
    v.stride[i] = t.strides()[size_t(i)];
  }
  return v;
}

kernels::View make_broadcast_view(const Tensor& t, const Shape& shape) {
  LATHE_CHECK(shape.size() >= size_t(t.dim()), "broadcast: cannot broadcast ", shape_str(t.shape()),
              " to ", shape_str(shape));
  kernels::View v;
  v.data = t.data_ptr();
  v.dtype = t.dtype();
  v.ndim = int(shape.size());
  size_t lead = shape.size() - size_t(t.dim());
  for (size_t i = 0; i < shape.size(); ++i) {
    v.size[i] = shape[i];
    if (i < lead) {
      v.stride[i] = 0;
    } else {
      int64_t s = t.shape()[i - lead];
      LATHE_CHECK(s == shape[i] || s == 1, "broadcast: cannot broadcast ", shape_str(t.shape()),
                  " to ", shape_str(shape));
      v.stride[i] = s == shape[i] ? t.strides()[i - lead] : 0;
    }
  }
  return v;
}

kernels::View make_reshaped_view(const Tensor& t, const Shape& shape) {
  LATHE_CHECK(t.is_contiguous() && shape_numel(shape) == t.numel(),
              "internal: make_reshaped_view needs a contiguous tensor of the same size");
  kernels::View v;
  v.data = t.data_ptr();
  v.dtype = t.dtype();
  v.ndim = int(shape.size());
  Strides strides = contiguous_strides(shape);
  for (size_t i = 0; i < shape.size(); ++i) {
    v.size[i] = shape[i];
    v.stride[i] = strides[i];
  }
  return v;
}

std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined tensor";
  std::ostringstream out;
  out << dtype_name(t.dtype()) << ' ' << shape_str(t.shape()) << " on " << t.device().str();
  return out.str();
}

void check_defined(const Tensor& t, const char* op, const char* arg) {
  LATHE_CHECK(t.defined(), op, ": argument '", arg, "' is an undefined tensor");
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  LATHE_CHECK(a.device() == b.device(), op, ": tensors are on different devices (", describe(a),
              " and ", describe(b), ")");
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  LATHE_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch (", describe(a), " and ", describe(b),
              ")");
}

void check_floating(const Tensor& t, const char* op) {
  LATHE_CHECK(is_floating(t.dtype()), op, ": expected a floating tensor, got ", describe(t));
}

std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t ndim,
                                    const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t i = 0; i < ndim; ++i) out.push_back(i);
    return out;
  }
  for (int64_t d : dims) out.push_back(wrap_dim(d, ndim, op));
  std::sort(out.begin(), out.end());
  LATHE_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), op, ": dim listed twice in ",
              shape_str(dims));
  return out;
}

Shape keepdim_shape(const Shape& shape, const std::vector<int64_t>& dims) {
  Shape out = shape;
  for (int64_t d : dims) out[size_t(d)] = 1;
  return out;
}

Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims) {
  Shape out;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (std::find(dims.begin(), dims.end(), int64_t(i)) == dims.end()) out.push_back(shape[i]);
  }
  return out;
}

void copy_into(const Tensor& src, const Tensor& dst) {
  LATHE_CHECK(src.shape() == dst.shape(), "copy: shape mismatch (", describe(src), " into ",
              describe(dst), ")");
  check_same_device(src, dst, "copy");
  if (dst.numel() == 0) return;
  LATHE_KERNEL(dst.device(), copy, "copy")(make_view(src), make_view(dst));
}

}  // namespace lathe::detail
