// Branch-free f32 math written once for the cpu kernels and the cuda kernels (host and device):
// exp and the standard normal CDF Φ (GELU) as polynomials instead of libm calls. On the cpu they
// let loops vectorize without -ffast-math (libm's expf/erff are opaque scalar calls); on cuda the
// GELU kernels call the same formulas so that the simulated build reproduces the cpu's bits. Also
// the cuda kernels' short GELU and GELU derivative for f16/bf16 results (gelu_erf_for_half,
// gelu_erf_grad_for_half), here so that a host test can measure their error.
#pragma once

#include <cmath>
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

// The lower end of exp_f32's range: below ln(FLT_MIN) the result is 0.
inline constexpr float kExpLoF32 = -87.3365447505531f;

// exp(xc) in f32 for xc in [kExpLoF32, 88.376]: Cephes' expf — range reduction by ln 2, a
// degree-6 minimax polynomial and 2^n built from exponent bits — accurate to ~1 ulp. The core of
// exp_f32 and exp_nonpositive_f32, which clamp their argument into that range.
LATHE_POLY_INLINE float exp_range_f32(float xc) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
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
  return p * bits_to_float((ni + 127) << 23);
}

// exp(x) in f32, accurate to ~1 ulp. Exactly 0 below ln(FLT_MIN) (so -inf, the masked logit,
// gives 0), +inf above ln(FLT_MAX), NaN for NaN.
LATHE_POLY_INLINE float exp_f32(float x) {
  constexpr float kHi = 88.7228391116729f;
  const float xc = x < kExpLoF32 ? kExpLoF32 : (x > 88.3762626647949f ? 88.3762626647949f : x);
  float y = exp_range_f32(xc);
  y = x < kExpLoF32 ? 0.0f : y;
  y = x > kHi ? bits_to_float(0x7f800000) : y;
  return x != x ? x : y;
}

// exp(x) for x <= 0 (or NaN), the same bits as exp_f32 there: what softmax, cross-entropy and
// attention take the exponential of (x - max, x - lse, old max - new max). Without exp_f32's
// overflow clamp and +inf select, the cpu softmax's exponential pass ran 1.3x faster (AVX2).
// Positive x is not handled: above ~88.7 the exponent bits overflow.
LATHE_POLY_INLINE float exp_nonpositive_f32(float x) {
  const float y = x < kExpLoF32 ? 0.0f : exp_range_f32(x < kExpLoF32 ? kExpLoF32 : x);
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
  const float erfc_large = exp_nonpositive_f32(-z) * q;  // -z <= 0: exp_f32's bits
  const float half_tail = 0.5f * (a < 1.0f ? erfc_small : erfc_large);
  return v < 0 ? half_tail : 1.0f - half_tail;
}

// 1 / u and 2^y as one MUFU instruction each on a GPU (rcp.approx.ftz, 1 ulp; ex2.approx.ftz,
// about 2^-22 relative, flushing below 2^-126); a division and exp2f in the simulated and
// cpu-hosted builds. The one place these instructions are written: dmath::exp_for (math.cuh) and
// the flash attention kernels' fast_exp2 call mufu_exp2 too.
LATHE_POLY_INLINE float mufu_rcp(float u) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(u));
  return r;
#else
  return 1.0f / u;
#endif
}
LATHE_POLY_INLINE float mufu_exp2(float y) {
#if defined(__CUDA_ARCH__)
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(y));
  return e;
#else
  return exp2f(y);
#endif
}

// GELU (erf form) x·Φ(x) in f32 for results stored as f16 or bf16, whose rounding (half an ulp:
// 4.9e-4 relative for f16, 3.9e-3 for bf16) hides any error far below it. The GPU's erff took
// about 25 instructions per element (both of its branches, selects and an exponential), most of
// the bf16 GELU kernels' work, which are bound by instruction issue; this takes about 16. f32
// storage keeps the accurate forms (erff on a GPU, normal_cdf_f32 above on the cpu).
//
// The upper tail Q(a) = Φ(-a) = erfc(a / √2) / 2 of a = |x| is t · 2^(P(t) - a² log2(e) / 2)
// with t = 1 / (1 + p a), p = 35/128, and P of degree 6: a minimax fit (Lawson's iteration) of the
// relative error of Q over a in [0, 13.5], 1.4e-6 in exact arithmetic. Φ(x) is Q for x < 0, so
// GELU keeps its relative accuracy in the lower tail, where 1 + erf(x / √2) cancels, and 1 - Q
// above. One formula covers every x: a reciprocal, 6 FMAs, an exponential and the sign select,
// no branch. Evaluated in f32 (explicit FMAs, so every build rounds alike) the relative error is
// at most 7.6e-6 wherever |GELU(x)| >= FLT_MIN (a dense sweep against erfc in f64 checks 1e-5,
// tests/cuda/test_kernels.cpp); the worst case is near x = -13, from rounding the exponent's
// a² log2(e) / 2 (about 124 there) to f32, and it is 60 times below an f16 half-ulp, 500 below
// bf16's. Below FLT_MIN the error is under FLT_MIN in absolute terms.
//
// On a GPU the reciprocal and 2^y are one MUFU each (rcp.approx.ftz, 1 ulp; ex2.approx.ftz, about
// 2^-22 relative: together under 1e-6 more) and 2^y flushes below 2^-126; t is scaled by 1/4 and
// 2^y by 4 (folded into the coefficients, exactly), so the flush only reaches results that are
// subnormal anyway. The simulated and cpu-hosted builds compute 1 / u and exp2f (the pattern of
// dmath::exp_for), so there results below FLT_MIN fade through the subnormals to -0 near x = -14.
// Special values are the cpu's x·Φ(x): NaN gives NaN, +inf +inf, -inf NaN (-inf · 0), -0 -0.
LATHE_POLY_INLINE float normal_cdf_for_half(float x) {
  // P's coefficients c0..c6; the code uses c_i · 4^i (t/4 in place of t) and c0 + 2 (2^y · 4).
  constexpr float kC0 = -3.195269412582265f, kC1 = 1.4215621752068092f, kC2 = 0.76412290250314382f,
                  kC3 = -0.29235343021293825f, kC4 = 1.1939883249485714f,
                  kC5 = -1.2709546271011869f, kC6 = 0.37890609046007812f;
  constexpr float kP = 0.2734375f;
  constexpr float kHalfLog2e = 0.72134752044448170f;
  const float a = x < 0 ? -x : x;
  const float u = fmaf(4 * kP, a, 4.0f);
  const float t4 = mufu_rcp(u);  // t / 4
  float p = kC6 * 4096.0f;
  p = fmaf(p, t4, kC5 * 1024.0f);
  p = fmaf(p, t4, kC4 * 256.0f);
  p = fmaf(p, t4, kC3 * 64.0f);
  p = fmaf(p, t4, kC2 * 16.0f);
  p = fmaf(p, t4, kC1 * 4.0f);
  p = fmaf(p, t4, kC0 + 2.0f);
  const float e = mufu_exp2(fmaf(x * -kHalfLog2e, x, p));
  const float q = t4 * e;  // Q(|x|)
  return x < 0 ? q : 1.0f - q;
}

// GELU (erf form) for f16/bf16 results: x·Φ(x) with Φ as above.
LATHE_POLY_INLINE float gelu_erf_for_half(float x) {
  return x * normal_cdf_for_half(x);
}

// GELU's derivative Φ(x) + x φ(x) for f16/bf16 results (the backward's gelu'), with Φ as above and
// φ(x) = 2^(-x² log2(e) / 2) / √(2π) by one more exponential (ex2.approx on a GPU): about 33
// instructions per element in the bf16 kernel where erff and an exponential took about 44. Its
// error is Φ's (relative 7.6e-6 at most, the tail included) plus the exponential's (ex2.approx,
// ~2^-22): below 1e-5 of |Φ| + |x φ| wherever that is at least 2^-100 (7.3e-6 measured; below,
// near x = -13, φ is an f32 subnormal), which near gelu's zero (x = -0.75) is an absolute bound.
// Special values follow the accurate form's Φ + x φ: NaN gives NaN, ±inf NaN (±inf · 0), as the
// cuda kernels' f32 path does.
LATHE_POLY_INLINE float gelu_erf_grad_for_half(float x) {
  constexpr float kHalfLog2e = 0.72134752044448170f;
  constexpr float kInvSqrt2Pi = 0.39894228040143268f;
  const float e = mufu_exp2((x * -kHalfLog2e) * x);
  return fmaf(x, kInvSqrt2Pi * e, normal_cdf_for_half(x));
}

}  // namespace lathe::kernels
