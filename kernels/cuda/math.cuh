// Device math with one name per function for float and double (expf vs exp, ...), so templated
// kernels call dmath::exp(x) for either. The formulas of composite functions (sigmoid, gelu) are
// written exactly as in the cpu kernels, so the simulated build (same libm) reproduces the cpu's
// results and a GPU differs only by its libm's last-bit rounding.
#pragma once

#include <cmath>

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

// exp in f32 by the cpu kernels' branch-free polynomial (kernels/cpu/vec_math.h's exp_f32, Cephes'
// expf: range reduction by ln 2, a degree-6 polynomial, 2^n from exponent bits; ~1 ulp). Used
// where the cpu kernel uses it inside a composite formula (GELU), so that the simulated build
// reproduces the cpu's bits; elsewhere the kernels call expf. Keep the two in step.
LATHE_DEVICE_INLINE float exp_poly(float x) {
  constexpr float kLo = -87.3365447505531f, kHi = 88.7228391116729f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float xc = x < kLo ? kLo : (x > 88.3762626647949f ? 88.3762626647949f : x);
  const float t = xc * 1.44269504088896341f + kRound;
  const int ni = __float_as_int(t) - __float_as_int(kRound);
  const float n = t - kRound;
  const float r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float y = p * __int_as_float((ni + 127) << 23);
  y = x < kLo ? 0.0f : y;
  y = x > kHi ? __int_as_float(0x7f800000) : y;
  return x != x ? x : y;
}

// The standard normal CDF in f32, the formula of kernels/cpu/vec_math.h's normal_cdf_f32 (GELU's
// Phi; keep the two in step): with a = |v| / sqrt(2), erf(a) = a * P(a^2) below 1 and
// erfc(a) = exp(-a^2) * Q(1 / (1 + a / 2)) above, so the tail keeps its relative accuracy.
LATHE_DEVICE_INLINE float normal_cdf(float v) {
  const float a = (v < 0 ? -v : v) * 0.707106781186547524f;
  const float z = a * a;
  float p = 7.898210206314131e-05f;
  p = p * z - 8.024354128485373e-04f;
  p = p * z + 5.190053577817941e-03f;
  p = p * z - 2.685480853721793e-02f;
  p = p * z + 1.128361242824493e-01f;
  p = p * z - 3.761262884332521e-01f;
  p = p * z + 1.128379166510052e+00f;
  const float erfc_small = 1.0f - a * p;
  const float t = 1.0f / (1.0f + 0.5f * a);
  float q = -6.220657259100466e-02f;
  q = q * t + 3.072546782353143e-01f;
  q = q * t - 5.423531186356025e-01f;
  q = q * t + 3.456904839123916e-01f;
  q = q * t - 7.464503340021841e-02f;
  q = q * t + 2.235027973686529e-01f;
  q = q * t + 2.375590312856158e-01f;
  q = q * t + 2.832523787199358e-01f;
  q = q * t + 2.820116491846932e-01f;
  q = q * t + 2.614141000235676e-06f;
  const float erfc_large = exp_poly(-z) * q;
  const float half_tail = 0.5f * (a < 1.0f ? erfc_small : erfc_large);
  return v < 0 ? half_tail : 1.0f - half_tail;
}

template <class T>
LATHE_DEVICE_INLINE bool isnan(T x) {
  return x != x;
}

}  // namespace lathe::kernels::cuda::dmath
