// Layer norm over the last `cols` elements of contiguous rows on cuda, forward and backward, for
// f32, f64, f16 and bf16 (statistics and sums in f32, or f64 for f64 data; 16-bit values rounded
// once on store). The formulas are those of kernels/cpu/layer_norm.cpp.
//
// Forward, a warp or a block per row: the mean, then the centered sum of squares (two passes, so
// values far from zero lose nothing to E[x^2] - E[x]^2 cancellation), then y. A row of up to 8
// packs per thread (8192 f32 / 16384 bf16 columns in a block) is read once and kept in registers
// for the later passes (rows.cuh); longer or unaligned rows are read on every pass, from DRAM once
// (a warp's row, at most 4 KiB in f32, stays in L1, a block's in L2).
//
// Backward:
//  - dx, a warp or a block per row: sum(g) and sum(g * xhat) in one pass (g = dy * weight), then
//    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); g and xhat stay in registers between the
//    passes for rows that fit.
//  - dweight = sum over rows of dy * xhat and dbias = sum over rows of dy, deterministically and
//    without atomics: the rows are cut into chunks (how many depends on the row count only), each
//    chunk is summed into a partial row, and a last kernel adds the partial rows in a fixed order.
//  - Rows of whole, aligned packs that a warp holds in registers (BERT's 384-1024 columns) take
//    one fused kernel for dx and the chunk sums (layer_norm_backward_fused_kernel): x and dy are
//    read once. Other rows run the dx kernel and then a separate chunk-sum kernel that reads x and
//    dy again (a block of 32 x 8 threads per chunk and 32 column packs, the 8 thread rows combined
//    in a fixed order through shared memory).
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/layer_norm_row.cuh"
#include "kernels/cuda/layer_norm_variant.h"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/rows.cuh"
#include "kernels/sim/sim.h"  // LATHE_DYNAMIC_SHARED in both builds

namespace lathe::kernels::cuda {

namespace {

using rows::acc_t;

template <class C>
struct SumPair {
  C a, b;
};

template <class C>
LATHE_DEVICE_INLINE SumPair<C> shfl_xor(SumPair<C> v, int mask) {
  return {rows::shfl_xor(v.a, mask), rows::shfl_xor(v.b, mask)};
}

struct AddPair {
  template <class C>
  LATHE_DEVICE_INLINE SumPair<C> operator()(SumPair<C> x, SumPair<C> y) const {
    return {x.a + y.a, x.b + y.b};
  }
};

template <class T, bool kBlock, int N>
__global__ void layer_norm_forward_kernel(const T* x, const T* w, const T* b, T* y,
                                          acc_t<T>* mean_out, acc_t<T>* rstd_out, int64_t n_rows,
                                          int64_t cols, acc_t<T> eps) {
  using C = acc_t<T>;
  __shared__ C scratch[32];
  const rows::RowGroup<kBlock> g = rows::row_group<kBlock>();
  // N > 0: uniform rows (rows.cuh), every one cut as `whole`.
  const rows::RowCut whole = rows::whole_row<T>(cols);
  for (int64_t r = g.first; g.runs(r, n_rows); r += g.step) {
    const bool active = r < n_rows;
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    rows::RowCut cut;
    if (active) {
      if constexpr (N > 0) {
        cut = whole;
      } else {
        const void* const ptrs[4] = {xr, yr, w, b};
        cut = rows::cut_row<T>(cols, ptrs);
      }
    }
    rows::layer_norm_row_forward<T, kBlock, N>(
        g, cut, r, cols, [&]<int W>(int64_t j, C(&v)[W]) { rows::load<W>(xr + j, v); },
        [](int64_t, auto&) {}, w, b, yr, active ? mean_out : nullptr, active ? rstd_out : nullptr,
        eps, scratch);
  }
}

template <class T, bool kBlock, int N>
__global__ void layer_norm_grad_x_kernel(const T* x, const T* w, const acc_t<T>* mean,
                                         const acc_t<T>* rstd, const T* gy, T* gx, int64_t n_rows,
                                         int64_t cols) {
  using C = acc_t<T>;
  constexpr int V = rows::kPack<T>;
  __shared__ SumPair<C> scratch[32];
  const rows::RowGroup<kBlock> g = rows::row_group<kBlock>();
  for (int64_t r = g.first; g.runs(r, n_rows); r += g.step) {
    const bool active = r < n_rows;
    const T* xr = x + r * cols;
    const T* gyr = gy + r * cols;
    T* gxr = gx + r * cols;
    rows::RowCut cut;
    if (active) {
      if constexpr (N > 0) {
        cut = rows::whole_row<T>(cols);  // uniform rows (rows.cuh)
      } else {
        const void* const ptrs[4] = {xr, gyr, gxr, w};
        cut = rows::cut_row<T>(cols, ptrs);
      }
    }
    const C m = active ? mean[r] : C(0), s = active ? rstd[r] : C(0);
    // g = dy * w and xhat = (x - mean) * rstd of W elements at j.
    auto terms = [&]<int W>(int64_t j, C(&gv)[W], C(&xhat)[W]) {
      rows::load<W>(gyr + j, gv);
      rows::load<W>(xr + j, xhat);
      C wv[W] = {};
      if (w) rows::load<W>(w + j, wv);
      for (int k = 0; k < W; ++k) {
        if (w) gv[k] = gv[k] * wv[k];
        xhat[k] = (xhat[k] - m) * s;
      }
    };
    auto add = []<int W>(SumPair<C>& part, const C(&gv)[W], const C(&xhat)[W]) {
      for (int k = 0; k < W; ++k) {
        part.a += gv[k];
        part.b += gv[k] * xhat[k];
      }
    };
    // Uniform rows (N > 0) keep g and xhat in registers between the two passes (rows.cuh).
    C g_regs[N > 0 ? N : 1][V], xhat_regs[N > 0 ? N : 1][V];
    SumPair<C> part{C(0), C(0)};
    if constexpr (N > 0) {
      rows::load_row_cached<T, N>(cut, g.t, g.nt,
                                  [&]<int S>(int64_t j) { terms(j, g_regs[S], xhat_regs[S]); });
      rows::for_row_cached<T, N>(cut, g.t, g.nt,
                                 [&]<int S>(int64_t) { add(part, g_regs[S], xhat_regs[S]); });
    } else {
      rows::for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
        C gv[W], xhat[W];
        terms(j, gv, xhat);
        add(part, gv, xhat);
      });
    }
    const SumPair<C> sums = rows::group_allreduce<kBlock>(part, AddPair{}, scratch);
    const C mean_g = sums.a / C(cols), mean_gx = sums.b / C(cols);
    auto write = [&]<int W>(int64_t j, C(&gv)[W], const C(&xhat)[W]) {
      for (int k = 0; k < W; ++k) gv[k] = s * (gv[k] - mean_g - xhat[k] * mean_gx);
      rows::store<W>(gxr + j, gv);
    };
    if constexpr (N > 0) {
      rows::for_row_cached<T, N>(cut, g.t, g.nt,
                                 [&]<int S>(int64_t j) { write(j, g_regs[S], xhat_regs[S]); });
    } else {
      rows::for_row<T>(cut, g.t, g.nt, [&]<int W>(int64_t j) {
        C gv[W], xhat[W];
        terms(j, gv, xhat);
        write(j, gv, xhat);
      });
    }
  }
}

// ---- fused backward: dx and the dweight / dbias partial rows in one pass ----
//
// For rows of whole, aligned packs that a warp (or fewer lanes) holds in registers: each block
// owns a chunk of consecutive rows, its groups take the chunk's rows in turn, and each thread,
// which sees the same columns in every row, adds dy * xhat and dy of its columns into its own
// shared-memory slots while computing dx. At the end the block's groups' slots are added in group
// order into the chunk's partial row. The unfused backward read x and dy a second time
// for the parameter gradients: 5 tensors of traffic where this reads x and dy and writes dx once
// (3), plus partial rows that stay in L2.

// Row chunks of the fused backward: a function of the row count only, like param_chunks, so the
// summation order never depends on the device; ~8 rows per chunk keep 4096 rows (BERT's B * T)
// spread over several blocks per SM.
constexpr int64_t kFusedRowsPerChunk = 8;
constexpr int64_t kFusedMaxChunks = 1024;
constexpr int kFusedMaxPacks = 4;  // packs per thread (rows::row_cache_packs) the kernel takes

int64_t fused_chunks(int64_t n_rows) {
  const int64_t c = (n_rows + kFusedRowsPerChunk - 1) / kFusedRowsPerChunk;
  return c < 1 ? 1 : (c > kFusedMaxChunks ? kFusedMaxChunks : c);
}

// The chunk's running dweight / dbias sums live in shared memory, not in registers: a thread
// holding N packs of f32 sums for each had 2 * N * 8 registers of them live across the whole row
// loop (bf16, 3 packs: 148 registers, 105 with the sums here; scripts/sass.sh), and the occupancy
// that cost. Each row adds into them with one 16-byte read and write per 4 sums (that row loop: 919
// instructions before, 934 now). Each thread owns a run of quads (4 floats, 16 bytes) laid out
// [pack][quad of the pack][dweight, dbias], so every access is one base register plus a constant
// (a layout [pack][quad][lane] needs an address register per quad: 118 registers). The run is an
// odd number of quads long (one of padding), so the 8 threads of a quarter warp, whose 16-byte
// accesses are served together, hit 8 different groups of 4 banks. Each slot is a thread's own
// and adds the group's rows in order, as the registers did: the same sums in the same order. (The
// GPU's SASS keeps its FMUL / FFMA mix. In the simulated build g++ contracts a * b + c into FMAs
// by its own heuristics, and there dx moved by an ulp here and there against the register
// version; with contraction off the two agree bit for bit.)
template <class T, int N>
struct FusedSlots {
  static constexpr int kQuads = rows::kPack<T> / 4;         // quads per 16-byte pack of T
  static constexpr int kStride = (2 * N * kQuads + 1) * 4;  // floats per thread
  // The first float of quad h of pack S of sum `which` (0: dweight, 1: dbias) in a thread's run.
  static constexpr int offset(int S, int h, int which) {
    return ((S * kQuads + h) * 2 + which) * 4;
  }
  // Column j's slot of sum `which` in the run of lane 0 of a group of `lanes` lanes that holds
  // uniform rows (lane t has packs t, t + lanes, ...).
  static LATHE_DEVICE_INLINE int64_t of_column(int64_t j, int lanes, int which) {
    const int64_t p = j / rows::kPack<T>;
    const int in_pack = int(j % rows::kPack<T>);
    return int64_t(p % lanes) * kStride + offset(int(p / lanes), in_pack / 4, which) + in_pack % 4;
  }
};

// 4 floats at a 16-byte aligned shared address, as one access on the GPU.
LATHE_DEVICE_INLINE rows::Vec<float, 4> load_quad(const float* p) {
  rows::Vec<float, 4> q;
#ifdef __CUDACC__
  q = *reinterpret_cast<const rows::Vec<float, 4>*>(p);
#else
  std::memcpy(static_cast<void*>(&q), p, sizeof q);
#endif
  return q;
}
LATHE_DEVICE_INLINE void store_quad(float* p, const rows::Vec<float, 4>& q) {
#ifdef __CUDACC__
  *reinterpret_cast<rows::Vec<float, 4>*>(p) = q;
#else
  std::memcpy(static_cast<void*>(p), &q, sizeof q);
#endif
}

// A pack of dy as the fused backward holds it (layer_norm_variant.h), in the compute type: the
// loaded 16-bit pack widened, or the widened pack itself.
template <class C, class T, int V>
LATHE_DEVICE_INLINE void held_dy(const rows::Vec<T, V>& held, C (&out)[V]) {
  if constexpr (std::is_same_v<T, C>) {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = held.v[k];
  } else {
    rows::widen(held, out);
  }
}

// Block shape (lanes, 128 / lanes) as row_launch's lanes-per-row shape; dynamic shared memory
// holds every thread's run of sums (fused_shared_bytes). Every row is `cols / V` whole
// packs (checked by the launcher).
template <class T, int N, bool kPackedDy>
__global__ void layer_norm_backward_fused_kernel(const T* x, const T* w, const acc_t<T>* mean,
                                                 const acc_t<T>* rstd, const T* gy, T* gx,
                                                 int64_t n_rows, int64_t cols, int64_t chunks,
                                                 acc_t<T>* partial_w, acc_t<T>* partial_b) {
  using C = acc_t<T>;
  static_assert(std::is_same_v<C, float>, "f64 rows are never cached");
  using Slots = FusedSlots<T, N>;
  constexpr int V = rows::kPack<T>;
  LATHE_DYNAMIC_SHARED(C, sums);  // the threads' runs of FusedSlots, thread after thread
  const int64_t chunk = blockIdx.x;
  const int64_t begin = n_rows * chunk / chunks, end = n_rows * (chunk + 1) / chunks;
  const int per_warp = 32 / int(blockDim.x);
  const rows::RowGroup<false> g{begin + int64_t(threadIdx.y), int64_t(blockDim.y), int(threadIdx.x),
                                int(blockDim.x), int(threadIdx.y) % per_warp};
  rows::RowCut whole;
  whole.head = 0;
  whole.packs = cols / V;
  whole.cols = cols;
  C* const run = sums + (int64_t(threadIdx.y) * blockDim.x + threadIdx.x) * Slots::kStride;
#pragma unroll
  for (int q = 0; q < Slots::kStride / 4; ++q) store_quad(run + 4 * q, rows::Vec<float, 4>{});
  for (int64_t r = g.first; g.runs(r, end); r += g.step) {
    const bool active = r < end;
    const rows::RowCut cut = active ? whole : rows::RowCut{};
    const T* xr = x + r * cols;
    const T* gyr = gy + r * cols;
    T* gxr = gx + r * cols;
    const C m = active ? mean[r] : C(0), s = active ? rstd[r] : C(0);
    // dy as loaded (kPackedDy: 16-bit packs, widened at each use) or widened
    // (layer_norm_variant.h).
    using DyPack = std::conditional_t<kPackedDy, rows::Vec<T, V>, rows::Vec<C, V>>;
    DyPack dy_held[N];
    C xhat[N][V];
    rows::load_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) {
      if constexpr (kPackedDy) {
        dy_held[S] = load16<rows::Vec<T, V>>(gyr + j);
      } else {
        rows::load<V>(gyr + j, dy_held[S].v);
      }
      rows::load<V>(xr + j, xhat[S]);
    });
    // g = dy * w is formed where it is used (w is an L1 hit), so the registers hold dy, which the
    // parameter sums need.
    SumPair<C> part{C(0), C(0)};
    rows::for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) {
      C wv[V] = {};
      if (w) rows::load<V>(w + j, wv);
      C dy[V];
      held_dy(dy_held[S], dy);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        xhat[S][k] = (xhat[S][k] - m) * s;
        const C gv = w ? dy[k] * wv[k] : dy[k];
        part.a += gv;
        part.b += gv * xhat[S][k];
      }
#pragma unroll
      for (int h = 0; h < Slots::kQuads; ++h) {
        float* const pw = run + Slots::offset(S, h, 0);
        float* const pb = run + Slots::offset(S, h, 1);
        rows::Vec<float, 4> qw = load_quad(pw), qb = load_quad(pb);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          qw.v[e] += dy[4 * h + e] * xhat[S][4 * h + e];
          qb.v[e] += dy[4 * h + e];
        }
        store_quad(pw, qw);
        store_quad(pb, qb);
      }
    });
    const SumPair<C> total = rows::lanes_allreduce(part, AddPair{}, int(blockDim.x));
    const C mean_g = total.a / C(cols), mean_gx = total.b / C(cols);
    rows::for_row_cached<T, N>(cut, g.t, g.nt, [&]<int S>(int64_t j) {
      C wv[V] = {};
      if (w) rows::load<V>(w + j, wv);
      C dy[V], out[V];
      held_dy(dy_held[S], dy);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const C gv = w ? dy[k] * wv[k] : dy[k];
        out[k] = s * (gv - mean_g - xhat[S][k] * mean_gx);
      }
      rows::store<V>(gxr + j, out);
    });
  }
  // The chunk's partial rows: the groups' sums added in group order.
  __syncthreads();
  const int threads = int(blockDim.x * blockDim.y);
  const int64_t group_floats = int64_t(blockDim.x) * Slots::kStride;
  for (int64_t j = int64_t(threadIdx.y) * blockDim.x + threadIdx.x; j < cols; j += threads) {
    const int64_t slot_w = Slots::of_column(j, g.nt, 0), slot_b = Slots::of_column(j, g.nt, 1);
    C tw = sums[slot_w], tb = sums[slot_b];
    for (int y = 1; y < int(blockDim.y); ++y) {
      tw += sums[y * group_floats + slot_w];
      tb += sums[y * group_floats + slot_b];
    }
    if (partial_w) partial_w[chunk * cols + j] = tw;
    if (partial_b) partial_b[chunk * cols + j] = tb;
  }
}

// Dynamic shared memory of layer_norm_backward_fused_kernel<T, N>: the runs of the 128 threads.
template <class T, int N>
constexpr size_t fused_shared_bytes() {
  return size_t(rows::kRowGroupBlockThreads) * FusedSlots<T, N>::kStride * sizeof(float);
}

// ---- dweight / dbias ----

constexpr int kParamThreadRows = 8;    // blockDim.y: threads splitting a chunk's rows
constexpr int64_t kRowsPerChunk = 32;  // target rows per chunk
constexpr int64_t kMaxChunks = 256;    // bounds the partial rows (and the final pass's reads)

// Chunk count: a function of the row count only, so the summation order never depends on the
// device or the launch.
int64_t param_chunks(int64_t n_rows) {
  const int64_t c = (n_rows + kRowsPerChunk - 1) / kRowsPerChunk;
  return c < 1 ? 1 : (c > kMaxChunks ? kMaxChunks : c);
}

// Block (blockIdx.x, blockIdx.y): columns [32 * W * blockIdx.x, +32 * W) of chunk blockIdx.y.
// Thread (tx, ty) sums rows begin + ty, begin + ty + 8, ... of its W columns.
template <class T, int W>
__global__ void layer_norm_param_partial_kernel(const T* x, const acc_t<T>* mean,
                                                const acc_t<T>* rstd, const T* gy, int64_t n_rows,
                                                int64_t cols, int64_t chunks, acc_t<T>* partial_w,
                                                acc_t<T>* partial_b) {
  using C = acc_t<T>;
  __shared__ C shared_w[kParamThreadRows][32 * W];
  __shared__ C shared_b[kParamThreadRows][32 * W];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t col = (int64_t(blockIdx.x) * 32 + tx) * W;
  const int64_t chunk = blockIdx.y;
  const int64_t begin = n_rows * chunk / chunks, end = n_rows * (chunk + 1) / chunks;
  C aw[W], ab[W];
  for (int k = 0; k < W; ++k) aw[k] = ab[k] = C(0);
  if (col < cols) {
    for (int64_t r = begin + ty; r < end; r += kParamThreadRows) {
      C dy[W], xv[W];
      rows::load<W>(gy + r * cols + col, dy);
      rows::load<W>(x + r * cols + col, xv);
      const C m = mean[r], s = rstd[r];
      for (int k = 0; k < W; ++k) {
        aw[k] += dy[k] * ((xv[k] - m) * s);
        ab[k] += dy[k];
      }
    }
  }
  for (int k = 0; k < W; ++k) {
    shared_w[ty][tx * W + k] = aw[k];
    shared_b[ty][tx * W + k] = ab[k];
  }
  __syncthreads();
  if (ty == 0 && col < cols) {
    for (int yy = 1; yy < kParamThreadRows; ++yy) {
      for (int k = 0; k < W; ++k) {
        aw[k] += shared_w[yy][tx * W + k];
        ab[k] += shared_b[yy][tx * W + k];
      }
    }
    for (int k = 0; k < W; ++k) {
      if (partial_w) partial_w[chunk * cols + col + k] = aw[k];
      if (partial_b) partial_b[chunk * cols + col + k] = ab[k];
    }
  }
}

// Column j of dweight (blockIdx.y 0) or dbias (1) from `chunks` partial rows: thread (tx, ty)
// of a 32 x 32 block adds chunks ty, ty + 32, ... of column 32 * blockIdx.x + tx in order, and the
// 32 sums are added in ty order. One thread per column walking every chunk (the first version)
// left a few hundred threads doing a thousand dependent L2 reads each.
constexpr int kSumRows = 32;

template <class T>
__global__ void layer_norm_param_final_kernel(const acc_t<T>* partial_w, const acc_t<T>* partial_b,
                                              int64_t cols, int64_t chunks, T* gw, T* gb) {
  using C = acc_t<T>;
  __shared__ C part[kSumRows][33];
  const acc_t<T>* partial = blockIdx.y == 0 ? partial_w : partial_b;
  T* out = blockIdx.y == 0 ? gw : gb;
  if (out == nullptr) return;  // uniform over the block
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t j = int64_t(blockIdx.x) * 32 + tx;
  C sum = C(0);
  if (j < cols) {
    for (int64_t c = ty; c < chunks; c += kSumRows) sum += partial[c * cols + j];
  }
  part[ty][tx] = sum;
  __syncthreads();
  if (ty == 0 && j < cols) {
    for (int y = 1; y < kSumRows; ++y) sum += part[y][tx];
    out[j] = convert<T>(sum);
  }
}

// dweight / dbias from the partial rows.
template <class T>
void param_final(const acc_t<T>* pw, const acc_t<T>* pb, int64_t cols, int64_t chunks, void* gw,
                 void* gb) {
  rt::launch(layer_norm_param_final_kernel<T>, dim3(unsigned((cols + 31) / 32), 2),
             dim3(32, kSumRows), 0, stream(), "layer_norm_param_final", pw, pb, cols, chunks,
             static_cast<T*>(gw), static_cast<T*>(gb));
}

template <class T>
void param_grads(const LayerNormBackwardArgs& a) {
  using C = acc_t<T>;
  const int64_t chunks = param_chunks(a.rows);
  DeviceScratch partial(size_t(2 * chunks * a.cols) * sizeof(C));
  C* pw = a.grad_weight ? partial.as<C>() : nullptr;
  C* pb = a.grad_bias ? partial.as<C>() + chunks * a.cols : nullptr;
  const T* x = static_cast<const T*>(a.x);
  const T* gy = static_cast<const T*>(a.grad_y);
  const C* mean = static_cast<const C*>(a.mean);
  const C* rstd = static_cast<const C*>(a.rstd);
  constexpr int V = rows::kPack<T>;
  // Packs of columns need every row to start on a 16-byte boundary.
  const bool vec = a.cols % V == 0 && aligned16(x) && aligned16(gy);
  const dim3 threads(32, kParamThreadRows);
  if (vec) {
    const dim3 grid(unsigned((a.cols / V + 31) / 32), unsigned(chunks));
    rt::launch(layer_norm_param_partial_kernel<T, V>, grid, threads, 0, stream(),
               "layer_norm_param_partial", x, mean, rstd, gy, a.rows, a.cols, chunks, pw, pb);
  } else {
    const dim3 grid(unsigned((a.cols + 31) / 32), unsigned(chunks));
    rt::launch(layer_norm_param_partial_kernel<T, 1>, grid, threads, 0, stream(),
               "layer_norm_param_partial", x, mean, rstd, gy, a.rows, a.cols, chunks, pw, pb);
  }
  param_final<T>(pw, pb, a.cols, chunks, a.grad_weight, a.grad_bias);
}

// layer_norm_variant.h's knob, and the launches it took effect in.
LayerNormDy g_layer_norm_dy = LayerNormDy::Widened;
long long g_packed_dy_launches = 0;

// dx, dweight and dbias through layer_norm_backward_fused_kernel when the rows fit it (a group
// of at most a warp holding a row of whole, aligned packs in registers); false otherwise.
template <class T>
bool try_fused_backward(const LayerNormBackwardArgs& a) {
  using C = acc_t<T>;
  constexpr int V = rows::kPack<T>;
  if (!a.grad_x || !(a.grad_weight || a.grad_bias) || a.cols % V != 0) return false;
  if (!aligned16(a.x) || !aligned16(a.grad_y) || !aligned16(a.grad_x) ||
      (a.weight && !aligned16(a.weight))) {
    return false;
  }
  const rows::RowLaunch l = rows::row_launch(a.rows, a.cols, sizeof(T));
  if (l.block) return false;
  const int64_t groups = rows::kRowGroupBlockThreads / l.group;
  return rows::dispatch_row_cache<T>(a.cols, l.group, true, [&]<int N>() {
    // Two sets of N packs live in registers (dy and xhat): N = 8 would spill.
    if constexpr (N == 0 || N > kFusedMaxPacks) {
      return false;
    } else {
      constexpr size_t smem = fused_shared_bytes<T, N>();  // at most 34 KiB (bf16, N = 4)
      static_assert(smem <= 48 * 1024, "dynamic shared memory beyond the default limit");
      const int64_t chunks = fused_chunks(a.rows);
      DeviceScratch partial(size_t(2 * chunks * a.cols) * sizeof(C));
      C* pw = a.grad_weight ? partial.as<C>() : nullptr;
      C* pb = a.grad_bias ? partial.as<C>() + chunks * a.cols : nullptr;
      // Packed dy for bf16 only: its widening is a shift or a mask per element, f16's a convert
      // (packed, the f16 kernel at 3 packs took 116 registers against 102; scripts/sass.sh).
      constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
      const bool packed = kBf16 && layer_norm_dy() == LayerNormDy::Packed;
      auto kernel = packed ? layer_norm_backward_fused_kernel<T, N, kBf16>
                           : layer_norm_backward_fused_kernel<T, N, false>;
      rt::launch(kernel, dim3(unsigned(chunks)), dim3(unsigned(l.group), unsigned(groups)), smem,
                 stream(), "layer_norm_backward_fused", static_cast<const T*>(a.x),
                 static_cast<const T*>(a.weight), static_cast<const C*>(a.mean),
                 static_cast<const C*>(a.rstd), static_cast<const T*>(a.grad_y),
                 static_cast<T*>(a.grad_x), a.rows, a.cols, chunks, pw, pb);
      g_packed_dy_launches += packed ? 1 : 0;
      param_final<T>(pw, pb, a.cols, chunks, a.grad_weight, a.grad_bias);
      return true;
    }
  });
}

void layer_norm_forward_impl(const LayerNormForwardArgs& a) {
  LATHE_CHECK(a.rows >= 0 && a.cols > 0, "layer_norm: invalid sizes rows=", a.rows,
              " cols=", a.cols);
  if (a.rows == 0) return;
  dispatch_device_float(a.dtype, "layer_norm", [&]<class T>() {
    using C = acc_t<T>;
    const rows::RowLaunch l = rows::row_launch(a.rows, a.cols, sizeof(T));
    const bool uniform =
        rows::uniform_rows<T, 4>(a.cols, {a.x, a.y, a.weight, a.bias}, {a.cols, a.cols, 0, 0});
    rows::dispatch_row_cache<T>(a.cols, l.group, uniform, [&]<int N>() {
      auto kernel =
          l.block ? layer_norm_forward_kernel<T, true, N> : layer_norm_forward_kernel<T, false, N>;
      rt::launch(kernel, l.grid, l.threads, 0, stream(), "layer_norm_forward",
                 static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
                 static_cast<const T*>(a.bias), static_cast<T*>(a.y), static_cast<C*>(a.mean),
                 static_cast<C*>(a.rstd), a.rows, a.cols, C(a.eps));
    });
  });
}

void layer_norm_backward_impl(const LayerNormBackwardArgs& a) {
  LATHE_CHECK(a.rows >= 0 && a.cols > 0, "layer_norm backward: invalid sizes rows=", a.rows,
              " cols=", a.cols);
  dispatch_device_float(a.dtype, "layer_norm backward", [&]<class T>() {
    using C = acc_t<T>;
    if (a.rows == 0) {
      // No rows: the parameter gradients are sums of nothing.
      const size_t bytes = size_t(a.cols) * sizeof(T);
      if (a.grad_weight) rt::memset_async(a.grad_weight, 0, bytes, stream());
      if (a.grad_bias) rt::memset_async(a.grad_bias, 0, bytes, stream());
      return;
    }
    if (try_fused_backward<T>(a)) return;
    if (a.grad_x) {
      const rows::RowLaunch l = rows::row_launch(a.rows, a.cols, sizeof(T));
      const bool uniform = rows::uniform_rows<T, 4>(a.cols, {a.x, a.grad_y, a.grad_x, a.weight},
                                                    {a.cols, a.cols, a.cols, 0});
      rows::dispatch_row_cache<T>(a.cols, l.group, uniform, [&]<int N>() {
        auto kernel =
            l.block ? layer_norm_grad_x_kernel<T, true, N> : layer_norm_grad_x_kernel<T, false, N>;
        rt::launch(kernel, l.grid, l.threads, 0, stream(), "layer_norm_grad_x",
                   static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
                   static_cast<const C*>(a.mean), static_cast<const C*>(a.rstd),
                   static_cast<const T*>(a.grad_y), static_cast<T*>(a.grad_x), a.rows, a.cols);
      });
    }
    if (a.grad_weight || a.grad_bias) param_grads<T>(a);
  });
}

}  // namespace

void set_layer_norm_dy(LayerNormDy mode) {
  g_layer_norm_dy = mode;
}
LayerNormDy layer_norm_dy() {
  return g_layer_norm_dy;
}
long long layer_norm_packed_dy_launches() {
  return g_packed_dy_launches;
}

extern const LayerNormForwardFn layer_norm_forward = layer_norm_forward_impl;
extern const LayerNormBackwardFn layer_norm_backward = layer_norm_backward_impl;

}  // namespace lathe::kernels::cuda
