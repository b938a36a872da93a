// Residual add fused into layer norm on cuda (kernel family add_layer_norm_forward): for contiguous
// rows of x and residual, s = x + residual rounded to the storage type (the value a separate add
// would have stored, so the fused op equals add + layer_norm), then layer_norm.cu's forward on s:
// the mean, the centered sum of squares (two passes), y = (s - mean) * rstd * w + b. A warp per
// row up to 1024 columns, a block per row above; 16-byte packs with scalar head and tail
// (rows.cuh); f32 statistics for f32/f16/bf16, f64 for f64.
//
// Rows that fit are held in registers after the first pass (rows.cuh); longer or unaligned rows
// re-add x + residual from the two inputs on each pass (L1/L2 hits after the first) instead of
// reading s back. When autograd will need it, the first pass also stores s to `sum`:
// the backward is then layer_norm_backward on s (dx = dresidual), with no kernel of its own.
// Traffic: x and residual read once, y written once, plus s written once when training.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/layer_norm_row.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/rows.cuh"

namespace lathe::kernels::cuda {

namespace {

using rows::acc_t;

// s = x + residual for W elements at j, rounded to T and widened back to C.
template <int W, class T, class C>
LATHE_DEVICE_INLINE void load_sum(const T* x, const T* res, int64_t j, C (&s)[W]) {
  C r[W];
  rows::load<W>(x + j, s);
  rows::load<W>(res + j, r);
#pragma unroll
  for (int k = 0; k < W; ++k) s[k] = s[k] + r[k];
  T rounded[W];
  convert_pack<T>(s, rounded);
#pragma unroll
  for (int k = 0; k < W; ++k) s[k] = convert<C>(rounded[k]);
}

template <class T, bool kBlock, int N>
__global__ void add_layer_norm_forward_kernel(const T* x, const T* res, const T* w, const T* b,
                                              T* y, T* sum_out, acc_t<T>* mean_out,
                                              acc_t<T>* rstd_out, int64_t n_rows, int64_t cols,
                                              acc_t<T> eps) {
  using C = acc_t<T>;
  __shared__ C scratch[32];
  const rows::RowGroup<kBlock> g = rows::row_group<kBlock>();
  // N > 0: uniform rows (rows.cuh), every one cut as `whole`.
  const rows::RowCut whole = rows::whole_row<T>(cols);
  for (int64_t r = g.first; g.runs(r, n_rows); r += g.step) {
    const bool active = r < n_rows;
    const T* xr = x + r * cols;
    const T* rr = res + r * cols;
    T* yr = y + r * cols;
    T* sr = sum_out ? sum_out + r * cols : nullptr;
    rows::RowCut cut;
    if (active) {
      if constexpr (N > 0) {
        cut = whole;
      } else {
        const void* const ptrs[6] = {xr, rr, yr, sr, w, b};
        cut = rows::cut_row<T>(cols, ptrs);
      }
    }
    rows::layer_norm_row_forward<T, kBlock, N>(
        g, cut, r, cols, [&]<int W>(int64_t j, C(&s)[W]) { load_sum<W>(xr, rr, j, s); },
        [&]<int W>(int64_t j, C(&s)[W]) {
          if (sr) rows::store<W>(sr + j, s);
        },
        w, b, yr, active ? mean_out : nullptr, active ? rstd_out : nullptr, eps, scratch);
  }
}

void add_layer_norm_forward_impl(const AddLayerNormForwardArgs& a) {
  LATHE_CHECK(a.rows >= 0 && a.cols > 0, "add_layer_norm: invalid sizes rows=", a.rows,
              " cols=", a.cols);
  if (a.rows == 0) return;
  dispatch_device_float(a.dtype, "add_layer_norm", [&]<class T>() {
    using C = acc_t<T>;
    const rows::RowLaunch l = rows::row_launch(a.rows, a.cols, sizeof(T));
    const bool uniform =
        rows::uniform_rows<T, 6>(a.cols, {a.x, a.residual, a.y, a.sum, a.weight, a.bias},
                                 {a.cols, a.cols, a.cols, a.cols, 0, 0});
    rows::dispatch_row_cache<T>(a.cols, l.group, uniform, [&]<int N>() {
      auto kernel = l.block ? add_layer_norm_forward_kernel<T, true, N>
                            : add_layer_norm_forward_kernel<T, false, N>;
      rt::launch(kernel, l.grid, l.threads, 0, stream(), "add_layer_norm_forward",
                 static_cast<const T*>(a.x), static_cast<const T*>(a.residual),
                 static_cast<const T*>(a.weight), static_cast<const T*>(a.bias),
                 static_cast<T*>(a.y), static_cast<T*>(a.sum), static_cast<C*>(a.mean),
                 static_cast<C*>(a.rstd), a.rows, a.cols, C(a.eps));
    });
  });
}

}  // namespace

extern const AddLayerNormForwardFn add_layer_norm_forward = add_layer_norm_forward_impl;

}  // namespace lathe::kernels::cuda
