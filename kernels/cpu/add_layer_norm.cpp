// Residual add fused into layer norm (kernel family add_layer_norm_forward): per row,
// s = x + residual, then exactly the forward of kernels/cpu/layer_norm.cpp on s (the same lane
// sums, so add_layer_norm(x, r) gives the bits of layer_norm(x + r) on the cpu). s is written to
// `sum` when the op will run a backward (which is layer_norm_backward on s), otherwise into a
// row buffer per thread that stays in L1. The backward needs no kernel of its own.
//
// f32 and f64; the op widens f16/bf16 on the cpu.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"
#include "kernels/cpu/vec_math.h"

namespace lathe::kernels::cpu {

namespace {

template <class T>
T lane_sum(const T* x, int64_t n) {
  return lane_sum_of<T>(n, [x](int64_t j) { return x[j]; });
}

template <class T>
T lane_centered_squares(const T* x, T mean, int64_t n) {
  return lane_sum_of<T>(n, [x, mean](int64_t j) {
    const T d = x[j] - mean;
    return d * d;
  });
}

template <class T>
void forward_impl(const AddLayerNormForwardArgs& a) {
  const int64_t rows = a.rows, cols = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const T* w = static_cast<const T*>(a.weight);
  const T* b = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  T* sum = static_cast<T*>(a.sum);
  T* mean_out = static_cast<T*>(a.mean);
  T* rstd_out = static_cast<T*>(a.rstd);
  const T eps = T(a.eps);
  const bool parallel = rows > 1 && rows * cols >= kParallelGrain;
#pragma omp parallel if (parallel)
  {
    std::vector<T> buffer(sum ? 0 : size_t(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      const T* rr = res + r * cols;
      T* sr = sum ? sum + r * cols : buffer.data();
      T* yr = y + r * cols;
      for (int64_t j = 0; j < cols; ++j) sr[j] = xr[j] + rr[j];
      const T mean = lane_sum(sr, cols) / T(cols);
      const T var = lane_centered_squares(sr, mean, cols) / T(cols);
      const T rstd = T(1) / std::sqrt(var + eps);
      if (mean_out) mean_out[r] = mean;
      if (rstd_out) rstd_out[r] = rstd;
      if (w && b) {
        for (int64_t j = 0; j < cols; ++j) yr[j] = (sr[j] - mean) * rstd * w[j] + b[j];
      } else if (w) {
        for (int64_t j = 0; j < cols; ++j) yr[j] = (sr[j] - mean) * rstd * w[j];
      } else if (b) {
        for (int64_t j = 0; j < cols; ++j) yr[j] = (sr[j] - mean) * rstd + b[j];
      } else {
        for (int64_t j = 0; j < cols; ++j) yr[j] = (sr[j] - mean) * rstd;
      }
    }
  }
}

void add_layer_norm_forward_kernel(const AddLayerNormForwardArgs& args) {
  LATHE_CHECK(args.rows >= 0 && args.cols > 0, "add_layer_norm: invalid sizes rows=", args.rows,
              " cols=", args.cols);
  dispatch_float(args.dtype, "add_layer_norm", [&]<class T>() { forward_impl<T>(args); });
}

}  // namespace

extern const AddLayerNormForwardFn add_layer_norm_forward = add_layer_norm_forward_kernel;

}  // namespace lathe::kernels::cpu
