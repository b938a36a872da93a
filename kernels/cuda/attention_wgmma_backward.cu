// Backward variants 2 and 4 of the flash attention (attention_variant.h): the deterministic split
// of attention.cu's backward (a dK/dV kernel over query tiles, then a dQ kernel over key tiles,
// both recomputing P from the saved lse) on Hopper's warpgroup MMA, sm_90a only. Variant 2 loads
// its tiles with cp.async; variant 4 runs the same per-tile steps (dkdv_tile, dq_tile: the same
// bits) fed by a TMA producer warpgroup through rings of stages on mbarriers, as forward variant 4
// does. The tile layout and the typed wgmma calls are flash_attention_wgmma.cuh's, shared with
// the forward variants; the masking, lse and row-dot conventions are flash_attention.cuh's,
// shared with every flash kernel. docs/kernels.md ("Backward variant 2", "Backward variant 4").
//
// Why this split and not FlashAttention-3's (one kernel adding dQ with f32 atomics): every GEMM
// of it maps onto the wgmma forms the forward already uses (SS with K-major operands, RS with an
// MN-major B), dS never goes through shared memory, and the sums run in a fixed order, so the
// results are bit-reproducible. The price is S and dP computed twice (7 GEMMs instead of 5). The
// atomic-dQ mode (deterministic = false) is FlashAttention-3's 5 GEMMs instead: the dK/dV kernel
// also stores dS as a K-major A operand and adds dS K into an f32 buffer.
#include "kernels/cuda/flash_attention_wgmma.cuh"

namespace lathe::kernels::cuda::flash {

namespace {

// ---- dK, dV: a block of two warpgroups owns 128 keys (64 each, wgmma's M) ----
//
// Per 64-query tile and warpgroup: S^T = K Q^T and dP^T = V dO^T by D/16 SS wgmmas each
// (m64n64k16: K and V K-major A, Q and dO K-major B), then in f32 on the accumulator layout
// (keys g and g + 8 of each warp's 16, queries 8n + 2t + {0, 1}) P^T = exp2(S^T scale - lse) and
// dS^T = P^T (dP^T - D), both rounded into RS A fragments, and dV += P^T dO, dK += dS^T Q by 4 RS
// wgmmas each with Q and dO as MN-major B (queries are K, d is N: the tiles as stored). Q, dO and
// their lse and row dots are double-buffered with cp.async. Registers per thread: S^T and dP^T
// 32 each, dK and dV D/2 each (64 at d = 128). At d = 64 the elementwise steps run under the
// tensor cores (kOverlap): S^T and dP^T are two commit groups, P^T is computed while dP^T's
// wgmmas run and dS^T while dV's do; the products and their order of summation are the same, so
// are the bits.
constexpr int kDkdvKeys = kWgRows;
constexpr int kDkdvQueries = 64;
// + the atomic-dQ mode's dS tile, [128 keys / 64][64 queries][64 keys].
template <int D, class T, bool kAtomicDq>
constexpr size_t wg_dkdv_smem() {
  return size_t(2 * kDkdvKeys + 4 * kDkdvQueries) * D * sizeof(T) +
         (kAtomicDq ? size_t(kDkdvQueries) * kDkdvKeys * sizeof(T) : 0) +
         4 * kDkdvQueries * sizeof(float) + 1024;
}

// Keeps the compiler from moving accesses of an asynchronous wgmma's registers across the fences
// and waits around it.
template <int N, int K>
LATHE_DEVICE_INLINE void fence_fragments(uint32_t (&a)[N][K]) {
#pragma unroll
  for (int i = 0; i < N; ++i) rt::wgmma_fence_operand(a[i]);
}

// With kAtomicDq (FlashAttention-3's backward: 5 GEMMs instead of 7), each warpgroup also stores
// its dS (rounded to T, as dK's A fragments have it) into shared memory as a K-major [64
// queries][64 keys] A operand, and dQ_tile += dS K over its 64 keys is one more SS wgmma group
// (m64n{D}k16, K as the MN-major B); the f32 products are added to dq_accum with vector atomics, as
// attention.cu's atomic mode does, and dq_convert_kernel scales and rounds them afterwards. The two
// warpgroups add separately (each its own keys), the same number of atomics per key as the default
// kernel's.
// What a thread of a dK/dV warpgroup keeps across the query tiles: its keys and the descriptors
// of the block's tiles. The same in the cp.async kernel (backward variant 2) and the TMA kernel
// (variant 4), which share the per-tile step below.
struct DkdvThread {
  int warp = 0, g = 0, t = 0;
  int64_t wg_j0 = 0, key[2] = {0, 0}, mask_base = 0;
  // K-major operands step 32 bytes per k16 inside a 128-byte row and one block per 64 columns;
  // the MN-major B of dV and dK (Q and dO, K = queries) steps 16 rows = 2048 bytes per k16, its
  // 64-column blocks (of d, the N) kQBlock apart. The Q / dO descriptors point at stage 0 of their
  // buffers; a tile adds its stage's byte offset.
  uint64_t desc_k = 0, desc_v = 0, desc_q = 0, desc_do = 0, desc_q_mn = 0, desc_do_mn = 0;
  // Atomic dQ: this warpgroup's dS block as a K-major A, and its 64 keys of K as the MN-major B.
  uint64_t desc_ds = 0, desc_k_mn = 0;
  // Where this thread's dS elements go in the swizzled tile: row r = 16kk + 8m + 2t + h has
  // r % 8 = 2t + h and key column 16 warp + g + 8 w1 is 16-byte chunk 2 warp + w1, so byte offset
  // r * 128 + ((2 warp + w1) ^ (2t + h)) * 16 + 2g: four bases per thread, the rest constants
  // (rt::wgmma_offset per element kept 32 addresses live across the tile loop).
  char* ds_bytes = nullptr;
  uint32_t ds_at[2][2] = {};
};

// Thread ct (0..255) of the two dK/dV warpgroups of the block that owns keys j0.. of batch b.
template <class T, int D, bool kAtomicDq>
LATHE_DEVICE_INLINE DkdvThread make_dkdv_thread(const Params& p, int64_t b, int64_t j0, int ct,
                                                T* sK, T* sV, T* sQ, T* sdO, T* sdS) {
  constexpr uint32_t kKBlock = kDkdvKeys * 128, kQBlock = kDkdvQueries * 128;
  DkdvThread st;
  const int wg = ct / 128, lane = ct % 32;
  st.warp = ct % 128 / 32;
  st.g = lane >> 2;
  st.t = lane & 3;
  st.wg_j0 = j0 + 64 * wg;  // this warpgroup's first key
  st.key[0] = st.wg_j0 + 16 * st.warp + st.g;
  st.key[1] = st.key[0] + 8;
  st.mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  st.desc_k = rt::make_wgmma_desc(sK + 64 * wg * 64, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_v = rt::make_wgmma_desc(sV + 64 * wg * 64, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_q = rt::make_wgmma_desc(sQ, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_do = rt::make_wgmma_desc(sdO, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_q_mn = rt::make_wgmma_desc(sQ, kQBlock, 1024, rt::WgmmaSwizzle::B128);
  st.desc_do_mn = rt::make_wgmma_desc(sdO, kQBlock, 1024, rt::WgmmaSwizzle::B128);
  T* my_ds = sdS + wg * kDkdvQueries * 64;
  st.ds_bytes = reinterpret_cast<char*>(my_ds);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int w1 = 0; w1 < 2; ++w1) {
      st.ds_at[h][w1] =
          uint32_t((2 * st.t + h) * 128 + ((2 * st.warp + w1) ^ (2 * st.t + h)) * 16 + 2 * st.g);
    }
  }
  if constexpr (kAtomicDq) {
    st.desc_ds = rt::make_wgmma_desc(my_ds, 16, 1024, rt::WgmmaSwizzle::B128);
    st.desc_k_mn = rt::make_wgmma_desc(sK + 64 * wg * 64, kKBlock, 1024, rt::WgmmaSwizzle::B128);
  }
  return st;
}

// One 64-query tile (queries i0..) of a dK/dV warpgroup: its Q and dO at byte offset q_at of the
// Q / dO buffers, its lse (log2 units) and row dots at cL and cD. Accumulates into dk and dv; with
// kAtomicDq also adds the tile's dQ to p.dq_accum, calling sync_ds() between the dS stores and the
// wgmma that reads them (a barrier of at least the warpgroup, after fence.proxy.async). Returns
// with every wgmma retired: the tile's Q / dO may be overwritten once all 256 threads returned.
template <class T, int D, bool kDropout, bool kAtomicDq, class SyncDs, class P>
LATHE_DEVICE_INLINE void dkdv_tile(const P& p, const DkdvThread& st, float (&dk)[D / 2],
                                   float (&dv)[D / 2], int64_t b, int64_t i0, uint32_t q_at,
                                   const float* cL, const float* cD, SyncDs&& sync_ds) {
  constexpr int BQ = kDkdvQueries;
  constexpr uint32_t kKBlock = kDkdvKeys * 128;  // bytes of one 64-column block of the K or V tile
  constexpr uint32_t kQBlock = BQ * 128;         // of the Q or dO tile
  static_assert(D % 64 == 0, "128-byte swizzled rows hold 64 columns");
  // At d = 64 the elementwise work runs under the tensor cores: P^T while dP^T's wgmmas run, dS^T
  // while dV's do. That keeps P^T (f32 and fragments) live beside dP^T and dS^T: 186 registers at
  // d = 64; at d = 128, where dK and dV alone take 128, ptxas spilled, so there the tile is
  // computed after both products, k-step by k-step, as before.
  constexpr bool kOverlap = D <= 64;
  const int warp = st.warp, g = st.g, t = st.t;
  const int64_t wg_j0 = st.wg_j0, mask_base = st.mask_base;
  const int64_t(&key)[2] = st.key;
  const uint64_t desc_k = st.desc_k, desc_v = st.desc_v, desc_q = st.desc_q, desc_do = st.desc_do;
  const uint64_t desc_q_mn = st.desc_q_mn, desc_do_mn = st.desc_do_mn;
  const uint64_t desc_ds = st.desc_ds, desc_k_mn = st.desc_k_mn;
  char* ds_bytes = st.ds_bytes;
  const uint32_t(&ds_at)[2][2] = st.ds_at;
  (void)desc_ds;
  (void)desc_k_mn;
  (void)g;
  (void)warp;

  // With kOverlap two commit groups, S^T then dP^T, so that P^T is computed while dP^T runs.
  float s[BQ / 2], dp[BQ / 2];
  rt::wgmma_fence_operand(s);
  rt::wgmma_fence_operand(dp);
  rt::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t at_k = (kk / 4) * kKBlock + (kk % 4) * 32;
    const uint32_t at_q = q_at + (kk / 4) * kQBlock + (kk % 4) * 32;
    ss_wgmma<T, BQ>(s, desc_k + (at_k >> 4), desc_q + (at_q >> 4), kk > 0);
    if constexpr (!kOverlap)
      ss_wgmma<T, BQ>(dp, desc_v + (at_k >> 4), desc_do + (at_q >> 4), kk > 0);
  }
  if constexpr (kOverlap) {
    rt::wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t at_k = (kk / 4) * kKBlock + (kk % 4) * 32;
      const uint32_t at_q = q_at + (kk / 4) * kQBlock + (kk % 4) * 32;
      ss_wgmma<T, BQ>(dp, desc_v + (at_k >> 4), desc_do + (at_q >> 4), kk > 0);
    }
  }
  rt::wgmma_commit();
  uint32_t keep = 0;
  if constexpr (kDropout) keep = dkdv_keep_bits<BQ, D != 128>(p, b, i0, key, 4 * st.g + t);

  // Element (n, e) of the accumulators is query i0 + 8n + 2t + (e & 1), key key[e >> 1]; k-step
  // kk of the A fragments (queries 16kk..) is n-tiles 2kk and 2kk + 1. Padding queries read
  // lse = +inf (P = 0) and D = 0.
  const bool plain = tile_unmasked<64>(p, i0, wg_j0);
  // P^T = exp2(S^T scale - lse), undropped.
  auto probability = [&](int n, int e) {
    const int col = 8 * n + 2 * t + (e & 1);
    const float x = plain ? s[4 * n + e] * p.scale_log2
                          : masked_score(p, mask_base, s[4 * n + e], i0 + col, key[e >> 1]);
    return fast_exp2(x - cL[col]);
  };
  // The dropout factor Z, regenerated from (seed, offset).
  auto dropout_z = [&](int n, int e) {
    if constexpr (kDropout) return (keep >> (4 * n + e)) & 1u ? p.keep_scale : 0.0f;
    return 1.0f;
  };
  // dS^T = P^T (Z dP^T - D), also the op's mask gradient.
  auto score_grad = [&](int n, int e, float pr) {
    const int col = 8 * n + 2 * t + (e & 1);
    const float ds = pr * (dropout_z(n, e) * dp[4 * n + e] - cD[col]);
    const int64_t i = i0 + col, j = key[e >> 1];
    if (p.grad_mask != nullptr && i < p.tq && j < p.tk) {
      p.grad_mask[(b * p.tq + i) * p.tk + j] = ds;
    }
    return ds;
  };
  uint32_t pf[BQ / 16][4], sf[BQ / 16][4];
  // Z P^T (P^T in s) of k-step kk rounded into dV's A fragments.
  auto to_pf = [&](int kk) {
    float zp[8];
#pragma unroll
    for (int x = 0; x < 8; ++x) zp[x] = dropout_z(2 * kk + x / 4, x % 4) * s[8 * kk + x];
    c_to_a<T>(pf[kk], zp, zp + 4);
  };
  // dS^T (in dp) of k-step kk rounded into dK's A fragments, and with kAtomicDq stored as dQ's
  // A operand: each 16-bit half of word w of the fragment is dS at query 16kk + 8(w / 2) + 2t +
  // h, key 16 warp + g + 8(w % 2); the two halves are neighbouring queries, so two rows of the
  // [query][key] tile.
  auto to_sf = [&](int kk) {
    c_to_a<T>(sf[kk], dp + 8 * kk, dp + 8 * kk + 4);
    if constexpr (kAtomicDq) {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          *reinterpret_cast<uint16_t*>(ds_bytes + ds_at[h][w & 1] +
                                       (16 * kk + 8 * (w >> 1)) * 128) =
              uint16_t(sf[kk][w] >> (16 * h));
        }
      }
    }
  };

  if constexpr (kOverlap) {
    // P^T while dP^T runs, then dS^T while dV's wgmmas run.
    rt::wgmma_wait<1>();
    rt::wgmma_fence_operand(s);
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
#pragma unroll
      for (int x = 0; x < 8; ++x) s[8 * kk + x] = probability(2 * kk + x / 4, x % 4);
      to_pf(kk);
    }
    rt::wgmma_wait<0>();
    rt::wgmma_fence_operand(dp);
    rt::wgmma_fence_operand(dv);
    fence_fragments(pf);
    rt::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      rs_wgmma_mn<T, D>(dv, pf[kk], desc_do_mn + ((q_at + kk * 16 * 128) >> 4));
    }
    rt::wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
#pragma unroll
      for (int x = 0; x < 8; ++x) {
        dp[8 * kk + x] = score_grad(2 * kk + x / 4, x % 4, s[8 * kk + x]);
      }
      to_sf(kk);
    }
    rt::wgmma_fence_operand(dk);
    fence_fragments(sf);
    rt::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      rs_wgmma_mn<T, D>(dk, sf[kk], desc_q_mn + ((q_at + kk * 16 * 128) >> 4));
    }
  } else {
    // Both products in, then P^T and dS^T k-step by k-step, so that s and dp die early.
    rt::wgmma_wait<0>();
    rt::wgmma_fence_operand(s);
    rt::wgmma_fence_operand(dp);
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
#pragma unroll
      for (int x = 0; x < 8; ++x) {
        const int n = 2 * kk + x / 4, e = x % 4;
        const float pr = probability(n, e);
        dp[8 * kk + x] = score_grad(n, e, pr);
        s[8 * kk + x] = dropout_z(n, e) * pr;
      }
      c_to_a<T>(pf[kk], s + 8 * kk, s + 8 * kk + 4);
      to_sf(kk);
    }
    rt::wgmma_fence_operand(dv);
    rt::wgmma_fence_operand(dk);
    fence_fragments(pf);
    fence_fragments(sf);
    rt::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      const uint32_t at = q_at + kk * 16 * 128;
      rs_wgmma_mn<T, D>(dv, pf[kk], desc_do_mn + (at >> 4));
      rs_wgmma_mn<T, D>(dk, sf[kk], desc_q_mn + (at >> 4));
    }
  }
  rt::wgmma_commit();
  // Before dk and dv are read, before pf and sf may be reused, and before the barrier below
  // lets the next iteration overwrite this Q / dO buffer.
  rt::wgmma_wait<0>();
  rt::wgmma_fence_operand(dv);
  rt::wgmma_fence_operand(dk);
  fence_fragments(pf);
  fence_fragments(sf);
  if constexpr (kAtomicDq) {
    // The dS stores (generic proxy) become visible to this warpgroup's wgmma (async proxy).
    sync_ds();
    // In 64-column slices of d: a [64, 64] accumulator (32 registers) beside dK and dV; all of
    // d at once (64 at d = 128) made ptxas spill.
#pragma unroll 1
    for (int h = 0; h < D / 64; ++h) {
      float dq[32];
      rt::wgmma_fence_operand(dq);
      rt::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        ss_wgmma<T, 64, rt::WgmmaMajor::MN>(dq, desc_ds + ((kk * 32) >> 4),
                                            desc_k_mn + ((h * kKBlock + kk * 16 * 128) >> 4),
                                            kk > 0);
      }
      rt::wgmma_commit();
      rt::wgmma_wait<0>();
      rt::wgmma_fence_operand(dq);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t i = i0 + 16 * warp + g + 8 * r;
        if (i >= p.tq) continue;  // padding rows: dS = 0, and nothing reads them
        float* row = p.dq_accum + (b * p.tq_pad + i) * D + 64 * h + 2 * t;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          atomic_add_pair(row + 8 * n, dq[4 * n + 2 * r], dq[4 * n + 2 * r + 1]);
        }
      }
    }
  }
}

// dK (scaled) and dV of the thread's two keys.
template <class T, int D>
LATHE_DEVICE_INLINE void store_dkdv(const Params& p, const DkdvThread& st, const float (&dk)[D / 2],
                                    const float (&dv)[D / 2], int64_t b) {
  T* grad_k = static_cast<T*>(p.grad_k) + batch_offset(p, p.dk_rows, b);
  T* grad_v = static_cast<T*>(p.grad_v) + batch_offset(p, p.dv_rows, b);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = st.key[r];
    if (j >= p.tk) continue;
    T* gk = grad_k + j * p.dk_rows.row;
    T* gv = grad_v + j * p.dv_rows.row;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(gk + 8 * n + 2 * st.t) =
          pack2<T>(dk[4 * n + 2 * r] * p.scale, dk[4 * n + 2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(gv + 8 * n + 2 * st.t) =
          pack2<T>(dv[4 * n + 2 * r], dv[4 * n + 2 * r + 1]);
    }
  }
}

template <class T, int D, bool kDropout, bool kAtomicDq, class P = Params>
__global__ void __launch_bounds__(kWgThreads) dkdv_wgmma_kernel(P p, int64_t k_tiles) {
#if LATHE_FLASH_WGMMA
  constexpr int BN = kDkdvKeys, BQ = kDkdvQueries;
  constexpr uint32_t kQTile = BQ * D * sizeof(T);
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  T* sK = align_1024(smem_raw);                            // [D/64][BN][64]
  T* sV = sK + BN * D;                                     // [D/64][BN][64]
  T* sQ = sV + BN * D;                                     // [2][D/64][BQ][64]
  T* sdO = sQ + 2 * BQ * D;                                // [2][D/64][BQ][64]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BQ * D);  // [2][BQ] lse (log2 units)
  float* sD = sL + 2 * BQ;                                 // [2][BQ] row dots
  // kAtomicDq: [BN/64][BQ][64] dS, 1024-aligned (everything before it is a multiple of 1 KiB).
  T* sdS = reinterpret_cast<T*>(sD + 2 * BQ);

  const int64_t b = int64_t(blockIdx.x) / k_tiles;
  const int64_t j0 = (int64_t(blockIdx.x) - b * k_tiles) * BN;
  const T* q_all = static_cast<const T*>(p.q);
  const T* k_all = static_cast<const T*>(p.k);
  const T* v_all = static_cast<const T*>(p.v);
  const T* do_all = static_cast<const T*>(p.grad_out);
  const T* q = q_all + batch_offset(p, p.q_rows, b);
  const T* dout = do_all + batch_offset(p, p.do_rows, b);
  const int64_t ldq = p.q_rows.row, ldo = p.do_rows.row;

  load_tile_sw128<D, BN>(sK, k_all + batch_offset(p, p.k_rows, b) + j0 * p.k_rows.row, p.k_rows.row,
                         p.tk - j0, k_all);
  load_tile_sw128<D, BN>(sV, v_all + batch_offset(p, p.v_rows, b) + j0 * p.v_rows.row, p.v_rows.row,
                         p.tk - j0, v_all);
  // Causal: queries above the key tile see none of its keys.
  const int first = p.causal ? int(j0 / BQ) : 0;
  const int n_tiles = int((p.tq + BQ - 1) / BQ);
  auto load_q_tile = [&](int tile, int buf) {
    const int64_t i0 = int64_t(tile) * BQ;
    load_tile_sw128<D, BQ>(sQ + buf * BQ * D, q + i0 * ldq, ldq, p.tq - i0, q_all);
    load_tile_sw128<D, BQ>(sdO + buf * BQ * D, dout + i0 * ldo, ldo, p.tq - i0, do_all);
    // BQ / 4 16-byte pieces of each (rows padded to tq_pad, a multiple of BQ).
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

  zero_skipped_grad_mask(p, b, j0, int64_t(first) * BQ, BN, int(threadIdx.x), kWgThreads);

  const DkdvThread st =
      make_dkdv_thread<T, D, kAtomicDq>(p, b, j0, int(threadIdx.x), sK, sV, sQ, sdO, sdS);
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;

  for (int it = first; it < n_tiles; ++it) {
    const int buf = (it - first) & 1;
    if (it + 1 < n_tiles) {
      load_q_tile(it + 1, buf ^ 1);
      rt::cp_async_commit();
      rt::cp_async_wait<1>();
    } else {
      rt::cp_async_wait<0>();
    }
    publish_to_wgmma();
    dkdv_tile<T, D, kDropout, kAtomicDq>(p, st, dk, dv, b, int64_t(it) * BQ, buf * kQTile,
                                         sL + buf * BQ, sD + buf * BQ, [] { publish_to_wgmma(); });
    __syncthreads();  // the next iteration refills this Q / dO buffer (and the dS tile)
  }
  if (first >= n_tiles) rt::cp_async_wait<0>();
  store_dkdv<T, D>(p, st, dk, dv, b);
#else
  (void)p;
  (void)k_tiles;
  __trap();
#endif
}

// ---- dK, dV on FlashAttention-3's pipeline (backward variant 4) ----
//
// The same per-tile step (dkdv_tile, the same bits) with the loads of forward variant 4: a
// producer warpgroup, whose one elected thread copies K and V once and then each query tile's Q,
// dO, lse and row dots by TMA into a ring of stages, and the two consumer warpgroups of the
// cp.async kernel, which wait for a stage's full mbarrier and release it on its empty mbarrier
// (all 256 consumer threads arrive after the tile's last wgmma) instead of meeting at a block
// barrier per tile. setmaxnreg gives the producer's registers to the consumers. In the atomic-dQ
// mode each warpgroup meets its own 128 threads at a named barrier around its dS tile.
constexpr int kTmaBwdThreads = 128 * (1 + kWgConsumers);
constexpr int kTmaBwdStages = 3;
constexpr int kTmaBwdProducerRegisters = 24;
constexpr int kTmaBwdConsumerRegisters = 240;
static_assert(128 * kTmaBwdProducerRegisters + 256 * kTmaBwdConsumerRegisters <= 65536,
              "setmaxnreg must not ask for more registers than the SM has");

// K, V, the ring of Q and dO tiles, the dS tiles, the lse and row-dot stages, 1 KiB of alignment,
// the mbarriers (K/V full, then full and empty per stage).
template <int D, class T>
constexpr size_t tma_dkdv_smem() {
  constexpr int S = kTmaBwdStages;
  return size_t(2 * kDkdvKeys + 2 * S * kDkdvQueries) * D * sizeof(T) +
         size_t(kDkdvQueries) * kDkdvKeys * sizeof(T) + 2 * S * kDkdvQueries * sizeof(float) +
         1024 + (1 + 2 * S) * sizeof(uint64_t);
}

// The backward's tensor maps: q, k, v and dO as forward variant 4 reads its operands (dK/dV: 64-row
// boxes for q and dO, 128-row for k and v; dQ: 128-row boxes for q and dO, key tiles for k and v),
// and for dK/dV the padded lse / row-dot rows, [batch][tq_pad] f32 in boxes of one tile's 64.
struct TmaBackwardMaps {
  rt::TensorMap q, k, v, dout, lse, row_dot;
  bool fold_q = false, fold_k = false, fold_v = false, fold_do = false;
};

#if LATHE_FLASH_WGMMA  // device code only where the kernels have a body
// The mbarriers of a backward TMA kernel, initialized by thread 0 before the block's last
// __syncthreads: `once` completes when the tiles copied once have landed (the producer's
// arrive.expect_tx, then the bytes), full[st] when stage st's copies have, empty[st] when all 256
// consumer threads are done with it.
LATHE_DEVICE_INLINE void init_ring(uint64_t* once, uint64_t* full, uint64_t* empty) {
  if (threadIdx.x == 0) {
    rt::mbarrier_init(once, 1);
    for (int st = 0; st < kTmaBwdStages; ++st) {
      rt::mbarrier_init(&full[st], 1);
      rt::mbarrier_init(&empty[st], kWgThreads);
    }
    rt::fence_mbarrier_init();
  }
  __syncthreads();  // the last block-wide barrier: the producer leaves early
}

// Where batch b of q, k, v and dO sits in their tensor maps.
struct TmaBackwardCoords {
  TmaCoord q, k, v, dout;
};
LATHE_DEVICE_INLINE TmaBackwardCoords tma_backward_coords(const Params& p,
                                                          const TmaBackwardMaps& maps, int64_t b) {
  return {tma_coord(p, p.q_rows, maps.fold_q, b), tma_coord(p, p.k_rows, maps.fold_k, b),
          tma_coord(p, p.v_rows, maps.fold_v, b), tma_coord(p, p.do_rows, maps.fold_do, b)};
}
#endif

template <class T, int D, bool kDropout, bool kAtomicDq, class P = Params>
__global__ void __launch_bounds__(kTmaBwdThreads, 1)
    dkdv_tma_kernel(P p, int64_t k_tiles, const __grid_constant__ TmaBackwardMaps maps) {
#if LATHE_FLASH_WGMMA
  constexpr int BN = kDkdvKeys, BQ = kDkdvQueries, S = kTmaBwdStages;
  constexpr uint32_t kQTile = BQ * D * sizeof(T);
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  T* sK = align_1024(smem_raw);                         // [D/64][BN][64]
  T* sV = sK + BN * D;                                  // [D/64][BN][64]
  T* sQ = sV + BN * D;                                  // [S][D/64][BQ][64]
  T* sdO = sQ + S * BQ * D;                             // [S][D/64][BQ][64]
  T* sdS = sdO + S * BQ * D;                            // [BN/64][BQ][64] (kAtomicDq)
  float* sL = reinterpret_cast<float*>(sdS + BN * BQ);  // [S][BQ] lse (log2 units)
  float* sD = sL + S * BQ;                              // [S][BQ] row dots
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(sD + S * BQ);
  uint64_t* full = kv_full + 1;
  uint64_t* empty = full + S;

  const int64_t b = int64_t(blockIdx.x) / k_tiles;
  const int64_t j0 = (int64_t(blockIdx.x) - b * k_tiles) * BN;
  // Causal: queries above the key tile see none of its keys.
  const int first = p.causal ? int(j0 / BQ) : 0;
  const int n_tiles = int((p.tq + BQ - 1) / BQ);
  const int wg = int(threadIdx.x) / 128;
  init_ring(kv_full, full, empty);

  if (wg == 0) {
    rt::setmaxnreg_dec<kTmaBwdProducerRegisters>();
    if (threadIdx.x == 0) {
      const TmaBackwardCoords c = tma_backward_coords(p, maps, b);
      rt::mbarrier_arrive_expect_tx(kv_full, 2 * BN * D * sizeof(T));
      tma_tile<D, BN>(sK, &maps.k, c.k, j0, kv_full);
      tma_tile<D, BN>(sV, &maps.v, c.v, j0, kv_full);
      // Stage st's use u waits for the consumers to release its use u - 1.
      for (int it = first; it < n_tiles; ++it) {
        const int st = (it - first) % S, use = (it - first) / S;
        if (use > 0) rt::mbarrier_wait_parity(&empty[st], uint32_t(use - 1) & 1u);
        rt::mbarrier_arrive_expect_tx(&full[st], 2 * kQTile + 2 * BQ * sizeof(float));
        const int64_t i0 = int64_t(it) * BQ;
        tma_tile<D, BQ>(sQ + st * BQ * D, &maps.q, c.q, i0, &full[st]);
        tma_tile<D, BQ>(sdO + st * BQ * D, &maps.dout, c.dout, i0, &full[st]);
        rt::tma_load_2d(sL + st * BQ, &maps.lse, int32_t(i0), int32_t(b), &full[st]);
        rt::tma_load_2d(sD + st * BQ, &maps.row_dot, int32_t(i0), int32_t(b), &full[st]);
      }
    }
    return;
  }
  rt::setmaxnreg_inc<kTmaBwdConsumerRegisters>();

  const int ct = int(threadIdx.x) - 128;  // 0..255 over the two consumer warpgroups
  zero_skipped_grad_mask(p, b, j0, int64_t(first) * BQ, BN, ct, kWgThreads);
  const DkdvThread st = make_dkdv_thread<T, D, kAtomicDq>(p, b, j0, ct, sK, sV, sQ, sdO, sdS);
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;
  // This warpgroup's 128 threads (named barriers 1 and 2; 0 is __syncthreads).
  const int my_barrier = wg;
  auto sync_ds = [my_barrier] {
    rt::fence_proxy_async_shared();  // the dS stores, for this warpgroup's wgmma
    rt::named_barrier_sync(my_barrier, 128);
  };

  rt::mbarrier_wait_parity(kv_full, 0);  // also when there is no tile: no copy outlives the block
  for (int it = first; it < n_tiles; ++it) {
    const int stage = (it - first) % S, use = (it - first) / S;
    rt::mbarrier_wait_parity(&full[stage], uint32_t(use) & 1u);
    dkdv_tile<T, D, kDropout, kAtomicDq>(p, st, dk, dv, b, int64_t(it) * BQ, stage * kQTile,
                                         sL + stage * BQ, sD + stage * BQ, sync_ds);
    // The next tile's dS stores wait for every warp's dQ wgmma on this one.
    if constexpr (kAtomicDq) rt::named_barrier_sync(my_barrier, 128);
    rt::mbarrier_arrive(&empty[stage]);
  }
  store_dkdv<T, D>(p, st, dk, dv, b);
#else
  (void)p;
  (void)k_tiles;
  (void)maps;
  __trap();
#endif
}

// ---- dQ: a block of two warpgroups owns 128 queries (64 each) ----
//
// Per key tile and warpgroup: S = Q K^T and dP = dO V^T by SS wgmmas (m64nBNk16), dS = P (dP - D)
// in f32 on the accumulator layout, rounded into RS A fragments, dQ += dS K by BN/16 RS wgmmas
// with K as the MN-major B (keys are K, d is N). K and V double-buffered with cp.async. S and dP
// are two commit groups: P is computed while dP's wgmmas run. BN = 128
// keys at d = 64 (S and dP 64 registers each, dQ 32), 64 at d = 128 (32 each, dQ 64).
template <int D>
constexpr int wg_dq_keys() {
  return D == 64 ? 128 : 64;
}
template <int D, class T>
constexpr size_t wg_dq_smem() {
  return size_t(2 * kWgRows + 4 * wg_dq_keys<D>()) * D * sizeof(T) + 1024;
}

// What a thread of a dQ warpgroup keeps across the key tiles: its two query rows with their lse
// and row dots, and the descriptors of the block's tiles (the K and V descriptors point at stage
// 0; a tile adds its stage's byte offset). Shared by the cp.async kernel (variant 2) and the TMA
// kernel (variant 4).
struct DqThread {
  int lane = 0, t = 0;
  int64_t wg_i0 = 0, row[2] = {0, 0}, mask_base = 0;
  float lse2[2] = {}, rd[2] = {};
  uint64_t desc_q = 0, desc_do = 0, desc_k = 0, desc_v = 0, desc_k_mn = 0;
};

// Thread ct (0..255) of the two dQ warpgroups of the block that owns queries i0.. of batch b.
template <class T, int D>
LATHE_DEVICE_INLINE DqThread make_dq_thread(const Params& p, int64_t b, int64_t i0, int ct, T* sQ,
                                            T* sdO, T* sK, T* sV) {
  constexpr uint32_t kKBlock = wg_dq_keys<D>() * 128;  // bytes of one 64-column block of K or V
  DqThread st;
  const int wg = ct / 128, warp = ct % 128 / 32, lane = ct % 32;
  st.lane = lane;
  st.t = lane & 3;
  st.wg_i0 = i0 + 64 * wg;  // this warpgroup's first query row
  st.row[0] = st.wg_i0 + 16 * warp + (lane >> 2);
  st.row[1] = st.row[0] + 8;
  st.mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  // 128-row blocks may reach past tq_pad (a multiple of 64): rows past tq read as padding.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    st.lse2[r] = st.row[r] < p.tq ? p.lse2[b * p.tq_pad + st.row[r]] : INFINITY;
    st.rd[r] = st.row[r] < p.tq ? p.row_dot[b * p.tq_pad + st.row[r]] : 0.0f;
  }
  st.desc_q = rt::make_wgmma_desc(sQ + 64 * wg * 64, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_do = rt::make_wgmma_desc(sdO + 64 * wg * 64, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_k = rt::make_wgmma_desc(sK, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_v = rt::make_wgmma_desc(sV, 16, 1024, rt::WgmmaSwizzle::B128);
  st.desc_k_mn = rt::make_wgmma_desc(sK, kKBlock, 1024, rt::WgmmaSwizzle::B128);
  return st;
}

// One key tile (keys j0..) of a dQ warpgroup, its K and V at byte offset k_at of the K / V
// buffers: dQ += dS K. Returns with every wgmma retired. kRowBits: the dropout draws shared by
// each quad (dropout_row_bits) rather than one Philox block per key pair (dropout_pair); the same
// mask either way. The TMA kernel at d = 64 keeps the pairs: its consumers' 240 registers hold S,
// dP and dQ with nothing to spare, and the quad's draws made it spill.
template <class T, int D, bool kDropout, bool kRowBits = true, class P>
LATHE_DEVICE_INLINE void dq_tile(const P& p, const DqThread& st, float (&dq)[D / 2], int64_t b,
                                 int64_t j0, uint32_t k_at) {
  constexpr int BN = wg_dq_keys<D>();
  constexpr uint32_t kQBlock = kWgRows * 128;  // bytes of one 64-column block of the Q or dO tile
  constexpr uint32_t kKBlock = BN * 128;       // of a K or V tile
  const int t = st.t;
  const int64_t wg_i0 = st.wg_i0, mask_base = st.mask_base;
  const int64_t row[2] = {st.row[0], st.row[1]};
  const float lse2[2] = {st.lse2[0], st.lse2[1]}, rd[2] = {st.rd[0], st.rd[1]};
  const uint64_t desc_q = st.desc_q, desc_do = st.desc_do, desc_k = st.desc_k, desc_v = st.desc_v;
  const uint64_t desc_k_mn = st.desc_k_mn;

  // The tile's dropout draws (the forward's, dropout_row_bits), before S's and dP's accumulators
  // are live: drawn while they were in flight, the TMA kernel's (168 registers at launch) spilled.
  static_assert(BN % 64 == 0, "dropout_row_bits covers 64 keys");
  uint32_t drop_bits[BN / 64][2] = {};
  if constexpr (kDropout && kRowBits) {
#pragma unroll
    for (int h = 0; h < BN / 64; ++h) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        drop_bits[h][r] = dropout_row_bits(p, b, row[r], j0 + 64 * h, st.lane);
      }
    }
  }

  // S, then dP in a second commit group: P is computed while dP is still running.
  float s[BN / 2], dp[BN / 2];
  rt::wgmma_fence_operand(s);
  rt::wgmma_fence_operand(dp);
  rt::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t at_q = (kk / 4) * kQBlock + (kk % 4) * 32;
    const uint32_t at_k = k_at + (kk / 4) * kKBlock + (kk % 4) * 32;
    ss_wgmma<T, BN>(s, desc_q + (at_q >> 4), desc_k + (at_k >> 4), kk > 0);
  }
  rt::wgmma_commit();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t at_q = (kk / 4) * kQBlock + (kk % 4) * 32;
    const uint32_t at_k = k_at + (kk / 4) * kKBlock + (kk % 4) * 32;
    ss_wgmma<T, BN>(dp, desc_do + (at_q >> 4), desc_v + (at_k >> 4), kk > 0);
  }
  rt::wgmma_commit();
  rt::wgmma_wait<1>();  // S is in
  rt::wgmma_fence_operand(s);

  const bool plain = tile_unmasked<BN>(p, wg_i0, j0);
#pragma unroll
  for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      const float x =
          plain ? s[4 * n + e] * p.scale_log2
                : masked_score(p, mask_base, s[4 * n + e], row[r], j0 + 8 * n + 2 * t + (e & 1));
      s[4 * n + e] = fast_exp2(x - lse2[r]);  // P
    }
  }
  rt::wgmma_wait<0>();
  rt::wgmma_fence_operand(dp);
#pragma unroll
  for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float z[2] = {1.0f, 1.0f};  // dropout, regenerated as in dq_kernel
      if constexpr (kDropout && kRowBits) {
        dropout_pair_from_bits(p, drop_bits[n / 8][r], n % 8, row[r], j0 + 8 * n + 2 * t, z);
      } else if constexpr (kDropout) {
        dropout_pair(p, b, row[r], j0 + 8 * n + 2 * t, z);
      }
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int e = 2 * r + c;
        s[4 * n + e] *= z[c] * dp[4 * n + e] - rd[r];  // dS
      }
    }
  }
  uint32_t sf[BN / 16][4];
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) c_to_a<T>(sf[kk], s + 8 * kk, s + 8 * kk + 4);
  rt::wgmma_fence_operand(dq);
  fence_fragments(sf);
  rt::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    rs_wgmma_mn<T, D>(dq, sf[kk], desc_k_mn + ((k_at + kk * 16 * 128) >> 4));
  }
  rt::wgmma_commit();
  rt::wgmma_wait<0>();
  rt::wgmma_fence_operand(dq);
  fence_fragments(sf);
}

// dQ (scaled) of the thread's two query rows.
template <class T, int D>
LATHE_DEVICE_INLINE void store_dq(const Params& p, const DqThread& st, const float (&dq)[D / 2],
                                  int64_t b) {
  T* grad_q = static_cast<T*>(p.grad_q) + batch_offset(p, p.dq_rows, b);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = st.row[r];
    if (i >= p.tq) continue;
    T* gq = grad_q + i * p.dq_rows.row;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(gq + 8 * n + 2 * st.t) =
          pack2<T>(dq[4 * n + 2 * r] * p.scale, dq[4 * n + 2 * r + 1] * p.scale);
    }
  }
}

template <class T, int D, bool kDropout, class P = Params>
__global__ void __launch_bounds__(kWgThreads) dq_wgmma_kernel(P p, int64_t q_tiles) {
#if LATHE_FLASH_WGMMA
  constexpr int BM = kWgRows, BN = wg_dq_keys<D>();
  constexpr uint32_t kKTile = BN * D * sizeof(T);
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  T* sQ = align_1024(smem_raw);  // [D/64][BM][64]
  T* sdO = sQ + BM * D;          // [D/64][BM][64]
  T* sK = sdO + BM * D;          // [2][D/64][BN][64]
  T* sV = sK + 2 * BN * D;       // [2][D/64][BN][64]

  int64_t b, i0;
  query_tile_of_block(blockIdx.x, q_tiles, BM, p.causal, b, i0);
  const T* q_all = static_cast<const T*>(p.q);
  const T* k_all = static_cast<const T*>(p.k);
  const T* v_all = static_cast<const T*>(p.v);
  const T* do_all = static_cast<const T*>(p.grad_out);
  const T* k = k_all + batch_offset(p, p.k_rows, b);
  const T* v = v_all + batch_offset(p, p.v_rows, b);
  const int64_t ldk = p.k_rows.row, ldv = p.v_rows.row;

  load_tile_sw128<D, BM>(sQ, q_all + batch_offset(p, p.q_rows, b) + i0 * p.q_rows.row, p.q_rows.row,
                         p.tq - i0, q_all);
  load_tile_sw128<D, BM>(sdO, do_all + batch_offset(p, p.do_rows, b) + i0 * p.do_rows.row,
                         p.do_rows.row, p.tq - i0, do_all);
  const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
  const int n_tiles = int((j_end + BN - 1) / BN);
  if (n_tiles > 0) {
    load_tile_sw128<D, BN>(sK, k, ldk, p.tk, k_all);
    load_tile_sw128<D, BN>(sV, v, ldv, p.tk, v_all);
  }
  rt::cp_async_commit();

  const DqThread st = make_dq_thread<T, D>(p, b, i0, int(threadIdx.x), sQ, sdO, sK, sV);
  float dq[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dq[i] = 0.0f;

  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_tiles) {
      const int64_t j1 = int64_t(it + 1) * BN;
      load_tile_sw128<D, BN>(sK + (buf ^ 1) * BN * D, k + j1 * ldk, ldk, p.tk - j1, k_all);
      load_tile_sw128<D, BN>(sV + (buf ^ 1) * BN * D, v + j1 * ldv, ldv, p.tk - j1, v_all);
      rt::cp_async_commit();
      rt::cp_async_wait<1>();
    } else {
      rt::cp_async_wait<0>();
    }
    publish_to_wgmma();
    dq_tile<T, D, kDropout>(p, st, dq, b, int64_t(it) * BN, buf * kKTile);
    __syncthreads();  // the next iteration refills this buffer
  }
  if (n_tiles == 0) rt::cp_async_wait<0>();
  store_dq<T, D>(p, st, dq, b);
#else
  (void)p;
  (void)q_tiles;
  __trap();
#endif
}

// ---- dQ on the TMA pipeline (backward variant 4's deterministic mode) ----
//
// Variant 2's dQ step (dq_tile, the same bits) fed by a producer warpgroup: Q and dO of the
// block's 128 queries once, then the K and V tiles into a ring of stages on full / empty
// mbarriers, as dkdv_tma_kernel and forward variant 4 do.
template <int D, class T>
constexpr size_t tma_dq_smem() {
  constexpr int S = kTmaBwdStages;
  return size_t(2 * kWgRows + 2 * S * wg_dq_keys<D>()) * D * sizeof(T) + 1024 +
         (1 + 2 * S) * sizeof(uint64_t);
}

template <class T, int D, bool kDropout, class P = Params>
__global__ void __launch_bounds__(kTmaBwdThreads, 1)
    dq_tma_kernel(P p, int64_t q_tiles, const __grid_constant__ TmaBackwardMaps maps) {
#if LATHE_FLASH_WGMMA
  constexpr int BM = kWgRows, BN = wg_dq_keys<D>(), S = kTmaBwdStages;
  constexpr uint32_t kKTile = BN * D * sizeof(T);
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  T* sQ = align_1024(smem_raw);  // [D/64][BM][64]
  T* sdO = sQ + BM * D;          // [D/64][BM][64]
  T* sK = sdO + BM * D;          // [S][D/64][BN][64]
  T* sV = sK + S * BN * D;       // [S][D/64][BN][64]
  uint64_t* q_full = reinterpret_cast<uint64_t*>(sV + S * BN * D);
  uint64_t* full = q_full + 1;
  uint64_t* empty = full + S;

  int64_t b, i0;
  query_tile_of_block(blockIdx.x, q_tiles, BM, p.causal, b, i0);
  const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
  const int n_tiles = int((j_end + BN - 1) / BN);
  const int wg = int(threadIdx.x) / 128;
  init_ring(q_full, full, empty);

  if (wg == 0) {
    rt::setmaxnreg_dec<kTmaBwdProducerRegisters>();
    if (threadIdx.x == 0) {
      const TmaBackwardCoords c = tma_backward_coords(p, maps, b);
      rt::mbarrier_arrive_expect_tx(q_full, 2 * BM * D * sizeof(T));
      tma_tile<D, BM>(sQ, &maps.q, c.q, i0, q_full);
      tma_tile<D, BM>(sdO, &maps.dout, c.dout, i0, q_full);
      for (int it = 0; it < n_tiles; ++it) {
        const int st = it % S, use = it / S;
        if (use > 0) rt::mbarrier_wait_parity(&empty[st], uint32_t(use - 1) & 1u);
        rt::mbarrier_arrive_expect_tx(&full[st], 2 * kKTile);
        tma_tile<D, BN>(sK + st * BN * D, &maps.k, c.k, int64_t(it) * BN, &full[st]);
        tma_tile<D, BN>(sV + st * BN * D, &maps.v, c.v, int64_t(it) * BN, &full[st]);
      }
    }
    return;
  }
  rt::setmaxnreg_inc<kTmaBwdConsumerRegisters>();

  const DqThread st = make_dq_thread<T, D>(p, b, i0, int(threadIdx.x) - 128, sQ, sdO, sK, sV);
  float dq[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dq[i] = 0.0f;
  rt::mbarrier_wait_parity(q_full, 0);  // also when there is no tile: no copy outlives the block
  for (int it = 0; it < n_tiles; ++it) {
    const int stage = it % S;
    rt::mbarrier_wait_parity(&full[stage], uint32_t(it / S) & 1u);
    dq_tile<T, D, kDropout, D != 64>(p, st, dq, b, int64_t(it) * BN, stage * kKTile);
    rt::mbarrier_arrive(&empty[stage]);
  }
  store_dq<T, D>(p, st, dq, b);
#else
  (void)p;
  (void)q_tiles;
  (void)maps;
  __trap();
#endif
}

}  // namespace

namespace {

// The dQ kernel of the deterministic mode (variants 2 and 4).
template <class T, int D>
void launch_dq_wgmma(const Params& p, int64_t batch, const char* what) {
  const int64_t q_tiles = (p.tq + kWgRows - 1) / kWgRows;
  if (q_tiles == 0) return;
  constexpr size_t smem = wg_dq_smem<D, T>();
  dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
    auto kernel = dq_wgmma_kernel<T, D, kDropout, P>;
    allow_shared(kernel, smem, "flash attention");
    check_sm90a_binary(kernel, what);
    rt::launch(kernel, dim3(unsigned(q_tiles * batch)), dim3(kWgThreads), smem, stream(),
               "flash_attention_backward_dq_wgmma", params, q_tiles);
  });
}

}  // namespace

template <class T, int D>
void launch_backward_wgmma(const Params& p, int64_t batch, bool atomic_dq) {
  const int64_t k_tiles = (p.tk + kDkdvKeys - 1) / kDkdvKeys;
  auto launch_dkdv = [&]<bool kAtomicDq>() {
    constexpr size_t smem = wg_dkdv_smem<D, T, kAtomicDq>();
    dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
      auto kernel = dkdv_wgmma_kernel<T, D, kDropout, kAtomicDq, P>;
      allow_shared(kernel, smem, "flash attention");
      check_sm90a_binary(kernel, "backward variant 2");
      rt::launch(kernel, dim3(unsigned(k_tiles * batch)), dim3(kWgThreads), smem, stream(),
                 kAtomicDq ? "flash_attention_backward_dkdv_wgmma_atomic_dq"
                           : "flash_attention_backward_dkdv_wgmma",
                 params, k_tiles);
    });
  };
  if (k_tiles > 0) {
    if (atomic_dq) {
      launch_dkdv.template operator()<true>();
    } else {
      launch_dkdv.template operator()<false>();
    }
  }
  if (atomic_dq) return;  // the caller's dq_convert_kernel writes grad_q
  launch_dq_wgmma<T, D>(p, batch, "backward variant 2");
}

template <class T, int D>
void launch_backward_tma(const Params& p, int64_t batch, bool atomic_dq) {
  const int64_t k_tiles = (p.tk + kDkdvKeys - 1) / kDkdvKeys;
  if (k_tiles > 0) {
    constexpr DType dtype = std::is_same_v<T, __half> ? DType::F16 : DType::BF16;
    TmaBackwardMaps maps;
    maps.q = tma_operand_map(p, dtype, p.q, p.q_rows, p.tq, D, kDkdvQueries, "q", maps.fold_q);
    maps.k = tma_operand_map(p, dtype, p.k, p.k_rows, p.tk, D, kDkdvKeys, "k", maps.fold_k);
    maps.v = tma_operand_map(p, dtype, p.v, p.v_rows, p.tk, D, kDkdvKeys, "v", maps.fold_v);
    maps.dout = tma_operand_map(p, dtype, p.grad_out, p.do_rows, p.tq, D, kDkdvQueries, "grad_out",
                                maps.fold_do);
    // The row statistics are [batch][tq_pad] f32 (tq_pad a multiple of 64, so every box is whole).
    const uint64_t padded = uint64_t(p.tq_pad > 0 ? p.tq_pad : kDkdvQueries);
    maps.lse = rt::make_tensor_map_2d(DType::F32, p.lse2, {padded, uint64_t(batch)}, padded * 4,
                                      {uint32_t(kDkdvQueries), 1});
    maps.row_dot = rt::make_tensor_map_2d(DType::F32, p.row_dot, {padded, uint64_t(batch)},
                                          padded * 4, {uint32_t(kDkdvQueries), 1});
    constexpr size_t smem = tma_dkdv_smem<D, T>();
    dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
      auto launch = [&](auto kernel, const char* name) {
        allow_shared(kernel, smem, "flash attention");
        check_sm90a_binary(kernel, "backward variant 4");
        rt::launch(kernel, dim3(unsigned(k_tiles * batch)), dim3(kTmaBwdThreads), smem, stream(),
                   name, params, k_tiles, maps);
      };
      if (atomic_dq) {
        launch(dkdv_tma_kernel<T, D, kDropout, true, P>,
               "flash_attention_backward_dkdv_tma_atomic_dq");
      } else {
        launch(dkdv_tma_kernel<T, D, kDropout, false, P>, "flash_attention_backward_dkdv_tma");
      }
    });
  }
  if (atomic_dq) return;  // the caller's dq_convert_kernel writes grad_q
  const int64_t q_tiles = (p.tq + kWgRows - 1) / kWgRows;
  if (q_tiles == 0) return;
  constexpr DType dtype = std::is_same_v<T, __half> ? DType::F16 : DType::BF16;
  constexpr uint32_t kKeys = uint32_t(wg_dq_keys<D>());
  TmaBackwardMaps maps;  // q and dO in 128-row boxes, k and v in key tiles; no row statistics
  maps.q = tma_operand_map(p, dtype, p.q, p.q_rows, p.tq, D, kWgRows, "q", maps.fold_q);
  maps.dout =
      tma_operand_map(p, dtype, p.grad_out, p.do_rows, p.tq, D, kWgRows, "grad_out", maps.fold_do);
  maps.k = tma_operand_map(p, dtype, p.k, p.k_rows, p.tk, D, kKeys, "k", maps.fold_k);
  maps.v = tma_operand_map(p, dtype, p.v, p.v_rows, p.tk, D, kKeys, "v", maps.fold_v);
  constexpr size_t smem = tma_dq_smem<D, T>();
  dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
    auto kernel = dq_tma_kernel<T, D, kDropout, P>;
    allow_shared(kernel, smem, "flash attention");
    check_sm90a_binary(kernel, "backward variant 4");
    rt::launch(kernel, dim3(unsigned(q_tiles * batch)), dim3(kTmaBwdThreads), smem, stream(),
               "flash_attention_backward_dq_tma", params, q_tiles, maps);
  });
}

template void launch_backward_wgmma<__half, 64>(const Params&, int64_t, bool);
template void launch_backward_wgmma<__half, 128>(const Params&, int64_t, bool);
template void launch_backward_wgmma<__nv_bfloat16, 64>(const Params&, int64_t, bool);
template void launch_backward_wgmma<__nv_bfloat16, 128>(const Params&, int64_t, bool);
template void launch_backward_tma<__half, 64>(const Params&, int64_t, bool);
template void launch_backward_tma<__half, 128>(const Params&, int64_t, bool);
template void launch_backward_tma<__nv_bfloat16, 64>(const Params&, int64_t, bool);
template void launch_backward_tma<__nv_bfloat16, 128>(const Params&, int64_t, bool);

}  // namespace lathe::kernels::cuda::flash
