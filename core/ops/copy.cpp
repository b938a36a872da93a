// Copies, conversions and the in-place ops. In-place ops are deliberately not differentiable: they
// bump the storage version (so stale saved tensors are caught) and refuse tensors that require
// grad while grad mode is on, instead of silently corrupting the graph.
#include <cstring>

#include "core/tensor_internal.h"
#include "kernels/device_api.h"

namespace lathe {

namespace {

void check_inplace(const Tensor& t, const char* op) {
  LATHE_CHECK(!(grad_mode_enabled() && t.requires_grad()), op,
              ": in-place operation on a tensor that requires grad (", detail::describe(t),
              "); run it under NoGradGuard or use the out-of-place op");
}

// Moves raw bytes of a contiguous tensor to a new device.
Tensor transfer(const Tensor& src_any, Device device) {
  Tensor src = src_any.contiguous();
  Tensor dst = Tensor::empty(src.shape(), TensorOptions(src.dtype()).device(device));
  size_t bytes = size_t(src.numel()) * element_size(src.dtype());
  if (bytes == 0) return dst;
  const kernels::DeviceApi* src_api = kernels::device_api(src.device().type);
  const kernels::DeviceApi* dst_api = kernels::device_api(device.type);
  if (src.device().is_cpu()) {
    dst_api->copy_from_host(dst.data_ptr(), src.data_ptr(), bytes, device.index);
  } else if (device.is_cpu()) {
    src_api->copy_to_host(dst.data_ptr(), src.data_ptr(), bytes, src.device().index);
  } else {  // between two cuda devices: through the host
    std::vector<char> staging(bytes);
    src_api->copy_to_host(staging.data(), src.data_ptr(), bytes, src.device().index);
    dst_api->copy_from_host(dst.data_ptr(), staging.data(), bytes, device.index);
  }
  return dst;
}

}  // namespace

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), TensorOptions(dtype()).device(device()));
  detail::copy_into(*this, out);
  if (autograd::any_requires_grad({this})) {
    autograd::record("clone", {*this}, {out},
                     [](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; });
  }
  return out;
}

Tensor Tensor::contiguous() const {
  return is_contiguous() ? *this : clone();
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), TensorOptions(target).device(device()));
  detail::copy_into(*this, out);
  if (autograd::any_requires_grad({this}) && is_floating(target)) {
    autograd::record("to_dtype", {*this}, {out}, [from = dtype()](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].to(from)};
    });
  }
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor out = transfer(*this, target);
  if (autograd::any_requires_grad({this})) {
    autograd::record("to_device", {*this}, {out}, [from = device()](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].to(from)};
    });
  }
  return out;
}

Tensor& Tensor::copy_(const Tensor& src) {
  detail::check_defined(src, "copy_", "src");
  check_inplace(*this, "copy_");
  Tensor s = src.device() == device() ? src : src.to(device());
  if (numel() > 0) {
    LATHE_KERNEL(device(), copy, "copy_")
    (detail::make_broadcast_view(s, shape()), detail::make_view(*this));
  }
  storage()->bump_version();
  return *this;
}

Tensor& Tensor::fill_(double value) {
  check_inplace(*this, "fill_");
  if (numel() > 0) LATHE_KERNEL(device(), fill, "fill_")(detail::make_view(*this), value);
  storage()->bump_version();
  return *this;
}

Tensor& Tensor::zero_() {
  return fill_(0.0);
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  detail::check_defined(other, "add_", "other");
  check_inplace(*this, "add_");
  detail::check_same_device(*this, other, "add_");
  Tensor o = other.dtype() == dtype() ? other : other.to(dtype());
  if (alpha != 1.0) {
    NoGradGuard no_grad;
    o = o * alpha;
  }
  Shape out_shape = broadcast_shapes(shape(), o.shape(), "add_");
  LATHE_CHECK(out_shape == shape(), "add_: cannot add ", detail::describe(other), " into ",
              detail::describe(*this), " in place (the result would have shape ",
              shape_str(out_shape), ")");
  if (numel() > 0 && detail::half_via_f32(*this)) {
    // No f16/bf16 arithmetic on the cpu: add in f32, round once into place.
    NoGradGuard no_grad;
    detail::copy_into(add(to(DType::F32), o.to(DType::F32)), *this);
  } else if (numel() > 0) {
    LATHE_KERNEL(device(), binary, "add_")
    (kernels::BinaryOp::Add, detail::make_view(*this), detail::make_broadcast_view(o, shape()),
     detail::make_view(*this));
  }
  storage()->bump_version();
  return *this;
}

Tensor& Tensor::mul_(double value) {
  check_inplace(*this, "mul_");
  Tensor factor = scalar_tensor(value, TensorOptions(dtype()).device(device()));
  if (numel() > 0 && detail::half_via_f32(*this)) {
    // The factor rounded to the dtype, the product in f32 and rounded once, as on cuda.
    NoGradGuard no_grad;
    detail::copy_into(mul(to(DType::F32), factor.to(DType::F32)), *this);
  } else if (numel() > 0) {
    LATHE_KERNEL(device(), binary, "mul_")
    (kernels::BinaryOp::Mul, detail::make_view(*this), detail::make_broadcast_view(factor, shape()),
     detail::make_view(*this));
  }
  storage()->bump_version();
  return *this;
}

Tensor& Tensor::masked_fill_(const Tensor& mask, double value) {
  detail::check_defined(mask, "masked_fill_", "mask");
  check_inplace(*this, "masked_fill_");
  detail::check_same_device(*this, mask, "masked_fill_");
  LATHE_CHECK(mask.dtype() == DType::Bool, "masked_fill_: mask must be bool, got ",
              detail::describe(mask));
  Tensor fill = scalar_tensor(value, TensorOptions(dtype()).device(device()));
  if (numel() > 0) {
    LATHE_KERNEL(device(), where, "masked_fill_")
    (detail::make_broadcast_view(mask, shape()), detail::make_broadcast_view(fill, shape()),
     detail::make_view(*this), detail::make_view(*this));
  }
  storage()->bump_version();
  return *this;
}

}  // namespace lathe
