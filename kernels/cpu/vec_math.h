// Elementwise math that the compiler can vectorize. libm's expf is an opaque scalar call unless
// the build uses -ffast-math, which lathe does not (it would also change results elsewhere), so
// the kernels that are exp-bound (softmax, cross-entropy, attention, exp/sigmoid) and GELU share
// the branch-free f32 exp and Φ of kernels/poly_math.h (shared with the cuda kernels). The kernels
// using it are compiled with -fno-trapping-math (kernels/cpu in CMakeLists.txt) so that its selects
// vectorize.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/poly_math.h"

namespace lathe::kernels::cpu {

using kernels::exp_f32;
using kernels::normal_cdf_f32;

// exp in T: the vectorizable f32 version, libm for f64 (which gradient checks rely on).
template <class T>
inline T exp_fast(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

// exp(x) for x <= 0 (or NaN) in T: exp_fast's bits there, cheaper in f32 (poly_math.h).
template <class T>
inline T exp_nonpositive(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return kernels::exp_nonpositive_f32(x);
  } else {
    return std::exp(x);
  }
}

// Row reductions written with kLanes independent partial results, so that the compiler vectorizes
// them without -ffast-math (one scalar accumulator forces sequential adds).
inline constexpr int kLanes = 16;

// sum_{j < n} term(j) in kLanes independent partial sums of Acc (lane l takes j = l mod kLanes of
// the whole kLanes-blocks), the lanes added in order, then the tail in order: a fixed order, and
// the loop vectorizes.
template <class Acc, class Term>
Acc lane_sum_of(int64_t n, Term&& term) {
  Acc lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += term(j + l);
  }
  Acc s = 0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  for (; j < n; ++j) s += term(j);
  return s;
}

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

// sum_j exp(x[j] - shift), shift >= every x[j] (the row's max).
template <class T>
double row_sum_exp(const T* x, T shift, int64_t n) {
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += double(exp_nonpositive<T>(x[j + l] - shift));
  }
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  for (; j < n; ++j) s += double(exp_nonpositive<T>(x[j] - shift));
  return s;
}

}  // namespace lathe::kernels::cpu
