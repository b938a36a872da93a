// GELU, forward and backward, erf and tanh forms, written once for the cpu kernels that apply it:
// unary.cpp (UnaryOp::Gelu / GeluTanh) and bias_gelu.cpp, so bias_gelu(x, b) has the bits of
// gelu(x + b). f32 uses the vectorizable polynomial Φ and exp (vec_math.h), f64 std::erf/std::exp.
#pragma once

#include <cmath>
#include <type_traits>

#include "kernels/cpu/vec_math.h"

namespace lathe::kernels::cpu {

inline constexpr double kGeluInvSqrt2 = 0.70710678118654752440;
inline constexpr double kGeluInvSqrt2Pi = 0.39894228040143267794;
inline constexpr double kGeluSqrt2OverPi = 0.79788456080286535588;

template <class T>
inline T gelu_erf(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v * normal_cdf_f32(v);
  } else {
    return T(0.5) * v * (T(1) + std::erf(v * T(kGeluInvSqrt2)));
  }
}

template <class T>
inline T gelu_tanh(T v) {
  T inner = T(kGeluSqrt2OverPi) * (v + T(0.044715) * v * v * v);
  return T(0.5) * v * (T(1) + std::tanh(inner));
}

// d * gelu'(v).
template <class T>
inline T gelu_erf_grad(T v, T d) {
  if constexpr (std::is_same_v<T, float>) {
    const float pdf = float(kGeluInvSqrt2Pi) * kernels::exp_nonpositive_f32(-0.5f * v * v);
    return d * (normal_cdf_f32(v) + v * pdf);
  } else {
    T cdf = T(0.5) * (T(1) + std::erf(v * T(kGeluInvSqrt2)));
    T pdf = T(kGeluInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
    return d * (cdf + v * pdf);
  }
}

template <class T>
inline T gelu_tanh_grad(T v, T d) {
  T inner = T(kGeluSqrt2OverPi) * (v + T(0.044715) * v * v * v);
  T t = std::tanh(inner);
  T dinner = T(kGeluSqrt2OverPi) * (T(1) + T(3 * 0.044715) * v * v);
  return d * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * dinner);
}

}  // namespace lathe::kernels::cpu
