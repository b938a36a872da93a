// The GELU functors of the cuda kernels, forward and backward, erf and tanh forms, written once
// for unary.cu (UnaryOp::Gelu / GeluTanh) and bias_gelu.cu, so bias_gelu(x, b) computes exactly
// gelu(x + b)'s expressions. f32 uses the cpu kernels' polynomial Phi and exp (math.cuh), f64 erf
// and exp. Each functor is templated on the compute type C (f32 for f32/f16/bf16, f64 for f64).
//
// On a GPU the f32 forms take Φ = (1 + erff(x / sqrt 2)) / 2 from the CUDA library and the
// density from expf (one ex2.approx when the result is stored as f16/bf16) instead, PyTorch's
// formula: the shared polynomial evaluates both of its
// branches, a division and an exp per element, which left the GELU kernels bound by instruction
// issue (the H200 ran bf16 GELU at the element rate of f32 GELU, half PyTorch's speed; with erff
// 1.8x faster). normcdff (through erfc) keeps Φ's relative accuracy in the lower tail but ran as
// slowly as the polynomial there; with erff, 1 + erf cancels for x << 0, so GELU there is exact
// to an absolute ~1e-7 (|x| / 2 times a few ulp of 1), not relatively. The simulated build keeps
// the polynomial, so that it reproduces the cpu kernels' bits; a GPU's results differ from them
// by a few ulp, or that absolute error in the tail (the tests compare with tolerances).
//
// The erf forward of f16/bf16 storage takes neither: kernels::gelu_erf_for_half (poly_math.h),
// about 16 instructions per element against erff's 25, relative error below 1e-5 (the tail
// included) where the stored result rounds by 4.9e-4 (f16) or 3.9e-3 (bf16). Both builds run it
// (the simulator with 1 / u and exp2f for the GPU's rcp.approx and ex2.approx), so their f16/bf16
// GELU no longer equals the cpu's bits: the cpu's f32 value, rounded, may sit one storage ulp away.
#pragma once

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/math.cuh"

namespace lathe::kernels::cuda::gelu_ops {

inline constexpr double kInvSqrt2 = 0.70710678118654752440;
inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;
inline constexpr double kSqrt2OverPi = 0.79788456080286535588;

// Φ(v) and exp(-v² / 2) in f32 (see the top of the file for the two builds).
LATHE_DEVICE_INLINE float normal_cdf_f32(float v) {
#ifdef __CUDA_ARCH__
  return 0.5f * (1.0f + erff(v * float(kInvSqrt2)));
#else
  return dmath::normal_cdf(v);
#endif
}
LATHE_DEVICE_INLINE float gauss_f32(float v) {
#ifdef __CUDA_ARCH__
  return expf(-0.5f * v * v);
#else
  return dmath::exp_poly(-0.5f * v * v);
#endif
}

// ---- forward: C operator()(C x) ----

// kHalf: the caller stores f16/bf16: x·Φ(x) by the short approximation of
// kernels/poly_math.h (gelu_erf_for_half, relative error below 1e-5), in the simulated build too.
template <bool kHalf = false>
struct ErfF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    if constexpr (kHalf && std::is_same_v<C, float>) {
      return ::lathe::kernels::gelu_erf_for_half(x);
    } else if constexpr (std::is_same_v<C, float>) {
      return x * normal_cdf_f32(x);
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

// kHalf: results stored as f16/bf16: gelu'(v) by the short approximation of kernels/poly_math.h
// (gelu_erf_grad_for_half, error below 1e-5 of |Φ| + |v φ|), in the simulated build too.
template <bool kHalf = false>
struct ErfB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    if constexpr (kHalf && std::is_same_v<C, float>) {
      return d * ::lathe::kernels::gelu_erf_grad_for_half(v);
    } else if constexpr (std::is_same_v<C, float>) {
      const float pdf = float(kInvSqrt2Pi) * gauss_f32(v);
      return d * (normal_cdf_f32(v) + v * pdf);
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

// The forward / backward functor of one form, for storage type T.
template <bool kTanh, class T>
using Forward = std::conditional_t<kTanh, TanhF, ErfF<sizeof(T) == 2>>;
template <bool kTanh, class T>
using Backward = std::conditional_t<kTanh, TanhB, ErfB<sizeof(T) == 2>>;

}  // namespace lathe::kernels::cuda::gelu_ops
