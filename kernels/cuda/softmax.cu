// Softmax and log-softmax over the last dim on cuda, forward and backward, for f32, f64, f16 and
// bf16 (f16/bf16 computed in f32, rounded once on store).
//
// Forward, rows that fit in the group's registers (up to 8 packs per thread, rows.cuh): the row is
// read once; its max, then the sum of exp(x - max) with the exponentials kept in registers, then
// the scaled values written: one exponential per element. Longer or unaligned rows are streamed
// in two passes instead of three: the first keeps a running (max, sum) pair per thread — when a
// larger value arrives the sum is rescaled by exp(old max - new max) ("online softmax") — and the
// pairs are merged across the row's warp or block; the second writes exp(x - max) / sum or
// (x - max) - log(sum) (two exponentials per element, the row read twice).
// Backward is one reduction pass (sum(gy * y), or sum(gy) for log-softmax) and one writing pass,
// from registers for rows that fit.
//
// Special values give the cpu kernel's results (kernels/cpu/softmax.cpp): -inf entries give exact
// zeros (and -inf for log-softmax); a row that is all -inf, or holds +inf or NaN, gives NaN
// everywhere, because the cpu's exp(x - max) is NaN there.
//
// Rows may be strided (any strides on the leading dims); the last dim must have stride 1.
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/rows.cuh"

namespace lathe::kernels::cuda {

namespace {

using rows::acc_t;

// Running max and sum of exp(x - max) of part of a row.
template <class C>
struct MaxSum {
  C m, s;
};

template <class C>
LATHE_DEVICE_INLINE MaxSum<C> shfl_xor(MaxSum<C> v, int mask) {
  return {rows::shfl_xor(v.m, mask), rows::shfl_xor(v.s, mask)};
}

struct MergeMaxSum {
  template <class C>
  LATHE_DEVICE_INLINE MaxSum<C> operator()(MaxSum<C> a, MaxSum<C> b) const {
    // The two lanes of a butterfly step call merge(a, b) and merge(b, a). Ordering the operands
    // first makes both evaluate the same expression, so they get the same bits even where the
    // compiler contracts a product and a sum into an FMA (which is not symmetric).
    if (b.m < a.m || (b.m == a.m && b.s < a.s)) {
      const MaxSum<C> t = a;
      a = b;
      b = t;
    }
    const C m = b.m > a.m ? b.m : a.m;
    // Both parts without a value above -inf: add the sums as they are (0, or NaN from a NaN
    // entry) rather than forming 0 * exp(-inf - -inf) = NaN.
    if (m == -std::numeric_limits<C>::infinity()) return {m, a.s + b.s};
    return {m, a.s * dmath::exp(a.m - m) + b.s * dmath::exp(b.m - m)};
  }
};

// Adds x to a running (max, sum). -inf contributes exactly 0 (its exp(x - max) for any final max
// above -inf); +inf and NaN make the sum NaN, as exp(inf - inf) and exp(NaN) do on the cpu.
template <class T, class C>
LATHE_DEVICE_INLINE void online_add(MaxSum<C>& a, C x) {
  if (x == -std::numeric_limits<C>::infinity()) return;
  if (x > a.m) {
    // exp(x - x) written as 1 + (x - x): 1 for finite x, NaN for x = +inf.
    a.s = a.s * dmath::exp_for<T>(a.m - x) + (C(1) + (x - x));
    a.m = x;
  } else {
    a.s += dmath::exp_for<T>(x - a.m);
  }
}

// A row held in registers (rows.cuh): its max first, then the sum of exp(x - max) with the
// exponentials kept in place, then the scaling. One exponential per element instead of two, and
// one read of the row. The special values come out as in the streamed form: +inf or NaN entries
// make the sum NaN, -inf entries give exp(-inf) = 0, an all -inf row is NaN.
template <class T, bool kBlock, int N>
LATHE_DEVICE_INLINE void softmax_row_cached(const rows::RowGroup<kBlock>& g,
                                            const rows::RowCut& cut, const T* xr, T* yr, bool log,
                                            acc_t<T>* scratch) {
  using C = acc_t<T>;
  constexpr int V = rows::kPack<T>;
  C v[N][V];
  C m = -std::numeric_limits<C>::infinity();
  rows::load_row_cached<T, N>(cut, g.t, g.nt,
                              [&]<int S>(int64_t j) { rows::load<V>(xr + j, v[S]); });
  rows::for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t) {
    for (int k = 0; k < V; ++k) m = dmath::fmax(m, v[S][k]);  // m is never NaN: as `v > m ? v : m`
  });
  m = rows::group_allreduce<kBlock>(m, rows::Max{}, scratch);
  C part = C(0);
  rows::for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t) {
    for (int k = 0; k < V; ++k) {
      const C e = dmath::exp_for<T>(v[S][k] - m);
      part += e;
      if (!log) v[S][k] = e;
    }
  });
  C sum = rows::group_allreduce<kBlock>(part, rows::Sum{}, scratch);
  if (m == -std::numeric_limits<C>::infinity()) sum = std::numeric_limits<C>::quiet_NaN();
  const C inv = C(1) / sum;
  const C log_sum = dmath::log(sum);
  rows::for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) {
    for (int k = 0; k < V; ++k) v[S][k] = log ? (v[S][k] - m) - log_sum : v[S][k] * inv;
    rows::store<V>(yr + j, v[S]);
  });
}

template <class T, bool kBlock, int N>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t n_rows, int64_t cols,
                                       OffsetCalc<3> rows_calc, bool log) {
  using C = acc_t<T>;
  __shared__ MaxSum<C> scratch[32];
  __shared__ C cached_scratch[N > 0 ? 32 : 1];
  const rows::RowGroup<kBlock> g = rows::row_group<kBlock>();
  for (int64_t r = g.first; g.runs(r, n_rows); r += g.step) {
    const bool active = r < n_rows;
    int64_t off[3];
    rows_calc.get(active ? r : 0, off);
    const T* xr = x + off[0];
    T* yr = y + off[1];
    if constexpr (N > 0) {
      // Uniform rows (rows.cuh), held in registers.
      const rows::RowCut cut = active ? rows::whole_row<T>(cols) : rows::RowCut{};
      softmax_row_cached<T, kBlock, N>(g, cut, xr, yr, log, cached_scratch);
      continue;
    }
    const void* const ptrs[2] = {xr, yr};
    const rows::RowCut cut = active ? rows::cut_row<T>(cols, ptrs) : rows::RowCut{};
    MaxSum<C> part{-std::numeric_limits<C>::infinity(), C(0)};
    rows::for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
      C v[W];
      rows::load<W>(xr + j, v);
      for (int k = 0; k < W; ++k) online_add<T>(part, v[k]);
    });
    MaxSum<C> row = rows::group_allreduce<kBlock>(part, MergeMaxSum{}, scratch);
    // An all -inf row: the cpu's sum of exp(-inf - -inf) is NaN.
    if (row.m == -std::numeric_limits<C>::infinity()) row.s = std::numeric_limits<C>::quiet_NaN();
    const C inv = C(1) / row.s;
    const C log_sum = dmath::log(row.s);
    rows::for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
      C v[W];
      rows::load<W>(xr + j, v);
      for (int k = 0; k < W; ++k)
        v[k] = log ? (v[k] - row.m) - log_sum : dmath::exp_for<T>(v[k] - row.m) * inv;
      rows::store<W>(yr + j, v);
    });
  }
}

template <class T, bool kBlock, int N>
__global__ void softmax_backward_kernel(const T* y, const T* gy, T* gx, int64_t n_rows,
                                        int64_t cols, OffsetCalc<3> rows_calc, bool log) {
  using C = acc_t<T>;
  constexpr int V = rows::kPack<T>;
  __shared__ C scratch[32];
  const rows::RowGroup<kBlock> g = rows::row_group<kBlock>();
  for (int64_t r = g.first; g.runs(r, n_rows); r += g.step) {
    const bool active = r < n_rows;
    int64_t off[3];
    rows_calc.get(active ? r : 0, off);
    const T* yr = y + off[0];
    const T* gyr = gy + off[1];
    T* gxr = gx + off[2];
    rows::RowCut cut;
    if (active) {
      if constexpr (N > 0) {
        cut = rows::whole_row<T>(cols);  // uniform rows (rows.cuh)
      } else {
        const void* const ptrs[3] = {yr, gyr, gxr};
        cut = rows::cut_row<T>(cols, ptrs);
      }
    }
    // log: gx = gy - exp(y) * sum(gy); softmax: gx = y * (gy - sum(gy * y)).
    auto add = [&]<int W>(C& part, const C(&a)[W], const C(&b)[W]) {
      for (int k = 0; k < W; ++k) part += log ? a[k] : a[k] * b[k];
    };
    auto write = [&]<int W>(int64_t j, C(&a)[W], const C(&b)[W], C total) {
      for (int k = 0; k < W; ++k) {
        a[k] = log ? a[k] - dmath::exp_for<T>(b[k]) * total : b[k] * (a[k] - total);
      }
      rows::store<W>(gxr + j, a);
    };
    // Uniform rows (N > 0) keep gy and y in registers between the two passes (rows.cuh); the
    // sums are taken in the same order either way.
    C a_regs[N > 0 ? N : 1][V], b_regs[N > 0 ? N : 1][V];
    C part = C(0);
    if constexpr (N > 0) {
      rows::load_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) {
        rows::load<V>(gyr + j, a_regs[S]);
        rows::load<V>(yr + j, b_regs[S]);
      });
      rows::for_row_cached<T, N>(cut, g.t, g.nt,
                                 [&]<int S>(int64_t) { add(part, a_regs[S], b_regs[S]); });
    } else {
      rows::for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
        C a[W], b[W] = {};
        rows::load<W>(gyr + j, a);
        if (!log) rows::load<W>(yr + j, b);
        add(part, a, b);
      });
    }
    const C total = rows::group_allreduce<kBlock>(part, rows::Sum{}, scratch);
    if constexpr (N > 0) {
      rows::for_row_cached<T, N>(cut, g.t, g.nt,
                                 [&]<int S>(int64_t j) { write(j, a_regs[S], b_regs[S], total); });
    } else {
      rows::for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
        C a[W], b[W];
        rows::load<W>(gyr + j, a);
        rows::load<W>(yr + j, b);
        write(j, a, b, total);
      });
    }
  }
}

// Rows = every dim but the last, which must be unit-stride (or of size 1) in each view.
OffsetCalc<3> rows_of(const View& a, const View& b, const View& c, const char* op) {
  for (const View* v : {&a, &b, &c}) {
    LATHE_CHECK(v->ndim == a.ndim && v->dtype == a.dtype, op, ": operands differ in rank or dtype");
    for (int d = 0; d < a.ndim; ++d) {
      LATHE_CHECK(v->size[d] == a.size[d], op, ": operand shapes differ at dim ", d);
    }
    LATHE_CHECK(v->ndim == 0 || v->size[v->ndim - 1] == 1 || v->stride[v->ndim - 1] == 1, op,
                ": the last dim must be contiguous");
  }
  View shape = a;
  View sa = a, sb = b, sc = c;
  if (shape.ndim > 0) {
    shape.ndim -= 1;
    sa.ndim = sb.ndim = sc.ndim = shape.ndim;
  }
  return make_offset_calc<3>(shape, {&sa, &sb, &sc});
}

// Whether every row of every view starts on a 16-byte boundary and the width is whole packs
// (rows.cuh's uniform rows): the data pointer and every leading stride (of a dim longer than 1)
// must be multiples of 16 bytes.
template <class T>
bool uniform_views(const View& a, const View& b, const View& c, int64_t cols) {
  if (cols % rows::kPack<T> != 0) return false;
  for (const View* v : {&a, &b, &c}) {
    if (reinterpret_cast<uintptr_t>(v->data) % 16 != 0) return false;
    for (int d = 0; d + 1 < v->ndim; ++d) {
      if (v->size[d] > 1 && (v->stride[d] * int64_t(sizeof(T))) % 16 != 0) return false;
    }
  }
  return true;
}

void rows_cols(const View& v, int64_t& n_rows, int64_t& cols) {
  cols = v.ndim == 0 ? 1 : v.size[v.ndim - 1];
  n_rows = cols == 0 ? 0 : v.numel() / cols;
}

void softmax_forward_impl(const View& x, const View& y, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  const OffsetCalc<3> calc = rows_of(x, y, y, op);
  int64_t n_rows = 0, cols = 0;
  rows_cols(x, n_rows, cols);
  if (n_rows == 0) return;
  dispatch_device_float(x.dtype, op, [&]<class T>() {
    const rows::RowLaunch l = rows::row_launch(n_rows, cols, sizeof(T));
    rows::dispatch_row_cache<T>(cols, l.group, uniform_views<T>(x, y, y, cols), [&]<int N>() {
      auto kernel =
          l.block ? softmax_forward_kernel<T, true, N> : softmax_forward_kernel<T, false, N>;
      rt::launch(kernel, l.grid, l.threads, 0, stream(), op, static_cast<const T*>(x.data),
                 static_cast<T*>(y.data), n_rows, cols, calc, log);
    });
  });
}

void softmax_backward_impl(const View& y, const View& grad_y, const View& grad_x, bool log) {
  const char* op = log ? "log_softmax backward" : "softmax backward";
  const OffsetCalc<3> calc = rows_of(y, grad_y, grad_x, op);
  int64_t n_rows = 0, cols = 0;
  rows_cols(y, n_rows, cols);
  if (n_rows == 0) return;
  dispatch_device_float(y.dtype, op, [&]<class T>() {
    const rows::RowLaunch l = rows::row_launch(n_rows, cols, sizeof(T));
    const bool uniform = uniform_views<T>(y, grad_y, grad_x, cols);
    rows::dispatch_row_cache<T>(cols, l.group, uniform, [&]<int N>() {
      auto kernel =
          l.block ? softmax_backward_kernel<T, true, N> : softmax_backward_kernel<T, false, N>;
      rt::launch(kernel, l.grid, l.threads, 0, stream(), op, static_cast<const T*>(y.data),
                 static_cast<const T*>(grad_y.data), static_cast<T*>(grad_x.data), n_rows, cols,
                 calc, log);
    });
  });
}

}  // namespace

extern const SoftmaxForwardFn softmax_forward = softmax_forward_impl;
extern const SoftmaxBackwardFn softmax_backward = softmax_backward_impl;

}  // namespace lathe::kernels::cuda
