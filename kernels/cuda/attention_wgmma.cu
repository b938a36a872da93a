// Forward variant 2 of the flash attention (attention_variant.h): FlashAttention-3's arithmetic on
// Hopper's warpgroup MMA (wgmma through kernels/cuda/ptx.cuh), sm_90a only; the helpers and
// conventions it shares with attention.cu's FlashAttention-2 kernels are in flash_attention.cuh.
// Selected at run time by attention.cu's forward launcher; docs/kernels.md ("Forward variant 2").
#include "kernels/cuda/flash_attention.cuh"
#include "kernels/sim/sim.h"  // LATHE_DYNAMIC_SHARED in both builds

namespace lathe::kernels::cuda::flash {

namespace {

// ---- forward on Hopper warpgroup MMA (variant 2, sm_90a) ----
//
// FlashAttention-3's arithmetic without its pipeline (no TMA, no producer warp, no ping-pong yet):
// a block of kWgConsumers warpgroups, each owning 64 query rows (wgmma's M), shares K/V tiles of
// BN keys. Q, K and V sit in shared memory in the 128-byte-swizzled canonical layout (D/64 blocks
// of [rows][64], 128-byte rows, 16-byte chunk c of row r at c ^ (r % 8)): wgmma reads it without
// bank conflicts, and the same bytes are both the K-major B of S = Q K^T (K's rows are keys with d
// contiguous) and, for O += P V, the MN-major B with K = keys (imm-trans-b = 1), so V needs no
// transpose. Per tile: S = Q K^T by D/16 SS wgmmas (m64nBNk16), the online softmax in f32 on the
// accumulator layout (rows g and g + 8 of each warp's 16, the existing forward's helpers and
// order), P rounded to T straight into RS A fragments (the accumulator columns 16kk.. of a warp
// are its A rows in the mma layout, c_to_a), then O += P V by BN/16 RS wgmmas (m64nDk16). K/V are
// double-buffered with cp.async issued by all threads, as in the default kernel.
//
// Why two warpgroups (128 query rows): every K/V tile loaded feeds 128 rows, as in the default
// kernel's 128-row block, and while one warpgroup runs its softmax the other's wgmmas can keep the
// tensor cores busy. Why BN = 128: wgmma's throughput grows with N, and FlashAttention-3 uses
// 128-key tiles at d = 64 and 128. Registers per thread: S BN/2 = 64, O D/2 = 32 / 64, P BN/4 = 32;
// ptxas (CUDA 13, sm_90a) gives 191 at d = 64 and 220 at d = 128, no spills, so one 256-thread
// block per SM (two would need <= 128 registers: BN = 64 at d = 64 is the GPU's A/B to try).
// Shared memory (BM + 4 BN) D 2 bytes + 1 KiB of alignment: 81 KiB at d = 64, 161 KiB at d = 128.
constexpr int kWgConsumers = 2;
constexpr int kWgThreads = 128 * kWgConsumers;
constexpr int kWgRows = 64 * kWgConsumers;
template <int D>
constexpr int wg_block_n() {
  return 128;
}
template <int D, class T>
constexpr size_t wg_forward_smem() {
  // + 1024: the swizzle is a function of shared address bits 4..9, so tiles start 1024-aligned.
  return size_t(kWgRows + 4 * wg_block_n<D>()) * D * sizeof(T) + 1024;
}

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

template <class T, int N>
LATHE_DEVICE_INLINE void wgmma_qk(float (&d)[N / 2], uint64_t desc_q, uint64_t desc_k,
                                  bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    rt::wgmma_ss_f16<N>(d, desc_q, desc_k, accumulate);
  } else {
    rt::wgmma_ss_bf16<N>(d, desc_q, desc_k, accumulate);
  }
}
template <class T, int N>
LATHE_DEVICE_INLINE void wgmma_pv(float (&d)[N / 2], const uint32_t a[4], uint64_t desc_v) {
  if constexpr (std::is_same_v<T, __half>) {
    rt::wgmma_rs_f16<N, rt::WgmmaMajor::MN>(d, a, desc_v, true);
  } else {
    rt::wgmma_rs_bf16<N, rt::WgmmaMajor::MN>(d, a, desc_v, true);
  }
}

template <class T, int D>
__global__ void __launch_bounds__(kWgThreads) forward_wgmma_kernel(Params p, int64_t q_tiles) {
#if LATHE_FLASH_WGMMA
  constexpr int BN = wg_block_n<D>();
  constexpr int BM = kWgRows;
  constexpr uint32_t kBlockBytesQ = BM * 128;  // one 64-column block of the Q tile
  constexpr uint32_t kBlockBytesKV = BN * 128;
  constexpr uint32_t kTileBytesKV = BN * D * sizeof(T);
  static_assert(D % 64 == 0, "128-byte swizzled rows hold 64 columns");
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  const uintptr_t raw = reinterpret_cast<uintptr_t>(smem_raw);
  T* sQ = reinterpret_cast<T*>((raw + 1023) & ~uintptr_t(1023));  // [D/64][BM][64]
  T* sK = sQ + BM * D;                                            // [2][D/64][BN][64]
  T* sV = sK + 2 * BN * D;                                        // [2][D/64][BN][64]

  const int64_t b = int64_t(blockIdx.x) / q_tiles;
  const int64_t i0 = (int64_t(blockIdx.x) - b * q_tiles) * BM;
  const int wg = int(threadIdx.x) / 128, warp = int(threadIdx.x) % 128 / 32;
  const int lane = int(threadIdx.x) % 32, g = lane >> 2, t = lane & 3;
  const T* q_all = static_cast<const T*>(p.q);
  const T* k_all = static_cast<const T*>(p.k);
  const T* v_all = static_cast<const T*>(p.v);
  const T* q = q_all + batch_offset(p, p.q_rows, b);
  const T* k = k_all + batch_offset(p, p.k_rows, b);
  const T* v = v_all + batch_offset(p, p.v_rows, b);
  const int64_t ldk = p.k_rows.row, ldv = p.v_rows.row;

  load_tile_sw128<D, BM>(sQ, q + i0 * p.q_rows.row, p.q_rows.row, p.tq - i0, q_all);
  const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
  const int n_tiles = int((j_end + BN - 1) / BN);
  if (n_tiles > 0) {
    load_tile_sw128<D, BN>(sK, k, ldk, p.tk, k_all);
    load_tile_sw128<D, BN>(sV, v, ldv, p.tk, v_all);
  }
  rt::cp_async_commit();

  const int64_t wg_i0 = i0 + 64 * wg;  // this warpgroup's first query row
  const int64_t row[2] = {wg_i0 + 16 * warp + g, wg_i0 + 16 * warp + g + 8};
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  // Accumulators: x[4n + e] is row row[e / 2], column 8n + 2t + e % 2 (the mma C layout per
  // 8-column n-tile, which is wgmma's layout for warp `warp` of the warpgroup).
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  // Descriptors of block 0, k-step 0; a k16 step of Q or K adds 32 bytes inside the 128-byte row
  // (the XOR uses the absolute address bits, so the start may move inside a row), a 64-column
  // block BM or BN rows of 128 bytes; a k16 step of V (16 keys) adds 16 rows = 2048 bytes.
  const uint64_t desc_q = rt::make_wgmma_desc(sQ + 64 * wg * 64, 16, 1024, rt::WgmmaSwizzle::B128);
  const uint64_t desc_k = rt::make_wgmma_desc(sK, 16, 1024, rt::WgmmaSwizzle::B128);
  const uint64_t desc_v = rt::make_wgmma_desc(sV, kBlockBytesKV, 1024, rt::WgmmaSwizzle::B128);

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
    // cp.async writes through the generic proxy, wgmma reads through the async proxy: each
    // thread fences its own copies, then the barrier publishes everyone's.
    rt::fence_proxy_async_shared();
    __syncthreads();

    // S = Q K^T. wgmma.fence orders this thread's earlier register accesses (the last tile's
    // reads of s, writes of o) before the asynchronous wgmmas; fence_operand keeps the compiler
    // from moving those accesses across it, or reads of s above the wait.
    float s[BN / 2];
    rt::wgmma_fence_operand(s);
    rt::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t at_q = (kk / 4) * kBlockBytesQ + (kk % 4) * 32;
      const uint32_t at_k = buf * kTileBytesKV + (kk / 4) * kBlockBytesKV + (kk % 4) * 32;
      wgmma_qk<T, BN>(s, desc_q + (at_q >> 4), desc_k + (at_k >> 4), kk > 0);
    }
    rt::wgmma_commit();
    rt::wgmma_wait<0>();
    rt::wgmma_fence_operand(s);

    // Scale and mask (log2 units), then the online softmax of rows g and g + 8, as in
    // forward_block.
    const int64_t j0 = int64_t(it) * BN;
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
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < BN / 8; ++n)
        mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
      mx = quad_max(mx);
      const float m_new = fmaxf(m_run[r], mx);
      // No key above -inf yet: shift by 0 so exp2(-inf - 0) = 0 instead of NaN.
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = fast_exp2(m_run[r] - m_use);
      m_run[r] = m_new;
      l_run[r] *= corr;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[4 * n + 2 * r] *= corr;
        o[4 * n + 2 * r + 1] *= corr;
      }
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

    // O += P V, P as RS A fragments: k-step kk (keys 16kk..) is n-tiles 2kk and 2kk + 1.
    uint32_t pf[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) c_to_a<T>(pf[kk], s + 8 * kk, s + 8 * kk + 4);
    rt::wgmma_fence_operand(o);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) rt::wgmma_fence_operand(pf[kk]);
    rt::wgmma_fence();  // o was rescaled and pf written since the last wgmma
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      wgmma_pv<T, D>(o, pf[kk], desc_v + ((buf * kTileBytesKV + kk * 16 * 128) >> 4));
    }
    rt::wgmma_commit();
    // Before o is read (the next rescale or the end), before the pf registers may be reused
    // (the wgmmas read them asynchronously: fence_operand keeps them live until here), and
    // before the barrier below lets the next iteration overwrite this V buffer.
    rt::wgmma_wait<0>();
    rt::wgmma_fence_operand(o);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) rt::wgmma_fence_operand(pf[kk]);
    __syncthreads();  // the next iteration refills this buffer
  }
  if (n_tiles == 0) rt::cp_async_wait<0>();

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
#else
  (void)p;
  (void)q_tiles;
  __trap();
#endif
}
#undef LATHE_FLASH_WGMMA

}  // namespace

template <class T, int D>
void launch_forward_wgmma(const Params& p, int64_t batch, int64_t q_len) {
  const int64_t q_tiles = (q_len + kWgRows - 1) / kWgRows;
  constexpr size_t smem = wg_forward_smem<D, T>();
  auto kernel = forward_wgmma_kernel<T, D>;
  allow_shared(kernel, smem, "flash attention");
#ifdef __CUDACC__
  // A build without 90a in LATHE_CUDA_ARCHS would run the sm_80 stub, which traps.
  cudaFuncAttributes attr{};
  LATHE_CHECK(cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.binaryVersion == 90,
              "flash attention: forward variant 2 needs the kernel compiled for sm_90a "
              "(LATHE_CUDA_ARCHS with 90a), found binary version ",
              attr.binaryVersion);
#endif
  rt::launch(kernel, dim3(unsigned(q_tiles * batch)), dim3(kWgThreads), smem, stream(),
             "flash_attention_forward_wgmma", p, q_tiles);
}

template void launch_forward_wgmma<__half, 64>(const Params&, int64_t, int64_t);
template void launch_forward_wgmma<__half, 128>(const Params&, int64_t, int64_t);
template void launch_forward_wgmma<__nv_bfloat16, 64>(const Params&, int64_t, int64_t);
template void launch_forward_wgmma<__nv_bfloat16, 128>(const Params&, int64_t, int64_t);

}  // namespace lathe::kernels::cuda::flash
