// Fused scaled-dot-product attention on cuda for f16/bf16 q, k, v, FlashAttention-2 style, on
// tensor cores (mma.sync m16n8k16 with f32 accumulation, ldmatrix, cp.async through
// kernels/cuda/ptx.cuh). The [q_len, kv_len] score matrix is never stored.
//
// Forward: one block of 4 warps per (batch, 64-query tile); each warp owns 16 query rows. The
// query tile sits in shared memory (and in registers as mma A fragments); 64-key K/V tiles are
// streamed through a double buffer with cp.async (tile t+1 in flight while t is used). Per tile:
// S = Q K^T on tensor cores, scale/mask/causal/tail masking in f32, online softmax (running max and
// sum per row, in log2 units, the partial output rescaled when the max grows), dropout from
// Philox, then O += P V with P rounded to the input type. The output is divided by the row sum once
// at the end; the log-sum-exp of each row (natural log, f32) is saved for backward.
//
// Backward, in one of two modes (AttentionBackwardArgs::deterministic):
//  1. D_i = dO_i . O_i (f32), a warp per row;
//  2. dK, dV: a block per (batch, 64-key tile), each warp owning 16 keys, looping over query tiles
//     (double-buffered Q, dO, lse, D): S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T,
//     dV += (Z P)^T dO, dS^T = P^T (Z dP^T - D), dK += dS^T Q (and grad_mask = dS when asked);
//  3. dQ, deterministic mode (the default): a block per (batch, 64-query tile), like the forward,
//     looping over key tiles: recomputes S and dP and accumulates dQ += dS K in registers. The
//     recomputation (two extra GEMMs per tile) keeps every sum in a fixed order, so the results
//     are bit-reproducible.
//  3'. dQ, atomic mode (FlashAttention-2's): kernel 2 also stores each query tile's dS (rounded to
//     the input type) in shared memory, and its warps multiply it by the key tile already there,
//     dQ_tile += dS K, adding the f32 products into a zeroed f32 [batch, tq_pad, d] accumulator
//     with atomicAdd; a small kernel then writes scale * accumulator to dq. No recomputation, but
//     the order of the float additions into a dQ element depends on the schedule of the key-tile
//     blocks, so dQ may differ in its last bits from run to run (out, lse, dK, dV and grad_mask do
//     not: they come from the same arithmetic in both modes).
//
// Forward variants 2 and 3, FlashAttention-3's arithmetic on Hopper's warpgroup MMA (3 with its
// intra-warpgroup pipelining), are in attention_wgmma.cu; the helpers both files use (Params,
// masks, dropout, fragments) are in flash_attention.cuh.
//
// Dropout is a template parameter of the three tile kernels: inlined Philox in every unrolled
// element loop made the kernels' code several times larger, and without dropout the H200's
// profile of the dK/dV kernel showed 31% of its stall cycles waiting for instruction fetch.
//
// Conventions (core/ops/attention.cpp): a row whose every key is masked gives zeros, lse = -inf
// and zero gradients; causal masks key j > query i; dropout keeps element
// n = (b * q_len + i) * kv_len + j iff philox::to_uniform(block(offset + n / 4, seed)[n % 4]) >= p
// (the dropout kernel's rule), scaled by 1 / (1 - p); masks are bool (true = attend) or f32
// (added to the scaled scores), any strides. Head dims 32, 64 and 128 (value dim = head dim).
// q, k, v, out and the gradients may have any batch, head and row strides as long as each row is
// contiguous and starts on a 16-byte boundary (attention_rows_aligned): the op hands over the
// [B, H, T, d] head views of BERT's [B, T, H, d] projections as they are, and receives out and
// dq/dk/dv in that layout, so neither side copies. docs/kernels.md ("flash attention") has the
// details.
#include <cmath>
#include <limits>
#include <optional>
#include <string_view>

#include "kernels/cuda/attention_variant.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/flash_attention.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/rows.cuh"
#include "kernels/sim/sim.h"  // LATHE_DYNAMIC_SHARED in both builds
#include "lathe/core/random.h"

namespace lathe::kernels::cuda {

namespace {

// attention_variant.h's knob, and how many launches it has turned to a variant's kernel.
FlashAttentionVariant g_flash_variant;
long long g_flash_variant_launches = 0;
long long g_flash_tma_fallbacks = 0;

}  // namespace

namespace flash {

namespace {

// ---- forward ----

// Query rows per forward block: 16 * kWarps * MT, each warp owning MT m-tiles of 16 rows (rows
// 16 * (kWarps * mt + warp) ..), so that every K/V fragment loaded from shared memory feeds MT
// mma instructions. MT = 2 for d <= 64 (128-row blocks, FlashAttention-2's shape); d = 128 keeps
// MT = 1 so the [16, 128] f32 output accumulators fit in registers.
template <int D>
constexpr int forward_m_tiles() {
  return D <= 64 ? 2 : 1;
}

// The forward of one block (MT m-tiles per warp); the kernels below only add launch bounds. p is
// the kernel's parameter by reference: a by-value copy, inlined into the dK/dV kernel the same way,
// went to the stack there (1.5 KB, 275 STL/LDL).
template <class T, int D, bool kDropout, int MT, class P>
LATHE_DEVICE_INLINE void forward_block(const P& p, int64_t q_tiles) {
  constexpr int LD = D + kPad;
  constexpr int BM = 16 * kWarps * MT;
  LATHE_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;                   // [BM][LD]
  T* sK = sQ + BM * LD;           // [2][kBlockN][LD]
  T* sV = sK + 2 * kBlockN * LD;  // [2][kBlockN][LD]

  int64_t b, i0;
  query_tile_of_block(blockIdx.x, q_tiles, BM, p.causal, b, i0);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane >> 2, t = lane & 3;
  const T* q_all = static_cast<const T*>(p.q);
  const T* k_all = static_cast<const T*>(p.k);
  const T* v_all = static_cast<const T*>(p.v);
  const T* q = q_all + batch_offset(p, p.q_rows, b);
  const T* k = k_all + batch_offset(p, p.k_rows, b);
  const T* v = v_all + batch_offset(p, p.v_rows, b);
  const int64_t ldk = p.k_rows.row, ldv = p.v_rows.row;

  load_tile<D, BM>(sQ, q + i0 * p.q_rows.row, p.q_rows.row, p.tq - i0, q_all);
  const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
  const int n_tiles = int((j_end + kBlockN - 1) / kBlockN);
  if (n_tiles > 0) {
    load_tile<D, kBlockN>(sK, k, ldk, p.tk, k_all);
    load_tile<D, kBlockN>(sV, v, ldv, p.tk, v_all);
  }
  rt::cp_async_commit();

  // row[mt][r]: the query row of this thread's accumulator rows g (r = 0) and g + 8 (r = 1).
  int64_t row[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    row[mt][0] = i0 + 16 * (kWarps * mt + warp) + g;
    row[mt][1] = row[mt][0] + 8;
  }
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  uint32_t qf[MT][D / 16][4];
  float o[MT][D / 8][4];
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][n][e] = 0.0f;
    }
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.0f;
  }

  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_tiles) {
      const int64_t j1 = int64_t(it + 1) * kBlockN;
      load_tile<D, kBlockN>(sK + (buf ^ 1) * kBlockN * LD, k + j1 * ldk, ldk, p.tk - j1, k_all);
      load_tile<D, kBlockN>(sV + (buf ^ 1) * kBlockN * LD, v + j1 * ldv, ldv, p.tk - j1, v_all);
      rt::cp_async_commit();
      rt::cp_async_wait<1>();
    } else {
      rt::cp_async_wait<0>();
    }
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          load_a<LD>(qf[mt][kk], sQ, 16 * (kWarps * mt + warp), 16 * kk, lane);
        }
      }
    }
    const T* cK = sK + buf * kBlockN * LD;
    const T* cV = sV + buf * kBlockN * LD;

    // S = Q K^T: 16 MT rows x 64 keys per warp.
    float s[MT][kBlockN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int n = 0; n < kBlockN / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][n][e] = 0.0f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t bk[4];
        load_b_nmajor<LD>(bk, cK, 16 * np, 16 * kk, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma<T>(s[mt][2 * np], qf[mt][kk], bk);
          mma<T>(s[mt][2 * np + 1], qf[mt][kk], bk + 2);
        }
      }
    }

    // Scale and mask (log2 units), then the online softmax of rows g and g + 8.
    const int64_t j0 = int64_t(it) * kBlockN;
    const bool plain = tile_unmasked(p, i0, j0);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (plain) {
#pragma unroll
        for (int n = 0; n < kBlockN / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][n][e] *= p.scale_log2;
        }
      } else {
#pragma unroll
        for (int n = 0; n < kBlockN / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][n][e] = masked_score(p, mask_base, s[mt][n][e], row[mt][e >> 1],
                                       j0 + 8 * n + 2 * t + (e & 1));
          }
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < kBlockN / 8; ++n) {
          mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
        }
        mx = quad_max(mx);
        const float m_new = fmaxf(m_run[mt][r], mx);
        // No key above -inf yet: shift by 0 so exp2(-inf - 0) = 0 instead of NaN.
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float corr = fast_exp2(m_run[mt][r] - m_use);
        m_run[mt][r] = m_new;
        l_run[mt][r] *= corr;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[mt][n][2 * r] *= corr;
          o[mt][n][2 * r + 1] *= corr;
        }
#pragma unroll
        for (int n = 0; n < kBlockN / 8; ++n) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float e = fast_exp2(s[mt][n][2 * r + c] - m_use);
            l_run[mt][r] += e;
            s[mt][n][2 * r + c] = e;
          }
        }
      }
      if constexpr (kDropout) {
        static_assert(kBlockN == 64, "dropout_row_bits covers 64 keys");
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint32_t bits = dropout_row_bits(p, b, row[mt][r], j0, lane);
#pragma unroll
          for (int n = 0; n < kBlockN / 8; ++n) {
            float z[2];
            dropout_pair_from_bits(p, bits, n, row[mt][r], j0 + 8 * n + 2 * t, z);
            s[mt][n][2 * r] *= z[0];
            s[mt][n][2 * r + 1] *= z[1];
          }
        }
      }
    }

    // O += P V
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) c_to_a<T>(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bv[4];
        load_b_kmajor<LD>(bv, cV, 16 * kk, 16 * np, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma<T>(o[mt][2 * np], a[mt], bv);
          mma<T>(o[mt][2 * np + 1], a[mt], bv + 2);
        }
      }
    }
    __syncthreads();  // the next iteration refills this buffer
  }
  if (n_tiles == 0) rt::cp_async_wait<0>();

  T* out = static_cast<T*>(p.out) + batch_offset(p, p.out_rows, b);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(l_run[mt][r]);
      const int64_t i = row[mt][r];
      if (i >= p.tq) continue;
      const bool empty = l == 0.0f;  // every key masked: zeros, lse = -inf
      const float inv = empty ? 0.0f : 1.0f / l;
      T* orow = out + i * p.out_rows.row;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<uint32_t*>(orow + 8 * n + 2 * t) =
            pack2<T>(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
      }
      if (t == 0) p.lse[b * p.tq + i] = empty ? -INFINITY : (m_run[mt][r] + log2f(l)) * kLn2;
    }
  }
}

// P: Params, or GraphParams for a launch with dropout inside a CUDA graph capture.
template <class T, int D, bool kDropout, class P = Params>
__global__ void __launch_bounds__(kThreads) forward_kernel(P p, int64_t q_tiles) {
  forward_block<T, D, kDropout, forward_m_tiles<D>()>(p, q_tiles);
}

// A variant's kernel (FlashAttentionVariant): the same body, registers capped so that kMinBlocks
// blocks fit per SM. Separate from forward_kernel because any minimum, even 1, changes how ptxas
// allocates the default kernels' registers (dq_kernel<bf16, 64> went from 162 to 194).
template <class T, int D, int MT, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    forward_variant_kernel(Params p, int64_t q_tiles) {
  forward_block<T, D, false, MT>(p, q_tiles);
}

// ---- backward ----

// lse in log2 units for recomputing probabilities; +inf for a fully masked row, so that
// exp2(s - lse) = 0 there.
LATHE_DEVICE_INLINE float lse_log2(const Params& p, int64_t b, int64_t i) {
  const float l = p.lse[b * p.tq + i];
  return l == -INFINITY ? INFINITY : l * kLog2e;
}

// D_i = dO_i . O_i in f32 (fixed butterfly order) and lse in log2 units, a warp per padded row.
template <class T, int D>
__global__ void __launch_bounds__(kThreads) row_dot_kernel(Params p) {
  const int64_t rows = p.batch * p.tq_pad;
  const int lane = int(threadIdx.x) % 32;
  const T* out = static_cast<const T*>(p.out);
  const T* dout = static_cast<const T*>(p.grad_out);
  for (int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; r < rows;
       r += int64_t(gridDim.x) * kWarps) {
    const int64_t b = r / p.tq_pad, i = r - b * p.tq_pad;
    if (i >= p.tq) {  // padding (uniform over the warp)
      if (lane == 0) {
        p.row_dot[r] = 0.0f;
        p.lse2[r] = INFINITY;
      }
      continue;
    }
    const T* o_row = out + batch_offset(p, p.out_rows, b) + i * p.out_rows.row;
    const T* do_row = dout + batch_offset(p, p.do_rows, b) + i * p.do_rows.row;
    float acc = 0.0f;
    for (int c = lane; c < D; c += 32) {
      acc += convert<float>(o_row[c]) * convert<float>(do_row[c]);
    }
#pragma unroll
    for (int m = 16; m >= 1; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane == 0) {
      p.row_dot[r] = acc;
      p.lse2[r] = lse_log2(p, b, i);
    }
  }
}

// Atomic dQ mode: dQ[i0, i0 + BQ) += dS K over this block's 64 keys, from dS^T [kBlockN][BQ + kPad]
// and K [kBlockN][D + kPad] in shared memory. The [BQ, D] product is split into one [16, D * BQ /
// 64] slice per warp (all of D for BQ = 64, half of it for BQ = 32): an accumulator of at most 32
// registers, live only here, where the tile's S, dP, P and dS registers are dead, and added to
// dq_accum as soon as it is complete. The k-steps stay a loop: unrolled, ptxas fetched the
// fragments of every k-step ahead and the d = 128 kernel spilled (up to 56 bytes with dropout).
template <class T, int D, int BQ>
LATHE_DEVICE_INLINE void add_dq_tile(const Params& p, const T* sdS, const T* sK, int64_t b,
                                     int64_t i0, int warp, int lane) {
  constexpr int LD = D + kPad, LDS = BQ + kPad;
  constexpr int kMTiles = BQ / 16;
  constexpr int kCols = D * kMTiles / kWarps;
  static_assert(kWarps % kMTiles == 0 && kCols % 16 == 0, "whole 16-column slices per warp");
  const int m0 = 16 * (warp % kMTiles), c0 = kCols * (warp / kMTiles);
  float acc[kCols / 8][4];
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
  }
#pragma unroll 1
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
    uint32_t a[4];
    load_a_kmajor<LDS>(a, sdS, m0, 16 * kk, lane);
#pragma unroll
    for (int np = 0; np < kCols / 16; ++np) {
      uint32_t bk[4];
      load_b_kmajor<LD>(bk, sK, 16 * kk, c0 + 16 * np, lane);
      mma<T>(acc[2 * np], a, bk);
      mma<T>(acc[2 * np + 1], a, bk + 2);
    }
  }
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + m0 + g + 8 * r;
    if (i >= p.tq) continue;  // padding rows: dS = 0, and nothing reads them
    float* row = p.dq_accum + (b * p.tq_pad + i) * D + c0 + 2 * t;
#pragma unroll
    for (int n = 0; n < kCols / 8; ++n)
      atomic_add_pair(row + 8 * n, acc[n][2 * r], acc[n][2 * r + 1]);
  }
}

// dK and dV of 64 keys: warp w owns keys j0 + 16w .. j0 + 16w + 15, over BQ-query tiles. With
// kAtomicDq the block also adds its share of dQ (add_dq_tile) to dq_accum. p by reference, as in
// forward_block.
template <class T, int D, bool kDropout, bool kAtomicDq, int BQ, class P>
LATHE_DEVICE_INLINE void dkdv_block(const P& p, int64_t k_tiles) {
  constexpr int LD = D + kPad;
  LATHE_DYNAMIC_SHARED(T, smem);
  T* sK = smem;                                             // [kBlockN][LD]
  T* sV = sK + kBlockN * LD;                                // [kBlockN][LD]
  T* sQ = sV + kBlockN * LD;                                // [2][BQ][LD]
  T* sdO = sQ + 2 * BQ * LD;                                // [2][BQ][LD]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BQ * LD);  // [2][BQ] lse (log2 units)
  float* sD = sL + 2 * BQ;                                  // [2][BQ] row dots
  T* sdS = reinterpret_cast<T*>(sD + 2 * BQ);  // kAtomicDq: [kBlockN][BQ + kPad] dS^T of the tile

  const int64_t b = int64_t(blockIdx.x) / k_tiles;
  const int64_t j0 = (int64_t(blockIdx.x) - b * k_tiles) * kBlockN;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane >> 2, t = lane & 3;
  const T* q_all = static_cast<const T*>(p.q);
  const T* k_all = static_cast<const T*>(p.k);
  const T* v_all = static_cast<const T*>(p.v);
  const T* do_all = static_cast<const T*>(p.grad_out);
  const T* q = q_all + batch_offset(p, p.q_rows, b);
  const T* dout = do_all + batch_offset(p, p.do_rows, b);
  const int64_t ldq = p.q_rows.row, ldo = p.do_rows.row;

  load_tile<D, kBlockN>(sK, k_all + batch_offset(p, p.k_rows, b) + j0 * p.k_rows.row, p.k_rows.row,
                        p.tk - j0, k_all);
  load_tile<D, kBlockN>(sV, v_all + batch_offset(p, p.v_rows, b) + j0 * p.v_rows.row, p.v_rows.row,
                        p.tk - j0, v_all);
  // Causal: queries above the key tile see none of its keys.
  const int first = p.causal ? int(j0 / BQ) : 0;
  const int n_tiles = int((p.tq + BQ - 1) / BQ);
  auto load_q_tile = [&](int tile, int buf) {
    const int64_t i0 = int64_t(tile) * BQ;
    load_tile<D, BQ>(sQ + buf * BQ * LD, q + i0 * ldq, ldq, p.tq - i0, q_all);
    load_tile<D, BQ>(sdO + buf * BQ * LD, dout + i0 * ldo, ldo, p.tq - i0, do_all);
    // BQ / 4 16-byte pieces of each (rows padded to tq_pad, so the whole tile exists).
    const int c = int(threadIdx.x);
    if (c < BQ / 4) {
      rt::cp_async_16(sL + buf * BQ + 4 * c, p.lse2 + b * p.tq_pad + i0 + 4 * c);
    } else if (c < BQ / 2) {
      rt::cp_async_16(sD + buf * BQ + 4 * (c - BQ / 4),
                      p.row_dot + b * p.tq_pad + i0 + 4 * (c - BQ / 4));
    }
  };
  if (first < n_tiles) load_q_tile(first, 0);
  rt::cp_async_commit();

  zero_skipped_grad_mask(p, b, j0, int64_t(first) * BQ, kBlockN, int(threadIdx.x), kThreads);

  const int64_t key[2] = {j0 + 16 * warp + g, j0 + 16 * warp + g + 8};
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;
  }

  for (int it = first; it < n_tiles; ++it) {
    const int buf = (it - first) & 1;
    if (it + 1 < n_tiles) {
      load_q_tile(it + 1, buf ^ 1);
      rt::cp_async_commit();
      rt::cp_async_wait<1>();
    } else {
      rt::cp_async_wait<0>();
    }
    __syncthreads();
    const T* cQ = sQ + buf * BQ * LD;
    const T* cdO = sdO + buf * BQ * LD;
    const float* cL = sL + buf * BQ;
    const float* cD = sD + buf * BQ;
    const int64_t i0 = int64_t(it) * BQ;
    // The tile's dropout draws, shared by the lanes of each column (dkdv_keep_bits), before S^T and
    // dP^T are live.
    uint32_t keep = 0;
    if constexpr (kDropout) keep = dkdv_keep_bits<BQ>(p, b, i0, key, lane);

    // S^T = K Q^T and dP^T = V dO^T: 16 keys x BQ queries per warp.
    float s[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      load_a<LD>(ak, sK, 16 * warp, 16 * kk, lane);
      load_a<LD>(av, sV, 16 * warp, 16 * kk, lane);
#pragma unroll
      for (int np = 0; np < BQ / 16; ++np) {
        uint32_t bq[4], bo[4];
        load_b_nmajor<LD>(bq, cQ, 16 * np, 16 * kk, lane);
        load_b_nmajor<LD>(bo, cdO, 16 * np, 16 * kk, lane);
        mma<T>(s[2 * np], ak, bq);
        mma<T>(s[2 * np + 1], ak, bq + 2);
        mma<T>(dp[2 * np], av, bo);
        mma<T>(dp[2 * np + 1], av, bo + 2);
      }
    }
    // P^T, Z, dS^T = P^T (Z dP^T - D); s becomes Z P^T and dp becomes dS^T.
    const bool plain = tile_unmasked(p, i0, j0);
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * n + 2 * t + (e & 1);
        const int64_t i = i0 + col, j = key[e >> 1];
        const float x = plain ? s[n][e] * p.scale_log2 : masked_score(p, mask_base, s[n][e], i, j);
        const float pr = fast_exp2(x - cL[col]);
        float z = 1.0f;
        if constexpr (kDropout) {
          if (i < p.tq && j < p.tk) z = (keep >> (4 * n + e)) & 1u ? p.keep_scale : 0.0f;
        }
        const float ds = pr * (z * dp[n][e] - cD[col]);
        s[n][e] = z * pr;
        dp[n][e] = ds;
        if (p.grad_mask != nullptr && i < p.tq && j < p.tk) {
          p.grad_mask[(b * p.tq + i) * p.tk + j] = ds;
        }
      }
    }
    // dV += (Z P)^T dO, dK += dS^T Q (k = the BQ queries).
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      uint32_t ap[4], as[4];
      c_to_a<T>(ap, s[2 * kk], s[2 * kk + 1]);
      c_to_a<T>(as, dp[2 * kk], dp[2 * kk + 1]);
      if constexpr (kAtomicDq) {
        // dS^T as dK's A operand has it, rounded to T: keys g and g + 8 of this warp, queries
        // 16 kk + 2t (+ 1) and + 8, for add_dq_tile.
        uint32_t* row =
            reinterpret_cast<uint32_t*>(sdS + (16 * warp + g) * (BQ + kPad) + 16 * kk + 2 * t);
        row[0] = as[0];
        row[(8 * (BQ + kPad)) / 2] = as[1];
        row[4] = as[2];
        row[(8 * (BQ + kPad)) / 2 + 4] = as[3];
      }
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bo[4], bq[4];
        load_b_kmajor<LD>(bo, cdO, 16 * kk, 16 * np, lane);
        load_b_kmajor<LD>(bq, cQ, 16 * kk, 16 * np, lane);
        mma<T>(dv[2 * np], ap, bo);
        mma<T>(dv[2 * np + 1], ap, bo + 2);
        mma<T>(dk[2 * np], as, bq);
        mma<T>(dk[2 * np + 1], as, bq + 2);
      }
    }
    if constexpr (kAtomicDq) {
      __syncthreads();  // every warp's keys of dS are in sdS
      add_dq_tile<T, D, BQ>(p, sdS, sK, b, i0, warp, lane);
    }
    __syncthreads();  // the next iteration refills this buffer (and sdS)
  }
  if (first >= n_tiles) rt::cp_async_wait<0>();

  T* grad_k = static_cast<T*>(p.grad_k) + batch_offset(p, p.dk_rows, b);
  T* grad_v = static_cast<T*>(p.grad_v) + batch_offset(p, p.dv_rows, b);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = key[r];
    if (j >= p.tk) continue;
    T* gk = grad_k + j * p.dk_rows.row;
    T* gv = grad_v + j * p.dv_rows.row;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(gk + 8 * n + 2 * t) =
          pack2<T>(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(gv + 8 * n + 2 * t) = pack2<T>(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

template <class T, int D, bool kDropout, bool kAtomicDq, class P = Params>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(P p, int64_t k_tiles) {
  dkdv_block<T, D, kDropout, kAtomicDq, kv_query_tile<D>()>(p, k_tiles);
}

// A variant's kernel, like forward_variant_kernel: BQ-query tiles, kMinBlocks blocks per SM.
template <class T, int D, bool kAtomicDq, int BQ, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    dkdv_variant_kernel(Params p, int64_t k_tiles) {
  dkdv_block<T, D, false, kAtomicDq, BQ>(p, k_tiles);
}

// dQ of 64 queries: warp w owns rows i0 + 16w .. i0 + 16w + 15; K/V tiles double-buffered.
template <class T, int D, bool kDropout, class P = Params>
__global__ void __launch_bounds__(kThreads) dq_kernel(P p, int64_t q_tiles) {
  constexpr int LD = D + kPad;
  LATHE_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;                   // [kBlockM][LD]
  T* sdO = sQ + kBlockM * LD;     // [kBlockM][LD]
  T* sK = sdO + kBlockM * LD;     // [2][kBlockN][LD]
  T* sV = sK + 2 * kBlockN * LD;  // [2][kBlockN][LD]

  int64_t b, i0;
  query_tile_of_block(blockIdx.x, q_tiles, kBlockM, p.causal, b, i0);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane >> 2, t = lane & 3;
  const T* q_all = static_cast<const T*>(p.q);
  const T* k_all = static_cast<const T*>(p.k);
  const T* v_all = static_cast<const T*>(p.v);
  const T* do_all = static_cast<const T*>(p.grad_out);
  const T* k = k_all + batch_offset(p, p.k_rows, b);
  const T* v = v_all + batch_offset(p, p.v_rows, b);
  const int64_t ldk = p.k_rows.row, ldv = p.v_rows.row;

  load_tile<D, kBlockM>(sQ, q_all + batch_offset(p, p.q_rows, b) + i0 * p.q_rows.row, p.q_rows.row,
                        p.tq - i0, q_all);
  load_tile<D, kBlockM>(sdO, do_all + batch_offset(p, p.do_rows, b) + i0 * p.do_rows.row,
                        p.do_rows.row, p.tq - i0, do_all);
  const int64_t j_end = p.causal ? (p.tk < i0 + kBlockM ? p.tk : i0 + kBlockM) : p.tk;
  const int n_tiles = int((j_end + kBlockN - 1) / kBlockN);
  if (n_tiles > 0) {
    load_tile<D, kBlockN>(sK, k, ldk, p.tk, k_all);
    load_tile<D, kBlockN>(sV, v, ldv, p.tk, v_all);
  }
  rt::cp_async_commit();

  const int64_t row[2] = {i0 + 16 * warp + g, i0 + 16 * warp + g + 8};
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  // Rows below tq_pad (i0 + 64 <= tq_pad): padding rows read +inf and 0.
  const float lse2[2] = {p.lse2[b * p.tq_pad + row[0]], p.lse2[b * p.tq_pad + row[1]]};
  const float rd[2] = {p.row_dot[b * p.tq_pad + row[0]], p.row_dot[b * p.tq_pad + row[1]]};
  float dq[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] = 0.0f;
  }

  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_tiles) {
      const int64_t j1 = int64_t(it + 1) * kBlockN;
      load_tile<D, kBlockN>(sK + (buf ^ 1) * kBlockN * LD, k + j1 * ldk, ldk, p.tk - j1, k_all);
      load_tile<D, kBlockN>(sV + (buf ^ 1) * kBlockN * LD, v + j1 * ldv, ldv, p.tk - j1, v_all);
      rt::cp_async_commit();
      rt::cp_async_wait<1>();
    } else {
      rt::cp_async_wait<0>();
    }
    __syncthreads();
    const T* cK = sK + buf * kBlockN * LD;
    const T* cV = sV + buf * kBlockN * LD;

    float s[kBlockN / 8][4], dp[kBlockN / 8][4];
#pragma unroll
    for (int n = 0; n < kBlockN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ao[4];
      load_a<LD>(aq, sQ, 16 * warp, 16 * kk, lane);
      load_a<LD>(ao, sdO, 16 * warp, 16 * kk, lane);
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t bk[4], bv[4];
        load_b_nmajor<LD>(bk, cK, 16 * np, 16 * kk, lane);
        load_b_nmajor<LD>(bv, cV, 16 * np, 16 * kk, lane);
        mma<T>(s[2 * np], aq, bk);
        mma<T>(s[2 * np + 1], aq, bk + 2);
        mma<T>(dp[2 * np], ao, bv);
        mma<T>(dp[2 * np + 1], ao, bv + 2);
      }
    }
    const int64_t j0 = int64_t(it) * kBlockN;
    const bool plain = tile_unmasked(p, i0, j0);
#pragma unroll
    for (int n = 0; n < kBlockN / 8; ++n) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t i = row[r], jb = j0 + 8 * n + 2 * t;
        float z[2] = {1.0f, 1.0f};
        // One Philox block per key pair: drawn per quad (dropout_row_bits), as in the forward,
        // the draws took this kernel from 164 registers to 214-241 (3 blocks per SM to 2).
        if constexpr (kDropout) dropout_pair(p, b, i, jb, z);
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int e = 2 * r + c;
          const float x =
              plain ? s[n][e] * p.scale_log2 : masked_score(p, mask_base, s[n][e], i, jb + c);
          const float pr = fast_exp2(x - lse2[r]);
          s[n][e] = pr * (z[c] * dp[n][e] - rd[r]);  // dS
        }
      }
    }
    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[4];
      c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bk[4];
        load_b_kmajor<LD>(bk, cK, 16 * kk, 16 * np, lane);
        mma<T>(dq[2 * np], a, bk);
        mma<T>(dq[2 * np + 1], a, bk + 2);
      }
    }
    __syncthreads();
  }
  if (n_tiles == 0) rt::cp_async_wait<0>();

  T* grad_q = static_cast<T*>(p.grad_q) + batch_offset(p, p.dq_rows, b);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = row[r];
    if (i >= p.tq) continue;
    T* gq = grad_q + i * p.dq_rows.row;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(gq + 8 * n + 2 * t) =
          pack2<T>(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
    }
  }
}

// Atomic dQ mode: grad_q = scale * dq_accum rounded to T, 8 elements per thread.
template <class T, int D>
__global__ void __launch_bounds__(kThreads) dq_convert_kernel(Params p) {
  constexpr int kPacks = D / 8;
  const int64_t n = p.batch * p.tq * kPacks;
  T* grad_q = static_cast<T*>(p.grad_q);
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const int64_t r = e / kPacks, b = r / p.tq, i = r - b * p.tq;
    const int c = int(e - r * kPacks) * 8;
    const float* src = p.dq_accum + (b * p.tq_pad + i) * D + c;
    float lo[4], hi[4], x[8];
    rows::load<4>(src, lo);
    rows::load<4>(src + 4, hi);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      x[k] = lo[k] * p.scale;
      x[k + 4] = hi[k] * p.scale;
    }
    rows::store<8>(grad_q + batch_offset(p, p.dq_rows, b) + i * p.dq_rows.row + c, x);
  }
}

// ---- host side ----

template <int D, class T, int MT = forward_m_tiles<D>()>
constexpr size_t forward_smem() {
  return size_t(16 * kWarps * MT + 4 * kBlockN) * (D + kPad) * sizeof(T);
}
template <int D, class T>
constexpr size_t dq_smem() {
  return size_t(2 * kBlockM + 4 * kBlockN) * (D + kPad) * sizeof(T);
}
template <int D, class T, bool kAtomicDq, int BQ = kv_query_tile<D>()>
constexpr size_t dkdv_smem() {
  return size_t(2 * kBlockN + 4 * BQ) * (D + kPad) * sizeof(T) + 4 * BQ * sizeof(float) +
         (kAtomicDq ? size_t(kBlockN) * (BQ + kPad) * sizeof(T) : 0);
}

// The kernel variants of FlashAttentionVariant (attention_variant.h): bf16, head dim 64, no
// dropout. Variant 1 of the forward: 64-row blocks (one m-tile per warp) capped at 168 registers, 3
// blocks per SM (157 registers uncapped, no spills) instead of 128-row blocks at 251 registers, 2
// blocks. Variant 1 of the dK/dV kernel: 32-query tiles (half the S^T and dP^T registers) capped at
// 168 registers, 3 blocks per SM, instead of 64-query tiles at 240, 2 blocks. Both compute every
// output element with the default kernels' arithmetic in the same order (bit-identical results).
constexpr int kVariantForwardMTiles = 1;
constexpr int kVariantDkdvQueryTile = 32;
constexpr int kVariantMinBlocks = 3;

// Variants 2, 3 and 4 of the forward: forward_wgmma_kernel, forward_wgmma_overlap_kernel and
// forward_tma_kernel (sm_90a); variant 2 of the backward: dkdv_wgmma_kernel and dq_wgmma_kernel
// (sm_90a; in the atomic-dQ mode the dK/dV kernel adds dQ itself, as the default's does). f16/bf16
// at head dim 64 or 128, with or without dropout, on compute capability 9.x.
constexpr int kVariantWgmma = 2;
constexpr int kVariantWgmmaOverlap = 3;
constexpr int kVariantTma = 4;

void check_variant(int variant, const AttentionForwardArgs& a, const char* which) {
  if (variant == 0) return;
  const bool forward = std::string_view(which) == "forward";
  if (variant == kVariantWgmma || variant == kVariantTma ||
      (variant == kVariantWgmmaOverlap && forward)) {
    LATHE_CHECK(a.head_dim == 64 || a.head_dim == 128, "flash attention: ", which, " variant ",
                variant, " (sm_90a wgmma) exists for f16/bf16 at head dim 64 or 128 only, got ",
                a.head_dim);
    const rt::DeviceProperties& props = rt::device_properties(rt::current_device());
    LATHE_CHECK(props.compute_major == 9, "flash attention: ", which, " variant ", variant,
                " uses wgmma, which needs compute capability 9.x (sm_90a code), not sm_",
                props.compute_major * 10 + props.compute_minor);
    return;
  }
  LATHE_CHECK(variant == 1, "flash attention: no ", which, " variant ", variant);
  LATHE_CHECK(a.dtype == DType::BF16 && a.head_dim == 64 && a.dropout_p == 0,
              "flash attention: the ", which,
              " variant exists for bf16 at head dim 64 without dropout only");
}

// Variant 4 reads its operands through tensor maps, which some layouts the other kernels read do
// not have (k and v broadcast over batch and heads, three leading dims that do not merge). For
// those it runs `fallback` (forward 3, backward 2): the same arithmetic in the same order, so the
// same bits, with cp.async loads that follow any row layout. Counted, so that the tests see it.
int tma_or_fallback(int variant, int fallback, const Params& p, int64_t d, bool backward) {
  if (variant != kVariantTma || tma_layout_problem(p, d, backward).empty()) return variant;
  ++g_flash_tma_fallbacks;
  return fallback;
}

Params make_params(const AttentionForwardArgs& a) {
  LATHE_CHECK(a.dtype == DType::F16 || a.dtype == DType::BF16,
              "attention on cuda: the fused kernel takes f16/bf16 (f32/f64 attention composes "
              "itself from primitives), got ",
              a.dtype);
  LATHE_CHECK(
      a.head_dim == a.value_dim && (a.head_dim == 32 || a.head_dim == 64 || a.head_dim == 128),
      "attention on cuda: head dims 32, 64 or 128 with value dim = head dim, got ", a.head_dim,
      " and ", a.value_dim);
  Params p;
  p.q = a.q.data;
  p.k = a.k.data;
  p.v = a.v.data;
  p.out = a.out.data;
  p.lse = static_cast<float*>(a.lse);
  p.batch = a.batch;
  p.tq = a.q_len;
  p.tk = a.kv_len;
  p.scale = float(a.scale);
  p.scale_log2 = float(a.scale * 1.4426950408889634);
  p.causal = a.causal;
  p.mask = mask_of(a, DType::F32, "attention on cuda");
  p.dropout = a.dropout_p > 0;
  p.p = float(a.dropout_p);
  p.keep_scale = a.dropout_p < 1 ? float(1.0 / (1.0 - a.dropout_p)) : 0.0f;
  p.keep_threshold = keep_threshold(p.p);
  p.philox = a.philox;
  return p;
}

// fn.template operator()<T, D>() for the dtype and head dim of `a`.
template <class Fn>
void dispatch(const AttentionForwardArgs& a, Fn&& fn) {
  auto by_dim = [&]<class T>() {
    switch (a.head_dim) {
      case 32:
        return fn.template operator()<T, 32>();
      case 64:
        return fn.template operator()<T, 64>();
      default:
        return fn.template operator()<T, 128>();
    }
  };
  if (a.dtype == DType::F16) {
    by_dim.template operator()<__half>();
  } else {
    by_dim.template operator()<__nv_bfloat16>();
  }
}

void forward_impl(const AttentionForwardArgs& a) {
  if (a.batch == 0 || a.q_len == 0) return;
  Params p = make_params(a);
  const int64_t d = a.head_dim;
  set_rows(p, a,
           {{"q", &a.q, &p.q_rows, a.q_len, d},
            {"k", &a.k, &p.k_rows, a.kv_len, d},
            {"v", &a.v, &p.v_rows, a.kv_len, d},
            {"out", &a.out, &p.out_rows, a.q_len, d, true}},
           true, "attention on cuda");
  int variant = flash_attention_variant().forward;
  check_variant(variant, a, "forward");
  variant = tma_or_fallback(variant, kVariantWgmmaOverlap, p, a.head_dim, false);
  dispatch(a, [&]<class T, int D>() {
    auto launch = [&]<int MT>(auto kernel, const auto& params) {
      constexpr int64_t kRows = 16 * kWarps * MT;
      const int64_t q_tiles = (a.q_len + kRows - 1) / kRows;
      constexpr size_t smem = forward_smem<D, T, MT>();
      allow_shared(kernel, smem, "flash attention");
      rt::launch(kernel, dim3(unsigned(q_tiles * a.batch)), dim3(kThreads), smem, stream(),
                 "flash_attention_forward", params, q_tiles);
    };
    if constexpr (std::is_same_v<T, __nv_bfloat16> && D == 64) {
      if (variant == 1) {
        constexpr int MT = kVariantForwardMTiles;
        ++g_flash_variant_launches;
        return launch.template operator()<MT>(forward_variant_kernel<T, D, MT, kVariantMinBlocks>,
                                              p);
      }
    }
    if constexpr (D == 64 || D == 128) {
      if (variant == kVariantWgmma || variant == kVariantWgmmaOverlap) {
        ++g_flash_variant_launches;
        return launch_forward_wgmma<T, D>(p, a.batch, a.q_len, variant == kVariantWgmmaOverlap);
      }
      if (variant == kVariantTma) {
        ++g_flash_variant_launches;
        return launch_forward_tma<T, D>(p, a.batch, a.q_len);
      }
    }
    constexpr int MT = forward_m_tiles<D>();
    dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
      launch.template operator()<MT>(forward_kernel<T, D, kDropout, P>, params);
    });
  });
}

void backward_impl(const AttentionBackwardArgs& args) {
  const AttentionForwardArgs& a = args.forward;
  if (a.batch == 0) return;
  Params p = make_params(a);
  p.grad_out = args.grad_out.data;
  p.grad_q = args.grad_q.data;
  p.grad_k = args.grad_k.data;
  p.grad_v = args.grad_v.data;
  p.grad_mask = static_cast<float*>(args.grad_mask);
  const int64_t d = a.head_dim;
  set_rows(p, a,
           {{"q", &a.q, &p.q_rows, a.q_len, d},
            {"k", &a.k, &p.k_rows, a.kv_len, d},
            {"v", &a.v, &p.v_rows, a.kv_len, d},
            {"out", &a.out, &p.out_rows, a.q_len, d},
            {"grad_out", &args.grad_out, &p.do_rows, a.q_len, d},
            {"grad_q", &args.grad_q, &p.dq_rows, a.q_len, d, true},
            {"grad_k", &args.grad_k, &p.dk_rows, a.kv_len, d, true},
            {"grad_v", &args.grad_v, &p.dv_rows, a.kv_len, d, true}},
           true, "attention on cuda");
  p.tq_pad = (a.q_len + kBlockN - 1) / kBlockN * kBlockN;
  const int64_t rows = a.batch * p.tq_pad;
  DeviceScratch row_stats(size_t(rows > 0 ? 2 * rows : 1) * sizeof(float));
  p.row_dot = row_stats.as<float>();
  p.lse2 = p.row_dot + rows;
  int variant = flash_attention_variant().backward;
  check_variant(variant, a, "backward");
  variant = tma_or_fallback(variant, kVariantWgmma, p, a.head_dim, true);
  const bool atomic_dq = !args.deterministic && rows > 0;
  std::optional<DeviceScratch> dq_accum;
  if (atomic_dq) {
    const size_t bytes = size_t(rows * d) * sizeof(float);
    dq_accum.emplace(bytes);
    p.dq_accum = dq_accum->as<float>();
    rt::memset_async(p.dq_accum, 0, bytes, stream());
  }
  dispatch(a, [&]<class T, int D>() {
    if (rows > 0) {
      const int64_t blocks = (rows + kWarps - 1) / kWarps;
      const unsigned grid = grid_for(blocks * kThreads, kThreads, 8);
      rt::launch(row_dot_kernel<T, D>, dim3(grid), dim3(kThreads), 0, stream(),
                 "flash_attention_row_dot", p);
    }
    bool wgmma = false;
    if constexpr (D == 64 || D == 128) {
      if (variant == kVariantWgmma) {
        ++g_flash_variant_launches;
        launch_backward_wgmma<T, D>(p, a.batch, atomic_dq);
        wgmma = true;
      } else if (variant == kVariantTma) {
        ++g_flash_variant_launches;
        launch_backward_tma<T, D>(p, a.batch, atomic_dq);
        wgmma = true;
      }
    }
    const int64_t k_tiles = (a.kv_len + kBlockN - 1) / kBlockN;
    if (k_tiles > 0 && !wgmma) {
      auto launch_dkdv = [&]<bool kAtomicDq>() {
        auto run = [&](auto kernel, size_t smem_used, const auto& params) {
          allow_shared(kernel, smem_used, "flash attention");
          rt::launch(kernel, dim3(unsigned(k_tiles * a.batch)), dim3(kThreads), smem_used, stream(),
                     kAtomicDq ? "flash_attention_backward_dkdv_atomic_dq"
                               : "flash_attention_backward_dkdv",
                     params, k_tiles);
        };
        constexpr size_t smem = dkdv_smem<D, T, kAtomicDq>();
        if constexpr (std::is_same_v<T, __nv_bfloat16> && D == 64) {
          if (variant == 1) {
            constexpr int BQ = kVariantDkdvQueryTile;
            ++g_flash_variant_launches;
            return run(dkdv_variant_kernel<T, D, kAtomicDq, BQ, kVariantMinBlocks>,
                       dkdv_smem<D, T, kAtomicDq, BQ>(), p);
          }
        }
        dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
          run(dkdv_kernel<T, D, kDropout, kAtomicDq, P>, smem, params);
        });
      };
      if (atomic_dq) {
        launch_dkdv.template operator()<true>();
      } else {
        launch_dkdv.template operator()<false>();
      }
    }
    if (atomic_dq) {
      const unsigned grid = grid_for(a.batch * a.q_len * (D / 8), kThreads, 8);
      rt::launch(dq_convert_kernel<T, D>, dim3(grid), dim3(kThreads), 0, stream(),
                 "flash_attention_backward_dq_convert", p);
      return;
    }
    if (wgmma) return;  // its dQ kernel ran
    const int64_t q_tiles = (a.q_len + kBlockM - 1) / kBlockM;
    if (q_tiles > 0) {
      constexpr size_t smem = dq_smem<D, T>();
      dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
        auto kernel = dq_kernel<T, D, kDropout, P>;
        allow_shared(kernel, smem, "flash attention");
        rt::launch(kernel, dim3(unsigned(q_tiles * a.batch)), dim3(kThreads), smem, stream(),
                   "flash_attention_backward_dq", params, q_tiles);
      });
    }
  });
}

}  // namespace

}  // namespace flash

namespace {

// The cuda attention slots: f16/bf16 on tensor cores here, f32/f64 on the SIMT kernels of
// attention_simt.cu.
void attention_forward_any(const AttentionForwardArgs& a) {
  if (a.dtype == DType::F32 || a.dtype == DType::F64) return attention_forward_simt(a);
  flash::forward_impl(a);
}

void attention_backward_any(const AttentionBackwardArgs& a) {
  if (a.forward.dtype == DType::F32 || a.forward.dtype == DType::F64) {
    return attention_backward_simt(a);
  }
  flash::backward_impl(a);
}

}  // namespace

void set_flash_attention_variant(FlashAttentionVariant v) {
  g_flash_variant = v;
}
FlashAttentionVariant flash_attention_variant() {
  return g_flash_variant;
}
long long flash_attention_variant_launches() {
  return g_flash_variant_launches;
}
long long flash_attention_tma_fallbacks() {
  return g_flash_tma_fallbacks;
}

extern const AttentionForwardFn attention_forward = attention_forward_any;
extern const AttentionBackwardFn attention_backward = attention_backward_any;

}  // namespace lathe::kernels::cuda
