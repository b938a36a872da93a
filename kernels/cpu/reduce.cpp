// Reductions (sum, max, min over any set of dims) and arg-reductions (argmax/argmin along one dim).
// The input's dims split into kept dims (iterated over outputs) and reduced dims. Two loop shapes
// cover every case with contiguous inner loops:
//  - the innermost input dim is reduced: each output element accumulates a run of contiguous
//    inputs (row sums, softmax-like);
//  - the innermost input dim is kept: each output row accumulates whole input rows as vectors
//    (column sums such as a bias gradient over the batch).
// Floating sums accumulate in double, so f32 sums over long rows stay accurate.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {

template <class T>
using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

template <class T>
struct SumOp {
  static Acc<T> init() { return 0; }
  static Acc<T> combine(Acc<T> acc, T v) { return acc + Acc<T>(v); }
};
template <class T>
struct MaxOp {
  static Acc<T> init() {
    if constexpr (std::is_floating_point_v<T>) return -std::numeric_limits<double>::infinity();
    return std::numeric_limits<Acc<T>>::lowest();
  }
  // NaN wins, as in PyTorch.
  static Acc<T> combine(Acc<T> acc, T v) { return (v != v || Acc<T>(v) > acc) ? Acc<T>(v) : acc; }
};
template <class T>
struct MinOp {
  static Acc<T> init() {
    if constexpr (std::is_floating_point_v<T>) return std::numeric_limits<double>::infinity();
    return std::numeric_limits<Acc<T>>::max();
  }
  static Acc<T> combine(Acc<T> acc, T v) { return (v != v || Acc<T>(v) < acc) ? Acc<T>(v) : acc; }
};

struct Dims {
  int n = 0;
  int64_t size[kMaxDims];
  int64_t in_stride[kMaxDims];
  int64_t out_stride[kMaxDims];
};

// Offset (in elements) of flat index `flat` within a dim set.
inline void offsets(const Dims& d, int64_t flat, int64_t& in_off, int64_t& out_off) {
  in_off = 0;
  out_off = 0;
  for (int i = d.n - 1; i >= 0; --i) {
    int64_t idx = flat % d.size[i];
    flat /= d.size[i];
    in_off += idx * d.in_stride[i];
    out_off += idx * d.out_stride[i];
  }
}

inline int64_t count(const Dims& d) {
  int64_t n = 1;
  for (int i = 0; i < d.n; ++i) n *= d.size[i];
  return n;
}

template <class T, class Op>
void reduce_typed(const View& in, const View& out) {
  Dims kept, reduced;
  for (int i = 0; i < in.ndim; ++i) {
    if (in.size[i] == 1) continue;
    Dims& d = out.size[i] == 1 ? reduced : kept;
    d.size[d.n] = in.size[i];
    d.in_stride[d.n] = in.stride[i];
    d.out_stride[d.n] = out.stride[i];
    ++d.n;
  }
  const T* src = static_cast<const T*>(in.data);
  T* dst = static_cast<T*>(out.data);
  const int64_t outputs = count(kept);
  const int64_t per_output = count(reduced);
  const bool big = outputs * per_output >= kParallelGrain;

  const bool inner_reduced = reduced.n > 0 && (kept.n == 0 || reduced.in_stride[reduced.n - 1] <
                                                                  kept.in_stride[kept.n - 1]);
  if (inner_reduced || kept.n == 0) {
    // Each output element reduces a set whose innermost run is contiguous-ish.
    const int64_t run = reduced.n ? reduced.size[reduced.n - 1] : 1;
    const int64_t run_stride = reduced.n ? reduced.in_stride[reduced.n - 1] : 0;
    Dims outer_reduced = reduced;
    if (outer_reduced.n) --outer_reduced.n;
    const int64_t runs = count(outer_reduced);
#pragma omp parallel for schedule(static) if (big && outputs > 1)
    for (int64_t o = 0; o < outputs; ++o) {
      int64_t in_base, out_off;
      offsets(kept, o, in_base, out_off);
      Acc<T> acc = Op::init();
      for (int64_t r = 0; r < runs; ++r) {
        int64_t in_off, unused;
        offsets(outer_reduced, r, in_off, unused);
        const T* p = src + in_base + in_off;
        if (run_stride == 1) {
          for (int64_t i = 0; i < run; ++i) acc = Op::combine(acc, p[i]);
        } else {
          for (int64_t i = 0; i < run; ++i) acc = Op::combine(acc, p[i * run_stride]);
        }
      }
      dst[out_off] = T(acc);
    }
    return;
  }

  // The innermost input dim is kept: accumulate vectors of `width` outputs at a time.
  const int64_t width = kept.size[kept.n - 1];
  const int64_t in_w = kept.in_stride[kept.n - 1], out_w = kept.out_stride[kept.n - 1];
  Dims outer_kept = kept;
  --outer_kept.n;
  const int64_t rows = count(outer_kept);
  const int64_t chunk = 1024;  // accumulator block that stays in L1
  const int64_t chunks = (width + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (big && rows * chunks > 1)
  for (int64_t job = 0; job < rows * chunks; ++job) {
    const int64_t row = job / chunks, c0 = (job % chunks) * chunk;
    const int64_t len = std::min(chunk, width - c0);
    int64_t in_base, out_off;
    offsets(outer_kept, row, in_base, out_off);
    std::vector<Acc<T>> acc(size_t(len), Op::init());
    for (int64_t r = 0; r < per_output; ++r) {
      int64_t in_off, unused;
      offsets(reduced, r, in_off, unused);
      const T* p = src + in_base + in_off + c0 * in_w;
      if (in_w == 1) {
        for (int64_t i = 0; i < len; ++i) acc[size_t(i)] = Op::combine(acc[size_t(i)], p[i]);
      } else {
        for (int64_t i = 0; i < len; ++i) {
          acc[size_t(i)] = Op::combine(acc[size_t(i)], p[i * in_w]);
        }
      }
    }
    T* q = dst + out_off + c0 * out_w;
    for (int64_t i = 0; i < len; ++i) q[i * out_w] = T(acc[size_t(i)]);
  }
}

void reduce_kernel(ReduceOp op, const View& in, const View& out) {
  LATHE_CHECK(in.ndim == out.ndim, "reduce: input and output ranks differ");
  dispatch_numeric(in.dtype, "reduce", [&]<class T>() {
    switch (op) {
      case ReduceOp::Sum:
        return reduce_typed<T, SumOp<T>>(in, out);
      case ReduceOp::Max:
        return reduce_typed<T, MaxOp<T>>(in, out);
      case ReduceOp::Min:
        return reduce_typed<T, MinOp<T>>(in, out);
    }
  });
}

template <class T>
void arg_reduce_typed(ReduceOp op, const View& in, int dim, const View& out) {
  Dims kept;
  for (int i = 0; i < in.ndim; ++i) {
    if (i == dim) continue;
    kept.size[kept.n] = in.size[i];
    kept.in_stride[kept.n] = in.stride[i];
    kept.out_stride[kept.n] = out.stride[i];
    ++kept.n;
  }
  const T* src = static_cast<const T*>(in.data);
  int64_t* dst = static_cast<int64_t*>(out.data);
  const int64_t n = in.size[dim], stride = in.stride[dim];
  const int64_t outputs = count(kept);
  const bool want_max = op == ReduceOp::Max;
#pragma omp parallel for schedule(static) if (outputs * n >= kParallelGrain)
  for (int64_t o = 0; o < outputs; ++o) {
    int64_t in_off, out_off;
    offsets(kept, o, in_off, out_off);
    const T* p = src + in_off;
    int64_t best = 0;
    T best_v = p[0];
    for (int64_t i = 1; i < n && best_v == best_v; ++i) {
      T v = p[i * stride];
      if (v != v || (want_max ? v > best_v : v < best_v)) {
        best = i;
        best_v = v;
      }
    }
    dst[out_off] = best;
  }
}

void arg_reduce_kernel(ReduceOp op, const View& in, int dim, const View& out) {
  LATHE_CHECK(op != ReduceOp::Sum, "arg_reduce: only max and min have an argument");
  LATHE_CHECK(in.size[dim] > 0, "arg_reduce: cannot reduce an empty dim");
  dispatch_numeric(in.dtype, "arg_reduce",
                   [&]<class T>() { arg_reduce_typed<T>(op, in, dim, out); });
}

}  // namespace

extern const ReduceFn reduce = reduce_kernel;
extern const ArgReduceFn arg_reduce = arg_reduce_kernel;

}  // namespace lathe::kernels::cpu
