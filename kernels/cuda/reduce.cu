// Reductions (sum / max / min over any set of dims) and arg-reductions (argmax / argmin along one
// dim) on cuda. The input's dims split into kept dims (one output each) and reduced dims, each set
// coalesced into an OffsetCalc. Two kernel shapes cover the layouts:
//  - block per output: the threads of a block stride over the output's K inputs, then combine
//    through warp shuffles and a shared-memory stage. Used when the reduced run is innermost
//    (row sums: each block reads contiguous memory) or there are too few outputs to fill the
//    device otherwise;
//  - thread per output (32 or 256 consecutive outputs per block, the reduced range optionally
//    split over 8 rows of threads and combined in shared memory): used for short reductions and
//    when the kept dim is innermost (column sums such as a bias gradient), so neighbouring
//    threads read neighbouring addresses.
// When there are too few outputs to occupy the device (a whole-tensor sum for a gradient norm: 1
// output; a bias gradient: 768 columns of 4096 rows), the reduced range is also cut into chunks
// ("split"): a first kernel writes one partial per (chunk, output), in the accumulation type, to
// a scratch buffer, and a second merges each output's partials in chunk order. On an H200 this
// took a BERT-base bias gradient from ~380 us (one block per column, strided reads) to a few us.
// The number of chunks depends on the sizes only, never on the device, so results are the same
// on every GPU and in the simulator.
// Floating values accumulate in f64 and integers in i64, like the cpu kernels, so an f32 sum
// differs from the cpu's sequential f64 sum only when the final rounding to f32 of two slightly
// different f64 totals differs (rare; f64 sums differ in the last bits). Every combination order
// is fixed by thread indices, so results are deterministic and identical under every simulator
// schedule. Max/min propagate NaN; arg-reductions return the first NaN, else the first extremum,
// exactly as on the cpu.
#include <algorithm>
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace lathe::kernels::cuda {

namespace {

// ---- reducers: Acc init(), combine(acc, value, j), merge(a, b), store(out, off, acc) ----

template <class T, ReduceOp Op>
struct ValueReducer {
  using Acc = std::conditional_t<std::is_integral_v<T>, int64_t, double>;
  LATHE_DEVICE_INLINE Acc init() const {
    if constexpr (Op == ReduceOp::Sum) return Acc(0);
    if constexpr (std::is_integral_v<T>) {
      return Op == ReduceOp::Max ? std::numeric_limits<int64_t>::lowest()
                                 : std::numeric_limits<int64_t>::max();
    } else {
      return Op == ReduceOp::Max ? -std::numeric_limits<double>::infinity()
                                 : std::numeric_limits<double>::infinity();
    }
  }
  LATHE_DEVICE_INLINE Acc merge(Acc a, Acc b) const {
    if constexpr (Op == ReduceOp::Sum) {
      return a + b;
    } else if constexpr (Op == ReduceOp::Max) {
      return (b != b || b > a) && a == a ? b : a;  // NaN wins
    } else {
      return (b != b || b < a) && a == a ? b : a;
    }
  }
  LATHE_DEVICE_INLINE Acc combine(Acc acc, T v, int64_t) const {
    return merge(acc, Acc(convert<compute_t<T>>(v)));
  }
  LATHE_DEVICE_INLINE void store(T* out, int64_t off, Acc acc) const { out[off] = convert<T>(acc); }
};

template <class C>
struct ArgAcc {
  C value;
  int64_t index;  // -1: no element yet
};

template <class T>
struct ArgReducer {
  using C = compute_t<T>;
  using Acc = ArgAcc<C>;
  bool want_max;
  LATHE_DEVICE_INLINE Acc init() const { return Acc{C(0), -1}; }
  LATHE_DEVICE_INLINE Acc merge(Acc a, Acc b) const {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    const bool a_nan = a.value != a.value, b_nan = b.value != b.value;
    if (a_nan || b_nan) {
      if (a_nan && b_nan) return a.index < b.index ? a : b;
      return a_nan ? a : b;
    }
    if (want_max ? a.value > b.value : a.value < b.value) return a;
    if (want_max ? b.value > a.value : b.value < a.value) return b;
    return a.index < b.index ? a : b;  // ties: the first index
  }
  LATHE_DEVICE_INLINE Acc combine(Acc acc, T v, int64_t j) const {
    return merge(acc, Acc{convert<C>(v), j});
  }
  LATHE_DEVICE_INLINE void store(int64_t* out, int64_t off, Acc acc) const {
    out[off] = acc.index < 0 ? 0 : acc.index;
  }
};

// ---- warp and block combination ----

template <class A>
LATHE_DEVICE_INLINE A shfl_down(A v, int delta) {
  return __shfl_down_sync(0xffffffffu, v, delta);
}
template <class C>
LATHE_DEVICE_INLINE ArgAcc<C> shfl_down(ArgAcc<C> v, int delta) {
  return ArgAcc<C>{shfl_down(v.value, delta), shfl_down(v.index, delta)};
}

// Combines v over a block whose size is a multiple of 32; the result is valid in thread 0.
// `scratch` holds one Acc per warp. Ends with a barrier so scratch can be reused at once.
template <class Acc, class R>
LATHE_DEVICE_INLINE Acc block_combine(Acc v, const R& r, Acc* scratch) {
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int warps = int(blockDim.x) / 32;
  for (int offset = 16; offset > 0; offset /= 2) v = r.merge(v, shfl_down(v, offset));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : r.init();
    for (int offset = 16; offset > 0; offset /= 2) v = r.merge(v, shfl_down(v, offset));
  }
  __syncthreads();
  return v;
}

// One block per output (grid-stride over outputs).
template <class T, class Out, class R>
__global__ void reduce_block_per_output(const T* in, Out* out, OffsetCalc<2> kept,
                                        OffsetCalc<1> reduced, int64_t outputs, int64_t per_output,
                                        R r) {
  using Acc = typename R::Acc;
  __shared__ Acc scratch[32];
  for (int64_t o = blockIdx.x; o < outputs; o += gridDim.x) {
    int64_t koff[2];
    kept.get(o, koff);
    Acc acc = r.init();
    for (int64_t j = threadIdx.x; j < per_output; j += blockDim.x) {
      int64_t roff[1];
      reduced.get(j, roff);
      acc = r.combine(acc, in[koff[0] + roff[0]], j);
    }
    acc = block_combine(acc, r, scratch);
    if (threadIdx.x == 0) r.store(out, koff[1], acc);
  }
}

// blockDim.x consecutive outputs per block; blockDim.y threads split each output's range.
template <class T, class Out, class R>
__global__ void reduce_thread_per_output(const T* in, Out* out, OffsetCalc<2> kept,
                                         OffsetCalc<1> reduced, int64_t outputs, int64_t per_output,
                                         R r) {
  using Acc = typename R::Acc;
  __shared__ Acc partial[kThreads];
  const int64_t groups = (outputs + blockDim.x - 1) / blockDim.x;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t o = g * blockDim.x + threadIdx.x;
    int64_t koff[2] = {0, 0};
    Acc acc = r.init();
    if (o < outputs) {
      kept.get(o, koff);
      for (int64_t j = threadIdx.y; j < per_output; j += blockDim.y) {
        int64_t roff[1];
        reduced.get(j, roff);
        acc = r.combine(acc, in[koff[0] + roff[0]], j);
      }
    }
    if (blockDim.y > 1) {
      partial[threadIdx.y * blockDim.x + threadIdx.x] = acc;
      __syncthreads();
      if (threadIdx.y == 0) {
        for (unsigned y = 1; y < blockDim.y; ++y) {
          acc = r.merge(acc, partial[y * blockDim.x + threadIdx.x]);
        }
      }
      __syncthreads();
    }
    if (threadIdx.y == 0 && o < outputs) r.store(out, koff[1], acc);
  }
}

// ---- split reductions: partial[c * outputs + o] = piece c of output o, then a merge ----

// Stage 1, row layout: one block per (output, chunk), grid-stride.
template <class T, class R>
__global__ void reduce_split_rows(const T* in, typename R::Acc* partial, OffsetCalc<2> kept,
                                  OffsetCalc<1> reduced, int64_t outputs, int64_t per_output,
                                  int64_t chunk, int64_t chunks, R r) {
  using Acc = typename R::Acc;
  __shared__ Acc scratch[32];
  for (int64_t w = blockIdx.x; w < outputs * chunks; w += gridDim.x) {
    const int64_t o = w % outputs, c = w / outputs;
    int64_t koff[2];
    kept.get(o, koff);
    const int64_t begin = c * chunk, end = begin + chunk < per_output ? begin + chunk : per_output;
    Acc acc = r.init();
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      int64_t roff[1];
      reduced.get(j, roff);
      acc = r.combine(acc, in[koff[0] + roff[0]], j);
    }
    acc = block_combine(acc, r, scratch);
    if (threadIdx.x == 0) partial[w] = acc;
  }
}

// Stage 1, column layout: 32 consecutive outputs x 8 thread rows per block, blockIdx.y = chunk.
template <class T, class R>
__global__ void reduce_split_columns(const T* in, typename R::Acc* partial, OffsetCalc<2> kept,
                                     OffsetCalc<1> reduced, int64_t outputs, int64_t per_output,
                                     int64_t chunk, R r) {
  using Acc = typename R::Acc;
  __shared__ Acc rows[kThreads];
  const int64_t c = blockIdx.y;
  const int64_t begin = c * chunk, end = begin + chunk < per_output ? begin + chunk : per_output;
  const int64_t groups = (outputs + blockDim.x - 1) / blockDim.x;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t o = g * blockDim.x + threadIdx.x;
    Acc acc = r.init();
    if (o < outputs) {
      int64_t koff[2];
      kept.get(o, koff);
      for (int64_t j = begin + threadIdx.y; j < end; j += blockDim.y) {
        int64_t roff[1];
        reduced.get(j, roff);
        acc = r.combine(acc, in[koff[0] + roff[0]], j);
      }
    }
    rows[threadIdx.y * blockDim.x + threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0) {
      for (unsigned y = 1; y < blockDim.y; ++y)
        acc = r.merge(acc, rows[y * blockDim.x + threadIdx.x]);
      if (o < outputs) partial[c * outputs + o] = acc;
    }
    __syncthreads();
  }
}

// Stage 2: each output's partials merged in chunk order, by a block (many chunks, few outputs)
// or by a thread.
template <class Out, class R>
__global__ void reduce_split_finish_block(const typename R::Acc* partial, Out* out,
                                          OffsetCalc<2> kept, int64_t outputs, int64_t chunks,
                                          R r) {
  using Acc = typename R::Acc;
  __shared__ Acc scratch[32];
  for (int64_t o = blockIdx.x; o < outputs; o += gridDim.x) {
    Acc acc = r.init();
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      acc = r.merge(acc, partial[c * outputs + o]);
    }
    acc = block_combine(acc, r, scratch);
    if (threadIdx.x == 0) {
      int64_t koff[2];
      kept.get(o, koff);
      r.store(out, koff[1], acc);
    }
  }
}

template <class Out, class R>
__global__ void reduce_split_finish_thread(const typename R::Acc* partial, Out* out,
                                           OffsetCalc<2> kept, int64_t outputs, int64_t chunks,
                                           R r) {
  using Acc = typename R::Acc;
  for (int64_t o = global_thread(); o < outputs; o += grid_threads()) {
    Acc acc = partial[o];
    for (int64_t c = 1; c < chunks; ++c) acc = r.merge(acc, partial[c * outputs + o]);
    int64_t koff[2];
    kept.get(o, koff);
    r.store(out, koff[1], acc);
  }
}

// The kept and reduced dim sets of a reduction, coalesced.
struct Plan {
  OffsetCalc<2> kept;     // operands: input, output
  OffsetCalc<1> reduced;  // operand: input
  int64_t outputs = 1, per_output = 1;
  bool inner_reduced = false;
};

Plan make_plan(const View& in, const View& out, const bool* is_reduced) {
  View kept_shape, red_shape, kept_in, kept_out, red_in;
  for (int d = 0; d < in.ndim; ++d) {
    if (in.size[d] == 1) continue;
    if (is_reduced[d]) {
      red_shape.size[red_shape.ndim] = in.size[d];
      red_in.stride[red_shape.ndim] = in.stride[d];
      ++red_shape.ndim;
    } else {
      kept_shape.size[kept_shape.ndim] = in.size[d];
      kept_in.stride[kept_shape.ndim] = in.stride[d];
      kept_out.stride[kept_shape.ndim] = out.stride[d];
      ++kept_shape.ndim;
    }
  }
  Plan p;
  p.outputs = kept_shape.numel();
  p.per_output = red_shape.numel();
  p.kept = make_offset_calc<2>(kept_shape, {&kept_in, &kept_out});
  p.reduced = make_offset_calc<1>(red_shape, {&red_in});
  auto abs64 = [](int64_t v) { return v < 0 ? -v : v; };
  p.inner_reduced = red_shape.ndim > 0 &&
                    (kept_shape.ndim == 0 || abs64(red_in.stride[red_shape.ndim - 1]) <
                                                 abs64(kept_in.stride[kept_shape.ndim - 1]));
  return p;
}

// Chunks of a split reduction (1: no split), from the sizes alone. Rows: aim at ~1024 blocks of
// at least 8192 elements. Columns: at least 64 rows per chunk, ~1024 blocks of 32 columns.
int64_t split_chunks(const Plan& p, bool rows) {
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  if (rows) {
    if (p.outputs >= 256 || p.per_output < 16384) return 1;
    return std::max<int64_t>(1, std::min(ceil_div(p.per_output, 8192), ceil_div(1024, p.outputs)));
  }
  if (p.per_output < 256) return 1;
  const int64_t groups = ceil_div(p.outputs, 32);
  return std::max<int64_t>(
      1, std::min({ceil_div(1024, groups), ceil_div(p.per_output, 64), int64_t(65535)}));
}

template <class T, class Out, class R>
void run_split(const Plan& p, const T* in, Out* out, const R& r, const char* name, bool rows,
               int64_t chunks) {
  using Acc = typename R::Acc;
  DeviceScratch scratch(size_t(chunks * p.outputs) * sizeof(Acc));
  Acc* partial = scratch.as<Acc>();
  const int64_t chunk = (p.per_output + chunks - 1) / chunks;
  if (rows) {
    int threads = 32;
    while (threads < kThreads && threads < chunk) threads *= 2;
    const int64_t work = p.outputs * chunks;
    const unsigned grid = unsigned(std::min<int64_t>(work, 65535));
    rt::launch(reduce_split_rows<T, R>, dim3(grid), dim3(unsigned(threads)), 0, stream(), name, in,
               partial, p.kept, p.reduced, p.outputs, p.per_output, chunk, chunks, r);
  } else {
    const int64_t groups = (p.outputs + 31) / 32;
    const unsigned gx = unsigned(std::min<int64_t>(groups, 65535));
    rt::launch(reduce_split_columns<T, R>, dim3(gx, unsigned(chunks)), dim3(32, kThreads / 32), 0,
               stream(), name, in, partial, p.kept, p.reduced, p.outputs, p.per_output, chunk, r);
  }
  if (p.outputs <= 64 && chunks >= 64) {
    const unsigned grid = unsigned(std::min<int64_t>(p.outputs, 65535));
    rt::launch(reduce_split_finish_block<Out, R>, dim3(grid), dim3(unsigned(kThreads)), 0, stream(),
               name, static_cast<const Acc*>(partial), out, p.kept, p.outputs, chunks, r);
  } else {
    rt::launch(reduce_split_finish_thread<Out, R>, dim3(grid_for(p.outputs)), dim3(kThreads), 0,
               stream(), name, static_cast<const Acc*>(partial), out, p.kept, p.outputs, chunks, r);
  }
}

template <class T, class Out, class R>
void run_plan(const Plan& p, const T* in, Out* out, const R& r, const char* name) {
  if (p.outputs == 0) return;
  // Few outputs over long ranges: split (rows when the reduced run is innermost or the outputs
  // are too few for a warp of columns).
  const bool rows = p.inner_reduced || p.outputs < 32;
  if (const int64_t chunks = split_chunks(p, rows); chunks > 1) {
    return run_split(p, in, out, r, name, rows, chunks);
  }
  const int64_t device_threads =
      int64_t(rt::device_properties(rt::current_device()).multiprocessor_count) * 2048;
  const bool block_per_output =
      p.per_output > 64 && (p.inner_reduced || p.outputs * 8 < device_threads);
  if (block_per_output) {
    int threads = 32;
    while (threads < kThreads && threads < p.per_output) threads *= 2;
    const int64_t cap = int64_t(rt::device_properties(rt::current_device()).multiprocessor_count) *
                        (2048 / threads);
    const unsigned grid = unsigned(p.outputs < cap ? p.outputs : cap);
    rt::launch(reduce_block_per_output<T, Out, R>, dim3(grid), dim3(unsigned(threads)), 0, stream(),
               name, in, out, p.kept, p.reduced, p.outputs, p.per_output, r);
  } else {
    const unsigned split = p.per_output > 64 ? 8 : 1;
    const unsigned width = kThreads / split;
    const int64_t groups = (p.outputs + width - 1) / width;
    const unsigned grid = grid_for(groups, 1);
    rt::launch(reduce_thread_per_output<T, Out, R>, dim3(grid), dim3(width, split), 0, stream(),
               name, in, out, p.kept, p.reduced, p.outputs, p.per_output, r);
  }
}

void reduce_kernel(ReduceOp op, const View& in, const View& out) {
  LATHE_CHECK(in.ndim == out.ndim, "reduce: input and output ranks differ");
  LATHE_CHECK(in.dtype == out.dtype, "reduce: input ", in.dtype, " and output ", out.dtype,
              " dtypes differ");
  bool is_reduced[kMaxDims] = {};
  for (int d = 0; d < in.ndim; ++d) is_reduced[d] = out.size[d] == 1;
  const Plan p = make_plan(in, out, is_reduced);
  dispatch_device_arith(in.dtype, "reduce", [&]<class T>() {
    const T* src = static_cast<const T*>(in.data);
    T* dst = static_cast<T*>(out.data);
    switch (op) {
      case ReduceOp::Sum:
        return run_plan(p, src, dst, ValueReducer<T, ReduceOp::Sum>{}, "reduce_sum");
      case ReduceOp::Max:
        return run_plan(p, src, dst, ValueReducer<T, ReduceOp::Max>{}, "reduce_max");
      case ReduceOp::Min:
        return run_plan(p, src, dst, ValueReducer<T, ReduceOp::Min>{}, "reduce_min");
    }
  });
}

void arg_reduce_kernel(ReduceOp op, const View& in, int dim, const View& out) {
  LATHE_CHECK(op != ReduceOp::Sum, "arg_reduce: only max and min have an argument");
  LATHE_CHECK(dim >= 0 && dim < in.ndim && in.ndim == out.ndim, "arg_reduce: dim ", dim,
              " is out of range for ", in.ndim, " dims");
  LATHE_CHECK(in.size[dim] > 0, "arg_reduce: cannot reduce an empty dim");
  LATHE_CHECK(out.dtype == DType::I64, "arg_reduce: output must be i64, got ", out.dtype);
  // The reduced dim is kept in the plan even when its size is 1, so j counts along it.
  Plan p;
  {
    View kept_shape, kept_in, kept_out;
    for (int d = 0; d < in.ndim; ++d) {
      if (d == dim) continue;
      kept_shape.size[kept_shape.ndim] = in.size[d];
      kept_in.stride[kept_shape.ndim] = in.stride[d];
      kept_out.stride[kept_shape.ndim] = out.stride[d];
      ++kept_shape.ndim;
    }
    p.outputs = kept_shape.numel();
    p.per_output = in.size[dim];
    p.kept = make_offset_calc<2>(kept_shape, {&kept_in, &kept_out});
    p.reduced.ndim = 1;
    p.reduced.size[0] = in.size[dim];
    p.reduced.stride[0][0] = in.stride[dim];
    int64_t min_kept_stride = std::numeric_limits<int64_t>::max();
    for (int d = 0; d < kept_shape.ndim; ++d) {
      if (kept_shape.size[d] > 1) min_kept_stride = std::min(min_kept_stride, kept_in.stride[d]);
    }
    p.inner_reduced = in.stride[dim] < min_kept_stride;
  }
  dispatch_device_arith(in.dtype, "arg_reduce", [&]<class T>() {
    run_plan(p, static_cast<const T*>(in.data), static_cast<int64_t*>(out.data),
             ArgReducer<T>{op == ReduceOp::Max}, op == ReduceOp::Max ? "argmax" : "argmin");
  });
}

}  // namespace

extern const ReduceFn reduce = reduce_kernel;
extern const ArgReduceFn arg_reduce = arg_reduce_kernel;

}  // namespace lathe::kernels::cuda
