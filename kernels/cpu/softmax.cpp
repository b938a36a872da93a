// Softmax / log-softmax over the last dim of contiguous rows, forward and backward.
//
// Each row is three streaming passes (max, sum of exp, normalize) so values never overflow: exp is
// taken of x - max <= 0. The reductions keep kLanes independent partial results so the compiler
// can vectorize them without -ffast-math (a single scalar accumulator forces sequential adds). For
// f32 the exponential is a branch-free polynomial that vectorizes (std::exp does not without
// -ffast-math); it is accurate to about 2 ulp, well below the f32 tolerance of any caller. The row
// sum is taken in f32 over blocks of 1024 columns and the block sums added in f64, so rows of 100k
// classes lose nothing either. f64 uses std::exp and f64
// sums. Rows are split across OpenMP threads once the tensor is large enough to pay for the fork.
// The float selects (clamps, masks, max) vectorize because liblathe is built with
// -fno-trapping-math (CMakeLists.txt).
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"
#include "kernels/cpu/vec_math.h"

namespace lathe::kernels::cpu {

namespace {

// sum_j a[j] * b[j] in f64.
template <class T>
double row_dot(const T* a, const T* b, int64_t n) {
  return lane_sum_of<double>(n, [a, b](int64_t j) { return double(a[j]) * double(b[j]); });
}

template <class T>
double row_sum(const T* a, int64_t n) {
  return lane_sum_of<double>(n, [a](int64_t j) { return double(a[j]); });
}

// Rows and columns of a contiguous view reduced over its last dim (a 0-dim view is one element).
void rows_cols(const View& v, int64_t& rows, int64_t& cols) {
  cols = v.ndim == 0 ? 1 : v.size[v.ndim - 1];
  rows = cols == 0 ? 0 : v.numel() / cols;
}

template <class Fn>
void for_rows(int64_t rows, int64_t cols, Fn&& fn) {
  const bool parallel = rows > 1 && rows * cols >= kParallelGrain;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) fn(r);
}

// One row. Separate functions with __restrict pointers (not lambda bodies reading captured
// pointers) so the loops vectorize without a runtime aliasing check that can fall back to scalar.
template <class T>
void forward_row(const T* __restrict xr, T* __restrict yr, int64_t cols, bool log) {
  const T m = row_max(xr, cols);
  if (log) {
    // (x - max) - log(sum), not x - (max + log(sum)): the latter rounds log(sum) at the scale of
    // max and loses digits when the logits are large.
    const T log_sum = T(std::log(row_sum_exp<T>(xr, m, cols)));
    for (int64_t j = 0; j < cols; ++j) yr[j] = (xr[j] - m) - log_sum;
  } else {
    // Exponentials first (a plain loop that vectorizes), then their sum from the row just
    // written, which is still in L1/L2.
    // One pass writes the exponentials and sums them: kLanes partial sums in T over blocks of
    // kBlock columns (each term is in (0, 1], so a block's f32 sum loses at most ~kBlock/2^24
    // relative), the block sums added in f64 — widening every term to f64 halved the pass's speed.
    constexpr int64_t kBlock = 1024;
    double total = 0;
    int64_t c = 0;
    while (c + kLanes <= cols) {
      T lanes[kLanes] = {};
      const int64_t block_end = std::min(cols, c + kBlock);
      for (; c + kLanes <= block_end; c += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const T e = exp_nonpositive<T>(xr[c + l] - m);
          yr[c + l] = e;
          lanes[l] += e;
        }
      }
      for (int l = 0; l < kLanes; ++l) total += double(lanes[l]);
    }
    for (; c < cols; ++c) {
      yr[c] = exp_nonpositive<T>(xr[c] - m);
      total += double(yr[c]);
    }
    const T inv = T(1.0 / total);
    for (int64_t j = 0; j < cols; ++j) yr[j] *= inv;
  }
}

template <class T>
void backward_row(const T* __restrict yr, const T* __restrict gr, T* __restrict out, int64_t cols,
                  bool log) {
  if (log) {
    // d/dx log_softmax: gx = gy - softmax * sum(gy), softmax = exp(y).
    const T total = T(row_sum(gr, cols));
    for (int64_t j = 0; j < cols; ++j) out[j] = gr[j] - exp_fast<T>(yr[j]) * total;
  } else {
    // d/dx softmax: gx = y * (gy - sum(gy * y)).
    const T dot = T(row_dot(gr, yr, cols));
    for (int64_t j = 0; j < cols; ++j) out[j] = yr[j] * (gr[j] - dot);
  }
}

template <class T>
void forward_rows(const View& xv, const View& yv, bool log) {
  int64_t rows = 0, cols = 0;
  rows_cols(xv, rows, cols);
  const T* x = static_cast<const T*>(xv.data);
  T* y = static_cast<T*>(yv.data);
  for_rows(rows, cols, [=](int64_t r) { forward_row<T>(x + r * cols, y + r * cols, cols, log); });
}

template <class T>
void backward_rows(const View& yv, const View& gyv, const View& gxv, bool log) {
  int64_t rows = 0, cols = 0;
  rows_cols(yv, rows, cols);
  const T* y = static_cast<const T*>(yv.data);
  const T* gy = static_cast<const T*>(gyv.data);
  T* gx = static_cast<T*>(gxv.data);
  for_rows(rows, cols, [=](int64_t r) {
    backward_row<T>(y + r * cols, gy + r * cols, gx + r * cols, cols, log);
  });
}

void check_contiguous(const View& v, const char* op, const char* what) {
  LATHE_CHECK(v.is_contiguous(), op, ": ", what, " must be contiguous");
}

void softmax_forward_kernel(const View& x, const View& y, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_contiguous(x, op, "input");
  check_contiguous(y, op, "output");
  LATHE_CHECK(x.dtype == y.dtype && x.numel() == y.numel(), op, ": input/output mismatch");
  dispatch_float(x.dtype, op, [&]<class T>() { forward_rows<T>(x, y, log); });
}

void softmax_backward_kernel(const View& y, const View& grad_y, const View& grad_x, bool log) {
  const char* op = log ? "log_softmax backward" : "softmax backward";
  check_contiguous(y, op, "output");
  check_contiguous(grad_y, op, "grad_output");
  check_contiguous(grad_x, op, "grad_input");
  LATHE_CHECK(y.dtype == grad_y.dtype && y.dtype == grad_x.dtype && y.numel() == grad_y.numel() &&
                  y.numel() == grad_x.numel(),
              op, ": operand mismatch");
  dispatch_float(y.dtype, op, [&]<class T>() { backward_rows<T>(y, grad_y, grad_x, log); });
}

}  // namespace

extern const SoftmaxForwardFn softmax_forward = softmax_forward_kernel;
extern const SoftmaxBackwardFn softmax_backward = softmax_backward_kernel;

}  // namespace lathe::kernels::cpu
