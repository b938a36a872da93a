// Where the operands of an attention call live, shared by the tensor-core kernels (attention.cu)
// and the SIMT ones (attention_simt.cu): both take the same AttentionForwardArgs views, so the
// checks of those views, the merging of their leading dims and the mask's layout are written once.
//
// A block finds the rows of its batch index b by unravelling b over the leading dims (batch x
// heads) with each operand's strides. Leading dims of size 1 are dropped and neighbours merged
// wherever every operand's strides allow it, so contiguous operands have one batch dim and the
// [B, H, T, d] head views of [B, T, H, d] buffers two: one or two divisions per block.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/kernel_api.h"
#include "lathe/core/error.h"

namespace lathe::kernels::cuda::attention_layout {

constexpr int kMaxLead = kMaxDims - 2;

// The shared leading dims (size-1 dims dropped, neighbours merged).
struct Lead {
  int lead = 0;
  int64_t lead_size[kMaxLead] = {};
};

// One operand's rows: row i of batch b starts at data + batch_offset(b) + i * row (elements).
struct Rows {
  int64_t lead[kMaxLead] = {};
  int64_t row = 0;
  bool vec = false;  // 16-byte aligned rows (attention_rows_aligned): may move as vectors
};

// The batch index b and the first query row i0 of the block whose linear index is `block`, in a
// grid of q_tiles query tiles of `rows` rows per batch index. Batch-major, so that neighbouring
// blocks read the same K and V from L2. With a causal mask query tile t sees t + 1 key tiles
// (top-left aligned), so there the tiles of each batch index go heaviest first: blocks start in
// index order, and the last ones to start, which decide when the grid ends, are the shortest
// (the longest-first rule FlashAttention-3's scheduler uses for causal attention). The results do
// not depend on the order: every tile is computed alone.
LATHE_DEVICE_INLINE void query_tile_of_block(int64_t block, int64_t q_tiles, int64_t rows,
                                             bool causal, int64_t& b, int64_t& i0) {
  b = block / q_tiles;
  const int64_t t = block - b * q_tiles;
  i0 = (causal ? q_tiles - 1 - t : t) * rows;
}

LATHE_DEVICE_INLINE int64_t batch_offset(const Lead& l, const Rows& r, int64_t b) {
  int64_t off = 0;
  for (int i = l.lead - 1; i >= 0; --i) {
    const int64_t q = b / l.lead_size[i];
    off += (b - q * l.lead_size[i]) * r.lead[i];
    b = q;
  }
  return off;
}

// The mask view: its own leading dims (strides may be 0: a key-padding mask broadcast over heads
// cannot be flattened to one batch stride), then [q_len, kv_len] with strides sq, sk.
struct Mask {
  const void* data = nullptr;
  bool is_bool = false;
  int lead = 0;
  int64_t size[kMaxLead] = {};
  int64_t stride[kMaxLead] = {};
  int64_t sq = 0, sk = 0;

  LATHE_DEVICE_INLINE int64_t batch_offset(int64_t b) const {
    int64_t off = 0;
    for (int i = lead - 1; i >= 0; --i) {
      const int64_t q = b / size[i];
      off += (b - q * size[i]) * stride[i];
      b = q;
    }
    return off;
  }
};

// a.mask as a Mask (data null when there is none); a floating mask must be of `float_dtype`.
// `who` prefixes the errors.
inline Mask mask_of(const AttentionForwardArgs& a, DType float_dtype, const char* who) {
  Mask mask;
  if (a.mask.data == nullptr) return mask;
  const View& m = a.mask;
  LATHE_CHECK(m.ndim >= 2 && m.size[m.ndim - 2] == a.q_len && m.size[m.ndim - 1] == a.kv_len, who,
              ": the mask view does not end in [q_len, kv_len]");
  LATHE_CHECK(m.dtype == DType::Bool || m.dtype == float_dtype, who, ": the mask must be bool or ",
              float_dtype, ", got ", m.dtype);
  mask.data = m.data;
  mask.is_bool = m.dtype == DType::Bool;
  mask.lead = m.ndim - 2;
  int64_t lead_numel = 1;
  for (int i = 0; i < mask.lead; ++i) {
    mask.size[i] = m.size[i];
    mask.stride[i] = m.stride[i];
    lead_numel *= m.size[i];
  }
  LATHE_CHECK(lead_numel == a.batch, who, ": the mask's leading dims do not multiply to batch");
  mask.sq = m.stride[m.ndim - 2];
  mask.sk = m.stride[m.ndim - 1];
  return mask;
}

// One operand as a launcher sees it: its view, the [rows, cols] it must end in, and whether the
// kernels write it.
struct Operand {
  const char* name;
  const View* view;
  Rows* rows;
  int64_t n_rows, n_cols;
  bool written = false;
};

// Checks the operands' views against the problem and fills `lead` and each operand's Rows.
// `aligned_rows`: the kernels copy rows in 16-byte pieces and refuse others (the op copies them);
// otherwise only the last dim must be contiguous. `who` prefixes the errors.
inline void set_rows(Lead& lead, const AttentionForwardArgs& a, std::initializer_list<Operand> ops,
                     bool aligned_rows, const char* who) {
  const View& first = *ops.begin()->view;
  const int n_lead = first.ndim - 2;
  for (const Operand& op : ops) {
    const View& v = *op.view;
    LATHE_CHECK(v.dtype == a.dtype && v.ndim == first.ndim && v.ndim >= 2 &&
                    v.size[v.ndim - 2] == op.n_rows && v.size[v.ndim - 1] == op.n_cols,
                who, ": ", op.name, " must be a [lead..., ", op.n_rows, ", ", op.n_cols,
                "] view of dtype ", a.dtype, " with as many dims as ", ops.begin()->name);
    for (int i = 0; i < n_lead; ++i) {
      LATHE_CHECK(v.size[i] == first.size[i], who, ": the leading dims of ", op.name,
                  " differ from those of ", ops.begin()->name);
    }
    op.rows->vec = attention_rows_aligned(v);
    if (aligned_rows) {
      LATHE_CHECK(op.rows->vec, who, ": the rows of ", op.name,
                  " must be contiguous and start on 16-byte boundaries (the op copies others)");
    } else {
      LATHE_CHECK(op.n_cols <= 1 || v.stride[v.ndim - 1] == 1, who, ": the last dim of ", op.name,
                  " must have stride 1");
    }
    for (int i = 0; op.written && v.numel() > 0 && i < v.ndim - 1; ++i) {
      // Two blocks writing one element would race.
      LATHE_CHECK(v.size[i] <= 1 || v.stride[i] != 0, who, ": ", op.name,
                  " is written and must not be broadcast (stride 0)");
    }
    op.rows->row = v.stride[v.ndim - 2];
  }
  // Merged dims, outermost first: a size and each operand's stride.
  int n = 0;
  int64_t numel = 1;
  for (int i = 0; i < n_lead; ++i) {
    const int64_t size = first.size[i];
    numel *= size;
    if (size == 1) continue;
    bool merge = n > 0;
    for (const Operand& op : ops) {
      merge = merge && op.rows->lead[n - 1] == op.view->stride[i] * size;
    }
    if (!merge) ++n;
    lead.lead_size[n - 1] = merge ? lead.lead_size[n - 1] * size : size;
    for (const Operand& op : ops) op.rows->lead[n - 1] = op.view->stride[i];
  }
  LATHE_CHECK(numel == a.batch, who, ": the leading dims (", numel,
              " elements) do not multiply to batch = ", a.batch);
  lead.lead = n;
}

// Kernels above 48 KiB of dynamic shared memory need an opt-in on the real build.
template <class Kernel>
void allow_shared(Kernel kernel, size_t bytes, const char* who) {
#ifdef __CUDACC__
  if (bytes > 48 * 1024) {
    const cudaError_t status =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    LATHE_CHECK(status == cudaSuccess, who, ": cannot get ", bytes,
                " bytes of shared memory: ", cudaGetErrorString(status));
  }
#else
  (void)kernel;
  (void)bytes;
  (void)who;
#endif
}

}  // namespace lathe::kernels::cuda::attention_layout
