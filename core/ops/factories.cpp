// Tensor factories. Everything is made on the host or by a fill/random kernel on the target
// device; random draws reserve their slice of the global Philox stream so every device produces
// the same numbers for the same seed.
#include <cmath>
#include <cstring>

#include "core/tensor_internal.h"
#include "lathe/core/random.h"

namespace lathe {

namespace {
Tensor finish(Tensor t, const TensorOptions& options) {
  if (options.requires_grad_) t.requires_grad_(true);
  return t;
}
TensorOptions without_grad(TensorOptions options, DType fallback) {
  options.dtype_ = options.dtype_or(fallback);
  options.requires_grad_ = false;
  return options;
}
}  // namespace

Tensor empty(const Shape& shape, TensorOptions options) {
  return Tensor::empty(shape, options);
}

Tensor full(const Shape& shape, double value, TensorOptions options) {
  Tensor t = Tensor::empty(shape, without_grad(options, DType::F32));
  if (t.numel() > 0) LATHE_KERNEL(t.device(), fill, "full")(detail::make_view(t), value);
  return finish(t, options);
}

Tensor zeros(const Shape& shape, TensorOptions options) {
  return full(shape, 0.0, options);
}
Tensor ones(const Shape& shape, TensorOptions options) {
  return full(shape, 1.0, options);
}

Tensor full_like(const Tensor& t, double value) {
  return full(t.shape(), value, TensorOptions(t.dtype()).device(t.device()));
}
Tensor zeros_like(const Tensor& t) {
  return full_like(t, 0.0);
}
Tensor ones_like(const Tensor& t) {
  return full_like(t, 1.0);
}

Tensor scalar_tensor(double value, TensorOptions options) {
  return full({}, value, options);
}

Tensor arange(double start, double end, double step, TensorOptions options) {
  LATHE_CHECK(step != 0 && std::isfinite(start) && std::isfinite(end) && std::isfinite(step),
              "arange: invalid range start=", start, " end=", end, " step=", step);
  double count = std::ceil((end - start) / step);
  int64_t n = count > 0 ? int64_t(count) : 0;
  std::vector<double> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[size_t(i)] = start + double(i) * step;
  TensorOptions opts = options;
  opts.dtype_ = options.dtype_or(DType::I64);
  return from_vector(values, {n}, opts);
}

Tensor arange(int64_t end, TensorOptions options) {
  return arange(0.0, double(end), 1.0, options);
}

namespace {
Tensor random_tensor(const Shape& shape, TensorOptions options, kernels::RandomDist dist,
                     const char* op) {
  DType dtype = options.dtype_or(DType::F32);
  LATHE_CHECK(is_floating(dtype), op, ": dtype must be floating, got ", dtype);
  // 16-bit floats are drawn in f32 and rounded, so they match the f32 stream.
  DType draw = dtype == DType::F64 ? DType::F64 : DType::F32;
  Tensor t = Tensor::empty(shape, without_grad(options, draw).dtype(draw));
  PhiloxState state = philox_reserve(t.numel(), t.device());
  if (t.numel() > 0) {
    LATHE_KERNEL(t.device(), random, op)(dist, detail::make_view(t), state);
  }
  return finish(t.to(dtype), options);
}
}  // namespace

Tensor rand(const Shape& shape, TensorOptions options) {
  return random_tensor(shape, options, kernels::RandomDist::Uniform, "rand");
}
Tensor randn(const Shape& shape, TensorOptions options) {
  return random_tensor(shape, options, kernels::RandomDist::Normal, "randn");
}

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions options) {
  LATHE_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
              " values do not fill shape ", shape_str(shape), " (", shape_numel(shape),
              " elements)");
  constexpr DType source = dtype_v<T>;
  Tensor host = Tensor::empty(shape, TensorOptions(source));
  if constexpr (std::is_same_v<T, bool>) {
    auto* p = static_cast<bool*>(host.data_ptr());
    for (size_t i = 0; i < values.size(); ++i) p[i] = values[i];
  } else if (!values.empty()) {
    std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(T));
  }
  Tensor out = host.to(options.dtype_or(source)).to(options.device_);
  return finish(out, options);
}

template Tensor from_vector<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector<bool>(const std::vector<bool>&, const Shape&, TensorOptions);
template Tensor from_vector<Half>(const std::vector<Half>&, const Shape&, TensorOptions);
template Tensor from_vector<BFloat16>(const std::vector<BFloat16>&, const Shape&, TensorOptions);

}  // namespace lathe
