// Elementwise math that the compiler can vectorize. libm's expf is an opaque scalar call unless
// the build uses -ffast-math, which lathe does not (it would also change results elsewhere), so
// the kernels that are exp-bound (softmax, cross-entropy, attention, exp/sigmoid) share this
// branch-free f32 exp: Cephes' expf — range reduction by ln 2, a degree-6 minimax polynomial and
// 2^n built from exponent bits — accurate to ~1 ulp. The kernels using it are compiled with
// -fno-trapping-math (kernels/cpu in CMakeLists.txt) so that its selects vectorize.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace lathe::kernels::cpu {

// exp(x) in f32: exactly 0 below ln(FLT_MIN) (so -inf, the masked logit, gives 0), +inf above
// ln(FLT_MAX), NaN for NaN.
inline float exp_f32(float x) {
  constexpr float kLo = -87.3365447505531f, kHi = 88.7228391116729f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float xc = x < kLo ? kLo : (x > 88.3762626647949f ? 88.3762626647949f : x);
  // n = round(x / ln 2) as a float and as an int, without a (trapping) float -> int conversion.
  const float t = xc * 1.44269504088896341f + kRound;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kRound);
  const float n = t - kRound;
  const float r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float y = p * std::bit_cast<float>((ni + 127) << 23);
  y = x < kLo ? 0.0f : y;
  y = x > kHi ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

// exp in T: the vectorizable f32 version, libm for f64 (which gradient checks rely on).
template <class T>
inline T exp_fast(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

// Row reductions written with kLanes independent partial results, so that the compiler vectorizes
// them without -ffast-math (one scalar accumulator forces sequential adds).
inline constexpr int kLanes = 16;

template <class T>
T row_max(const T* x, int64_t n) {
  T lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = x[j + l] > lanes[l] ? x[j + l] : lanes[l];
  }
  T m = -std::numeric_limits<T>::infinity();
  for (int l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// sum_j exp(x[j] - shift).
template <class T>
double row_sum_exp(const T* x, T shift, int64_t n) {
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += double(exp_fast<T>(x[j + l] - shift));
  }
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  for (; j < n; ++j) s += double(exp_fast<T>(x[j] - shift));
  return s;
}

}  // namespace lathe::kernels::cpu
