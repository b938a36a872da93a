// Device math with one name per function for float and double (expf vs exp, ...), so templated
// kernels call dmath::exp(x) for either. The formulas of composite functions (sigmoid, gelu) are
// written exactly as in the cpu kernels, so the simulated build (same libm) reproduces the cpu's
// results and a GPU differs only by its libm's last-bit rounding.
#pragma once

#include <cmath>
#include <type_traits>

#include "kernels/poly_math.h"

namespace lathe::kernels::cuda::dmath {

#define LATHE_DMATH1(name, fname)             \
  LATHE_DEVICE_INLINE float name(float x) {   \
    return ::fname(x);                        \
  }                                           \
  LATHE_DEVICE_INLINE double name(double x) { \
    return ::name(x);                         \
  }
LATHE_DMATH1(exp, expf)
LATHE_DMATH1(log, logf)
LATHE_DMATH1(sqrt, sqrtf)
LATHE_DMATH1(tanh, tanhf)
LATHE_DMATH1(erf, erff)
LATHE_DMATH1(cos, cosf)
LATHE_DMATH1(sin, sinf)
LATHE_DMATH1(fabs, fabsf)
LATHE_DMATH1(ceil, ceilf)
LATHE_DMATH1(floor, floorf)
#undef LATHE_DMATH1

LATHE_DEVICE_INLINE float fmax(float x, float y) {
  return ::fmaxf(x, y);
}
LATHE_DEVICE_INLINE double fmax(double x, double y) {
  return ::fmax(x, y);
}

LATHE_DEVICE_INLINE float pow(float x, float y) {
  return ::powf(x, y);
}
LATHE_DEVICE_INLINE double pow(double x, double y) {
  return ::pow(x, y);
}

// exp and Φ by the cpu kernels' polynomials (kernels/poly_math.h), used where the cpu kernel uses
// them inside a composite formula (GELU), so that the simulated build reproduces the cpu's bits;
// elsewhere the kernels call expf.
LATHE_DEVICE_INLINE float exp_poly(float x) {
  return ::lathe::kernels::exp_f32(x);
}
LATHE_DEVICE_INLINE float normal_cdf(float v) {
  return ::lathe::kernels::normal_cdf_f32(v);
}

// e^x in a kernel whose results are stored as T (x in the compute type C). For f16/bf16 storage
// with f32 compute: 2^(x log2 e), on the GPU one `ex2.approx.ftz` (an FMUL and a MUFU.EX2, where
// expf takes about ten instructions with its range reduction). Its error, about 2^-22 relative
// plus the rounding of x log2 e (|x| 2^-24 relative: 5e-6 at x = -87, where e^x is 1e-38) and
// results below 2^-126 flushed to zero, is far below the 2^-9 (bf16) or 2^-12 (f16) rounding of
// the stored result. The bf16 softmax and cross-entropy kernels are bound by instruction issue,
// and the exponential was most of their arithmetic per element. f32 and f64 storage keep the
// accurate expf / exp. The simulator computes exp2f(x log2 e) with libm (no flush to zero).
template <class T, class C>
LATHE_DEVICE_INLINE C exp_for(C x) {
  if constexpr (sizeof(T) == 2 && std::is_same_v<C, float>) {
    return ::lathe::kernels::mufu_exp2(x * 1.4426950408889634f);
  } else {
    return exp(x);
  }
}

template <class T>
LATHE_DEVICE_INLINE bool isnan(T x) {
  return x != x;
}

}  // namespace lathe::kernels::cuda::dmath
