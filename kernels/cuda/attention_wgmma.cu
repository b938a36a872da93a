// Forward variants 2 and 3 of the flash attention (attention_variant.h): FlashAttention-3's
// arithmetic on Hopper's warpgroup MMA (wgmma through kernels/cuda/ptx.cuh), sm_90a only, 3 with
// its intra-warpgroup pipelining; the helpers and conventions they share with attention.cu's
// FlashAttention-2 kernels are in flash_attention.cuh. Selected at run time by attention.cu's
// forward launcher; docs/kernels.md ("Forward variant 2", "Forward variant 3").
#include "kernels/cuda/flash_attention_wgmma.cuh"

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
template <int D>
constexpr int wg_block_n() {
  return 128;
}
template <int D, class T>
constexpr size_t wg_forward_smem() {
  // + 1024: the swizzle is a function of shared address bits 4..9, so tiles start 1024-aligned.
  return size_t(kWgRows + 4 * wg_block_n<D>()) * D * sizeof(T) + 1024;
}

// What both wgmma kernels work out before their loop: the block's batch and rows, the operands,
// and the shared-memory tiles with their wgmma descriptors.
template <class T, int D>
struct WgmmaBlock {
  static constexpr int BN = wg_block_n<D>();
  static constexpr int BM = kWgRows;
  static constexpr uint32_t kBlockBytesKV = BN * 128;
  static constexpr uint32_t kTileBytesKV = BN * D * sizeof(T);
  static_assert(D % 64 == 0, "128-byte swizzled rows hold 64 columns");

  T* sQ;  // [D/64][BM][64]
  T* sK;  // [2][D/64][BN][64]
  T* sV;  // [2][D/64][BN][64]
  int64_t b, i0, wg_i0, ldk, ldv, mask_base, row[2];
  int lane, t;
  const T *q_all, *k_all, *v_all, *q, *k, *v;
  int n_tiles;
  uint64_t desc_q, desc_k, desc_v;

  LATHE_DEVICE_INLINE WgmmaBlock(const Params& p, int64_t q_tiles, T* smem_raw) {
    const uintptr_t raw = reinterpret_cast<uintptr_t>(smem_raw);
    sQ = reinterpret_cast<T*>((raw + 1023) & ~uintptr_t(1023));
    sK = sQ + BM * D;
    sV = sK + 2 * BN * D;
    query_tile_of_block(blockIdx.x, q_tiles, BM, p.causal, b, i0);
    const int wg = int(threadIdx.x) / 128, warp = int(threadIdx.x) % 128 / 32;
    lane = int(threadIdx.x) % 32;
    const int g = lane >> 2;
    t = lane & 3;
    q_all = static_cast<const T*>(p.q);
    k_all = static_cast<const T*>(p.k);
    v_all = static_cast<const T*>(p.v);
    q = q_all + batch_offset(p, p.q_rows, b);
    k = k_all + batch_offset(p, p.k_rows, b);
    v = v_all + batch_offset(p, p.v_rows, b);
    ldk = p.k_rows.row;
    ldv = p.v_rows.row;
    const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
    n_tiles = int((j_end + BN - 1) / BN);
    wg_i0 = i0 + 64 * wg;  // this warpgroup's first query row
    row[0] = wg_i0 + 16 * warp + g;
    row[1] = row[0] + 8;
    mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
    // Descriptors of block 0, k-step 0; a k16 step of Q or K adds 32 bytes inside the 128-byte
    // row (the XOR uses the absolute address bits, so the start may move inside a row), a
    // 64-column block BM or BN rows of 128 bytes; a k16 step of V (16 keys) adds 16 rows = 2048
    // bytes.
    desc_q = rt::make_wgmma_desc(sQ + 64 * wg * 64, 16, 1024, rt::WgmmaSwizzle::B128);
    desc_k = rt::make_wgmma_desc(sK, 16, 1024, rt::WgmmaSwizzle::B128);
    desc_v = rt::make_wgmma_desc(sV, kBlockBytesKV, 1024, rt::WgmmaSwizzle::B128);
  }
  LATHE_DEVICE_INLINE void load_q(const Params& p) const {
    load_tile_sw128<D, BM>(sQ, q + i0 * p.q_rows.row, p.q_rows.row, p.tq - i0, q_all);
  }
  // Key tile `tile` into buffer `buf` of K or of V.
  LATHE_DEVICE_INLINE void load_k(const Params& p, int tile, int buf) const {
    const int64_t j = int64_t(tile) * BN;
    load_tile_sw128<D, BN>(sK + buf * BN * D, k + j * ldk, ldk, p.tk - j, k_all);
  }
  LATHE_DEVICE_INLINE void load_v(const Params& p, int tile, int buf) const {
    const int64_t j = int64_t(tile) * BN;
    load_tile_sw128<D, BN>(sV + buf * BN * D, v + j * ldv, ldv, p.tk - j, v_all);
  }
};

// Variant 2: per tile, S = Q K^T, wait, softmax, O rescaled, O += P V, wait: the tensor cores idle
// while the warpgroup runs its softmax (unless the other warpgroup's wgmmas fill the gap).
template <class T, int D, bool kDropout, class P = Params>
__global__ void __launch_bounds__(kWgThreads) forward_wgmma_kernel(P p, int64_t q_tiles) {
#if LATHE_FLASH_WGMMA
  using Block = WgmmaBlock<T, D>;
  constexpr int BN = Block::BN;
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  const Block blk(p, q_tiles, smem_raw);

  blk.load_q(p);
  if (blk.n_tiles > 0) {
    blk.load_k(p, 0, 0);
    blk.load_v(p, 0, 0);
  }
  rt::cp_async_commit();

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}, corr[2];

  for (int it = 0; it < blk.n_tiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < blk.n_tiles) {
      blk.load_k(p, it + 1, buf ^ 1);
      blk.load_v(p, it + 1, buf ^ 1);
      rt::cp_async_commit();
      rt::cp_async_wait<1>();
    } else {
      rt::cp_async_wait<0>();
    }
    publish_to_wgmma();

    float s[BN / 2];
    issue_qk<T, D, BN>(s, blk.desc_q, blk.desc_k, buf * Block::kTileBytesKV);
    rt::wgmma_wait<0>();
    rt::wgmma_fence_operand(s);

    scale_and_mask<BN>(p, s, blk.wg_i0, int64_t(it) * BN, blk.mask_base, blk.row, blk.t);
    online_softmax<BN>(s, m_run, l_run, corr);
    if constexpr (kDropout)
      drop_probabilities<BN>(p, s, blk.b, blk.row, int64_t(it) * BN, blk.lane);
    rescale<D>(o, corr);

    uint32_t pf[BN / 16][4];
    probabilities_to_a<T, BN>(pf, s);
    issue_pv<T, D, BN>(o, pf, blk.desc_v, buf * Block::kTileBytesKV);
    // Before o is read (the next rescale or the end), before the pf registers may be reused and
    // before the barrier below lets the next iteration overwrite this V buffer.
    rt::wgmma_wait<0>();
    after_pv<D, BN>(o, pf);
    __syncthreads();  // the next iteration refills this buffer
  }
  if (blk.n_tiles == 0) rt::cp_async_wait<0>();
  store_rows<T, D>(p, blk.b, blk.row, blk.t, o, m_run, l_run);
#else
  (void)p;
  (void)q_tiles;
  __trap();
#endif
}

// Variant 3: variant 2's arithmetic in the same order (bit-identical results) with
// FlashAttention-3's intra-warpgroup pipelining: iteration j issues S_j = Q K_j^T and then
// O += P_{j-1} V_{j-1}, and runs tile j's softmax while that P V is still on the tensor cores
// (wgmma groups complete in order: wait_group 1 is S_j). The rescale of O by tile j's factor
// waits for iteration j + 1, where it overlaps S_{j+1}; O = (O c_j + P_j V_j) c_{j+1} + ... is
// the same sequence of operations as variant 2's.
//
// Loads: one cp.async group per iteration, issued right after the barrier, holds K_{j+1} and V_j
// and is waited for at the next iteration's top, a whole iteration later. The buffers it fills
// were last read by S_{j-1} (K buffer (j+1) % 2) and P_{j-2} V_{j-2} (V buffer j % 2), both
// waited for by every warpgroup before this barrier, so one barrier per tile suffices (variant
// 2 needs two). Registers: s, pf and o live at once, as in variant 2.
template <class T, int D, bool kDropout, class P = Params>
__global__ void __launch_bounds__(kWgThreads) forward_wgmma_overlap_kernel(P p, int64_t q_tiles) {
#if LATHE_FLASH_WGMMA
  using Block = WgmmaBlock<T, D>;
  constexpr int BN = Block::BN;
  constexpr uint32_t kTile = Block::kTileBytesKV;
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  const Block blk(p, q_tiles, smem_raw);
  const int n_tiles = blk.n_tiles;

  // Group 1: Q and K_0, waited for now; group 2: K_1 and V_0, waited for at iteration 1 (or the
  // final P V), so it overlaps S_0 and its softmax.
  blk.load_q(p);
  if (n_tiles > 0) blk.load_k(p, 0, 0);
  rt::cp_async_commit();
  if (n_tiles > 1) blk.load_k(p, 1, 1);
  if (n_tiles > 0) blk.load_v(p, 0, 0);
  rt::cp_async_commit();
  rt::cp_async_wait<1>();
  publish_to_wgmma();

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}, corr[2] = {1.0f, 1.0f};
  float s[BN / 2];
  uint32_t pf[BN / 16][4];

  if (n_tiles > 0) {
    issue_qk<T, D, BN>(s, blk.desc_q, blk.desc_k, 0);
    rt::wgmma_wait<0>();
    rt::wgmma_fence_operand(s);
    scale_and_mask<BN>(p, s, blk.wg_i0, 0, blk.mask_base, blk.row, blk.t);
    online_softmax<BN>(s, m_run, l_run, corr);
    if constexpr (kDropout) drop_probabilities<BN>(p, s, blk.b, blk.row, 0, blk.lane);
    probabilities_to_a<T, BN>(pf, s);
  }
  for (int it = 1; it < n_tiles; ++it) {
    rt::cp_async_wait<0>();  // K_it and V_{it-1}, issued an iteration ago
    publish_to_wgmma();
    if (it + 1 < n_tiles) blk.load_k(p, it + 1, (it + 1) & 1);
    blk.load_v(p, it, it & 1);
    rt::cp_async_commit();

    issue_qk<T, D, BN>(s, blk.desc_q, blk.desc_k, (it & 1) * kTile);
    rescale<D>(o, corr);  // tile it-1's factor, while S_it runs
    issue_pv<T, D, BN>(o, pf, blk.desc_v, ((it - 1) & 1) * kTile);

    rt::wgmma_wait<1>();  // S_it; P_{it-1} V_{it-1} may still run
    rt::wgmma_fence_operand(s);
    scale_and_mask<BN>(p, s, blk.wg_i0, int64_t(it) * BN, blk.mask_base, blk.row, blk.t);
    online_softmax<BN>(s, m_run, l_run, corr);
    if constexpr (kDropout)
      drop_probabilities<BN>(p, s, blk.b, blk.row, int64_t(it) * BN, blk.lane);

    rt::wgmma_wait<0>();  // P_{it-1} V_{it-1}: o is ours again, pf may be overwritten
    after_pv<D, BN>(o, pf);
    probabilities_to_a<T, BN>(pf, s);
  }
  if (n_tiles > 0) {
    rt::cp_async_wait<0>();  // V_{n-1}
    publish_to_wgmma();
    rescale<D>(o, corr);
    issue_pv<T, D, BN>(o, pf, blk.desc_v, ((n_tiles - 1) & 1) * kTile);
    rt::wgmma_wait<0>();
    after_pv<D, BN>(o, pf);
  }
  store_rows<T, D>(p, blk.b, blk.row, blk.t, o, m_run, l_run);
#else
  (void)p;
  (void)q_tiles;
  __trap();
#endif
}

}  // namespace

template <class T, int D>
void launch_forward_wgmma(const Params& p, int64_t batch, int64_t q_len, bool overlap) {
  const int64_t q_tiles = (q_len + kWgRows - 1) / kWgRows;
  constexpr size_t smem = wg_forward_smem<D, T>();
  // Dropout is a template parameter, as in attention.cu's kernels (no dead Philox code).
  dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
    auto kernel = overlap ? forward_wgmma_overlap_kernel<T, D, kDropout, P>
                          : forward_wgmma_kernel<T, D, kDropout, P>;
    allow_shared(kernel, smem, "flash attention");
    check_sm90a_binary(kernel, overlap ? "forward variant 3" : "forward variant 2");
    rt::launch(kernel, dim3(unsigned(q_tiles * batch)), dim3(kWgThreads), smem, stream(),
               overlap ? "flash_attention_forward_wgmma_overlap" : "flash_attention_forward_wgmma",
               params, q_tiles);
  });
}

template void launch_forward_wgmma<__half, 64>(const Params&, int64_t, int64_t, bool);
template void launch_forward_wgmma<__half, 128>(const Params&, int64_t, int64_t, bool);
template void launch_forward_wgmma<__nv_bfloat16, 64>(const Params&, int64_t, int64_t, bool);
template void launch_forward_wgmma<__nv_bfloat16, 128>(const Params&, int64_t, int64_t, bool);

}  // namespace lathe::kernels::cuda::flash
