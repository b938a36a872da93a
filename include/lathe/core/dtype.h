// Element types. The enum is shared by core and kernels; everything that depends on the C++ type
// of an element goes through dispatch_*() below so a kernel is written once per family, not per
// dtype. F16/BF16 are storage types on the cpu (see half.h); compute on them is cuda-only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string_view>

#include "lathe/core/error.h"
#include "lathe/core/half.h"

namespace lathe {

enum class DType : uint8_t { F32, F64, F16, BF16, I32, I64, Bool };

constexpr size_t element_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F64:
      return 8;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
    case DType::Bool:
      return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::F64:
      return "f64";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
    case DType::I32:
      return "i32";
    case DType::I64:
      return "i64";
    case DType::Bool:
      return "bool";
  }
  return "?";
}

constexpr bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::F16 || t == DType::BF16;
}
// f16 and bf16: storage types whose arithmetic runs in f32 (in registers on cuda, by widening on
// the cpu), the result rounded once.
constexpr bool is_low_precision(DType t) {
  return t == DType::F16 || t == DType::BF16;
}
constexpr bool is_integral(DType t) {
  return t == DType::I32 || t == DType::I64;
}

inline std::ostream& operator<<(std::ostream& os, DType t) {
  return os << dtype_name(t);
}

// Maps a C++ element type to its DType.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::F64;
};
template <>
struct dtype_of<Half> {
  static constexpr DType value = DType::F16;
};
template <>
struct dtype_of<BFloat16> {
  static constexpr DType value = DType::BF16;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::I32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = DType::I64;
};
template <>
struct dtype_of<bool> {
  static constexpr DType value = DType::Bool;
};
template <class T>
inline constexpr DType dtype_v = dtype_of<T>::value;

}  // namespace lathe

namespace lathe {

// dispatch_*(dtype, "op", [&]<class T>() { ... }) calls the template lambda with T = the C++ type
// of `dtype`, or throws naming the op when the dtype is outside the family. Kernels are written
// once per family, not once per dtype.
template <class Fn>
decltype(auto) dispatch_float(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32:
      return fn.template operator()<float>();
    case DType::F64:
      return fn.template operator()<double>();
    default:
      break;
  }
  LATHE_FAIL(op, ": dtype ", t, " is not supported here (expected f32 or f64)");
}

// Every floating dtype, 16-bit storage types included (as Half / BFloat16).
template <class Fn>
decltype(auto) dispatch_floating(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32:
      return fn.template operator()<float>();
    case DType::F64:
      return fn.template operator()<double>();
    case DType::F16:
      return fn.template operator()<Half>();
    case DType::BF16:
      return fn.template operator()<BFloat16>();
    default:
      break;
  }
  LATHE_FAIL(op, ": dtype ", t, " is not supported here (expected f32, f64, f16 or bf16)");
}

template <class Fn>
decltype(auto) dispatch_numeric(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32:
      return fn.template operator()<float>();
    case DType::F64:
      return fn.template operator()<double>();
    case DType::I32:
      return fn.template operator()<int32_t>();
    case DType::I64:
      return fn.template operator()<int64_t>();
    default:
      break;
  }
  LATHE_FAIL(op, ": dtype ", t, " is not supported here (expected f32, f64, i32 or i64)");
}

template <class Fn>
decltype(auto) dispatch_all(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32:
      return fn.template operator()<float>();
    case DType::F64:
      return fn.template operator()<double>();
    case DType::F16:
      return fn.template operator()<Half>();
    case DType::BF16:
      return fn.template operator()<BFloat16>();
    case DType::I32:
      return fn.template operator()<int32_t>();
    case DType::I64:
      return fn.template operator()<int64_t>();
    case DType::Bool:
      return fn.template operator()<bool>();
  }
  LATHE_FAIL(op, ": unknown dtype");
}

}  // namespace lathe
