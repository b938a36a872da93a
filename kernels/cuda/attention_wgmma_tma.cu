// Forward variant 4 of the flash attention (attention_variant.h): FlashAttention-3's pipeline on
// sm_90a. Variant 3's arithmetic (the same per-tile steps from flash_attention_wgmma.cuh, in the
// same order, so the same bits) with the loads and the scheduling of FlashAttention-3:
//  - warp specialization: a producer warpgroup, whose one elected thread issues TMA bulk tensor
//    copies (cp.async.bulk.tensor from host-made tensor maps, landing in the 128-byte-swizzled
//    layout wgmma reads) into a ring of K and V stages, and two consumer warpgroups of 64 query
//    rows each; setmaxnreg moves registers from the producer (24) to the consumers (240);
//  - mbarriers instead of block barriers: a full barrier per stage and operand completes when the
//    copy's bytes have landed (expect_tx), an empty barrier when every consumer thread is done
//    with the stage (K after its S = Q K^T, V after its P V), so K and V are released separately;
//  - inter-warpgroup ping-pong: named barriers give the two consumers alternating turns at issuing
//    their wgmmas, so one's softmax runs while the other's GEMMs occupy the tensor cores;
//  - intra-warpgroup overlap, as in variant 3: S_j is issued before P_{j-1} V_{j-1}, and tile j's
//    softmax runs while that P V is in flight.
// docs/kernels.md ("Forward variant 4").
#include <string>

#include "kernels/cuda/flash_attention_wgmma.cuh"
#include "kernels/cuda/tensor_map.h"

namespace lathe::kernels::cuda::flash {

namespace {

constexpr int kTmaThreads = 128 * (1 + kWgConsumers);  // the producer warpgroup and the consumers
constexpr int kTmaBlockN = 128;                        // keys per tile
constexpr int kProducerRegisters = 24;
constexpr int kConsumerRegisters = 240;  // 128 * 24 + 256 * 240 <= 65536
static_assert(128 * kProducerRegisters + 128 * kWgConsumers * kConsumerRegisters <= 65536,
              "setmaxnreg must not ask for more registers than the SM has");

// Ring depth: three stages of K and V at d = 64 (96 KiB), two at d = 128 (128 KiB), beside the
// 16 / 32 KiB Q tile.
template <int D>
constexpr int tma_stages() {
  return D == 64 ? 3 : 2;
}
template <int D, class T>
constexpr size_t tma_forward_smem() {
  // Q, the K and V stages, 1 KiB of alignment, the mbarriers.
  return size_t(kWgRows + 2 * tma_stages<D>() * kTmaBlockN) * D * sizeof(T) + 1024 +
         (1 + 4 * tma_stages<D>()) * sizeof(uint64_t);
}

// The tensor maps of q, k and v: [batch][rows][row elements] each (tma_operand_map below), and
// per operand whether its inner batch dim is folded into the row.
struct TmaMaps {
  rt::TensorMap q, k, v;
  bool fold_q = false, fold_k = false, fold_v = false;
};

template <class T, int D, bool kDropout, class P = Params>
__global__ void __launch_bounds__(kTmaThreads, 1)
    forward_tma_kernel(P p, int64_t q_tiles, const __grid_constant__ TmaMaps maps) {
#if LATHE_FLASH_WGMMA
  constexpr int BM = kWgRows, BN = kTmaBlockN, S = tma_stages<D>();
  constexpr uint32_t kTileBytes = BN * D * sizeof(T);  // one K or V stage, or the Q tile
  static_assert(BM == BN, "Q tiles and K/V tiles share the box shape");
  LATHE_DYNAMIC_SHARED(T, smem_raw);
  T* sQ = align_1024(smem_raw);  // [D/64][BM][64]
  T* sK = sQ + BM * D;           // [S][D/64][BN][64]
  T* sV = sK + S * BN * D;       // [S][D/64][BN][64]
  uint64_t* q_full = reinterpret_cast<uint64_t*>(sV + S * BN * D);
  uint64_t* k_full = q_full + 1;
  uint64_t* v_full = k_full + S;
  uint64_t* k_empty = v_full + S;
  uint64_t* v_empty = k_empty + S;

  int64_t b, i0;
  query_tile_of_block(blockIdx.x, q_tiles, BM, p.causal, b, i0);
  const int64_t j_end = p.causal ? (p.tk < i0 + BM ? p.tk : i0 + BM) : p.tk;
  const int n_tiles = int((j_end + BN - 1) / BN);
  const int wg = int(threadIdx.x) / 128;
  if (threadIdx.x == 0) {
    rt::mbarrier_init(q_full, 1);
    for (int s = 0; s < S; ++s) {
      rt::mbarrier_init(&k_full[s], 1);  // the producer's arrive.expect_tx, then the bytes
      rt::mbarrier_init(&v_full[s], 1);
      rt::mbarrier_init(&k_empty[s], 128 * kWgConsumers);  // every consumer thread
      rt::mbarrier_init(&v_empty[s], 128 * kWgConsumers);
    }
    rt::fence_mbarrier_init();
  }
  __syncthreads();  // the last block-wide barrier: the producer leaves early

  if (wg == 0) {
    rt::setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == 0) {
      const TmaCoord cq = tma_coord(p, p.q_rows, maps.fold_q, b),
                     ck = tma_coord(p, p.k_rows, maps.fold_k, b),
                     cv = tma_coord(p, p.v_rows, maps.fold_v, b);
      rt::mbarrier_arrive_expect_tx(q_full, kTileBytes);
      tma_tile<D, kTmaBlockN>(sQ, &maps.q, cq, i0, q_full);
      // K of tile t waits for the consumers' S of tile t - S, V for their P V of tile t - S.
      for (int it = 0; it < n_tiles; ++it) {
        const int s = it % S, use = it / S;
        if (use > 0) rt::mbarrier_wait_parity(&k_empty[s], uint32_t(use - 1) & 1u);
        rt::mbarrier_arrive_expect_tx(&k_full[s], kTileBytes);
        tma_tile<D, kTmaBlockN>(sK + s * BN * D, &maps.k, ck, int64_t(it) * BN, &k_full[s]);
        if (use > 0) rt::mbarrier_wait_parity(&v_empty[s], uint32_t(use - 1) & 1u);
        rt::mbarrier_arrive_expect_tx(&v_full[s], kTileBytes);
        tma_tile<D, kTmaBlockN>(sV + s * BN * D, &maps.v, cv, int64_t(it) * BN, &v_full[s]);
      }
    }
    return;
  }
  rt::setmaxnreg_inc<kConsumerRegisters>();

  const int c = wg - 1;  // consumer index: query rows i0 + 64c ..
  const int ct = int(threadIdx.x) - 128 * wg, warp = ct / 32, lane = ct % 32;
  const int g = lane >> 2, t = lane & 3;
  const int64_t wg_i0 = i0 + 64 * c;
  const int64_t row[2] = {wg_i0 + 16 * warp + g, wg_i0 + 16 * warp + g + 8};
  const int64_t mask_base = p.mask.data != nullptr ? p.mask.batch_offset(b) : 0;
  const uint64_t desc_q = rt::make_wgmma_desc(sQ + 64 * c * 64, 16, 1024, rt::WgmmaSwizzle::B128);
  const uint64_t desc_k = rt::make_wgmma_desc(sK, 16, 1024, rt::WgmmaSwizzle::B128);
  const uint64_t desc_v = rt::make_wgmma_desc(sV, BN * 128, 1024, rt::WgmmaSwizzle::B128);

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}, corr[2] = {1.0f, 1.0f};
  float s[BN / 2];
  uint32_t pf[BN / 16][4];

  // Ping-pong: consumer c's turn to issue wgmmas opens at named barrier 1 + c, where its 128
  // threads wait (bar.sync) for the other consumer's 128 (bar.arrive at the end of its turn).
  // Consumer 0 goes first; each takes n_tiles + 1 turns, and consumer 1's last turn arrives
  // nowhere, so that both barriers end balanced.
  const int my_turn = 1 + c, their_turn = 2 - c;
  if (n_tiles > 0 && c == 1) rt::named_barrier_arrive(1, 256);
  rt::mbarrier_wait_parity(q_full, 0);

  if (n_tiles > 0) {
    rt::mbarrier_wait_parity(&k_full[0], 0);
    rt::named_barrier_sync(my_turn, 256);
    issue_qk<T, D, BN>(s, desc_q, desc_k, 0);
    rt::named_barrier_arrive(their_turn, 256);
    rt::wgmma_wait<0>();
    rt::wgmma_fence_operand(s);
    rt::mbarrier_arrive(&k_empty[0]);
    scale_and_mask<BN>(p, s, wg_i0, 0, mask_base, row, t);
    online_softmax<BN>(s, m_run, l_run, corr);
    if constexpr (kDropout) drop_probabilities<BN>(p, s, b, row, 0, lane);
    probabilities_to_a<T, BN>(pf, s);
  }
  for (int it = 1; it < n_tiles; ++it) {
    const int sk = it % S, sv = (it - 1) % S;
    rt::mbarrier_wait_parity(&k_full[sk], uint32_t(it / S) & 1u);
    rt::named_barrier_sync(my_turn, 256);
    issue_qk<T, D, BN>(s, desc_q, desc_k, sk * kTileBytes);
    rescale<D>(o, corr);  // tile it-1's factor, while S_it runs
    rt::mbarrier_wait_parity(&v_full[sv], uint32_t((it - 1) / S) & 1u);
    issue_pv<T, D, BN>(o, pf, desc_v, sv * kTileBytes);
    rt::named_barrier_arrive(their_turn, 256);

    rt::wgmma_wait<1>();  // S_it; P_{it-1} V_{it-1} may still run
    rt::wgmma_fence_operand(s);
    rt::mbarrier_arrive(&k_empty[sk]);
    scale_and_mask<BN>(p, s, wg_i0, int64_t(it) * BN, mask_base, row, t);
    online_softmax<BN>(s, m_run, l_run, corr);
    if constexpr (kDropout) drop_probabilities<BN>(p, s, b, row, int64_t(it) * BN, lane);

    rt::wgmma_wait<0>();  // P_{it-1} V_{it-1}: o is ours again, pf may be overwritten
    after_pv<D, BN>(o, pf);
    rt::mbarrier_arrive(&v_empty[sv]);
    probabilities_to_a<T, BN>(pf, s);
  }
  if (n_tiles > 0) {
    const int sv = (n_tiles - 1) % S;
    rt::mbarrier_wait_parity(&v_full[sv], uint32_t((n_tiles - 1) / S) & 1u);
    rt::named_barrier_sync(my_turn, 256);
    rescale<D>(o, corr);
    issue_pv<T, D, BN>(o, pf, desc_v, sv * kTileBytes);
    if (c == 0) rt::named_barrier_arrive(their_turn, 256);
    rt::wgmma_wait<0>();
    after_pv<D, BN>(o, pf);
  }
  store_rows<T, D>(p, b, row, t, o, m_run, l_run);
#else
  (void)p;
  (void)q_tiles;
  (void)maps;
  __trap();
#endif
}

}  // namespace

// How one operand is laid out as a 3D tensor [batch][len][row elements] with the operand's row
// stride and one batch stride. Two batch dims (the kernels' leading dims, which merge only where
// every operand allows) become one for this operand when its own strides merge ([B, H, T, d]
// contiguous), or else the inner one is folded into the row when its stride times its size fits
// there (the heads of a [B, T, H, d] view or of a packed QKV projection, or a stride-0 broadcast
// over heads), with x0 = head * stride. `problem` is empty when the operand has a tensor map and
// says why not otherwise (a broadcast or overlapping batch dim, a third leading dim).
struct TmaOperandLayout {
  int64_t batches = 1, batch_stride = 0;
  bool fold = false;
  std::string problem;
};

TmaOperandLayout tma_operand_layout(const Params& p, const Rows& rows, int64_t len, int64_t d,
                                    const char* name) {
  TmaOperandLayout out;
  auto refuse = [&](auto&&... parts) {
    out.problem = ::lathe::detail::concat("flash attention: variant 4 (TMA) ", parts...);
    return out;
  };
  if (p.lead > 2) {
    return refuse("reads each operand as [batch][rows][row]; ", name, " has ", p.lead,
                  " leading dims that do not merge");
  }
  const int64_t rows_len = len > 0 ? len : 1;
  out.batch_stride = rows.row * rows_len;
  if (p.lead == 1) {
    out.batches = p.lead_size[0];
    out.batch_stride = rows.lead[0];
  } else if (p.lead == 2) {
    if (rows.lead[0] == rows.lead[1] * p.lead_size[1]) {
      out.batches = p.lead_size[0] * p.lead_size[1];
      out.batch_stride = rows.lead[1];
    } else {
      if (!(rows.lead[1] >= 0 && (p.lead_size[1] - 1) * rows.lead[1] + d <= rows.row)) {
        return refuse("folds ", name, "'s inner batch dim into its rows, which needs (",
                      p.lead_size[1], " - 1) * ", rows.lead[1], " + ", d, " <= its row stride ",
                      rows.row);
      }
      out.fold = true;
      out.batches = p.lead_size[0];
      out.batch_stride = rows.lead[0];
    }
  }
  if (out.batches > 1 && out.batch_stride < rows.row * rows_len) {
    return refuse("needs ", name, "'s batch stride (", out.batch_stride, " elements) to cover its ",
                  len, " rows of ", rows.row,
                  " (a broadcast or overlapping batch dim has no tensor map)");
  }
  if (!rows.vec) return refuse("needs ", name, "'s rows on 16-byte boundaries");
  if (out.batches == 1) out.batch_stride = rows.row * rows_len;
  return out;
}

// The tensor map of one operand for boxes of box_rows rows and 64 columns (tma_operand_layout).
// Rows past `len` and columns past the row are zero-filled by the copy; columns past d within a
// row (another head, or padding) are never read. `fold` says which way batch indices map.
rt::TensorMap tma_operand_map(const Params& p, DType dtype, const void* data, const Rows& rows,
                              int64_t len, int64_t d, uint32_t box_rows, const char* name,
                              bool& fold) {
  const TmaOperandLayout layout = tma_operand_layout(p, rows, len, d, name);
  LATHE_CHECK(layout.problem.empty(), layout.problem);
  fold = layout.fold;
  const int64_t es = int64_t(element_size(dtype));
  const int64_t rows_len = len > 0 ? len : 1;
  return rt::make_tensor_map_3d(dtype, data,
                                {uint64_t(rows.row), uint64_t(rows_len), uint64_t(layout.batches)},
                                {uint64_t(rows.row * es), uint64_t(layout.batch_stride * es)},
                                {64, box_rows, 1}, rt::TensorMapSwizzle::B128);
}

std::string tma_layout_problem(const Params& p, int64_t d, bool backward) {
  struct Operand {
    const Rows* rows;
    int64_t len;
    const char* name;
  };
  // The forward maps q, k and v; the backward grad_out too.
  const Operand operands[] = {{&p.q_rows, p.tq, "q"},
                              {&p.k_rows, p.tk, "k"},
                              {&p.v_rows, p.tk, "v"},
                              {&p.do_rows, p.tq, "grad_out"}};
  for (int i = 0; i < (backward ? 4 : 3); ++i) {
    const Operand& o = operands[i];
    std::string problem = tma_operand_layout(p, *o.rows, o.len, d, o.name).problem;
    if (!problem.empty()) return problem;
  }
  return {};
}

template <class T, int D>
void launch_forward_tma(const Params& p, int64_t batch, int64_t q_len) {
  const int64_t q_tiles = (q_len + kWgRows - 1) / kWgRows;
  constexpr size_t smem = tma_forward_smem<D, T>();
  constexpr DType dtype = std::is_same_v<T, __half> ? DType::F16 : DType::BF16;
  TmaMaps maps;
  maps.q = tma_operand_map(p, dtype, p.q, p.q_rows, p.tq, D, kTmaBlockN, "q", maps.fold_q);
  maps.k = tma_operand_map(p, dtype, p.k, p.k_rows, p.tk, D, kTmaBlockN, "k", maps.fold_k);
  maps.v = tma_operand_map(p, dtype, p.v, p.v_rows, p.tk, D, kTmaBlockN, "v", maps.fold_v);
  dispatch_dropout(p, [&]<bool kDropout, class P>(const P& params) {
    auto kernel = forward_tma_kernel<T, D, kDropout, P>;
    allow_shared(kernel, smem, "flash attention");
    check_sm90a_binary(kernel, "forward variant 4");
    rt::launch(kernel, dim3(unsigned(q_tiles * batch)), dim3(kTmaThreads), smem, stream(),
               "flash_attention_forward_tma", params, q_tiles, maps);
  });
}

template void launch_forward_tma<__half, 64>(const Params&, int64_t, int64_t);
template void launch_forward_tma<__half, 128>(const Params&, int64_t, int64_t);
template void launch_forward_tma<__nv_bfloat16, 64>(const Params&, int64_t, int64_t);
template void launch_forward_tma<__nv_bfloat16, 128>(const Params&, int64_t, int64_t);

}  // namespace lathe::kernels::cuda::flash
