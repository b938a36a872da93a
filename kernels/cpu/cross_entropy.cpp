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
// The float selects (clamps, masks, max) vectorize because liblathe is built with
// -fno-trapping-math (CMakeLists.txt).
#include <bit>
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"
#include "kernels/cpu/vec_math.h"

namespace lathe::kernels::cpu {

namespace {

// Returns sum exp(x - shift); adds sum x to `sum_x` when kSumX.
template <class T, bool kSumX>
double row_sum_exp(const T* x, T shift, int64_t n, double& sum_x) {
  double lanes[kLanes] = {}, lanes_x[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      lanes[l] += double(exp_nonpositive<T>(x[j + l] - shift));
      if constexpr (kSumX) lanes_x[l] += double(x[j + l]);
    }
  }
  double s = 0;
  for (int l = 0; l < kLanes; ++l) {
    s += lanes[l];
    if constexpr (kSumX) sum_x += lanes_x[l];
  }
  for (; j < n; ++j) {
    s += double(exp_nonpositive<T>(x[j] - shift));
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
    for (int64_t j = 0; j < C; ++j) g[j] = (exp_nonpositive<T>(x[j] - shift) - smooth) * scale;
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
