// Tensor = shared Storage + layout (shape, strides in elements, offset) + dtype + optional
// autograd metadata. A Tensor object is a cheap handle: copying it aliases the same tensor, as in
// PyTorch. Views (reshape, permute, slice, expand, ...) share storage and record a backward node so
// gradients flow through them.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "lathe/core/device.h"
#include "lathe/core/dtype.h"
#include "lathe/core/error.h"
#include "lathe/core/shape.h"
#include "lathe/core/storage.h"
#include "lathe/core/tensor_options.h"

namespace lathe {

class Tensor;
namespace autograd {
class Node;
struct AutogradMeta;
}  // namespace autograd

struct TensorImpl {
  StoragePtr storage;
  Shape shape;
  Strides strides;
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;
  std::unique_ptr<autograd::AutogradMeta> autograd;  // null until needed

  TensorImpl();
  ~TensorImpl();
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Creates an uninitialized tensor with its own storage.
  static Tensor empty(const Shape& shape, TensorOptions options = {});
  // A view of `storage` with the given layout (no copy).
  static Tensor from_storage(StoragePtr storage, Shape shape, Strides strides, int64_t offset,
                             DType dtype);

  bool defined() const { return impl_ != nullptr; }

  // ---- layout ----
  const Shape& shape() const { return impl().shape; }
  const Strides& strides() const { return impl().strides; }
  int64_t offset() const { return impl().offset; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t dim) const;
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  bool is_contiguous() const;
  const StoragePtr& storage() const { return impl().storage; }
  // Device pointer to the first element (host pointer only when device() is cpu).
  void* data_ptr() const;
  // Typed host pointer; throws unless the tensor is on the cpu and has dtype T.
  template <class T>
  T* data() const {
    check_host_access(dtype_v<T>, "data<T>()");
    return static_cast<T*>(data_ptr());
  }

  // ---- conversion and copies ----
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;       // always a fresh, contiguous copy (differentiable)
  // Values converted to T, in row-major order (works for any dtype and device).
  template <class T>
  std::vector<T> to_vector() const;
  template <class T>
  T item() const;
  std::string str() const;  // readable printing, like PyTorch's repr

  // ---- views (share storage) ----
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor view(const Shape& shape) const;     // must be a view; throws otherwise
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor t() const;  // transpose of a 2-D tensor
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;  // -1 keeps a dim
  Tensor broadcast_to(const Shape& shape) const;
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;

  // ---- reductions (dims empty = all) ----
  Tensor sum(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;
  Tensor mean(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;
  Tensor max(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;
  Tensor min(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;
  Tensor var(const std::vector<int64_t>& dims = {}, bool keepdim = false,
             int64_t correction = 1) const;
  Tensor argmax(int64_t dim, bool keepdim = false) const;

  // ---- in place (bump the storage version; not differentiable through) ----
  Tensor& zero_();
  Tensor& fill_(double value);
  Tensor& copy_(const Tensor& src);  // broadcasts src, converts dtype and device
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double value);
  Tensor& masked_fill_(const Tensor& mask, double value);

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& requires_grad_(bool enabled = true);  // only on leaves
  bool is_leaf() const;
  Tensor grad() const;  // undefined until a backward pass reaches this leaf
  void set_grad(const Tensor& grad);
  void zero_grad();  // drops the gradient
  // Keep the gradient of a non-leaf tensor during backward (like PyTorch's retain_grad()).
  void retain_grad();
  // Without `gradient`, the tensor must hold one element.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  Tensor detach() const;  // shares storage, cut from the graph
  std::shared_ptr<autograd::Node> grad_fn() const;

  TensorImpl& impl() const {
    LATHE_CHECK(impl_ != nullptr, "use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

 private:
  void check_host_access(DType expected, const char* what) const;
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// ---- element access helpers (explicitly instantiated for every dtype's C++ type) ----
namespace detail {
// Reads the whole tensor as doubles / int64 in row-major order (any dtype, any device).
std::vector<double> read_as_double(const Tensor& t);
std::vector<int64_t> read_as_int64(const Tensor& t);
}  // namespace detail

template <class T>
std::vector<T> Tensor::to_vector() const {
  static_assert(std::is_arithmetic_v<T>, "to_vector<T>: T must be an arithmetic type");
  std::vector<T> out;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    auto v = detail::read_as_int64(*this);
    out.reserve(v.size());
    for (auto x : v) out.push_back(static_cast<T>(x));
  } else {
    auto v = detail::read_as_double(*this);
    out.reserve(v.size());
    for (auto x : v) out.push_back(static_cast<T>(x));
  }
  return out;
}

template <class T>
T Tensor::item() const {
  LATHE_CHECK(numel() == 1, "item(): tensor of shape ", shape_str(shape()), " has ", numel(),
              " elements, expected exactly 1");
  return to_vector<T>()[0];
}

}  // namespace lathe
