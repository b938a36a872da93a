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
// With N > 0 the row is uniform (rows.cuh, cut = whole_row) and fits N packs per thread: it is
// loaded once and kept in registers; with N = 0 `values` is called again on every pass. Both
// orders of summation are the same, so the two give the same bits. w and b are loaded for every
// row (L1 hits): kept in registers across rows, they took the bf16 kernel with 3 packs per lane
// from 72 to 124 registers (ptxas hoisted their widening out of the row loop too), and whether
// the instructions saved are worth that occupancy is for a GPU to say. `scratch` is the group
// reduction's 32 values of shared memory.
template <class T, bool kBlock, int N, class C, class Load, class First>
LATHE_DEVICE_INLINE void layer_norm_row_forward(const RowGroup<kBlock>& g, const RowCut& cut,
                                                int64_t r, int64_t cols, Load&& values,
                                                First&& first, const T* w, const T* b, T* yr,
                                                C* mean_out, C* rstd_out, C eps, C* scratch) {
  constexpr int V = kPack<T>;
  C regs[N > 0 ? N : 1][V];
  C part = C(0);
  if constexpr (N > 0) {
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
  if constexpr (N > 0) {
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
  // y at columns j.. from the row's values there.
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
  if constexpr (N > 0) {
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
