// The shared part of the sm_90a flash attention kernels on warpgroup MMA (attention_wgmma.cu: the
// forward variants 2 and 3; attention_wgmma_tma.cu: forward variant 4; attention_wgmma_backward.cu:
// backward variant 2): blocks of two consumer warpgroups, tiles in the 128-byte-swizzled canonical
// layout wgmma reads, loaded with cp.async, the typed wgmma calls, and the forward's per-tile steps
// (masking, online softmax, dropout, P V) on the accumulator layout. docs/kernels.md ("Forward
// variant 2") has the layout.
#pragma once

#include <type_traits>

#include "kernels/cuda/flash_attention.cuh"
#include "kernels/cuda/tensor_map.h"
#include "kernels/sim/sim.h"  // LATHE_DYNAMIC_SHARED in both builds

namespace lathe::kernels::cuda::flash {

constexpr int kWgConsumers = 2;
constexpr int kWgThreads = 128 * kWgConsumers;
constexpr int kWgRows = 64 * kWgConsumers;
// Compiled only where wgmma exists (sm_90a device code, and the simulator): the sm_80 pass gets a
// trapping stub instead of a body of trapping wrappers, and the launcher refuses other GPUs.
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LATHE_FLASH_WGMMA 1
#else
#define LATHE_FLASH_WGMMA 0
#endif

// Rows [0, valid) of a [ROWS, D] tile at gmem (row stride ld, rows 16-byte aligned) into the
// 128-byte-swizzled layout at smem (1024-byte aligned); rows past `valid` are zero-filled. Each
// thread copies the same 16-byte column chunk of rows r0, r0 + kStep, ...: kStep is a multiple of
// 8, so the swizzled offset inside a row is computed once (a loop over flat chunk indices, with its
// divisions and swizzle per chunk, cost ~500 more SASS instructions per tile at d = 128).
template <int D, int ROWS, class T>
LATHE_DEVICE_INLINE void load_tile_sw128(T* smem, const T* gmem, int64_t ld, int64_t valid,
                                         const T* any_valid) {
  constexpr int kChunks = D / 8;
  constexpr int kStep = kWgThreads / kChunks;
  static_assert(kWgThreads % kChunks == 0 && kStep % 8 == 0 && ROWS % kStep == 0,
                "every thread keeps one chunk column and swizzle phase");
  const int r0 = int(threadIdx.x) / kChunks, col = (int(threadIdx.x) % kChunks) * 8;
  char* dst = reinterpret_cast<char*>(smem) + uint32_t(col / 64) * ROWS * 128 +
              rt::wgmma_offset(rt::WgmmaSwizzle::B128, r0, col % 64, 16, 1024);
#pragma unroll
  for (int i = 0; i < ROWS / kStep; ++i) {
    const int r = r0 + i * kStep;
    const bool ok = r < valid;
    rt::cp_async_16(dst + i * kStep * 128, ok ? gmem + int64_t(r) * ld + col : any_valid,
                    ok ? 16 : 0);
  }
}

// One m64nNk16 wgmma of storage type T, both operands in shared memory: A K-major (rows are M, K
// contiguous), B K-major (rows are N), as S = Q K^T needs, or with kB = MN MN-major (rows are K,
// N contiguous), as the atomic backward's dQ = dS K needs.
template <class T, int N, rt::WgmmaMajor kB = rt::WgmmaMajor::K>
LATHE_DEVICE_INLINE void ss_wgmma(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                  bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    rt::wgmma_ss_f16<N, kB>(d, desc_a, desc_b, accumulate);
  } else {
    rt::wgmma_ss_bf16<N, kB>(d, desc_a, desc_b, accumulate);
  }
}
// One accumulating m64nNk16 wgmma with A from registers (mma fragments) and an MN-major B in
// shared memory (rows of B are K, N contiguous), as O += P V needs with V stored [keys][d].
template <class T, int N>
LATHE_DEVICE_INLINE void rs_wgmma_mn(float (&d)[N / 2], const uint32_t a[4], uint64_t desc_b) {
  if constexpr (std::is_same_v<T, __half>) {
    rt::wgmma_rs_f16<N, rt::WgmmaMajor::MN>(d, a, desc_b, true);
  } else {
    rt::wgmma_rs_bf16<N, rt::WgmmaMajor::MN>(d, a, desc_b, true);
  }
}

template <class T>
LATHE_DEVICE_INLINE T* align_1024(T* raw) {
  // The swizzle is a function of shared address bits 4..9: tiles start 1024-aligned. On the GPU
  // that is the shared-window address wgmma and TMA see (CUTLASS aligns that one too), which
  // equals the generic pointer's alignment only if the window's base is 1024-aligned; in the
  // simulator shared memory is host memory and the host address is the one it swizzles.
#ifdef __CUDACC__
  const uint32_t pad = (1024u - (rt::shared_address(raw) & 1023u)) & 1023u;
  return reinterpret_cast<T*>(reinterpret_cast<char*>(raw) + pad);
#else
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
#endif
}

// The wgmma kernels' sm_80 instantiations are trapping stubs: a build without 90a in
// LATHE_CUDA_ARCHS would run one. Their launchers refuse that here, naming `what`.
template <class Kernel>
void check_sm90a_binary(Kernel kernel, const char* what) {
#ifdef __CUDACC__
  cudaFuncAttributes attr{};
  LATHE_CHECK(cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.binaryVersion == 90,
              "flash attention: ", what,
              " needs its kernels compiled for sm_90a (LATHE_CUDA_ARCHS with 90a), found binary "
              "version ",
              attr.binaryVersion);
#else
  (void)kernel;
  (void)what;
#endif
}

// cp.async writes through the generic proxy, wgmma reads through the async proxy: each thread
// fences its own copies, then the barrier publishes everyone's.
LATHE_DEVICE_INLINE void publish_to_wgmma() {
  rt::fence_proxy_async_shared();
  __syncthreads();
}

// ---- TMA (the variant 4 kernels: attention_wgmma_tma.cu, attention_wgmma_backward.cu) ----

// The tensor map of one operand of p for boxes of box_rows rows and 64 columns, 128-byte
// swizzled: [batch][len][row elements], the inner of two batch dims folded into the row where its
// strides need it (`fold`, tma_coord). attention_wgmma_tma.cu.
rt::TensorMap tma_operand_map(const Params& p, DType dtype, const void* data, const Rows& rows,
                              int64_t len, int64_t d, uint32_t box_rows, const char* name,
                              bool& fold);

// Where batch b of an operand sits in its tensor map: z, the batch index, and x0, the element
// offset of an inner batch dim folded into the row (the head of a [B, T, H, d] view), which
// leaves z the outer batch index.
struct TmaCoord {
  int32_t x0, z;
};
#if LATHE_FLASH_WGMMA  // device code only where the kernels have a body
LATHE_DEVICE_INLINE TmaCoord tma_coord(const Params& p, const Rows& rows, bool fold, int64_t b) {
  if (!fold) return {0, int32_t(b)};
  const int64_t outer = b / p.lead_size[1];
  return {int32_t((b - outer * p.lead_size[1]) * rows.lead[1]), int32_t(outer)};
}
#endif

// Rows [y, y + ROWS) of an operand's batch c into the swizzled tile at dst (one box per 64
// columns), completing on bar.
template <int D, int ROWS, class T>
LATHE_DEVICE_INLINE void tma_tile(T* dst, const rt::TensorMap* map, TmaCoord c, int64_t y,
                                  uint64_t* bar) {
#pragma unroll
  for (int blk = 0; blk < D / 64; ++blk) {
    rt::tma_load_3d(dst + blk * ROWS * 64, map, c.x0 + 64 * blk, int32_t(y), c.z, bar);
  }
}

// ---- the forward kernels' steps on the accumulator layout (variants 2, 3 and 4) ----

// Scale and mask tile j0's scores of this thread's rows (log2 units), as forward_block does.
template <int BN>
LATHE_DEVICE_INLINE void scale_and_mask(const Params& p, float (&s)[BN / 2], int64_t wg_i0,
                                        int64_t j0, int64_t mask_base, const int64_t (&row)[2],
                                        int t) {
  if (tile_unmasked<BN>(p, wg_i0, j0)) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) s[i] *= p.scale_log2;
  } else {
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[4 * n + e] =
            masked_score(p, mask_base, s[4 * n + e], row[e >> 1], j0 + 8 * n + 2 * t + (e & 1));
      }
    }
  }
}

// The online softmax step of one tile for rows g and g + 8 (forward_block's order): the running
// max and sum move on, s becomes the unnormalized probabilities, and corr[r] is the factor the
// output accumulated so far must be scaled by before this tile's P V is added to it.
template <int BN>
LATHE_DEVICE_INLINE void online_softmax(float (&s)[BN / 2], float (&m_run)[2], float (&l_run)[2],
                                        float (&corr)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
    mx = quad_max(mx);
    const float m_new = fmaxf(m_run[r], mx);
    // No key above -inf yet: shift by 0 so exp2(-inf - 0) = 0 instead of NaN.
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    corr[r] = fast_exp2(m_run[r] - m_use);
    m_run[r] = m_new;
    l_run[r] *= corr[r];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float e = fast_exp2(s[4 * n + 2 * r + c] - m_use);
        l_run[r] += e;
        s[4 * n + 2 * r + c] = e;
      }
    }
  }
}

// Attention dropout on tile j0's probabilities after the softmax step (the row sums keep the
// undropped ones): the same Philox draws and pairing as forward_block.
template <int BN, class P>
LATHE_DEVICE_INLINE void drop_probabilities(const P& p, float (&s)[BN / 2], int64_t b,
                                            const int64_t (&row)[2], int64_t j0, int lane) {
  static_assert(BN % 64 == 0, "dropout_row_bits covers 64 keys");
  const int t = lane & 3;
#pragma unroll
  for (int h = 0; h < BN / 64; ++h) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint32_t bits = dropout_row_bits(p, b, row[r], j0 + 64 * h, lane);
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        float z[2];
        dropout_pair_from_bits(p, bits, n, row[r], j0 + 64 * h + 8 * n + 2 * t, z);
        s[4 * (8 * h + n) + 2 * r] *= z[0];
        s[4 * (8 * h + n) + 2 * r + 1] *= z[1];
      }
    }
  }
}

template <int D>
LATHE_DEVICE_INLINE void rescale(float (&o)[D / 2], const float (&corr)[2]) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[4 * n + e] *= corr[e >> 1];
  }
}

// P (the probabilities in s) rounded to T as RS A fragments: k-step kk (keys 16kk..) is the
// accumulator's n-tiles 2kk and 2kk + 1.
template <class T, int BN>
LATHE_DEVICE_INLINE void probabilities_to_a(uint32_t (&pf)[BN / 16][4], const float (&s)[BN / 2]) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) c_to_a<T>(pf[kk], s + 8 * kk, s + 8 * kk + 4);
}

// S = Q K^T over the K tile at byte offset k_at of sK, issued and committed (not waited for).
// wgmma.fence orders this thread's earlier register accesses (the last tile's reads of s) before
// the asynchronous wgmmas; fence_operand keeps the compiler from moving those accesses across it.
template <class T, int D, int BN>
LATHE_DEVICE_INLINE void issue_qk(float (&s)[BN / 2], uint64_t desc_q, uint64_t desc_k,
                                  uint32_t k_at) {
  constexpr uint32_t kBlockBytesQ = kWgRows * 128;  // one 64-column block of the Q tile
  constexpr uint32_t kBlockBytesKV = BN * 128;
  rt::wgmma_fence_operand(s);
  rt::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t at_q = (kk / 4) * kBlockBytesQ + (kk % 4) * 32;
    const uint32_t at_k = k_at + (kk / 4) * kBlockBytesKV + (kk % 4) * 32;
    ss_wgmma<T, BN>(s, desc_q + (at_q >> 4), desc_k + (at_k >> 4), kk > 0);
  }
  rt::wgmma_commit();
}

// O += P V over the V tile at byte offset v_at of sV, issued and committed. The wgmmas read o and
// pf asynchronously: fence_operand keeps the compiler from touching them until the caller's
// matching wait (wait_pv).
template <class T, int D, int BN>
LATHE_DEVICE_INLINE void issue_pv(float (&o)[D / 2], uint32_t (&pf)[BN / 16][4], uint64_t desc_v,
                                  uint32_t v_at) {
  rt::wgmma_fence_operand(o);
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) rt::wgmma_fence_operand(pf[kk]);
  rt::wgmma_fence();  // o was rescaled and pf written since the last wgmma
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    rs_wgmma_mn<T, D>(o, pf[kk], desc_v + ((v_at + kk * 16 * 128) >> 4));
  }
  rt::wgmma_commit();
}
template <int D, int BN>
LATHE_DEVICE_INLINE void after_pv(float (&o)[D / 2], uint32_t (&pf)[BN / 16][4]) {
  rt::wgmma_fence_operand(o);
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) rt::wgmma_fence_operand(pf[kk]);
}

// Rows g and g + 8 of the output, normalized, and their lse.
template <class T, int D>
LATHE_DEVICE_INLINE void store_rows(const Params& p, int64_t b, const int64_t (&row)[2], int t,
                                    const float (&o)[D / 2], const float (&m_run)[2],
                                    const float (&l_run)[2]) {
  T* out = static_cast<T*>(p.out) + batch_offset(p, p.out_rows, b);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    const int64_t i = row[r];
    if (i >= p.tq) continue;
    const bool empty = l == 0.0f;  // every key masked: zeros, lse = -inf
    const float inv = empty ? 0.0f : 1.0f / l;
    T* orow = out + i * p.out_rows.row;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(orow + 8 * n + 2 * t) =
          pack2<T>(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
    }
    if (t == 0) p.lse[b * p.tq + i] = empty ? -INFINITY : (m_run[r] + log2f(l)) * kLn2;
  }
}

}  // namespace lathe::kernels::cuda::flash
