// Building blocks of the row-wise transformer kernels (layer_norm.cu, softmax.cu,
// cross_entropy.cu, embedding.cu): 16-byte vector loads and stores with scalar head and tail,
// warp and block all-reductions, and a deterministic device-wide integer scan.
//
// - A row is cut into a scalar head (up to the first 16-byte boundary), whole 16-byte packs and a
//   scalar tail. Packs are used only when every operand of the row sits at the same offset from a
//   16-byte boundary (the rows of a contiguous tensor whose width is a multiple of the pack, or
//   row 0 of any width); otherwise the whole row is scalar. Which elements a thread touches
//   depends only on the sizes and addresses, so results are reproducible.
// - All-reductions combine in a fixed tree (warp butterflies, then the warps' results read in
//   order from shared memory by every thread), so every thread gets bitwise the same value and no
//   float atomics are involved. Both lanes of a butterfly step must compute op(a, b) and op(b, a)
//   to the same bits: true of IEEE addition and max; ops with products order their operands first
//   (softmax.cu), since an FMA-contracted a * x + b * y is not symmetric.
// - Row kernels come in two shapes (row_launch): up to a warp per row for rows of up to
//   kWarpRowPacks 16-byte packs, as many lanes as divide the row most evenly (no barriers; a block
//   of 128 threads works on 128 / lanes rows), and a block of 64-1024 threads per longer row, about
//   kBlockRowPacks packs per thread. Uniform rows that fit are held in registers between passes
//   ("rows held in registers" below). The widths were set on the H200 (docs/benchmarks.md): a block
//   of 256 threads on a 1536-wide row left each thread one or two packs and ran at 25-55% of a copy
//   of the same shape; a warp (bf16) or a 64-128-thread block (f32) there is 1.2-1.7x faster.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/row_shapes.h"

namespace lathe::kernels::cuda::rows {

// Accumulation type: f64 for f64 data, f32 for f32, f16 and bf16.
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Elements of T in one 16-byte access.
template <class T>
inline constexpr int kPack = 16 / int(sizeof(T));

// Row shapes (row_launch): rows of up to kWarpRowPacks packs get up to a warp (at most 8 packs
// per lane, the register cache's limit), longer ones a block with about kBlockRowPacks per thread.
inline constexpr int64_t kWarpRowPacks = 256;
inline constexpr int64_t kBlockRowPacks = 4;
inline constexpr int kRowGroupBlockThreads = 128;  // blocks of the lanes-per-row shape
inline constexpr int kMaxRowBlockThreads = 1024;

template <class T, int W>
struct alignas(W == 1 ? alignof(T) : 16) Vec {
  T v[W];
};

// A 16-byte pack of T (8 bf16 / f16, 4 f32, 2 f64) widened to the compute type C.
template <class C, class T, int W>
LATHE_DEVICE_INLINE void widen(const Vec<T, W>& pack, C (&out)[W]) {
  static_assert(W * sizeof(T) == 16, "a pack is 16 bytes");
  if constexpr (std::is_same_v<T, __nv_bfloat16> && std::is_same_v<C, float>) {
    // A bf16 is the top half of an f32, so each 32-bit word of the pack widens to two floats by a
    // shift and a mask, one instruction each (the element-wise bf16_to_float, the same bits, took
    // two or three in the PTX: bf16 row kernels are bound by instruction issue, docs/kernels.md).
    uint32_t words[4];
    std::memcpy(words, &pack, sizeof words);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[2 * k] = __uint_as_float(words[k] << 16);  // the lower address is the low half
      out[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) out[k] = convert<C>(pack.v[k]);
  }
}

// W consecutive elements at p (16-byte aligned when W > 1) in the compute type C.
template <int W, class C, class T>
LATHE_DEVICE_INLINE void load(const T* p, C (&out)[W]) {
  if constexpr (W == 1) {
    out[0] = convert<C>(p[0]);
  } else {
    widen(load16<Vec<T, W>>(p), out);  // one 16-byte load
  }
}

template <int W, class C, class T>
LATHE_DEVICE_INLINE void store(T* p, const C (&in)[W]) {
  if constexpr (W == 1) {
    p[0] = convert<T>(in[0]);
  } else {
    static_assert(W * sizeof(T) == 16, "a pack is 16 bytes");
    if constexpr (kPairRounding && is_half_v<T> && std::is_same_v<C, float>) {
      // The rounded pairs are stored as they come out of the conversion, as 32-bit words.
      Vec<uint32_t, 4> words;
      if (round_pairs<T>(in, words.v)) {
        store16(p, words);
        return;
      }
    }
    // Other types, and a bf16/f16 pack holding a NaN (round_pairs already ran): element by element.
    Vec<T, W> pack;
#pragma unroll
    for (int k = 0; k < W; ++k) pack.v[k] = convert<T>(in[k]);
    store16(p, pack);
  }
}

// How one row of `cols` elements is cut: [0, head) scalar, `packs` packs from `head`, then a
// scalar tail. head == cols and packs == 0 when the operands are not mutually aligned.
struct RowCut {
  int64_t head = 0, packs = 0, cols = 0;
};

// `ptrs` are the row's first elements in every operand (nulls are skipped).
template <class T, int N>
LATHE_DEVICE_INLINE RowCut cut_row(int64_t cols, const void* const (&ptrs)[N]) {
  RowCut c;
  c.cols = cols;
  int64_t misalign = -1;
  bool same = true;
  for (int k = 0; k < N; ++k) {
    if (ptrs[k] == nullptr) continue;
    const int64_t m = int64_t(reinterpret_cast<uintptr_t>(ptrs[k]) % 16);
    if (misalign < 0) misalign = m;
    same = same && m == misalign && m % int64_t(sizeof(T)) == 0;
  }
  if (!same || misalign < 0) {
    c.head = cols;
    return c;
  }
  const int64_t head = ((16 - misalign) % 16) / int64_t(sizeof(T));
  c.head = head < cols ? head : cols;
  c.packs = (cols - c.head) / kPack<T>;
  return c;
}

// Calls fn.template operator()<W>(j) for the elements of the row that thread t of nt handles:
// W == kPack<T> at the start j of each of its packs, W == 1 at each of its head and tail elements.
// The head and tail elements of the row that thread t of nt handles: fn.template operator()<1>(j).
template <class T, class Fn>
LATHE_DEVICE_INLINE void for_row_scalars(const RowCut& c, int t, int nt, Fn&& fn) {
  const int64_t tail = c.head + c.packs * kPack<T>;
  const int64_t scalars = c.head + (c.cols - tail);
  for (int64_t k = t; k < scalars; k += nt) {
    fn.template operator()<1>(k < c.head ? k : tail + (k - c.head));
  }
}

template <class T, class Fn>
LATHE_DEVICE_INLINE void for_row(const RowCut& c, int t, int nt, Fn&& fn) {
  constexpr int V = kPack<T>;
  for (int64_t p = t; p < c.packs; p += nt) fn.template operator()<V>(c.head + p * V);
  for_row_scalars<T>(c, t, nt, fn);
}

// for_row over one operand `row` for kernels that stream rows too long for the register cache
// (cross-entropy's 30522 classes): a thread loads U of its packs, all at once and unconditionally
// (clamped to the row's last pack, as load_row_cached does), before it passes the first to
// use.template operator()<V>(j, values); head and tail elements come as operator()<1>. The calls
// come in for_row's order, so sums equal for_row's bit for bit. for_row's load-then-use loop waits
// one DRAM latency per pack: bf16 cross-entropy backward ran at 18% of the copy bandwidth on the
// H200.
template <class T, int U, class C, class Use>
LATHE_DEVICE_INLINE void for_row_loaded(const RowCut& c, int t, int nt, const T* row, Use&& use) {
  constexpr int V = kPack<T>;
  for (int64_t p0 = t; p0 < c.packs; p0 += int64_t(U) * nt) {
    C v[U][V];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t p = p0 + int64_t(u) * nt;
      load<V>(row + c.head + (p < c.packs ? p : c.packs - 1) * V, v[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t p = p0 + int64_t(u) * nt;
      if (p < c.packs) use.template operator()<V>(c.head + p * V, v[u]);
    }
  }
  for_row_scalars<T>(c, t, nt, [&]<int W>(int64_t j) {
    C v[1];
    load<1>(row + j, v);
    use.template operator()<1>(j, v);
  });
}

// ---- rows held in registers ----
//
// A row kernel whose row fits in its group's registers reads the row once and runs its later
// passes on the registers: fewer loads, and all of a thread's loads issued together (the
// streaming loops above wait on each pack before the next). A thread holds up to N packs, the
// packs t, t + nt, ... of a row made of whole packs, in the order for_row visits them, so sums
// over the cached row equal the streamed ones bit for bit.
//
// The launcher picks N > 0 only for uniform rows (`uniform_rows`): every row of every operand
// starts on a 16-byte boundary and the width is whole packs, so every row is cut the same way
// (whole_row) and holds at most N packs per thread. Such a kernel has no per-row cut, no streamed
// fallback and, where the row's parameters are the same for every row (layer norm's weight and
// bias), keeps them in registers across rows. Before this, every row worked out its own cut and
// carried both paths: with 384 bf16 columns a lane has 12-16 elements per row, and that per-row
// work was a good part of the instructions of kernels bound by instruction issue (ncu on the H200:
// layer norm forward bf16 32768 x 384 at SM 73%, DRAM 18%). Other rows are streamed (N = 0).

// The packs per thread the cached kernels are instantiated for. 3 and 6 make BERT's widths whole:
// 384 bf16 columns are 48 packs (16 lanes x 3), 768 are 96 (32 x 3), 1536 are 192 (32 x 6); with
// powers of two only, a quarter to a third of the lanes' slots held no pack.
inline constexpr int kCachePacks[] = {2, 3, 4, 6, 8};

// The smallest of kCachePacks holding `per_thread` packs, or 0 (stream) when none does.
inline int cache_packs_for(int64_t per_thread) {
  for (const int n : kCachePacks) {
    if (per_thread <= n) return n;
  }
  return 0;
}

// Packs per thread a kernel instantiates for uniform rows of `cols` elements handled by
// `group_threads` threads each (RowLaunch::group), or 0 (stream) for f64 and for rows that need
// more than 8 (8 f32 packs are 32 registers per cached operand).
template <class T>
inline int row_cache_packs(int64_t cols, int64_t group_threads) {
  if (sizeof(T) == 8) return 0;
  const int64_t packs = cols / kPack<T>;
  return cache_packs_for((packs + group_threads - 1) / group_threads);
}

// Whether rows of `cols` elements whose operands start at `rows0` (each operand's first row) and
// step by `row_strides` elements are uniform: whole packs, and every row of every operand on a
// 16-byte boundary. Null operands are skipped.
template <class T, int K>
inline bool uniform_rows(int64_t cols, const void* const (&rows0)[K],
                         const int64_t (&row_strides)[K]) {
  if (cols % kPack<T> != 0) return false;
  for (int k = 0; k < K; ++k) {
    if (rows0[k] == nullptr) continue;
    if (reinterpret_cast<uintptr_t>(rows0[k]) % 16 != 0) return false;
    if ((row_strides[k] * int64_t(sizeof(T))) % 16 != 0) return false;
  }
  return true;
}

// The cut of every uniform row.
template <class T>
LATHE_DEVICE_INLINE RowCut whole_row(int64_t cols) {
  RowCut c;
  c.head = 0;
  c.packs = cols / kPack<T>;
  c.cols = cols;
  return c;
}

// fn.template operator()<N>() with N = row_cache_packs<T>(cols, group_threads) for uniform rows,
// N = 0 otherwise; f64 kernels are only instantiated streaming.
template <class T, class Fn>
decltype(auto) dispatch_row_cache(int64_t cols, int64_t group_threads, bool uniform, Fn&& fn) {
  if constexpr (sizeof(T) == 8) {
    return fn.template operator()<0>();
  } else {
    switch (uniform ? row_cache_packs<T>(cols, group_threads) : 0) {
      case 2:
        return fn.template operator()<2>();
      case 3:
        return fn.template operator()<3>();
      case 4:
        return fn.template operator()<4>();
      case 6:
        return fn.template operator()<6>();
      case 8:
        return fn.template operator()<8>();
      default:
        return fn.template operator()<0>();
    }
  }
}

// Calls fn.template operator()<S>(j) for every S < N, without a branch: j is the first column of
// the thread's pack S, or of the row's last pack where the thread has no pack S. For the loads of
// a cached row: the GPU issues in order, and a load under `if (p < packs)` is not moved above the
// arithmetic on the previous pack, so each pack's load would wait for the one before it; straight
// loads of valid addresses are issued together. What fn computes for a clamped S is garbage the
// caller never uses (its later passes run for_row_cached). Rows without packs are skipped. Pack
// indices are 32-bit here and in for_row_cached: a cached row has at most 8 packs per thread of a
// 1024-thread block, and 64-bit compares and selects per pack and row were a visible share of the
// row loop's SASS.
template <class T, int N, class Fn>
LATHE_DEVICE_INLINE void load_row_cached(const RowCut& c, int t, int nt, Fn&& fn) {
  if (c.packs <= 0) return;
  const int packs = int(c.packs);
  [&]<int... S>(std::integer_sequence<int, S...>) {
    (
        [&] {
          const int p = t + S * nt;
          fn.template operator()<S>(int64_t((p < packs ? p : packs - 1) * kPack<T>));
        }(),
        ...);
  }
  (std::make_integer_sequence<int, N>{});
}

// Calls fn.template operator()<S>(j) for each cached pack S of thread t (j its first column);
// S is a compile-time index, so the packs stay in registers.
template <class T, int N, class Fn>
LATHE_DEVICE_INLINE void for_row_cached(const RowCut& c, int t, int nt, Fn&& fn) {
  const int packs = int(c.packs);
  [&]<int... S>(std::integer_sequence<int, S...>) {
    (
        [&] {
          const int p = t + S * nt;
          if (p < packs) fn.template operator()<S>(int64_t(p * kPack<T>));
        }(),
        ...);
  }
  (std::make_integer_sequence<int, N>{});
}

// ---- warp and block all-reductions ----

LATHE_DEVICE_INLINE float shfl_xor(float v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}
LATHE_DEVICE_INLINE double shfl_xor(double v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

struct Sum {
  template <class A>
  LATHE_DEVICE_INLINE A operator()(A a, A b) const {
    return a + b;
  }
};

// Every lane of a full warp gets op over the 32 lanes' values.
template <class A, class Op>
LATHE_DEVICE_INLINE A warp_allreduce(A v, Op op) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) v = op(v, shfl_xor(v, mask));
  return v;
}

// Every lane gets op over the values of its aligned group of `lanes` lanes (a power of two up to
// 32). Every lane of the warp must take part (full-mask shuffles): the butterflies of the warp's
// groups run side by side.
template <class A, class Op>
LATHE_DEVICE_INLINE A lanes_allreduce(A v, Op op, int lanes) {
  for (int mask = lanes / 2; mask > 0; mask /= 2) v = op(v, shfl_xor(v, mask));
  return v;
}

// Every thread of the block (a multiple of 32 threads, at most 1024) gets op over all values.
// `scratch` holds 32 values of shared memory; the trailing barrier lets the caller reuse it.
template <class A, class Op>
LATHE_DEVICE_INLINE A block_allreduce(A v, Op op, A* scratch) {
  v = warp_allreduce(v, op);
  const int warp = int(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  A r = scratch[0];
  const int warps = int(blockDim.x) / 32;
  for (int w = 1; w < warps; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}

// The reduction of a row's group: its lanes (kBlock false; blockDim.x lanes per row) or the
// whole block.
template <bool kBlock, class A, class Op>
LATHE_DEVICE_INLINE A group_allreduce(A v, Op op, A* scratch) {
  if constexpr (kBlock) {
    return block_allreduce(v, op, scratch);
  } else {
    (void)scratch;
    return lanes_allreduce(v, op, int(blockDim.x));
  }
}

// Rows of a row kernel handled by this group and its thread index within the group. A row loop
// is `for (r = g.first; g.runs(r, n_rows); r += g.step)` with the row's work guarded by
// `r < n_rows`: the groups sharing a warp run the same number of iterations, so that their
// full-warp shuffles meet even where the last rows leave some of them without a row.
template <bool kBlock>
struct RowGroup {
  int64_t first, step;  // rows first, first + step, ...
  int t, nt;            // thread within the group, threads per group
  int lag;              // groups of the warp before this one (rows by which it trails the first)
  LATHE_DEVICE_INLINE bool runs(int64_t r, int64_t n_rows) const { return r - lag < n_rows; }
};

// Block shape: a block per row (kBlock, 1-D), or blockDim.x lanes per row and blockDim.y rows per
// block (row_launch).
template <bool kBlock>
LATHE_DEVICE_INLINE RowGroup<kBlock> row_group() {
  if constexpr (kBlock) {
    return {int64_t(blockIdx.x), int64_t(gridDim.x), int(threadIdx.x), int(blockDim.x), 0};
  } else {
    const int per_warp = 32 / int(blockDim.x);
    return {int64_t(blockIdx.x) * blockDim.y + threadIdx.y, int64_t(gridDim.x) * blockDim.y,
            int(threadIdx.x), int(blockDim.x), int(threadIdx.y) % per_warp};
  }
}

// Grid and block of a row kernel over `rows` rows of `cols` elements of `elem_bytes` bytes.
// `group` threads (a power of two) work on a row: 1-32 lanes of a warp for rows of up to
// kWarpRowPacks packs (block false; blocks of 128 threads), else a block
// of 64 to `max_block` threads, about kBlockRowPacks packs each (block true). Kernels that stream
// their rows rather than cache them (cross-entropy) pass a smaller max_block.
struct RowLaunch {
  bool block = false;
  int64_t group = 32;
  dim3 grid, threads;
};

inline RowLaunch row_launch(int64_t rows, int64_t cols, int64_t elem_bytes,
                            int64_t max_block = kMaxRowBlockThreads) {
  RowLaunch l;
  const int64_t pack = 16 / elem_bytes;
  const int64_t pieces = (cols + pack - 1) / pack;  // packs, counting a partial one
  if (pieces <= kWarpRowPacks && row_shapes() == RowShapes::PowerOfTwo) {
    while (l.group > 1 && l.group / 2 >= pieces) l.group /= 2;
  } else if (pieces <= kWarpRowPacks) {
    // The lanes per row (a power of two up to 32) whose packs per lane, rounded up to one of
    // kCachePacks, leave the fewest empty slots; ties go to more lanes. Every lane of a warp runs
    // as many pack slots as the fullest one, so 48 packs take 16 lanes x 3, not 32 x 2 (a third
    // of them empty), and 16 packs 8 x 2 rather than 16 lanes of one pack each.
    int64_t best_waste = -1;
    for (int64_t lanes = 32; lanes >= 1; lanes /= 2) {
      const int n = cache_packs_for((pieces + lanes - 1) / lanes);
      if (n == 0) continue;
      const int64_t waste = lanes * n - pieces;
      if (best_waste < 0 || waste < best_waste) {
        best_waste = waste;
        l.group = lanes;
      }
    }
  } else {
    const int64_t want = (pieces + kBlockRowPacks - 1) / kBlockRowPacks;
    l.group = 64;
    while (l.group < want && l.group < max_block) l.group *= 2;
  }
  l.block = l.group > 32;
  const int64_t sms = rt::device_properties(rt::current_device()).multiprocessor_count;
  // Enough resident groups to fill every SM (2048 threads each) several times over; rows beyond
  // that are grid-strided.
  if (l.block) {
    const int64_t cap = sms * (2048 / l.group) * 2;
    l.grid = dim3(unsigned(rows < cap ? rows : cap));
    l.threads = dim3(unsigned(l.group));
  } else {
    const int64_t per_block = kRowGroupBlockThreads / l.group;
    const int64_t blocks = (rows + per_block - 1) / per_block;
    const int64_t cap = sms * 16 * 2;
    l.grid = dim3(unsigned(blocks < cap ? blocks : cap));
    l.threads = dim3(unsigned(l.group), unsigned(per_block));
  }
  return l;
}

// ---- device-wide inclusive scan of int64 values (sum or max) ----

inline constexpr int kScanThreads = 256;
inline constexpr int kScanItems = 8;  // consecutive elements per thread
inline constexpr int64_t kScanTile = int64_t(kScanThreads) * kScanItems;

struct Max {
  template <class A>
  LATHE_DEVICE_INLINE A operator()(A a, A b) const {
    return a > b ? a : b;
  }
};

// Inclusive scan of each kScanTile-element tile in place; the tile's total goes to totals[tile].
// Integer arithmetic, so the result does not depend on the order anyway; the order is fixed.
template <class Op>
__global__ void scan_tiles_kernel(int64_t* data, int64_t n, int64_t* totals, Op op,
                                  int64_t identity) {
  __shared__ int64_t warp_totals[kScanThreads / 32];
  const int64_t base = int64_t(blockIdx.x) * kScanTile + int64_t(threadIdx.x) * kScanItems;
  int64_t items[kScanItems];
  int64_t local = identity;
  for (int k = 0; k < kScanItems; ++k) {
    items[k] = base + k < n ? data[base + k] : identity;
    local = op(local, items[k]);
  }
  // Inclusive scan of the threads' totals: within the warp by shuffles, then across warps.
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  int64_t incl = local;
  for (int d = 1; d < 32; d *= 2) {
    const int64_t other = __shfl_up_sync(0xffffffffu, incl, unsigned(d));
    if (lane >= d) incl = op(incl, other);
  }
  if (lane == 31) warp_totals[warp] = incl;
  __syncthreads();
  int64_t before = identity;
  for (int w = 0; w < warp; ++w) before = op(before, warp_totals[w]);
  // Exclusive prefix of this thread = everything before it in the tile.
  const int64_t prev_lane = __shfl_up_sync(0xffffffffu, incl, 1u);
  int64_t running = op(before, lane == 0 ? identity : prev_lane);
  for (int k = 0; k < kScanItems; ++k) {
    running = op(running, items[k]);
    if (base + k < n) data[base + k] = running;
  }
  if (threadIdx.x == blockDim.x - 1) {
    int64_t total = identity;
    for (int w = 0; w < kScanThreads / 32; ++w) total = op(total, warp_totals[w]);
    totals[blockIdx.x] = total;
  }
}

// data[i] = op(prefix of the tiles before i's tile, data[i]).
template <class Op>
__global__ void scan_add_prefix_kernel(int64_t* data, int64_t n, const int64_t* tile_prefix,
                                       Op op) {
  for (int64_t i = global_thread() + kScanTile; i < n; i += grid_threads()) {
    data[i] = op(tile_prefix[i / kScanTile - 1], data[i]);
  }
}

// In-place inclusive scan of n int64 values on the current stream: a tile pass, the scan of the
// tiles' totals (recursively), and a pass adding each tile's prefix.
template <class Op>
void inclusive_scan(int64_t* data, int64_t n, Op op, int64_t identity) {
  if (n <= 0) return;
  const int64_t tiles = (n + kScanTile - 1) / kScanTile;
  DeviceScratch totals(size_t(tiles) * sizeof(int64_t));
  rt::launch(scan_tiles_kernel<Op>, dim3(unsigned(tiles)), dim3(kScanThreads), 0, stream(),
             "scan_tiles", data, n, totals.as<int64_t>(), op, identity);
  if (tiles == 1) return;
  inclusive_scan(totals.as<int64_t>(), tiles, op, identity);
  rt::launch(scan_add_prefix_kernel<Op>, dim3(grid_for(n - kScanTile)), dim3(kThreads), 0, stream(),
             "scan_add_prefix", data, n, static_cast<const int64_t*>(totals.as<int64_t>()), op);
}

}  // namespace lathe::kernels::cuda::rows
