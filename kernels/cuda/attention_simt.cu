// Fused scaled-dot-product attention on cuda for f32 and f64, FlashAttention-2 style on plain FMA
// units (no tensor cores): the [q_len, kv_len] score matrix is never stored, and every sum is kept
// in the element type (f32 for f32, f64 for f64), as the cpu kernel (kernels/cpu/attention.cpp)
// does. The tensor-core kernels of attention.cu round the probabilities to 16 bits, which is
// FlashAttention's trade for f16/bf16 but not what an f32 model expects: PyTorch's f32 attention
// computes in full f32 (no TF32 by default), so f32 here means f32 FMAs.
//
// Every kernel runs 256 threads as a 16 x 16 grid (ty, tx). A thread owns TM rows of its block's
// row tile (ty * TM + i) and TN columns of the score tile (tx + 16 c), so that the 16 threads of a
// row are the 16 lanes of one half warp and a row's max and sum are four xor shuffles. Tiles of q,
// k, v and dO sit in shared memory with rows of D + 16 bytes (float4 / double2 loads along the
// head dim hit 8 distinct bank groups); a score tile (P, or dS) goes through shared memory to the
// product with V, K, Q or dO, where the thread owns output columns h * 16 W + tx * W + e (W = 4
// f32 / 2 f64 contiguous columns per chunk), so the 16 lanes of a row read one contiguous run.
//
// Forward: one block per (batch, 64-query tile); key tiles are streamed (K, V, then P = exp of the
// masked scores); online softmax (running max and sum per row in registers, the output rescaled
// when the max grows); out = acc / sum and lse = max + log(sum) at the end.
// Backward: D_i = dO_i . O_i (a warp per row), then a dK/dV kernel (a block per key tile looping
// over query tiles, recomputing P from q, k and lse) and a dQ kernel (a block per query tile
// looping over key tiles, recomputing S and dP), which also writes grad_mask. Every output element
// has one writer and every sum a fixed order, so results are bit-reproducible; no atomics.
//
// Conventions are those of AttentionForwardArgs (kernels/kernel_api.h), shared with attention.cu
// and the cpu kernel: bool masks keep true positions, floating masks (of the element type) are
// added to the scaled scores, causal masks key j > query i, a row whose every key is masked gives
// zeros, lse = -inf and zero gradients, and dropout draws element n = (b * q_len + i) * kv_len + j
// from Philox (regenerated in backward, never stored). q, k, v, out, dO and the gradients may have
// any leading and row strides with a unit-stride last dim; rows that start on 16-byte boundaries
// are moved in 16-byte pieces, others element by element. docs/kernels.md ("SIMT attention for
// f32/f64") has the tile sizes and their shared-memory budgets.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/attention_layout.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/graph_params.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/sim/sim.h"  // LATHE_DYNAMIC_SHARED in both builds
#include "lathe/core/random.h"

namespace lathe::kernels::cuda {

namespace {

namespace simt {

using namespace attention_layout;  // operand rows, leading dims and the mask's layout

constexpr int kThreads = 256;  // 16 x 16
// 163 KiB of shared memory is the most an sm_80 block can have (the smallest of the default
// architectures).
constexpr size_t kMaxShared = 163 * 1024;

// Elements per 16-byte access.
template <class T>
constexpr int vec_of() {
  return int(16 / sizeof(T));
}

// Tile shapes per element type and head-dim bucket D. Each kernel has TM rows and TN score columns
// per thread (a 16 TM x 16 TN tile per block); shared memory is kept under ~113 KiB where the
// register file allows two blocks per SM (H100: 228 KiB per SM), and always under 163 KiB.
template <class T, int D>
struct Config {
  static constexpr bool kF64 = sizeof(T) == 8;
  static constexpr int kFwdTm = 4;
  static constexpr int kFwdTn = kF64 && D == 128 ? 2 : 4;
  // K and V share one buffer (V is loaded after the scores are done with K).
  static constexpr bool kFwdSharedKv = D == 128 || (kF64 && D == 64);
  static constexpr int kDqTm = kF64 && D == 128 ? 2 : 4;
  static constexpr int kDqTn = D == 128 || (kF64 && D == 64) ? 2 : 4;
  static constexpr int kKvTm = kF64 && D >= 64 ? 2 : 4;
  static constexpr int kKvTn = D == 128 || kF64 ? 2 : 4;
  // Blocks per SM the register allocation aims at (__launch_bounds__): 2 (at most 128 registers)
  // where shared memory allows two blocks and ptxas fits the kernel in 128 registers without
  // spilling (checked with -Xptxas -v for sm_90a), else 1.
  static constexpr int kFwdMinBlocks = kF64 ? 1 : 2;
  static constexpr int kDqMinBlocks = !kF64 && D == 128 ? 2 : 1;
  static constexpr int kKvMinBlocks = !kF64 && D == 64 ? 2 : 1;
};

// Leading dims: attention_layout.cuh.
struct Params : Lead {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  void* lse = nullptr;
  const void* grad_out = nullptr;
  void* grad_q = nullptr;
  void* grad_k = nullptr;
  void* grad_v = nullptr;
  void* grad_mask = nullptr;
  void* row_dot = nullptr;  // backward scratch: D_i = dO_i . O_i, [batch, tq]
  Rows q_rows, k_rows, v_rows, out_rows, do_rows, dq_rows, dk_rows, dv_rows;
  int64_t batch = 0, tq = 0, tk = 0;
  int d = 0, dv = 0;
  double scale = 1;
  Mask mask;
  bool causal = false;
  bool dropout = false;
  float p = 0;  // compared in f32, as the dropout kernel does
  double keep_scale = 1;
  PhiloxState philox;  // of the dropout mask; seed and offset, read through mask_seed/offset
};

// Params with the mask's state in device memory (graph_params.cuh).
using GraphParams = InGraph<Params>;

// Calls run(params) with GraphParams when the mask's state is in device memory.
template <class Run>
void with_params(const Params& p, Run&& run) {
  if (p.dropout && p.philox.device_state != nullptr) return run(GraphParams(p));
  run(p);
}

// ---- small device helpers ----

template <class T, int N>
struct alignas(N * sizeof(T) >= 16 ? 16 : N * sizeof(T)) Pack {
  T v[N];
};

// N consecutive elements at p (aligned to N elements): one vector access on the GPU.
template <int N, class T>
LATHE_DEVICE_INLINE void load_pack(const T* p, T (&out)[N]) {
  Pack<T, N> pack;
#ifdef __CUDACC__
  pack = *reinterpret_cast<const Pack<T, N>*>(p);
#else
  std::memcpy(static_cast<void*>(&pack), p, sizeof pack);  // no aliasing questions on the host
#endif
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = pack.v[e];
}

template <int N, class T>
LATHE_DEVICE_INLINE void store_pack(T* p, const T (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int e = 0; e < N; ++e) pack.v[e] = in[e];
#ifdef __CUDACC__
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
#else
  std::memcpy(static_cast<void*>(p), &pack, sizeof pack);
#endif
}

LATHE_DEVICE_INLINE float max_of(float a, float b) {
  return fmaxf(a, b);
}
LATHE_DEVICE_INLINE double max_of(double a, double b) {
  return fmax(a, b);
}

// Max and sum over the 16 lanes of a half warp (the threads of one row). Both lanes of each step
// compute the same bits (max and + are commutative), so every lane ends with the same value.
template <class T>
LATHE_DEVICE_INLINE T row_max(T x) {
#pragma unroll
  for (int m = 8; m >= 1; m /= 2) x = max_of(x, __shfl_xor_sync(0xffffffffu, x, m));
  return x;
}
template <class T>
LATHE_DEVICE_INLINE T row_sum(T x) {
#pragma unroll
  for (int m = 8; m >= 1; m /= 2) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

template <class T>
LATHE_DEVICE_INLINE T neg_inf() {
  return T(-INFINITY);
}

LATHE_DEVICE_INLINE int round_up(int x, int m) {
  return (x + m - 1) / m * m;
}

// Whether dropout keeps probability element n (the dropout kernel's rule).
template <class P>
LATHE_DEVICE_INLINE bool dropout_keeps(const P& p, uint64_t n) {
  const std::array<uint32_t, 4> w = philox::block(mask_offset(p) + n / 4, mask_seed(p));
  const uint32_t lane = uint32_t(n & 3u);
  const uint32_t bits = lane == 0 ? w[0] : lane == 1 ? w[1] : lane == 2 ? w[2] : w[3];
  return philox::to_uniform(bits) >= p.p;
}

// Bit i * TN + c: whether dropout keeps the element of the thread's tile row r0 + i and column
// c0 + 16 c (rows are queries and columns keys, or the other way round in the dK/dV kernel);
// elements outside the problem read 0. A rolled loop keeps one copy of Philox's rounds instead of
// TM * TN inlined ones, whose registers would otherwise crowd the tile's accumulators.
template <int TM, int TN, bool kRowsAreQueries, class P>
LATHE_DEVICE_INLINE uint32_t dropout_bits(const P& p, int64_t b, int64_t r0, int64_t c0) {
  static_assert(TM * TN <= 32, "one bit per element of the thread's tile");
  uint32_t bits = 0;
#pragma unroll 1
  for (int e = 0; e < TM * TN; ++e) {
    const int64_t r = r0 + e / TN, c = c0 + 16 * (e % TN);
    const int64_t i = kRowsAreQueries ? r : c, j = kRowsAreQueries ? c : r;
    if (i < p.tq && j < p.tk && dropout_keeps(p, uint64_t((b * p.tq + i) * p.tk + j))) {
      bits |= 1u << e;
    }
  }
  return bits;
}

// A scaled score with the key tail, the causal rule and the mask applied (-inf where masked).
// Rows past q_len never read the mask (its view ends there).
template <class T>
LATHE_DEVICE_INLINE T masked_score(const Params& p, int64_t mask_base, T x, int64_t i, int64_t j) {
  if (j >= p.tk || (p.causal && j > i)) return neg_inf<T>();
  if (p.mask.data != nullptr && i < p.tq) {
    const int64_t off = mask_base + i * p.mask.sq + j * p.mask.sk;
    if (p.mask.is_bool) {
      if (!static_cast<const bool*>(p.mask.data)[off]) return neg_inf<T>();
    } else {
      x += static_cast<const T*>(p.mask.data)[off];
    }
  }
  return x;
}

// The additive bias of a score tile (0, a floating mask's value, or -inf where masked) in shared
// memory, rows r0.. and columns c0.. (rows are queries and columns keys, or the other way round in
// the dK/dV kernel). Built by the whole block with consecutive threads on consecutive keys, so the
// mask's rows are read coalesced, and no thread holds per-element mask addresses: masking each
// score in place took TM * TN 64-bit addresses, ~40 more registers in the forward. It lives in the
// buffer the tile's P or dS goes to, whose every element is read, then overwritten, by the one
// thread that owns it.
template <int ROWS, int COLS, int LDB, bool kRowsAreQueries, class T>
LATHE_DEVICE_INLINE void load_bias(T* dst, const Params& p, int64_t mask_base, int64_t r0,
                                   int64_t c0) {
  for (int e = int(threadIdx.x); e < ROWS * COLS; e += kThreads) {
    const int r = kRowsAreQueries ? e / COLS : e % ROWS;
    const int c = kRowsAreQueries ? e % COLS : e / ROWS;
    const int64_t i = kRowsAreQueries ? r0 + r : c0 + c, j = kRowsAreQueries ? c0 + c : r0 + r;
    dst[r * LDB + c] = masked_score(p, mask_base, T(0), i, j);
  }
}

// A scaled score plus its bias; -inf biases (bool masks, causal, past the keys) give -inf
// whatever the score, as the cpu kernel's masking does.
template <class T>
LATHE_DEVICE_INLINE T add_bias(T x, T bias) {
  return bias == neg_inf<T>() ? bias : x + bias;
}

// Whether rows [i0, i0 + rows) against keys [j0, j0 + keys) need no masking at all.
LATHE_DEVICE_INLINE bool tile_unmasked(const Params& p, int64_t i0, int64_t j0, int keys) {
  return p.mask.data == nullptr && j0 + keys <= p.tk && (!p.causal || j0 + keys - 1 <= i0);
}

// A [ROWS, D] shared tile (row stride LD) from global rows src + r * ld: rows below `rows` and
// columns below `cols` are copied, everything else is zero, so that products over the padded
// head dim or past the sequence end add exact zeros (the simulator fills shared memory with NaN).
template <int D, int ROWS, int LD, class T>
LATHE_DEVICE_INLINE void load_tile(T* dst, const T* src, int64_t ld, int rows, int cols, bool vec) {
  constexpr int V = vec_of<T>();
  constexpr int kPieces = D / V;
  for (int c = int(threadIdx.x); c < ROWS * kPieces; c += kThreads) {
    const int r = c / kPieces, col = (c % kPieces) * V;
    T x[V];
    if (r < rows && col < cols) {
      const T* g = src + int64_t(r) * ld + col;
      if (vec && col + V <= cols) {
        load_pack<V>(g, x);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) x[e] = col + e < cols ? g[e] : T(0);
      }
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) x[e] = T(0);
    }
    store_pack<V>(dst + r * LD + col, x);
  }
}

// acc[i][c] += sum over k < kd of a[i * LDA + k] * b[16 c * LDB + k]: the thread's TM rows of one
// shared tile against its TN rows (16 apart) of another, in 16-byte steps along the head dim.
template <int TM, int TN, int LDA, int LDB, class T>
LATHE_DEVICE_INLINE void dot_tile(T (&acc)[TM][TN], const T* a, const T* b, int kd) {
  constexpr int V = vec_of<T>();
  for (int k = 0; k < kd; k += V) {
    T av[TM][V], bv[TN][V];
#pragma unroll
    for (int i = 0; i < TM; ++i) load_pack<V>(a + i * LDA + k, av[i]);
#pragma unroll
    for (int c = 0; c < TN; ++c) load_pack<V>(b + 16 * c * LDB + k, bv[c]);
#pragma unroll
    for (int e = 0; e < V; ++e) {
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[i][c] += av[i][e] * bv[c][e];
      }
    }
  }
}

// Output columns of a thread: chunk h holds columns h * 16 W + tx * W + e, e < W.
template <class T, int D>
struct Cols {
  static constexpr int kCw = D / 16;  // columns per thread
  static constexpr int kW = kCw < vec_of<T>() ? kCw : vec_of<T>();
  static constexpr int kChunks = kCw / kW;
  LATHE_DEVICE_INLINE static int col(int tx, int h) { return h * 16 * kW + tx * kW; }
};

// o[i][h W + e] += sum over j < nj of s[i * LDS + j] * m[j * LDM + col(h) + e]: the thread's TM
// rows of a score tile (P or dS) times a [keys, D] tile. nj is a multiple of the vector width; the
// score tile and m are zero past the valid keys.
template <int TM, int D, int LDS, int LDM, class T>
LATHE_DEVICE_INLINE void acc_tile(T (&o)[TM][D / 16], const T* s, const T* m, int tx, int nj) {
  using C = Cols<T, D>;
  constexpr int V = vec_of<T>();
  for (int j = 0; j < nj; j += V) {
    T sv[TM][V];
#pragma unroll
    for (int i = 0; i < TM; ++i) load_pack<V>(s + i * LDS + j, sv[i]);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const T* row = m + (j + e) * LDM;
#pragma unroll
      for (int h = 0; h < C::kChunks; ++h) {
        T mv[C::kW];
        load_pack<C::kW>(row + C::col(tx, h), mv);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int w = 0; w < C::kW; ++w) o[i][h * C::kW + w] += sv[i][e] * mv[w];
        }
      }
    }
  }
}

// Stores the thread's columns of one row (scaled by `mul`) to a global row with `cols` columns.
template <class T, int D>
LATHE_DEVICE_INLINE void store_row(T* dst, const T (&o)[D / 16], T mul, int tx, int cols,
                                   bool vec) {
  using C = Cols<T, D>;
#pragma unroll
  for (int h = 0; h < C::kChunks; ++h) {
    const int c0 = C::col(tx, h);
    if (c0 >= cols) continue;
    T x[C::kW];
#pragma unroll
    for (int w = 0; w < C::kW; ++w) x[w] = o[h * C::kW + w] * mul;
    if (vec && c0 + C::kW <= cols) {
      store_pack<C::kW>(dst + c0, x);
    } else {
#pragma unroll
      for (int w = 0; w < C::kW; ++w) {
        if (c0 + w < cols) dst[c0 + w] = x[w];
      }
    }
  }
}

// ---- forward ----

template <class T, int D>
constexpr size_t forward_smem() {
  using Cfg = Config<T, D>;
  constexpr int V = vec_of<T>(), BM = 16 * Cfg::kFwdTm, BN = 16 * Cfg::kFwdTn;
  return size_t(BM * (D + V) + (Cfg::kFwdSharedKv ? 1 : 2) * BN * (D + V) + BM * (BN + V)) *
         sizeof(T);
}

template <class T, int D, class P = Params>
__global__ void __launch_bounds__(kThreads, Config<T, D>::kFwdMinBlocks)
    forward_kernel(P p, int64_t q_tiles) {
  using Cfg = Config<T, D>;
  constexpr int TM = Cfg::kFwdTm, TN = Cfg::kFwdTn, BM = 16 * TM, BN = 16 * TN;
  constexpr int V = vec_of<T>(), LD = D + V, LDP = BN + V, CW = D / 16;
  LATHE_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;                                   // [BM][LD]
  T* sK = sQ + BM * LD;                           // [BN][LD]
  T* sV = Cfg::kFwdSharedKv ? sK : sK + BN * LD;  // [BN][LD]
  T* sP = sV + BN * LD;                           // [BM][LDP]

  int64_t b, i0;
  query_tile_of_block(blockIdx.x, q_tiles, BM, p.causal, b, i0);
  const int tx = int(threadIdx.x) % 16, ty = int(threadIdx.x) / 16;
  const T* q = static_cast<const T*>(p.q) + batch_offset(p, p.q_rows, b);
  const T* k = static_cast<const T*>(p.k) + batch_offset(p, p.k_rows, b);
  const T* v = static_cast<const T*>(p.v) + batch_offset(p, p.v_rows, b);
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  const T scale = T(p.scale);
  const int kd = round_up(p.d, V);

  const int q_rows = int(p.tq - i0 < BM ? p.tq - i0 : BM);
  load_tile<D, BM, LD>(sQ, q + i0 * p.q_rows.row, p.q_rows.row, q_rows, p.d, p.q_rows.vec);
  // Causal: the block's last query sees no key past it.
  const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
  const int n_tiles = int((j_end + BN - 1) / BN);

  T o[TM][CW], m_run[TM], l_run[TM];  // l_run: this thread's part of the row sum
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m_run[i] = neg_inf<T>();
    l_run[i] = T(0);
#pragma unroll
    for (int c = 0; c < CW; ++c) o[i][c] = T(0);
  }

  for (int it = 0; it < n_tiles; ++it) {
    const int64_t j0 = int64_t(it) * BN;
    const int keys = int(p.tk - j0 < BN ? p.tk - j0 : BN);
    load_tile<D, BN, LD>(sK, k + j0 * p.k_rows.row, p.k_rows.row, keys, p.d, p.k_rows.vec);
    if (!Cfg::kFwdSharedKv) {
      load_tile<D, BN, LD>(sV, v + j0 * p.v_rows.row, p.v_rows.row, keys, p.dv, p.v_rows.vec);
    }
    const bool plain = tile_unmasked(p, i0, j0, BN);
    if (!plain) load_bias<BM, BN, LDP, true>(sP, p, mask_base, i0, j0);
    __syncthreads();

    T s[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int c = 0; c < TN; ++c) s[i][c] = T(0);
    }
    dot_tile<TM, TN, LD, LD>(s, sQ + ty * TM * LD, sK + tx * LD, kd);

    const uint32_t kept =
        p.dropout ? dropout_bits<TM, TN, true>(p, b, i0 + ty * TM, j0 + tx) : 0xffffffffu;
    const T keep_scale = p.dropout ? T(p.keep_scale) : T(1);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      T mx = neg_inf<T>();
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        s[i][c] *= scale;
        if (!plain) s[i][c] = add_bias(s[i][c], sP[(ty * TM + i) * LDP + tx + 16 * c]);
        mx = max_of(mx, s[i][c]);
      }
      const T m_new = max_of(m_run[i], row_max(mx));
      // While a row has no unmasked key, shift by 0 so that exp(-inf - 0) = 0 instead of NaN.
      const T m_use = m_new == neg_inf<T>() ? T(0) : m_new;
      const T corr = dmath::exp(m_run[i] - m_use);
      m_run[i] = m_new;
      l_run[i] *= corr;
#pragma unroll
      for (int c = 0; c < CW; ++c) o[i][c] *= corr;
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const T e = dmath::exp(s[i][c] - m_use);
        l_run[i] += e;  // the row sum takes the probabilities before dropout
        const T z = (kept >> (i * TN + c)) & 1u ? keep_scale : T(0);
        sP[(ty * TM + i) * LDP + tx + 16 * c] = z * e;
      }
    }
    __syncthreads();
    if (Cfg::kFwdSharedKv) {
      load_tile<D, BN, LD>(sV, v + j0 * p.v_rows.row, p.v_rows.row, keys, p.dv, p.v_rows.vec);
      __syncthreads();
    }
    acc_tile<TM, D, LDP, LD>(o, sP + ty * TM * LDP, sV, tx, round_up(keys, V));
    __syncthreads();  // the next tile overwrites sK, sV and sP
  }

  T* out = static_cast<T*>(p.out) + batch_offset(p, p.out_rows, b);
  T* lse = static_cast<T*>(p.lse) + b * p.tq;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const T l = row_sum(l_run[i]);
    const int64_t row = i0 + ty * TM + i;
    if (row >= p.tq) continue;
    const bool empty = l == T(0);  // every key masked: zeros and lse = -inf
    store_row<T, D>(out + row * p.out_rows.row, o[i], empty ? T(0) : T(1) / l, tx, p.dv,
                    p.out_rows.vec);
    if (tx == 0) lse[row] = empty ? neg_inf<T>() : m_run[i] + dmath::log(l);
  }
}

// ---- backward ----

// D_i = dO_i . O_i, a warp per row (fixed butterfly order).
template <class T>
__global__ void __launch_bounds__(kThreads) row_dot_kernel(Params p) {
  constexpr int kWarps = kThreads / 32;
  const int64_t rows = p.batch * p.tq;
  const int lane = int(threadIdx.x) % 32;
  T* row_dot = static_cast<T*>(p.row_dot);
  for (int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; r < rows;
       r += int64_t(gridDim.x) * kWarps) {
    const int64_t b = r / p.tq, i = r - b * p.tq;
    const T* o = static_cast<const T*>(p.out) + batch_offset(p, p.out_rows, b) + i * p.out_rows.row;
    const T* g =
        static_cast<const T*>(p.grad_out) + batch_offset(p, p.do_rows, b) + i * p.do_rows.row;
    T acc = T(0);
    for (int c = lane; c < p.dv; c += 32) acc += o[c] * g[c];
    acc = row_sum(acc);
    acc += __shfl_xor_sync(0xffffffffu, acc, 16);
    if (lane == 0) row_dot[r] = acc;
  }
}

// lse as the backward subtracts it: +inf for a fully masked row (and past q_len), so that
// exp(s - lse) = 0 there and the row's gradients are exact zeros.
template <class T>
LATHE_DEVICE_INLINE T lse_for_backward(const Params& p, int64_t b, int64_t i) {
  if (i >= p.tq) return T(INFINITY);
  const T l = static_cast<const T*>(p.lse)[b * p.tq + i];
  return l == neg_inf<T>() ? T(INFINITY) : l;
}

template <class T, int D>
constexpr size_t dkdv_smem() {
  using Cfg = Config<T, D>;
  constexpr int V = vec_of<T>(), BK = 16 * Cfg::kKvTm, BQ = 16 * Cfg::kKvTn;
  return size_t(2 * BK * (D + V) + 2 * BQ * (D + V) + 2 * BK * (BQ + V)) * sizeof(T);
}

// dK and dV of one key tile: rows are keys, score columns queries (S^T, P^T, dS^T).
template <class T, int D, class P = Params>
__global__ void __launch_bounds__(kThreads, Config<T, D>::kKvMinBlocks)
    dkdv_kernel(P p, int64_t k_tiles) {
  using Cfg = Config<T, D>;
  constexpr int TM = Cfg::kKvTm, TN = Cfg::kKvTn, BK = 16 * TM, BQ = 16 * TN;
  constexpr int V = vec_of<T>(), LD = D + V, LDP = BQ + V, CW = D / 16;
  LATHE_DYNAMIC_SHARED(T, smem);
  T* sK = smem;           // [BK][LD]
  T* sV = sK + BK * LD;   // [BK][LD]
  T* sQ = sV + BK * LD;   // [BQ][LD]
  T* sdO = sQ + BQ * LD;  // [BQ][LD]
  T* sP = sdO + BQ * LD;  // [BK][LDP] (Z P)^T
  T* sS = sP + BK * LDP;  // [BK][LDP] dS^T

  const int64_t b = int64_t(blockIdx.x) / k_tiles;
  const int64_t j0 = (int64_t(blockIdx.x) - b * k_tiles) * BK;
  const int tx = int(threadIdx.x) % 16, ty = int(threadIdx.x) / 16;
  const T* q = static_cast<const T*>(p.q) + batch_offset(p, p.q_rows, b);
  const T* dout = static_cast<const T*>(p.grad_out) + batch_offset(p, p.do_rows, b);
  const T* k = static_cast<const T*>(p.k) + batch_offset(p, p.k_rows, b);
  const T* v = static_cast<const T*>(p.v) + batch_offset(p, p.v_rows, b);
  const T* row_dot = static_cast<const T*>(p.row_dot) + b * p.tq;
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  const T scale = T(p.scale);
  const int kd = round_up(p.d, V), kdv = round_up(p.dv, V);

  const int keys = int(p.tk - j0 < BK ? p.tk - j0 : BK);
  load_tile<D, BK, LD>(sK, k + j0 * p.k_rows.row, p.k_rows.row, keys, p.d, p.k_rows.vec);
  load_tile<D, BK, LD>(sV, v + j0 * p.v_rows.row, p.v_rows.row, keys, p.dv, p.v_rows.vec);
  // Causal: query tiles that end above the key tile see none of its keys.
  const int first = p.causal ? int(j0 / BQ) : 0;
  const int n_tiles = int((p.tq + BQ - 1) / BQ);

  T dk[TM][CW], dv[TM][CW];
#pragma unroll
  for (int a = 0; a < TM; ++a) {
#pragma unroll
    for (int c = 0; c < CW; ++c) dk[a][c] = dv[a][c] = T(0);
  }

  for (int it = first; it < n_tiles; ++it) {
    const int64_t i0 = int64_t(it) * BQ;
    const int queries = int(p.tq - i0 < BQ ? p.tq - i0 : BQ);
    load_tile<D, BQ, LD>(sQ, q + i0 * p.q_rows.row, p.q_rows.row, queries, p.d, p.q_rows.vec);
    load_tile<D, BQ, LD>(sdO, dout + i0 * p.do_rows.row, p.do_rows.row, queries, p.dv,
                         p.do_rows.vec);
    const bool plain = tile_unmasked(p, i0, j0, BK);
    if (!plain) load_bias<BK, BQ, LDP, false>(sP, p, mask_base, j0, i0);
    __syncthreads();

    T s[TM][TN], dp[TM][TN];
#pragma unroll
    for (int a = 0; a < TM; ++a) {
#pragma unroll
      for (int c = 0; c < TN; ++c) s[a][c] = dp[a][c] = T(0);
    }
    dot_tile<TM, TN, LD, LD>(s, sK + ty * TM * LD, sQ + tx * LD, kd);
    dot_tile<TM, TN, LD, LD>(dp, sV + ty * TM * LD, sdO + tx * LD, kdv);

    const uint32_t kept =
        p.dropout ? dropout_bits<TM, TN, false>(p, b, j0 + ty * TM, i0 + tx) : 0xffffffffu;
    const T keep_scale = p.dropout ? T(p.keep_scale) : T(1);
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int64_t i = i0 + tx + 16 * c;
      const T lse = lse_for_backward<T>(p, b, i);
      const T di = i < p.tq ? row_dot[i] : T(0);
#pragma unroll
      for (int a = 0; a < TM; ++a) {
        T x = s[a][c] * scale;
        if (!plain) x = add_bias(x, sP[(ty * TM + a) * LDP + tx + 16 * c]);
        const T pr = dmath::exp(x - lse);
        const T z = (kept >> (a * TN + c)) & 1u ? keep_scale : T(0);
        sP[(ty * TM + a) * LDP + tx + 16 * c] = z * pr;
        sS[(ty * TM + a) * LDP + tx + 16 * c] = pr * (z * dp[a][c] - di);
      }
    }
    __syncthreads();
    const int nq = round_up(queries, V);
    acc_tile<TM, D, LDP, LD>(dv, sP + ty * TM * LDP, sdO, tx, nq);
    acc_tile<TM, D, LDP, LD>(dk, sS + ty * TM * LDP, sQ, tx, nq);
    __syncthreads();  // the next tile overwrites sQ, sdO, sP and sS
  }

  T* grad_k = static_cast<T*>(p.grad_k) + batch_offset(p, p.dk_rows, b);
  T* grad_v = static_cast<T*>(p.grad_v) + batch_offset(p, p.dv_rows, b);
#pragma unroll
  for (int a = 0; a < TM; ++a) {
    const int64_t j = j0 + ty * TM + a;
    if (j >= p.tk) continue;
    store_row<T, D>(grad_k + j * p.dk_rows.row, dk[a], scale, tx, p.d, p.dk_rows.vec);
    store_row<T, D>(grad_v + j * p.dv_rows.row, dv[a], T(1), tx, p.dv, p.dv_rows.vec);
  }
}

template <class T, int D>
constexpr size_t dq_smem() {
  using Cfg = Config<T, D>;
  constexpr int V = vec_of<T>(), BM = 16 * Cfg::kDqTm, BN = 16 * Cfg::kDqTn;
  return size_t(2 * BM * (D + V) + 2 * BN * (D + V) + BM * (BN + V)) * sizeof(T);
}

// dQ of one query tile (and its rows of grad_mask): recomputes S and dP per key tile.
template <class T, int D, class P = Params>
__global__ void __launch_bounds__(kThreads, Config<T, D>::kDqMinBlocks)
    dq_kernel(P p, int64_t q_tiles) {
  using Cfg = Config<T, D>;
  constexpr int TM = Cfg::kDqTm, TN = Cfg::kDqTn, BM = 16 * TM, BN = 16 * TN;
  constexpr int V = vec_of<T>(), LD = D + V, LDS = BN + V, CW = D / 16;
  LATHE_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;           // [BM][LD]
  T* sdO = sQ + BM * LD;  // [BM][LD]
  T* sK = sdO + BM * LD;  // [BN][LD]
  T* sV = sK + BN * LD;   // [BN][LD]
  T* sS = sV + BN * LD;   // [BM][LDS] dS

  int64_t b, i0;
  query_tile_of_block(blockIdx.x, q_tiles, BM, p.causal, b, i0);
  const int tx = int(threadIdx.x) % 16, ty = int(threadIdx.x) / 16;
  const T* q = static_cast<const T*>(p.q) + batch_offset(p, p.q_rows, b);
  const T* dout = static_cast<const T*>(p.grad_out) + batch_offset(p, p.do_rows, b);
  const T* k = static_cast<const T*>(p.k) + batch_offset(p, p.k_rows, b);
  const T* v = static_cast<const T*>(p.v) + batch_offset(p, p.v_rows, b);
  const T* row_dot = static_cast<const T*>(p.row_dot) + b * p.tq;
  T* grad_mask = p.grad_mask != nullptr ? static_cast<T*>(p.grad_mask) + b * p.tq * p.tk : nullptr;
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  const T scale = T(p.scale);
  const int kd = round_up(p.d, V), kdv = round_up(p.dv, V);

  const int queries = int(p.tq - i0 < BM ? p.tq - i0 : BM);
  load_tile<D, BM, LD>(sQ, q + i0 * p.q_rows.row, p.q_rows.row, queries, p.d, p.q_rows.vec);
  load_tile<D, BM, LD>(sdO, dout + i0 * p.do_rows.row, p.do_rows.row, queries, p.dv, p.do_rows.vec);
  const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
  const int n_tiles = int((j_end + BN - 1) / BN);

  T lse[TM], di[TM], dq[TM][CW];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = i0 + ty * TM + i;
    lse[i] = lse_for_backward<T>(p, b, row);
    di[i] = row < p.tq ? row_dot[row] : T(0);
#pragma unroll
    for (int c = 0; c < CW; ++c) dq[i][c] = T(0);
  }

  for (int it = 0; it < n_tiles; ++it) {
    const int64_t j0 = int64_t(it) * BN;
    const int keys = int(p.tk - j0 < BN ? p.tk - j0 : BN);
    load_tile<D, BN, LD>(sK, k + j0 * p.k_rows.row, p.k_rows.row, keys, p.d, p.k_rows.vec);
    load_tile<D, BN, LD>(sV, v + j0 * p.v_rows.row, p.v_rows.row, keys, p.dv, p.v_rows.vec);
    const bool plain = tile_unmasked(p, i0, j0, BN);
    if (!plain) load_bias<BM, BN, LDS, true>(sS, p, mask_base, i0, j0);
    __syncthreads();

    T s[TM][TN], dp[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int c = 0; c < TN; ++c) s[i][c] = dp[i][c] = T(0);
    }
    dot_tile<TM, TN, LD, LD>(s, sQ + ty * TM * LD, sK + tx * LD, kd);
    dot_tile<TM, TN, LD, LD>(dp, sdO + ty * TM * LD, sV + tx * LD, kdv);

    const uint32_t kept =
        p.dropout ? dropout_bits<TM, TN, true>(p, b, i0 + ty * TM, j0 + tx) : 0xffffffffu;
    const T keep_scale = p.dropout ? T(p.keep_scale) : T(1);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t row = i0 + ty * TM + i;
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int64_t j = j0 + tx + 16 * c;
        T x = s[i][c] * scale;
        if (!plain) x = add_bias(x, sS[(ty * TM + i) * LDS + tx + 16 * c]);
        const T pr = dmath::exp(x - lse[i]);
        const T z = (kept >> (i * TN + c)) & 1u ? keep_scale : T(0);
        const T ds = pr * (z * dp[i][c] - di[i]);
        sS[(ty * TM + i) * LDS + tx + 16 * c] = ds;
        // The gradient of an additive mask is dS itself; the 16 lanes of a row write 16
        // neighbouring keys.
        if (grad_mask != nullptr && row < p.tq && j < p.tk) grad_mask[row * p.tk + j] = ds;
      }
    }
    __syncthreads();
    acc_tile<TM, D, LDS, LD>(dq, sS + ty * TM * LDS, sK, tx, round_up(keys, V));
    __syncthreads();  // the next tile overwrites sK, sV and sS
  }

  if (grad_mask != nullptr) {
    // Keys the causal rule kept this block from visiting have zero gradient.
    const int64_t j_done = int64_t(n_tiles) * BN < p.tk ? int64_t(n_tiles) * BN : p.tk;
    const int64_t width = p.tk - j_done;
    for (int64_t e = threadIdx.x; e < int64_t(queries) * width; e += kThreads) {
      grad_mask[(i0 + e / width) * p.tk + j_done + e % width] = T(0);
    }
  }
  T* grad_q = static_cast<T*>(p.grad_q) + batch_offset(p, p.dq_rows, b);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = i0 + ty * TM + i;
    if (row >= p.tq) continue;
    store_row<T, D>(grad_q + row * p.dq_rows.row, dq[i], scale, tx, p.d, p.dq_rows.vec);
  }
}

// ---- host side ----

void check_dtype(DType dtype) {
  LATHE_CHECK(dtype == DType::F32 || dtype == DType::F64,
              "simt attention takes f32 or f64 (f16/bf16 run on tensor cores in attention.cu), "
              "got ",
              dtype);
}

Params make_params(const AttentionForwardArgs& a) {
  LATHE_CHECK(a.head_dim >= 0 && a.value_dim >= 0 && a.head_dim <= 128 && a.value_dim <= 128,
              "simt attention: head dims up to 128, got head_dim ", a.head_dim, " and value_dim ",
              a.value_dim);
  LATHE_CHECK(a.batch >= 0 && a.q_len >= 0 && a.kv_len >= 0, "simt attention: negative sizes");
  Params p;
  p.q = a.q.data;
  p.k = a.k.data;
  p.v = a.v.data;
  p.out = a.out.data;
  p.lse = a.lse;
  p.batch = a.batch;
  p.tq = a.q_len;
  p.tk = a.kv_len;
  p.d = int(a.head_dim);
  p.dv = int(a.value_dim);
  p.scale = a.scale;
  p.causal = a.causal;
  p.mask = mask_of(a, a.dtype, "simt attention");
  p.dropout = a.dropout_p > 0;
  p.p = float(a.dropout_p);
  p.keep_scale = a.dropout_p < 1 ? 1.0 / (1.0 - a.dropout_p) : 0.0;
  p.philox = a.philox;
  return p;
}

// fn.template operator()<T, D>() for the dtype of `a` and the smallest head-dim bucket D in
// {32, 64, 128} that holds both head_dim and value_dim.
template <class Fn>
void dispatch(const AttentionForwardArgs& a, Fn&& fn) {
  const int64_t widest = a.head_dim > a.value_dim ? a.head_dim : a.value_dim;
  auto by_dim = [&]<class T>() {
    if (widest <= 32) return fn.template operator()<T, 32>();
    if (widest <= 64) return fn.template operator()<T, 64>();
    return fn.template operator()<T, 128>();
  };
  if (a.dtype == DType::F32) {
    by_dim.template operator()<float>();
  } else {
    by_dim.template operator()<double>();
  }
}

unsigned grid_of(int64_t blocks) {
  LATHE_CHECK(blocks <= int64_t(0x7fffffff), "simt attention: too many blocks (", blocks, ")");
  return unsigned(blocks);
}

void forward_impl(const AttentionForwardArgs& a) {
  check_dtype(a.dtype);
  if (a.batch == 0 || a.q_len == 0) return;
  Params p = make_params(a);
  LATHE_CHECK(a.lse != nullptr, "simt attention: lse is required");
  set_rows(p, a,
           {{"q", &a.q, &p.q_rows, a.q_len, a.head_dim},
            {"k", &a.k, &p.k_rows, a.kv_len, a.head_dim},
            {"v", &a.v, &p.v_rows, a.kv_len, a.value_dim},
            {"out", &a.out, &p.out_rows, a.q_len, a.value_dim, true}},
           false, "simt attention");
  dispatch(a, [&]<class T, int D>() {
    constexpr int BM = 16 * Config<T, D>::kFwdTm;
    constexpr size_t smem = forward_smem<T, D>();
    static_assert(smem <= kMaxShared);
    const int64_t q_tiles = (a.q_len + BM - 1) / BM;
    with_params(p, [&]<class P>(const P& params) {
      allow_shared(forward_kernel<T, D, P>, smem, "simt attention");
      rt::launch(forward_kernel<T, D, P>, dim3(grid_of(q_tiles * a.batch)), dim3(kThreads), smem,
                 stream(), "attention_simt_forward", params, q_tiles);
    });
  });
}

void backward_impl(const AttentionBackwardArgs& args) {
  const AttentionForwardArgs& a = args.forward;
  check_dtype(a.dtype);
  if (a.batch == 0) return;
  Params p = make_params(a);
  p.grad_out = args.grad_out.data;
  p.grad_q = args.grad_q.data;
  p.grad_k = args.grad_k.data;
  p.grad_v = args.grad_v.data;
  p.grad_mask = args.grad_mask;
  LATHE_CHECK(a.q_len == 0 || a.lse != nullptr, "simt attention: lse is required");
  set_rows(p, a,
           {{"q", &a.q, &p.q_rows, a.q_len, a.head_dim},
            {"k", &a.k, &p.k_rows, a.kv_len, a.head_dim},
            {"v", &a.v, &p.v_rows, a.kv_len, a.value_dim},
            {"out", &a.out, &p.out_rows, a.q_len, a.value_dim},
            {"grad_out", &args.grad_out, &p.do_rows, a.q_len, a.value_dim},
            {"grad_q", &args.grad_q, &p.dq_rows, a.q_len, a.head_dim, true},
            {"grad_k", &args.grad_k, &p.dk_rows, a.kv_len, a.head_dim, true},
            {"grad_v", &args.grad_v, &p.dv_rows, a.kv_len, a.value_dim, true}},
           false, "simt attention");
  const int64_t rows = a.batch * a.q_len;
  dispatch(a, [&]<class T, int D>() {
    using Cfg = Config<T, D>;
    DeviceScratch row_dot(size_t(rows > 0 ? rows : 1) * sizeof(T));
    p.row_dot = row_dot.as<T>();
    if (rows > 0) {
      const unsigned grid = grid_for(rows * 32, kThreads, 8);
      rt::launch(row_dot_kernel<T>, dim3(grid), dim3(kThreads), 0, stream(),
                 "attention_simt_row_dot", p);
    }
    if (a.kv_len > 0) {
      constexpr int BK = 16 * Cfg::kKvTm;
      constexpr size_t smem = dkdv_smem<T, D>();
      static_assert(smem <= kMaxShared);
      const int64_t k_tiles = (a.kv_len + BK - 1) / BK;
      with_params(p, [&]<class P>(const P& params) {
        allow_shared(dkdv_kernel<T, D, P>, smem, "simt attention");
        rt::launch(dkdv_kernel<T, D, P>, dim3(grid_of(k_tiles * a.batch)), dim3(kThreads), smem,
                   stream(), "attention_simt_backward_dkdv", params, k_tiles);
      });
    }
    if (a.q_len > 0) {
      constexpr int BM = 16 * Cfg::kDqTm;
      constexpr size_t smem = dq_smem<T, D>();
      static_assert(smem <= kMaxShared);
      const int64_t q_tiles = (a.q_len + BM - 1) / BM;
      with_params(p, [&]<class P>(const P& params) {
        allow_shared(dq_kernel<T, D, P>, smem, "simt attention");
        rt::launch(dq_kernel<T, D, P>, dim3(grid_of(q_tiles * a.batch)), dim3(kThreads), smem,
                   stream(), "attention_simt_backward_dq", params, q_tiles);
      });
    }
  });
}

}  // namespace simt

}  // namespace

extern const AttentionForwardFn attention_forward_simt = simt::forward_impl;
extern const AttentionBackwardFn attention_backward_simt = simt::backward_impl;

}  // namespace lathe::kernels::cuda
