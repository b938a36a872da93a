// The forward of layer norm on one row, shared by layer_norm.cu (the row is x) and
// add_layer_norm.cu (the row is x + residual rounded to the storage type), so the two kernels
// compute the statistics and y with the same expressions in the same order.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/rows.cuh"

namespace lathe::kernels::cuda::rows {

// One row for the group `g` (cut as `cut`): the mean, then the centered sum of squares (two
// passes, so values far from zero lose nothing to E[x^2] - E[x]^2 cancellation), the statistics
// stored by the group's thread 0 (when their outputs are given), then
// y = (v - mean) * rstd * w + b. `values(j, v)` fills v[W] with the row's values at columns
// j .. j + W - 1 in the compute type C; `first(j, v)` sees those values once, in the first pass.
// A row that fits N packs per thread (row_fits_cache) is loaded once and kept in registers;
// otherwise `values` is called again on every pass. Both orders of summation are the same, so
// the two give the same bits. `scratch` is the group reduction's 32 values of shared memory.
template <class T, bool kBlock, int N, class C, class Load, class First>
LATHE_DEVICE_INLINE void layer_norm_row_forward(const RowGroup<kBlock>& g, const RowCut& cut,
                                                int64_t r, int64_t cols, Load&& values,
                                                First&& first, const T* w, const T* b, T* yr,
                                                C* mean_out, C* rstd_out, C eps, C* scratch) {
  constexpr int V = kPack<T>;
  const bool cached = row_fits_cache<T, N>(cut, g.nt);
  C regs[N > 0 ? N : 1][V];
  C part = C(0);
  if (cached) {
    load_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) { values(j, regs[S]); });
    for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) {
      first(j, regs[S]);
      for (int k = 0; k < V; ++k) part += regs[S][k];
    });
  } else {
    for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
      C v[W];
      values(j, v);
      first(j, v);
      for (int k = 0; k < W; ++k) part += v[k];
    });
  }
  const C mean = group_allreduce<kBlock>(part, Sum{}, scratch) / C(cols);
  part = C(0);
  if (cached) {
    for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t) {
      for (int k = 0; k < V; ++k) part += (regs[S][k] - mean) * (regs[S][k] - mean);
    });
  } else {
    for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
      C v[W];
      values(j, v);
      for (int k = 0; k < W; ++k) part += (v[k] - mean) * (v[k] - mean);
    });
  }
  const C var = group_allreduce<kBlock>(part, Sum{}, scratch) / C(cols);
  const C rstd = C(1) / dmath::sqrt(var + eps);
  if (g.t == 0) {
    if (mean_out) mean_out[r] = mean;
    if (rstd_out) rstd_out[r] = rstd;
  }
  auto write = [&]<int W>(int64_t j, C(&v)[W]) {
    C wv[W] = {}, bv[W] = {};
    if (w) rows::load<W>(w + j, wv);
    if (b) rows::load<W>(b + j, bv);
    for (int k = 0; k < W; ++k) {
      C o = (v[k] - mean) * rstd;
      if (w) o = o * wv[k];
      if (b) o = o + bv[k];
      v[k] = o;
    }
    rows::store<W>(yr + j, v);
  };
  if (cached) {
    for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) { write(j, regs[S]); });
  } else {
    for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
      C v[W];
      values(j, v);
      write(j, v);
    });
  }
}

}  // namespace lathe::kernels::cuda::rows
