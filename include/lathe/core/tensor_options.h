// Builder for factory arguments: zeros({2, 3}, TensorOptions().dtype(DType::F64).requires_grad()).
// The dtype is optional so that factories can pick a natural default: F32 for most, I64 for
// arange, the element type for from_vector<T>.
#pragma once

#include <optional>

#include "lathe/core/device.h"
#include "lathe/core/dtype.h"

namespace lathe {

struct TensorOptions {
  std::optional<DType> dtype_;
  Device device_ = Device::cpu();
  bool requires_grad_ = false;

  TensorOptions() = default;
  TensorOptions(DType t) : dtype_(t) {}    // NOLINT: implicit on purpose, zeros(s, DType::F64)
  TensorOptions(Device d) : device_(d) {}  // NOLINT

  TensorOptions& dtype(DType t) {
    dtype_ = t;
    return *this;
  }
  TensorOptions& device(Device d) {
    device_ = d;
    return *this;
  }
  TensorOptions& requires_grad(bool r = true) {
    requires_grad_ = r;
    return *this;
  }

  DType dtype_or(DType fallback) const { return dtype_.value_or(fallback); }
};

}  // namespace lathe
