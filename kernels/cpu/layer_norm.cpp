// Fused layer norm over the last `cols` elements of contiguous rows, forward and backward.
//
// Forward: two passes per row (mean, then centered sum of squares) in the accumulation type
// (f64 for f64 data, f32 for f32), which is stable without Welford's per-element division, then
// one pass writing y = (x - mean) * rstd * weight + bias. mean and rstd are saved for backward.
//
// Backward: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight, one row at a
// time. dweight = sum_rows dy * xhat and dbias = sum_rows dy are column sums over every row; they
// are reduced deterministically: the rows are cut into a number of blocks that depends only on
// the row count (never on the thread count), each block sums its rows in order into its own
// f64 partial row, and the partials are combined block by block in a fixed order. No atomics,
// so the same inputs give bit-identical gradients on any number of threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"
#include "kernels/cpu/vec_math.h"

namespace lathe::kernels::cpu {

namespace {

// Upper bound on the partial rows of dweight/dbias: enough blocks to keep every thread busy,
// few enough that the partials stay small next to the input.
constexpr int64_t kMaxBlocks = 64;
constexpr int64_t kMinRowsPerBlock = 8;

template <class Acc, class T>
Acc lane_sum(const T* x, int64_t n) {
  return lane_sum_of<Acc>(n, [x](int64_t j) { return Acc(x[j]); });
}

template <class Acc, class T>
Acc lane_centered_squares(const T* x, Acc mean, int64_t n) {
  return lane_sum_of<Acc>(n, [x, mean](int64_t j) {
    const Acc d = Acc(x[j]) - mean;
    return d * d;
  });
}

template <class T>
void forward_impl(const LayerNormForwardArgs& a) {
  using Acc = T;  // f64 for f64, f32 for f32 (the saved statistics' type)
  const int64_t rows = a.rows, cols = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.weight);
  const T* b = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  Acc* mean_out = static_cast<Acc*>(a.mean);
  Acc* rstd_out = static_cast<Acc*>(a.rstd);
  const Acc eps = Acc(a.eps);
  const bool parallel = rows > 1 && rows * cols >= kParallelGrain;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const Acc mean = lane_sum<Acc>(xr, cols) / Acc(cols);
    const Acc var = lane_centered_squares<Acc>(xr, mean, cols) / Acc(cols);
    const Acc rstd = Acc(1) / std::sqrt(var + eps);
    if (mean_out) mean_out[r] = mean;
    if (rstd_out) rstd_out[r] = rstd;
    if (w && b) {
      for (int64_t j = 0; j < cols; ++j) yr[j] = T((Acc(xr[j]) - mean) * rstd * w[j] + b[j]);
    } else if (w) {
      for (int64_t j = 0; j < cols; ++j) yr[j] = T((Acc(xr[j]) - mean) * rstd * w[j]);
    } else if (b) {
      for (int64_t j = 0; j < cols; ++j) yr[j] = T((Acc(xr[j]) - mean) * rstd + b[j]);
    } else {
      for (int64_t j = 0; j < cols; ++j) yr[j] = T((Acc(xr[j]) - mean) * rstd);
    }
  }
}

// dx for one row; g = dy * w is formed on the fly.
template <class T>
void row_grad_x(const T* xr, const T* gyr, const T* w, T mean, T rstd, T* gxr, int64_t cols) {
  T lanes_g[kLanes] = {}, lanes_gx[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= cols; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      T g = w ? gyr[j + l] * w[j + l] : gyr[j + l];
      T xhat = (xr[j + l] - mean) * rstd;
      lanes_g[l] += g;
      lanes_gx[l] += g * xhat;
    }
  }
  T sum_g = 0, sum_gx = 0;
  for (int l = 0; l < kLanes; ++l) {
    sum_g += lanes_g[l];
    sum_gx += lanes_gx[l];
  }
  for (; j < cols; ++j) {
    T g = w ? gyr[j] * w[j] : gyr[j];
    T xhat = (xr[j] - mean) * rstd;
    sum_g += g;
    sum_gx += g * xhat;
  }
  const T mean_g = sum_g / T(cols), mean_gx = sum_gx / T(cols);
  for (j = 0; j < cols; ++j) {
    T g = w ? gyr[j] * w[j] : gyr[j];
    T xhat = (xr[j] - mean) * rstd;
    gxr[j] = rstd * (g - mean_g - xhat * mean_gx);
  }
}

template <class T>
void backward_impl(const LayerNormBackwardArgs& a) {
  const int64_t rows = a.rows, cols = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.weight);
  const T* mean = static_cast<const T*>(a.mean);
  const T* rstd = static_cast<const T*>(a.rstd);
  const T* gy = static_cast<const T*>(a.grad_y);
  T* gx = static_cast<T*>(a.grad_x);
  T* gw = static_cast<T*>(a.grad_weight);
  T* gb = static_cast<T*>(a.grad_bias);
  const bool need_params = gw || gb;
  const bool parallel = rows > 1 && rows * cols >= kParallelGrain;

  // The block count is a function of `rows` only, which is what makes the sums reproducible.
  // Without parameter gradients every row is its own block.
  const int64_t blocks =
      need_params ? std::clamp<int64_t>(rows / kMinRowsPerBlock, 1, kMaxBlocks) : rows;
  std::vector<double> partial_w(gw ? size_t(blocks * cols) : 0, 0.0);
  std::vector<double> partial_b(gb ? size_t(blocks * cols) : 0, 0.0);

#pragma omp parallel for schedule(static) if (parallel && blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = rows * blk / blocks, end = rows * (blk + 1) / blocks;
    double* pw = gw ? partial_w.data() + blk * cols : nullptr;
    double* pb = gb ? partial_b.data() + blk * cols : nullptr;
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * cols;
      const T* gyr = gy + r * cols;
      const T m = mean[r], s = rstd[r];
      if (gx) row_grad_x(xr, gyr, w, m, s, gx + r * cols, cols);
      if (pw) {
        for (int64_t j = 0; j < cols; ++j) pw[j] += double(gyr[j]) * double((xr[j] - m) * s);
      }
      if (pb) {
        for (int64_t j = 0; j < cols; ++j) pb[j] += double(gyr[j]);
      }
    }
  }
  if (need_params) {
    const bool parallel_cols = cols * blocks >= kParallelGrain;
#pragma omp parallel for schedule(static) if (parallel_cols)
    for (int64_t j = 0; j < cols; ++j) {
      double sw = 0, sb = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        if (gw) sw += partial_w[size_t(blk * cols + j)];
        if (gb) sb += partial_b[size_t(blk * cols + j)];
      }
      if (gw) gw[j] = T(sw);
      if (gb) gb[j] = T(sb);
    }
  }
}

void layer_norm_forward_kernel(const LayerNormForwardArgs& args) {
  LATHE_CHECK(args.rows >= 0 && args.cols > 0, "layer_norm: invalid sizes rows=", args.rows,
              " cols=", args.cols);
  dispatch_float(args.dtype, "layer_norm", [&]<class T>() { forward_impl<T>(args); });
}

void layer_norm_backward_kernel(const LayerNormBackwardArgs& args) {
  LATHE_CHECK(args.rows >= 0 && args.cols > 0,
              "layer_norm backward: invalid sizes rows=", args.rows, " cols=", args.cols);
  dispatch_float(args.dtype, "layer_norm backward", [&]<class T>() { backward_impl<T>(args); });
}

}  // namespace

extern const LayerNormForwardFn layer_norm_forward = layer_norm_forward_kernel;
extern const LayerNormBackwardFn layer_norm_backward = layer_norm_backward_kernel;

}  // namespace lathe::kernels::cpu
