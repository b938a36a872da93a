// Fused softmax + cross-entropy over contiguous [rows, classes] logits on cuda, for f32, f64, f16
// and bf16 (f32 arithmetic for the 16-bit types). Neither direction stores probabilities:
//  - forward, a warp or a block per row, reads the row once: each thread keeps a running
//    (max, sum of exp(x - max), sum of x) (the "online softmax" rescaling of softmax.cu), the
//    triples are merged across the row, and one thread writes
//      lse  = max + log(sum exp(x - max))
//      loss = (1 - eps) * (lse - x[target]) + eps * (lse - mean(x))
//    (PyTorch's label smoothing), or 0 for a row whose target is ignore_index;
//  - backward reads the row once more and writes the gradient from the saved lse:
//      dlogits = (exp(x - lse) - eps / C - (1 - eps) * onehot(target)) * grad_loss[row],
//    zeros for ignored rows (whose grad_loss is not read).
// Memory traffic is one read of the logits forward and one read plus one write backward, the
// minimum for the two kernel calls autograd makes. The formulas and special values are those of
// kernels/cpu/cross_entropy.cpp (an all -inf row gives NaN). The targets are checked here, not by
// the op (a read-back was a host wait per call): one outside [0, classes) that is not ignore_index
// gives a NaN loss and NaN gradients instead of an out-of-bounds read, and the forward files it in
// the device report, raised at the host's next wait (device_report.h).
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_report.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/rows.cuh"

namespace lathe::kernels::cuda {

namespace {

using rows::acc_t;

template <class C>
struct LseState {
  C m, s, sum_x;
};

template <class C>
LATHE_DEVICE_INLINE LseState<C> shfl_xor(LseState<C> v, int mask) {
  return {rows::shfl_xor(v.m, mask), rows::shfl_xor(v.s, mask), rows::shfl_xor(v.sum_x, mask)};
}

struct MergeLse {
  template <class C>
  LATHE_DEVICE_INLINE LseState<C> operator()(LseState<C> a, LseState<C> b) const {
    // Operands in a fixed order, so that merge(a, b) and merge(b, a) give the same bits even with
    // FMA contraction (softmax.cu).
    if (b.m < a.m || (b.m == a.m && b.s < a.s)) {
      const LseState<C> t = a;
      a = b;
      b = t;
    }
    const C m = b.m > a.m ? b.m : a.m;
    const C sum_x = a.sum_x + b.sum_x;
    // As in softmax.cu: no value above -inf on either side, so the sums (0, or NaN) just add.
    if (m == -std::numeric_limits<C>::infinity()) return {m, a.s + b.s, sum_x};
    return {m, a.s * dmath::exp(a.m - m) + b.s * dmath::exp(b.m - m), sum_x};
  }
};

// softmax.cu's online update, plus the sum of x when label smoothing needs it, for W values at
// once: the running max moves once per pack (one rescaling exponential), and the values add
// exp(x - max) without a branch per element. Special values as the cpu: -inf adds exp(-inf) = 0
// (nothing while the max is still -inf), +inf makes the max +inf and exp(inf - inf) a NaN sum,
// NaN never wins the max and adds NaN. The max is fmax (one FMNMX): it returns the running max
// for a NaN value as `x > m ? x : m` does, and the running max is never NaN.
template <class T, int W, class C>
LATHE_DEVICE_INLINE void online_add(LseState<C>& a, const C (&x)[W], bool smoothing) {
  C m = a.m;
#pragma unroll
  for (int k = 0; k < W; ++k) m = dmath::fmax(m, x[k]);
  if (smoothing) {
#pragma unroll
    for (int k = 0; k < W; ++k) a.sum_x += x[k];
  }
  if (m == -std::numeric_limits<C>::infinity()) return;
  C s = a.s * dmath::exp_for<T>(a.m - m);  // a.s is 0 while a.m is -inf
#pragma unroll
  for (int k = 0; k < W; ++k) s += dmath::exp_for<T>(x[k] - m);
  a.s = s;
  a.m = m;
}

// Packs a thread of a streaming row kernel has in flight (rows::for_row_loaded).
constexpr int kLoadedPacks = 4;

// Row blocks of at most 256 threads: the kernels stream their rows (a 30522-wide f32 row does not
// fit the register cache), and on the H200 1024-thread blocks ran them at half the speed.
constexpr int64_t kStreamBlock = 256;

template <class T, bool kBlock>
__global__ void cross_entropy_forward_kernel(const T* logits, const int64_t* targets, T* loss,
                                             acc_t<T>* lse_out, int64_t n_rows, int64_t classes,
                                             int64_t ignore_index, acc_t<T> eps,
                                             DeviceReport* report) {
  using C = acc_t<T>;
  __shared__ LseState<C> scratch[32];
  const rows::RowGroup<kBlock> g = rows::row_group<kBlock>();
  for (int64_t r = g.first; g.runs(r, n_rows); r += g.step) {
    const bool active = r < n_rows;
    const T* xr = logits + r * classes;
    const void* const ptrs[1] = {xr};
    const rows::RowCut cut = active ? rows::cut_row<T>(classes, ptrs) : rows::RowCut{};
    LseState<C> part{-std::numeric_limits<C>::infinity(), C(0), C(0)};
    rows::for_row_loaded<T, kLoadedPacks, C>(
        cut, g.t, g.nt, xr, [&]<int W>(int64_t, C(&v)[W]) { online_add<T>(part, v, eps > C(0)); });
    const LseState<C> row = rows::group_allreduce<kBlock>(part, MergeLse{}, scratch);
    if (g.t != 0 || !active) continue;
    // An all -inf row: the cpu's sum of exp(-inf - -inf) is NaN, and so is its lse.
    const C lse = row.m == -std::numeric_limits<C>::infinity() ? std::numeric_limits<C>::quiet_NaN()
                                                               : row.m + dmath::log(row.s);
    if (lse_out) lse_out[r] = lse;
    const int64_t t = targets[r];
    C value;
    if (t == ignore_index) {
      value = C(0);
    } else if (t < 0 || t >= classes) {
      value = std::numeric_limits<C>::quiet_NaN();
      file_report(report, "cross_entropy", ReportKind::Target, t, classes, r, -1, ignore_index);
    } else {
      value = lse - convert<C>(xr[t]);
      if (eps > C(0)) value = (C(1) - eps) * value + eps * (lse - row.sum_x / C(classes));
    }
    loss[r] = convert<T>(value);
  }
}

template <class T, bool kBlock>
__global__ void cross_entropy_backward_kernel(const T* logits, const int64_t* targets,
                                              const acc_t<T>* lse, const T* grad_loss, T* grad,
                                              int64_t n_rows, int64_t classes, int64_t ignore_index,
                                              acc_t<T> eps) {
  using C = acc_t<T>;
  const rows::RowGroup<kBlock> g = rows::row_group<kBlock>();
  const C smooth = eps / C(classes);
  for (int64_t r = g.first; g.runs(r, n_rows); r += g.step) {
    const bool active = r < n_rows;
    const T* xr = logits + r * classes;
    T* gr = grad + r * classes;
    if (!active) continue;  // no shuffles below: the group may leave its warp's loop
    const void* const ptrs[2] = {xr, gr};
    const rows::RowCut cut = rows::cut_row<T>(classes, ptrs);
    const int64_t t = targets[r];
    if (t == ignore_index) {
      rows::for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
        C z[W];
        for (int k = 0; k < W; ++k) z[k] = C(0);
        rows::store<W>(gr + j, z);
      });
      continue;
    }
    const C shift = lse[r];
    // A target the op would have rejected: NaN gradients, never an out-of-bounds access.
    const C scale =
        t >= 0 && t < classes ? convert<C>(grad_loss[r]) : std::numeric_limits<C>::quiet_NaN();
    rows::for_row_loaded<T, kLoadedPacks, C>(cut, g.t, g.nt, xr, [&]<int W>(int64_t j, C(&v)[W]) {
      for (int k = 0; k < W; ++k) v[k] = (dmath::exp_for<T>(v[k] - shift) - smooth) * scale;
      // The target's column, tested once per pack rather than per element.
      if (t >= j && t < j + W) {
        for (int k = 0; k < W; ++k) {
          if (j + k == t) v[k] -= (C(1) - eps) * scale;
        }
      }
      rows::store<W>(gr + j, v);
    });
  }
}

void cross_entropy_forward_impl(const CrossEntropyForwardArgs& a) {
  LATHE_CHECK(a.rows >= 0 && a.classes > 0, "cross_entropy: invalid sizes rows=", a.rows,
              " classes=", a.classes);
  if (a.rows == 0) return;
  dispatch_device_float(a.dtype, "cross_entropy", [&]<class T>() {
    using C = acc_t<T>;
    const rows::RowLaunch l = rows::row_launch(a.rows, a.classes, sizeof(T), kStreamBlock);
    auto kernel =
        l.block ? cross_entropy_forward_kernel<T, true> : cross_entropy_forward_kernel<T, false>;
    rt::launch(kernel, l.grid, l.threads, 0, stream(), "cross_entropy_forward",
               static_cast<const T*>(a.logits), a.targets, static_cast<T*>(a.loss),
               static_cast<C*>(a.lse), a.rows, a.classes, a.ignore_index, C(a.label_smoothing),
               device_report());
  });
  after_reporting_launch(stream());
}

void cross_entropy_backward_impl(const CrossEntropyBackwardArgs& a) {
  LATHE_CHECK(a.rows >= 0 && a.classes > 0, "cross_entropy backward: invalid sizes rows=", a.rows,
              " classes=", a.classes);
  if (a.rows == 0) return;
  dispatch_device_float(a.dtype, "cross_entropy backward", [&]<class T>() {
    using C = acc_t<T>;
    const rows::RowLaunch l = rows::row_launch(a.rows, a.classes, sizeof(T), kStreamBlock);
    auto kernel =
        l.block ? cross_entropy_backward_kernel<T, true> : cross_entropy_backward_kernel<T, false>;
    rt::launch(kernel, l.grid, l.threads, 0, stream(), "cross_entropy_backward",
               static_cast<const T*>(a.logits), a.targets, static_cast<const C*>(a.lse),
               static_cast<const T*>(a.grad_loss), static_cast<T*>(a.grad_logits), a.rows,
               a.classes, a.ignore_index, C(a.label_smoothing));
  });
}

}  // namespace

extern const CrossEntropyForwardFn cross_entropy_forward = cross_entropy_forward_impl;
extern const CrossEntropyBackwardFn cross_entropy_backward = cross_entropy_backward_impl;

}  // namespace lathe::kernels::cuda
