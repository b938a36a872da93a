// Device math with one name per function for float and double (expf vs exp, ...), so templated
// kernels call dmath::exp(x) for either. The formulas of composite functions (sigmoid, gelu) are
// written exactly as in the cpu kernels, so the simulated build (same libm) reproduces the cpu's
// results and a GPU differs only by its libm's last-bit rounding.
#pragma once

#include <cmath>

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

template <class T>
LATHE_DEVICE_INLINE bool isnan(T x) {
  return x != x;
}

}  // namespace lathe::kernels::cuda::dmath
