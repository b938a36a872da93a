// Fused cross entropy over contiguous [rows, classes] logits, forward and backward.
//
// Forward never materializes softmax: per row it finds the max, then in one more pass sums
// exp(x - max) and x (the latter only for label smoothing), giving
//   lse  = max + log(sum exp(x - max))
//   loss = (1 - eps) * (lse - x[target]) + eps * (lse - mean(x))
// which is PyTorch's label smoothing: (1 - eps) * nll + eps * mean over classes of -log p.
// lse is saved (accumulation type) so backward is a single pass per row:
//   dlogits = (exp(x - lse) - (1 - eps) * onehot(target) - eps / C) * grad_loss[row].
// Rows whose target is ignore_index get loss 0 and gradient 0 (grad_loss is not even read, so a
// NaN there from an all-ignored mean cannot leak in). The f32 exponential is the same vectorizable
// polynomial as the softmax kernel's; sums of exponentials are accumulated in f64 lanes.
// GCC only if-converts the float selects below (clamps, masks, max) into blends, and so only
// vectorizes these loops on AVX2, when FP ops may be assumed not to trap; kernels never read the
// FP exception flags, so this costs nothing.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <bit>
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {

constexpr int kLanes = 16;

// See softmax.cpp: Cephes-style exp for f32 that vectorizes without -ffast-math.
inline float exp_f32(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;
  float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Adding 1.5 * 2^23 rounds to an integer that lands in the low mantissa bits: n as a float and
  // as an int without a (non-vectorizable, trapping) float -> int conversion.
  const float t = xc * kLog2e + kRound;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kRound);
  const float n = t - kRound;
  float r = xc - n * kLn2Hi - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float scale = std::bit_cast<float>((ni + 127) << 23);
  float y = p * scale;
  y = x < -87.0f ? 0.0f : y;
  return x != x ? x : y;
}

template <class T>
inline T exp_fast(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
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

// Returns sum exp(x - shift); adds sum x to `sum_x` when kSumX.
template <class T, bool kSumX>
double row_sum_exp(const T* x, T shift, int64_t n, double& sum_x) {
  double lanes[kLanes] = {}, lanes_x[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      lanes[l] += double(exp_fast<T>(x[j + l] - shift));
      if constexpr (kSumX) lanes_x[l] += double(x[j + l]);
    }
  }
  double s = 0;
  for (int l = 0; l < kLanes; ++l) {
    s += lanes[l];
    if constexpr (kSumX) sum_x += lanes_x[l];
  }
  for (; j < n; ++j) {
    s += double(exp_fast<T>(x[j] - shift));
    if constexpr (kSumX) sum_x += double(x[j]);
  }
  return s;
}

template <class Fn>
void for_rows(int64_t rows, int64_t cols, Fn&& fn) {
  const bool parallel = rows > 1 && rows * cols >= kParallelGrain;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) fn(r);
}

// The op validates targets before calling; this repeats the check cheaply so a bad call cannot
// read out of bounds (and throws before any parallel region).
void check_targets(const int64_t* targets, int64_t rows, int64_t classes, int64_t ignore_index,
                   const char* op) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = targets[r];
    LATHE_CHECK(t == ignore_index || (t >= 0 && t < classes), op, ": target ", t, " at row ", r,
                " is out of range for ", classes, " classes");
  }
}

template <class T>
void forward_impl(const CrossEntropyForwardArgs& a) {
  using Acc = T;
  const int64_t rows = a.rows, C = a.classes;
  const T* logits = static_cast<const T*>(a.logits);
  T* loss = static_cast<T*>(a.loss);
  Acc* lse_out = static_cast<Acc*>(a.lse);
  const double eps = a.label_smoothing;
  for_rows(rows, C, [&](int64_t r) {
    const T* x = logits + r * C;
    const T m = row_max(x, C);
    double sum_x = 0;
    const double s =
        eps > 0 ? row_sum_exp<T, true>(x, m, C, sum_x) : row_sum_exp<T, false>(x, m, C, sum_x);
    const double lse = double(m) + std::log(s);
    if (lse_out) lse_out[r] = Acc(lse);
    const int64_t t = a.targets[r];
    if (t == a.ignore_index) {
      loss[r] = T(0);
      return;
    }
    double value = lse - double(x[t]);
    if (eps > 0) value = (1.0 - eps) * value + eps * (lse - sum_x / double(C));
    loss[r] = T(value);
  });
}

template <class T>
void backward_impl(const CrossEntropyBackwardArgs& a) {
  const int64_t rows = a.rows, C = a.classes;
  const T* logits = static_cast<const T*>(a.logits);
  const T* lse = static_cast<const T*>(a.lse);
  const T* grad_loss = static_cast<const T*>(a.grad_loss);
  T* grad = static_cast<T*>(a.grad_logits);
  const T eps = T(a.label_smoothing);
  const T smooth = eps / T(C);
  for_rows(rows, C, [&](int64_t r) {
    T* g = grad + r * C;
    const int64_t t = a.targets[r];
    if (t == a.ignore_index) {
      for (int64_t j = 0; j < C; ++j) g[j] = T(0);
      return;
    }
    const T* x = logits + r * C;
    const T shift = lse[r], scale = grad_loss[r];
    for (int64_t j = 0; j < C; ++j) g[j] = (exp_fast<T>(x[j] - shift) - smooth) * scale;
    g[t] -= (T(1) - eps) * scale;
  });
}

void cross_entropy_forward_kernel(const CrossEntropyForwardArgs& args) {
  LATHE_CHECK(args.rows >= 0 && args.classes > 0, "cross_entropy: invalid sizes rows=", args.rows,
              " classes=", args.classes);
  check_targets(args.targets, args.rows, args.classes, args.ignore_index, "cross_entropy");
  dispatch_float(args.dtype, "cross_entropy", [&]<class T>() { forward_impl<T>(args); });
}

void cross_entropy_backward_kernel(const CrossEntropyBackwardArgs& args) {
  LATHE_CHECK(args.rows >= 0 && args.classes > 0,
              "cross_entropy backward: invalid sizes rows=", args.rows, " classes=", args.classes);
  check_targets(args.targets, args.rows, args.classes, args.ignore_index, "cross_entropy backward");
  dispatch_float(args.dtype, "cross_entropy backward", [&]<class T>() { backward_impl<T>(args); });
}

}  // namespace

extern const CrossEntropyForwardFn cross_entropy_forward = cross_entropy_forward_kernel;
extern const CrossEntropyBackwardFn cross_entropy_backward = cross_entropy_backward_kernel;

}  // namespace lathe::kernels::cpu
