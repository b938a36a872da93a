// The GELU functors of the cuda kernels, forward and backward, erf and tanh forms, written once
// for unary.cu (UnaryOp::Gelu / GeluTanh) and bias_gelu.cu, so bias_gelu(x, b) computes exactly
// gelu(x + b)'s expressions. f32 uses the cpu kernels' polynomial Phi and exp (math.cuh), f64 erf
// and exp. Each functor is templated on the compute type C (f32 for f32/f16/bf16, f64 for f64).
#pragma once

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/math.cuh"

namespace lathe::kernels::cuda::gelu_ops {

inline constexpr double kInvSqrt2 = 0.70710678118654752440;
inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;
inline constexpr double kSqrt2OverPi = 0.79788456080286535588;

// ---- forward: C operator()(C x) ----

struct ErfF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    if constexpr (std::is_same_v<C, float>) {
      return x * dmath::normal_cdf(x);
    } else {
      return C(0.5) * x * (C(1) + dmath::erf(x * C(kInvSqrt2)));
    }
  }
};
struct TanhF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    C inner = C(kSqrt2OverPi) * (x + C(0.044715) * x * x * x);
    return C(0.5) * x * (C(1) + dmath::tanh(inner));
  }
};

// ---- backward: C operator()(C v, C d) = d * gelu'(v) ----

struct ErfB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    if constexpr (std::is_same_v<C, float>) {
      const float pdf = float(kInvSqrt2Pi) * dmath::exp_poly(-0.5f * v * v);
      return d * (dmath::normal_cdf(v) + v * pdf);
    } else {
      C cdf = C(0.5) * (C(1) + dmath::erf(v * C(kInvSqrt2)));
      C pdf = C(kInvSqrt2Pi) * dmath::exp(C(-0.5) * v * v);
      return d * (cdf + v * pdf);
    }
  }
};
struct TanhB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    C inner = C(kSqrt2OverPi) * (v + C(0.044715) * v * v * v);
    C t = dmath::tanh(inner);
    C dinner = C(kSqrt2OverPi) * (C(1) + C(3 * 0.044715) * v * v);
    return d * (C(0.5) * (C(1) + t) + C(0.5) * v * (C(1) - t * t) * dinner);
  }
};

// The forward / backward functor of one form.
template <bool kTanh>
using Forward = std::conditional_t<kTanh, TanhF, ErfF>;
template <bool kTanh>
using Backward = std::conditional_t<kTanh, TanhB, ErfB>;

}  // namespace lathe::kernels::cuda::gelu_ops
