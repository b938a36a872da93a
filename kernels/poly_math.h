// Branch-free f32 math written once for the cpu kernels and the cuda kernels (host and device):
// exp and the standard normal CDF Φ (GELU) as polynomials instead of libm calls. On the cpu they
// let loops vectorize without -ffast-math (libm's expf/erff are opaque scalar calls); on cuda the
// GELU kernels call the same formulas so that the simulated build reproduces the cpu's bits.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LATHE_POLY_INLINE __host__ __device__ inline
#else
#define LATHE_POLY_INLINE inline
#endif

namespace lathe::kernels {

LATHE_POLY_INLINE int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

LATHE_POLY_INLINE float bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

// exp(x) in f32: Cephes' expf — range reduction by ln 2, a degree-6 minimax polynomial and 2^n
// built from exponent bits — accurate to ~1 ulp. Exactly 0 below ln(FLT_MIN) (so -inf, the
// masked logit, gives 0), +inf above ln(FLT_MAX), NaN for NaN.
LATHE_POLY_INLINE float exp_f32(float x) {
  constexpr float kLo = -87.3365447505531f, kHi = 88.7228391116729f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float xc = x < kLo ? kLo : (x > 88.3762626647949f ? 88.3762626647949f : x);
  // n = round(x / ln 2) as a float and as an int, without a (trapping) float -> int conversion.
  const float t = xc * 1.44269504088896341f + kRound;
  const int32_t ni = float_to_bits(t) - float_to_bits(kRound);
  const float n = t - kRound;
  const float r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float y = p * bits_to_float((ni + 127) << 23);
  y = x < kLo ? 0.0f : y;
  y = x > kHi ? bits_to_float(0x7f800000) : y;
  return x != x ? x : y;
}

// The standard normal CDF Φ(v) in f32 (GELU = x·Φ(x)). With a = |v|/√2: erf(a) = a·P(a²) for
// a < 1, and erfc(a) = exp(-a²)·Q(1/(1 + a/2)) for a >= 1, the tail computed directly so that Φ
// keeps its relative accuracy for very negative v. P and Q are least-squares fits at Chebyshev
// nodes (relative error 1.4e-9 and 6.7e-10 in f64; a few f32 ulp as evaluated here). NaN in, NaN
// out; Φ(-inf) = 0, Φ(inf) = 1.
LATHE_POLY_INLINE float normal_cdf_f32(float v) {
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
  const float erfc_large = exp_f32(-z) * q;
  const float half_tail = 0.5f * (a < 1.0f ? erfc_small : erfc_large);
  return v < 0 ? half_tail : 1.0f - half_tail;
}

}  // namespace lathe::kernels
