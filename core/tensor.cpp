#include "lathe/core/tensor.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "core/tensor_internal.h"
#include "kernels/device_api.h"
#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"

namespace lathe {

TensorImpl::TensorImpl() = default;
TensorImpl::~TensorImpl() = default;

Tensor Tensor::empty(const Shape& shape, TensorOptions options) {
  for (int64_t s : shape) {
    LATHE_CHECK(s >= 0, "empty: negative dimension in shape ", shape_str(shape));
  }
  LATHE_CHECK(shape.size() <= size_t(kernels::kMaxDims), "empty: shape ", shape_str(shape),
              " has more than ", kernels::kMaxDims, " dims");
  auto impl = std::make_shared<TensorImpl>();
  const DType dtype = options.dtype_or(DType::F32);
  size_t bytes = size_t(shape_numel(shape)) * element_size(dtype);
  impl->storage = std::make_shared<Storage>(bytes, options.device_);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  Tensor t(std::move(impl));
  if (options.requires_grad_) t.requires_grad_(true);
  return t;
}

Tensor Tensor::from_storage(StoragePtr storage, Shape shape, Strides strides, int64_t offset,
                            DType dtype) {
  LATHE_CHECK(shape.size() == strides.size(), "from_storage: shape ", shape_str(shape),
              " and strides ", shape_str(strides), " differ in length");
  int64_t max_offset = offset;
  int64_t min_offset = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) {
      max_offset = min_offset = offset;
      break;
    }
    int64_t extent = (shape[i] - 1) * strides[i];
    (extent > 0 ? max_offset : min_offset) += extent;
  }
  LATHE_CHECK(
      min_offset >= 0 && (shape_numel(shape) == 0 ||
                          size_t(max_offset + 1) * element_size(dtype) <= storage->nbytes()),
      "from_storage: layout ", shape_str(shape), " strides ", shape_str(strides), " offset ",
      offset, " exceeds a storage of ", storage->nbytes(), " bytes");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

int64_t Tensor::size(int64_t d) const {
  return shape()[wrap_dim(d, dim(), "size")];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  const auto& s = shape();
  const auto& st = strides();
  for (size_t i = s.size(); i-- > 0;) {
    if (s[i] != 1 && st[i] != expected) return false;
    expected *= s[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  return static_cast<char*>(impl().storage->data()) + offset() * int64_t(element_size(dtype()));
}

void Tensor::check_host_access(DType expected, const char* what) const {
  LATHE_CHECK(device().is_cpu(), what, ": tensor is on ", device().str(),
              "; move it to the cpu first");
  LATHE_CHECK(dtype() == expected, what, ": tensor has dtype ", dtype(), ", requested ", expected);
}

namespace detail {

namespace {
template <class To, class From>
To element_as(From v) {
  if constexpr (std::is_same_v<From, Half> || std::is_same_v<From, BFloat16>) {
    return static_cast<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

// Copies the tensor to a contiguous cpu tensor (itself when already one).
Tensor host_contiguous(const Tensor& t) {
  Tensor h = t.device().is_cpu() ? t : t.to(Device::cpu());
  return h.contiguous();
}
}  // namespace

std::vector<double> read_as_double(const Tensor& t) {
  Tensor h = host_contiguous(t);
  std::vector<double> out(static_cast<size_t>(h.numel()));
  dispatch_all(h.dtype(), "to_vector", [&]<class T>() {
    const T* p = static_cast<const T*>(h.data_ptr());
    for (size_t i = 0; i < out.size(); ++i) out[i] = element_as<double>(p[i]);
  });
  return out;
}

std::vector<int64_t> read_as_int64(const Tensor& t) {
  Tensor h = host_contiguous(t);
  std::vector<int64_t> out(static_cast<size_t>(h.numel()));
  dispatch_all(h.dtype(), "to_vector", [&]<class T>() {
    const T* p = static_cast<const T*>(h.data_ptr());
    for (size_t i = 0; i < out.size(); ++i) out[i] = element_as<int64_t>(p[i]);
  });
  return out;
}

}  // namespace detail

namespace {

std::string format_value(double v, DType dtype) {
  if (dtype == DType::Bool) return v != 0 ? "true" : "false";
  if (is_integral(dtype)) return std::to_string(static_cast<int64_t>(v));
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".";
  return s;
}

void print_rec(std::ostream& out, const std::vector<std::string>& cells, const Shape& shape,
               size_t dim, size_t& index, size_t width, int indent) {
  if (shape.empty()) {
    out << cells[0];
    return;
  }
  out << '[';
  constexpr int64_t kEdge = 3;  // elements shown at each end of a long dim
  int64_t n = shape[dim];
  int64_t inner = 1;
  for (size_t i = dim + 1; i < shape.size(); ++i) inner *= shape[i];
  bool elide = n > 2 * kEdge + 1 && shape_numel(shape) > 1000;
  for (int64_t i = 0; i < n; ++i) {
    if (elide && i == kEdge) {
      out << (dim + 1 == shape.size() ? "..., " : "...,\n" + std::string(indent + 1, ' '));
      index += size_t((n - 2 * kEdge) * inner);
      i = n - kEdge - 1;
      continue;
    }
    if (dim + 1 == shape.size()) {
      out << std::setw(int(width)) << cells[index++];
      if (i + 1 < n) out << ", ";
    } else {
      print_rec(out, cells, shape, dim + 1, index, width, indent + 1);
      if (i + 1 < n) out << ",\n" << std::string(size_t(indent + 1), ' ');
    }
  }
  out << ']';
}

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  std::vector<double> values = detail::read_as_double(*this);
  std::vector<std::string> cells;
  cells.reserve(values.size());
  size_t width = 0;
  for (double v : values) {
    cells.push_back(format_value(v, dtype()));
    width = std::max(width, cells.back().size());
  }
  std::ostringstream out;
  out << "tensor(";
  size_t index = 0;
  if (numel() == 0) {
    out << "[]";
  } else {
    print_rec(out, cells, shape(), 0, index, width, 7);
  }
  out << ", shape=" << shape_str(shape()) << ", dtype=" << dtype();
  if (!device().is_cpu()) out << ", device=" << device();
  if (requires_grad()) out << (grad_fn() ? ", grad_fn=" + grad_fn()->name() : ", requires_grad");
  out << ")";
  return out.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  return os << t.str();
}

}  // namespace lathe
