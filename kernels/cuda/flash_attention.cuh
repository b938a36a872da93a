// The shared part of the flash attention kernels on tensor cores (attention.cu: FlashAttention-2 on
// mma.sync, forward and backward; attention_wgmma.cu: the sm_90a warpgroup-MMA forward): the
// launch parameters, the tile constants, and the device helpers both use (mask and causal rules,
// dropout draws, exp2, fragment loads and conversions), so the two forwards apply the same
// conventions with the same expressions. docs/kernels.md ("flash attention") has the design.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_layout.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/graph_params.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/poly_math.h"  // mufu_exp2
#include "lathe/core/random.h"

namespace lathe::kernels::cuda::flash {

using namespace attention_layout;  // operand rows, leading dims and the mask's layout

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockM = 64;  // query rows per dQ block (and forward block at d = 128), 16 per warp
constexpr int kBlockN = 64;  // keys per tile, and per dK/dV block (16 per warp)
constexpr int kPad = 8;      // halves added to every shared row: ldmatrix rows hit distinct banks
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Query rows per tile of the dK/dV kernel: 32 for d = 128 keeps the transposed score tiles small
// enough that the two [16, d] accumulators stay in registers.
template <int D>
constexpr int kv_query_tile() {
  return D >= 128 ? 32 : 64;
}

// Leading dims: attention_layout.cuh.
struct Params : Lead {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  // backward
  const void* grad_out = nullptr;
  void* grad_q = nullptr;
  void* grad_k = nullptr;
  void* grad_v = nullptr;
  float* grad_mask = nullptr;
  Rows q_rows, k_rows, v_rows, out_rows, do_rows, dq_rows, dk_rows, dv_rows;
  // Per query row, written by the backward's first kernel, rows padded to tq_pad (a multiple of 64)
  // so that the dK/dV kernel can copy a tile's values with cp.async: D_i = dO_i . O_i (0 on
  // padding) and lse in log2 units (+inf for fully masked and padding rows).
  float* row_dot = nullptr;
  float* lse2 = nullptr;
  // Atomic dQ mode: the f32 dQ / scale of each padded query row, [batch, tq_pad, d], zeroed before
  // the dK/dV kernel adds into it.
  float* dq_accum = nullptr;
  int64_t tq_pad = 0;
  int64_t batch = 0, tq = 0, tk = 0;
  float scale = 1, scale_log2 = kLog2e;
  Mask mask;
  bool causal = false;
  bool dropout = false;
  float p = 0, keep_scale = 1;
  // keep iff (word >> 8) >= keep_threshold, the integer form of philox::to_uniform(word) >= p:
  // ceil(p * 2^24), at most 2^24 (keep_threshold()).
  uint32_t keep_threshold = 0;
  PhiloxState philox;  // of the dropout mask; seed and offset, read through mask_seed/offset
};

// Params with the mask's state in device memory (graph_params.cuh).
using GraphParams = InGraph<Params>;

// Calls run.template operator()<kDropout, P>(params) with the instantiation a launch needs: no
// dropout, dropout with the mask's state as launch values, or (inside a CUDA graph capture) in
// device memory. Kernels that draw take (kDropout, P) as template parameters.
template <class Run>
void dispatch_dropout(const Params& p, Run&& run) {
  if (!p.dropout) return run.template operator()<false, Params>(p);
  if (p.philox.device_state != nullptr) {
    return run.template operator()<true, GraphParams>(GraphParams(p));
  }
  run.template operator()<true, Params>(p);
}

// ---- small device helpers ----

template <class T>
LATHE_DEVICE_INLINE uint16_t bits_of(float f) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half_raw(__float2half_rn(f)).x;
  } else {
    return __nv_bfloat16_raw(__float2bfloat16_rn(f)).x;
  }
}

// Two floats rounded to T, packed as one 32-bit register (lo in the low half).
template <class T>
LATHE_DEVICE_INLINE uint32_t pack2(float lo, float hi) {
  return uint32_t(bits_of<T>(lo)) | (uint32_t(bits_of<T>(hi)) << 16);
}

template <class T>
LATHE_DEVICE_INLINE void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  if constexpr (std::is_same_v<T, __half>) {
    rt::mma_m16n8k16_f16(d, a, b, d);
  } else {
    rt::mma_m16n8k16_bf16(d, a, b, d);
  }
}

LATHE_DEVICE_INLINE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
LATHE_DEVICE_INLINE float quad_sum(float x) {
  x = x + __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// 2^x: one ex2.approx instruction on the GPU (relative error ~2^-22, exp2(-inf) = 0, far below
// what rounding P to 16 bits costs), libm's exp2f in the simulator.
LATHE_DEVICE_INLINE float fast_exp2(float x) {
  return ::lathe::kernels::mufu_exp2(x);
}

// Whether keys [j0, j0 + BN) need no masking for queries [i0, i0 + rows): no mask, all keys
// before the end, and (causal) every key at or below the first query.
template <int BN = kBlockN>
LATHE_DEVICE_INLINE bool tile_unmasked(const Params& p, int64_t i0, int64_t j0) {
  return p.mask.data == nullptr && j0 + BN <= p.tk && (!p.causal || j0 + BN - 1 <= i0);
}

// p[0] += x and p[1] += y, each atomically (p 8-byte aligned): one vector atomic on sm_90 and
// later, half the atomic operations of two scalar ones.
LATHE_DEVICE_INLINE void atomic_add_pair(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// grad_mask of the key tile [j0, j0 + keys) is zero in the first `rows` query rows, which the
// dK/dV kernels' causal skip leaves out; `threads` threads share the work, this one `thread`.
LATHE_DEVICE_INLINE void zero_skipped_grad_mask(const Params& p, int64_t b, int64_t j0,
                                                int64_t rows, int64_t keys, int thread,
                                                int threads) {
  if (p.grad_mask == nullptr || rows <= 0) return;
  if (rows > p.tq) rows = p.tq;
  const int64_t cols = p.tk - j0 < keys ? p.tk - j0 : keys;
  for (int64_t e = thread; e < rows * cols; e += threads) {
    p.grad_mask[(b * p.tq + e / cols) * p.tk + j0 + e % cols] = 0.0f;
  }
}

LATHE_DEVICE_INLINE uint32_t word(const std::array<uint32_t, 4>& w, uint32_t lane) {
  return lane == 0 ? w[0] : lane == 1 ? w[1] : lane == 2 ? w[2] : w[3];
}

// Whether Philox word w keeps its element: philox::to_uniform(w) >= p as an integer compare
// (keep_threshold below).
LATHE_DEVICE_INLINE bool keeps(const Params& p, uint32_t w) {
  return (w >> 8) >= p.keep_threshold;
}

// Whether dropout keeps probability element n: word n % 4 of Philox block offset + n / 4.
template <class P>
LATHE_DEVICE_INLINE bool element_kept(const P& p, uint64_t n) {
  return keeps(p, word(philox::block(mask_offset(p) + n / 4, mask_seed(p)), uint32_t(n & 3u)));
}

// The dropout factor of probability element n: keep_scale or 0.
template <class P>
LATHE_DEVICE_INLINE float dropout_factor(const P& p, uint64_t n) {
  return element_kept(p, n) ? p.keep_scale : 0.0f;
}

// The dropout factors of keys j and j + 1 of query row i (1 for elements outside the problem):
// one Philox block covers both unless element (i, j) is the last of its block.
template <class P>
LATHE_DEVICE_INLINE void dropout_pair(const P& p, int64_t b, int64_t i, int64_t j, float z[2]) {
  z[0] = z[1] = 1.0f;
  if (i >= p.tq || j >= p.tk) return;
  const uint64_t n = uint64_t((b * p.tq + i) * p.tk + j);
  const std::array<uint32_t, 4> w = philox::block(mask_offset(p) + n / 4, mask_seed(p));
  const uint32_t lane = uint32_t(n & 3u);
  z[0] = keeps(p, word(w, lane)) ? p.keep_scale : 0.0f;
  if (j + 1 >= p.tk) return;
  z[1] = lane == 3 ? dropout_factor(p, n + 1) : (keeps(p, word(w, lane + 1)) ? p.keep_scale : 0.0f);
}

// Warp-cooperative dropout draws. In the mma and wgmma accumulator layouts lane t = lane % 4 of a
// quad holds keys j0 + 8n + 2t and j0 + 8n + 2t + 1 of one query row, so neighbouring lanes' key
// pairs share a Philox block: dropout_pair draws every block twice, and a third time where a pair
// straddles two blocks (a divergent branch, which the whole warp then waits for). The quad instead
// draws each block of the row once, 4 per lane for 64 keys (a fifth on lane 0 where the row starts
// inside a block), and swaps the keep bits through shuffles: the same draws, the same bits.

// The integer form of philox::to_uniform(word) >= p (keeps): float(word >> 8) * 2^-24 is exact, so
// it holds iff word >> 8 >= ceil(p * 2^24); p >= 1 gives 2^24, which no 24-bit value reaches.
inline uint32_t keep_threshold(float p) {
  const double t = std::ceil(double(p) * 16777216.0);
  return t <= 0 ? 0u : t >= 16777216.0 ? 16777216u : uint32_t(t);
}

// Bit w: whether word w of Philox block `block` (relative to the mask's first block) keeps its
// element.
template <class P>
LATHE_DEVICE_INLINE uint32_t keep_nibble(const P& p, uint64_t block) {
  const std::array<uint32_t, 4> w = philox::block(mask_offset(p) + block, mask_seed(p));
  return uint32_t(keeps(p, w[0])) | uint32_t(keeps(p, w[1])) << 1 | uint32_t(keeps(p, w[2])) << 2 |
         uint32_t(keeps(p, w[3])) << 3;
}

// The keep bits of query row i (of batch index b) against keys [j0, j0 + 64) for this lane's keys:
// bit 2n + c for key j0 + 8n + 2t + c (t = lane % 4). Bits only: the caller gives elements outside
// the problem (i >= tq, j >= tk) dropout_pair's factor 1. Every lane of the warp must call it
// together (shuffles within each quad).
template <class P>
LATHE_DEVICE_INLINE uint32_t dropout_row_bits(const P& p, int64_t b, int64_t i, int64_t j0,
                                              int lane) {
  const int t = lane & 3;
  const uint64_t e0 = uint64_t((b * p.tq + i) * p.tk + j0);
  const uint64_t first = e0 >> 2;  // the block of key j0
  const uint32_t a = uint32_t(e0 & 3u);
  // Lane t draws blocks first + t + 4q (nibble q of `mine`); lane 0 also block first + 16 (bits
  // 16-19), which the last keys need when the row starts inside a block.
  uint32_t mine = 0;
  // One block at a time: four Philox states live at once made the forward kernel spill.
#pragma unroll 1
  for (int q = 0; q < 4; ++q) mine |= keep_nibble(p, first + uint64_t(t + 4 * q)) << (4 * q);
  if (t == 0 && a != 0) mine |= keep_nibble(p, first + 16) << 16;
  uint32_t m[4];
#pragma unroll
  for (int o = 0; o < 4; ++o) m[o] = __shfl_sync(0xffffffffu, mine, (lane & ~3) | o);
  // Key j0 + 8n + 2t + c is element x = a + 8n + 2t + c from the block of key j0 on: word x % 4 of
  // block x / 4, which lane (x / 4) % 4 drew as its nibble x / 16 (nibble 4 of lane 0 for x >= 64).
  uint32_t bits = 0;
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const uint32_t x = a + uint32_t(8 * n + 2 * t + c);
      const uint32_t o = (x >> 2) & 3u;
      const uint32_t from = o == 0 ? m[0] : o == 1 ? m[1] : o == 2 ? m[2] : m[3];
      bits |= ((from >> (4 * (x >> 4) + (x & 3u))) & 1u) << (2 * n + c);
    }
  }
  return bits;
}

// The dropout factors of keys j and j + 1 of query row i from dropout_row_bits' bits (bit 2n + c
// for j = j0 + 8n + 2t): 1 outside the problem, as dropout_pair.
LATHE_DEVICE_INLINE void dropout_pair_from_bits(const Params& p, uint32_t bits, int n, int64_t i,
                                                int64_t j, float z[2]) {
  const bool row_in = i < p.tq;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    z[c] = row_in && j + c < p.tk ? ((bits >> (2 * n + c)) & 1u ? p.keep_scale : 0.0f) : 1.0f;
  }
}

// The transposed tiles of the dK/dV kernels hold keys in rows: lane (g, t) holds keys kb + g and
// kb + g + 8 against queries i0 + 8n + 2t + c, so the consecutive elements of a query row (its
// keys) lie across the eight lanes of a column (the same t), and dropout_factor drew one Philox
// block per element. The column's lanes instead draw the blocks of queries i and i + 1 (16 keys
// each: 4 blocks, a fifth where the keys start inside a block) once, lanes g < 4 for query i and
// the others for i + 1, and swap the keep bits through shuffles.

// Keep bits of keys kb + g + 8r against queries i + c, bit 2r + c. Bits only: the caller gives
// elements outside the problem the factor 1. Every lane of the warp must call it together.
template <class P>
LATHE_DEVICE_INLINE uint32_t dropout_col_bits(const P& p, int64_t b, int64_t i, int64_t kb,
                                              int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int c_own = g >> 2, k_own = g & 3;  // this lane draws block k_own of query i + c_own
  const uint64_t e_own = uint64_t((b * p.tq + i + c_own) * p.tk + kb);
  uint32_t mine = keep_nibble(p, (e_own >> 2) + uint64_t(k_own));
  if (k_own == 0 && (e_own & 3u) != 0) mine |= keep_nibble(p, (e_own >> 2) + 4) << 4;
  uint32_t bits = 0;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const uint32_t a = uint32_t(uint64_t((b * p.tq + i + c) * p.tk + kb) & 3u);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Key kb + g + 8r is element x counted from the first key of kb's Philox block: word x % 4
      // of that block's k-th successor, k = x / 4 in 0 ... 4, which lane 4c + k % 4 of the column
      // drew (k = 4: lane 4c's second nibble).
      const uint32_t x = a + uint32_t(g + 8 * r);
      const uint32_t k = x >> 2;
      const uint32_t from = __shfl_sync(0xffffffffu, mine, int(4 * (4 * c + (k & 3u))) + t);
      bits |= ((from >> (4 * (k >> 2) + (x & 3u))) & 1u) << (2 * r + c);
    }
  }
  return bits;
}

// The dropout keep bits of this thread's elements of a dK/dV tile of BQ queries, bit 4n + e for
// query i0 + 8n + 2t + (e & 1) and key key[e >> 1] (key[1] = key[0] + 8, key[0] = kb + g): the
// forward's Philox draws. Elements outside the problem read as kept; their P is 0 either way.
// Every lane of the warp must call it together. kShared = false draws one block per element
// instead (dropout_factor's way, no shuffles): the wgmma kernels at d = 128, which draw while their
// S^T and dP^T wgmmas run, spilled with the column's draws.
template <int BQ, bool kShared = true, class P>
LATHE_DEVICE_INLINE uint32_t dkdv_keep_bits(const P& p, int64_t b, int64_t i0,
                                            const int64_t (&key)[2], int lane) {
  static_assert(BQ / 2 <= 32, "one bit per element of a 32-bit word");
  const int g = lane >> 2, t = lane & 3;
  uint32_t bits = 0;
  // Not unrolled: few Philox blocks in flight at a time keep the register count down.
#pragma unroll 1
  for (int n = 0; n < BQ / 8; ++n) {
    const int64_t i = i0 + 8 * n + 2 * t;
    uint32_t drawn = 0;
    if constexpr (kShared) drawn = dropout_col_bits(p, b, i, key[0] - g, lane);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t qi = i + (e & 1), kj = key[e >> 1];
      const bool in = qi < p.tq && kj < p.tk;
      bool keep = true;
      if constexpr (kShared) {
        keep = !in || ((drawn >> e) & 1u);
      } else if (in) {
        keep = element_kept(p, uint64_t((b * p.tq + qi) * p.tk + kj));
      }
      bits |= uint32_t(keep) << (4 * n + e);
    }
  }
  return bits;
}

// A scaled score in log2 units with the mask, the causal rule and the key tail applied (query row
// i < tq, any key j). Masked positions are -inf.
LATHE_DEVICE_INLINE float masked_score(const Params& p, int64_t mask_base, float s, int64_t i,
                                       int64_t j) {
  if (j >= p.tk || (p.causal && j > i)) return -INFINITY;
  float x = s * p.scale_log2;
  if (p.mask.data != nullptr && i < p.tq) {
    const int64_t off = mask_base + i * p.mask.sq + j * p.mask.sk;
    if (p.mask.is_bool) {
      if (!static_cast<const bool*>(p.mask.data)[off]) x = -INFINITY;
    } else {
      x += static_cast<const float*>(p.mask.data)[off] * kLog2e;
    }
  }
  return x;
}

// Rows [0, valid) of a [ROWS, D] tile at gmem (row stride ld elements, rows 16-byte aligned) into
// shared rows of D + kPad halves; rows past `valid` are zero-filled (cp.async with src-size 0 at a
// valid address).
template <int D, int ROWS, class T>
LATHE_DEVICE_INLINE void load_tile(T* smem, const T* gmem, int64_t ld, int64_t valid,
                                   const T* any_valid) {
  constexpr int kChunks = D / 8;
  for (int c = int(threadIdx.x); c < ROWS * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool ok = r < valid;
    rt::cp_async_16(smem + r * (D + kPad) + col, ok ? gmem + int64_t(r) * ld + col : any_valid,
                    ok ? 16 : 0);
  }
}

// A fragment (16x16, rows r0.., cols c0..) of a row-major shared tile with row stride LD.
template <int LD, class T>
LATHE_DEVICE_INLINE void load_a(uint32_t a[4], const T* tile, int r0, int c0, int lane) {
  rt::ldmatrix_x4(a, tile + (r0 + (lane & 15)) * LD + c0 + 8 * (lane >> 4));
}

// B fragments of two adjacent n-tiles (n0.., n0 + 8..) for k-step c0 from an n-major shared tile
// (row = n, col = k): b[0..1] for n0, b[2..3] for n0 + 8.
template <int LD, class T>
LATHE_DEVICE_INLINE void load_b_nmajor(uint32_t b[4], const T* tile, int n0, int c0, int lane) {
  rt::ldmatrix_x4(b, tile + (n0 + (lane & 7) + 8 * (lane >> 4)) * LD + c0 + 8 * ((lane >> 3) & 1));
}

// B fragments of two adjacent n-tiles (cols n0.., n0 + 8..) for the k-step of rows k0..k0 + 15
// from a k-major shared tile (row = k, col = n).
template <int LD, class T>
LATHE_DEVICE_INLINE void load_b_kmajor(uint32_t b[4], const T* tile, int k0, int n0, int lane) {
  rt::ldmatrix_x4_trans(
      b, tile + (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + n0 + 8 * (lane >> 4));
}

// The A fragment (16x16, rows r0.., cols c0..) of the transpose of a shared tile with row stride
// LD, i.e. A[r][c] = tile[c][r], from a k-major tile (row = k, col = m).
template <int LD, class T>
LATHE_DEVICE_INLINE void load_a_kmajor(uint32_t a[4], const T* tile, int r0, int c0, int lane) {
  rt::ldmatrix_x4_trans(
      a, tile + (c0 + (lane & 7) + 8 * (lane >> 4)) * LD + r0 + 8 * ((lane >> 3) & 1));
}

// The A fragment of k-step kk from a C-layout [16, 8 * NT] tile (two n-tiles per k-step).
template <class T>
LATHE_DEVICE_INLINE void c_to_a(uint32_t a[4], const float lo[4], const float hi[4]) {
  a[0] = pack2<T>(lo[0], lo[1]);
  a[1] = pack2<T>(lo[2], lo[3]);
  a[2] = pack2<T>(hi[0], hi[1]);
  a[3] = pack2<T>(hi[2], hi[3]);
}

// The sm_90a warpgroup-MMA forward (attention_wgmma.cu; forward variant 2, or with `overlap` the
// intra-warpgroup pipelined variant 3) for T in {__half, __nv_bfloat16} and D in {64, 128}, on the
// current stream: checks that the kernel was compiled for sm_90a, then launches it over p's batch
// and query rows.
template <class T, int D>
void launch_forward_wgmma(const Params& p, int64_t batch, int64_t q_len, bool overlap);

// Forward variant 4 (attention_wgmma_tma.cu): FlashAttention-3's pipeline (TMA producer warpgroup,
// ping-ponging consumers) for the same T and D, on the current stream. Builds the operands' tensor
// maps (an error names an operand whose layout has none) and checks the sm_90a build.
// tma_layout_problem says beforehand why an operand of p (q, k, v, and grad_out for the backward)
// has no tensor map, empty when all have one: the op then runs variant 3 / 2, which read any
// layout the default kernels read and give variant 4's bits.
std::string tma_layout_problem(const Params& p, int64_t d, bool backward);
template <class T, int D>
void launch_forward_tma(const Params& p, int64_t batch, int64_t q_len);

// The sm_90a warpgroup-MMA backward (attention_wgmma_backward.cu, backward variant 2) over p's
// batch (row_dot and lse2 already written), on the current stream: the dK/dV kernel, then the dQ
// kernel; with atomic_dq the dK/dV kernel adds dQ into p.dq_accum instead (zeroed; the caller
// converts it). Checks that the kernels were compiled for sm_90a.
template <class T, int D>
void launch_backward_wgmma(const Params& p, int64_t batch, bool atomic_dq);
// Backward variant 4 (attention_wgmma_backward.cu): variant 2's dK/dV and dQ steps on forward
// variant 4's TMA pipeline (producer warpgroup, stage rings on mbarriers), the dQ kernel unless
// atomic_dq; operands whose layout has no tensor map are an error (tma_layout_problem).
template <class T, int D>
void launch_backward_tma(const Params& p, int64_t batch, bool atomic_dq);

}  // namespace lathe::kernels::cuda::flash
