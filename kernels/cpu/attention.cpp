// Fused scaled-dot-product attention on the cpu, FlashAttention-2 style: no [q_len, kv_len] score
// matrix is ever materialized. The forward walks each block of 64 query rows over 64-key tiles with
// an online softmax (running max and sum per row, rescaling the partial output when the max grows)
// and keeps only the output and the per-row log-sum-exp. The backward recomputes the probabilities
// of a tile from q, k and the lse, so it needs O(q_len) extra memory, not O(q_len * kv_len).
//
// Inner loops: the five products per tile (S = QK^T, PV; dP = dO V^T, dV, dK, dQ) are 64x64xD
// GEMMs on OpenBLAS's single-threaded micro-kernels — a hand-written transposed-tile loop ran ~5x
// slower, store-bound on its accumulators. The softmax bookkeeping in between is vectorized
// (a polynomial exp for f32). Arithmetic stays in the element type (f32 accumulation for f32, f64
// for f64); f16/bf16 operands are read as they are and computed in f32 (tiles widened as they are
// read, dK/dV/dQ summed in f32 and rounded once), with the output in f32 for the op to round and
// for the backward's row dots: the f32 kernel's numerics on the widened inputs, without the op
// widening q, k, v (and narrowing the gradients) by copies.
//
// Operands are read and written where they are: any leading (batch, head) strides, 0 included, and
// any row stride, with contiguous rows (kernels::attention_rows_strided). BLAS takes the row stride
// as its leading dimension, so BERT's [B, H, T, d] head views of [B, T, H, d] projections cost no
// copy on either side of the op, as on cuda.
//
// Threads: the forward splits (batch, query block); the backward gives each work item a
// (batch, key range), so dK and dV have a single writer; dQ, which sums over keys, goes either
// straight to the output (one key range per batch) or to per-range partials summed at the end.
// Dropout regenerates its Philox mask from (seed, offset) with the same rule as the dropout kernel.
#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/philox_batch.h"
#include "kernels/cpu/vec_math.h"
#include "lathe/core/half.h"
#include "lathe/core/random.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lathe::kernels::cpu {

namespace {

constexpr int64_t kKeyTile = 128;
constexpr int64_t kQueryBlock = 128;
// Below this many multiply-adds a call runs on one thread.
constexpr int64_t kParallelWork = 1 << 16;

int team_size() {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Every exponential here is of x - max, x - lse or old max - new max: never positive.
template <class T>
inline T exp_elem(T x) {
  return exp_nonpositive<T>(x);
}

// An operand's rows: row i of batch index b starts at data + batch[b] + i * row (elements), the
// batch index unravelled over the view's leading dims with its strides (a [B, 1, 1, T] broadcast
// or a head view has no single batch stride).
template <class T>
struct Rows {
  T* data = nullptr;
  std::vector<int64_t> batch;
  int64_t row = 0;

  T* at(int64_t b, int64_t i) const { return data + batch[size_t(b)] + i * row; }
};

// Element offset of batch index b (row-major over the view's leading dims, all but the last two)
// for every b < batch.
std::vector<int64_t> batch_offsets(const View& v, int64_t batch, const char* what) {
  const int lead = v.ndim - 2;
  int64_t lead_numel = 1;
  for (int i = 0; i < lead; ++i) lead_numel *= v.size[i];
  LATHE_CHECK(lead_numel == batch, "attention on the cpu: ", what,
              " leading dims do not multiply to batch ", batch);
  std::vector<int64_t> offsets(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    int64_t rest = b, off = 0;
    for (int i = lead - 1; i >= 0; --i) {
      off += (rest % v.size[i]) * v.stride[i];
      rest /= v.size[i];
    }
    offsets[size_t(b)] = off;
  }
  return offsets;
}

template <class T>
Rows<T> rows_of(const View& v, int64_t batch, int64_t len, int64_t width, const char* what) {
  LATHE_CHECK(v.ndim >= 2 && v.size[v.ndim - 2] == len && v.size[v.ndim - 1] == width,
              "attention on the cpu: ", what, " view does not end in [", len, ", ", width, "]");
  LATHE_CHECK(attention_rows_strided(v), "attention on the cpu: ", what,
              " needs contiguous rows at a row stride of at least their length");
  Rows<T> r;
  r.data = static_cast<T*>(v.data);
  // BLAS wants a leading dimension of at least the row length even where there is one row.
  r.row = len > 1 ? v.stride[v.ndim - 2] : width;
  r.batch = batch_offsets(v, batch, what);
  return r;
}

template <class T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Everything a tile computation needs, resolved once per call. T: the arithmetic (f32 or f64);
// S: the operands' storage, T itself or a 16-bit type (bf16/f16, computed in f32).
template <class T, class S>
struct Problem {
  int64_t batch = 0, tq = 0, tk = 0, d = 0, dv = 0;
  Rows<const S> q, k, v;
  T scale = 1;
  bool causal = false;
  // Mask: element (b, i, j) at mask + mask_batch[b] + i * mask_sq + j * mask_sk (elements).
  const char* mask = nullptr;
  bool mask_bool = false;
  std::vector<int64_t> mask_batch;
  int64_t mask_sq = 0, mask_sk = 0;
  // Dropout.
  bool dropout = false;
  float p = 0;  // compared in f32, exactly like the dropout kernel
  T keep_scale = 1;
  uint64_t seed = 0, offset = 0;

  explicit Problem(const AttentionForwardArgs& a) {
    batch = a.batch;
    tq = a.q_len;
    tk = a.kv_len;
    d = a.head_dim;
    dv = a.value_dim;
    q = rows_of<const S>(a.q, batch, tq, d, "q");
    k = rows_of<const S>(a.k, batch, tk, d, "k");
    v = rows_of<const S>(a.v, batch, tk, dv, "v");
    scale = T(a.scale);
    causal = a.causal;
    if (a.mask.data != nullptr) {
      const View& m = a.mask;
      LATHE_CHECK(m.ndim >= 2 && m.size[m.ndim - 2] == tq && m.size[m.ndim - 1] == tk,
                  "attention: mask view does not end in [q_len, kv_len]");
      LATHE_CHECK(m.dtype == DType::Bool || m.dtype == dtype_of<T>::value,
                  "attention: mask dtype must be bool or ", dtype_of<T>::value, " for ", a.dtype,
                  " q");
      mask = static_cast<const char*>(m.data);
      mask_bool = m.dtype == DType::Bool;
      mask_sq = m.stride[m.ndim - 2];
      mask_sk = m.stride[m.ndim - 1];
      // A [B, 1, 1, T] mask broadcast over heads has no single batch stride.
      mask_batch = batch_offsets(m, batch, "mask");
    }
    dropout = a.dropout_p > 0;
    p = float(a.dropout_p);
    keep_scale = a.dropout_p < 1 ? T(1.0 / (1.0 - a.dropout_p)) : T(0);
    LATHE_CHECK(a.philox.device_state == nullptr,
                "attention: a cpu dropout mask takes its Philox state by value");
    seed = a.philox.seed;
    offset = a.philox.offset;
  }
};

// C = alpha * op(A) op(B) + beta * C on one thread (OpenBLAS's micro-kernels; the threads are
// ours). Leading dims are clamped to 1 so empty head dims stay valid BLAS calls.
template <class T>
void tile_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    }
    return;
  }
  const auto t = [](bool x) { return x ? CblasTrans : CblasNoTrans; };
  const blasint la = blasint(std::max<int64_t>(1, lda)), lb = blasint(std::max<int64_t>(1, ldb));
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, t(ta), t(tb), blasint(m), blasint(n), blasint(k), alpha, a, la, b,
                lb, beta, c, blasint(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, t(ta), t(tb), blasint(m), blasint(n), blasint(k), alpha, a, la, b,
                lb, beta, c, blasint(ldc));
  }
}

// OpenBLAS's own thread pool would fight our OpenMP team for the same cores (see gemm.cpp).
void keep_blas_single_threaded() {
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

// x[c] = exp(x[c] - shift)
template <class T>
inline void exp_shifted(T* __restrict x, T shift, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) x[c] = exp_elem(x[c] - shift);
}

// x[c] = exp(x[c] - shift), returning the sum.
template <class T>
inline T exp_shifted_sum(T* __restrict x, T shift, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) {
    x[c] = exp_elem(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

// Applies the mask and the causal rule to scaled scores s of query row i of batch b against keys
// [j0, j0 + nj): adds a floating mask, sets masked positions to -inf.
template <class T, class S>
void mask_row(const Problem<T, S>& P, int64_t b, int64_t i, int64_t j0, int64_t nj, T* s) {
  if (P.mask != nullptr) {
    const int64_t base = P.mask_batch[size_t(b)] + i * P.mask_sq + j0 * P.mask_sk;
    const int64_t sk = P.mask_sk;
    if (P.mask_bool) {
      const bool* m = reinterpret_cast<const bool*>(P.mask) + base;
      if (sk == 1) {
        // Contiguous flags, read as bytes and selected branch-free, vectorize (widened bytes and
        // a blend); the branch on `bool` did not, and took 6% of an attention step with a
        // key-padding mask.
        const auto* flags = reinterpret_cast<const uint8_t*>(m);
#pragma omp simd
        for (int64_t jj = 0; jj < nj; ++jj) {
          const int32_t keep = flags[jj];
          s[jj] = keep != 0 ? s[jj] : neg_inf<T>();
        }
      } else {
        for (int64_t jj = 0; jj < nj; ++jj) {
          if (!m[jj * sk]) s[jj] = neg_inf<T>();
        }
      }
    } else {
      const T* m = reinterpret_cast<const T*>(P.mask) + base;
      if (sk == 1) {
#pragma omp simd
        for (int64_t jj = 0; jj < nj; ++jj) s[jj] += m[jj];
      } else {
        for (int64_t jj = 0; jj < nj; ++jj) s[jj] += m[jj * sk];
      }
    }
  }
  if (P.causal) {
    for (int64_t jj = std::max<int64_t>(0, i + 1 - j0); jj < nj; ++jj) s[jj] = neg_inf<T>();
  }
}

// z[jj] = dropout factor (keep_scale or 0) of probability (b, i, j0 + jj).
// The uniforms come from the batched Philox (kernels/cpu/philox_batch.h): called per element
// block, Philox's scalar rounds cost as much as the attention arithmetic of a training step.
template <class T, class S>
void dropout_factors(const Problem<T, S>& P, int64_t b, int64_t i, int64_t j0, int64_t nj, T* z) {
  float u[kKeyTile];
  philox_uniforms(P.seed, P.offset, uint64_t((b * P.tq + i) * P.tk + j0), nj, u);
#pragma omp simd
  for (int64_t jj = 0; jj < nj; ++jj) z[jj] = u[jj] >= P.p ? P.keep_scale : T(0);
}

// Rows [0, n) of an operand whose rows are `ld` apart, as dense rows: `src` itself where they
// are, else a copy in `scratch`. OpenBLAS's small-matrix kernels read their operands in place, and
// head-dim rows of 32 or 64 floats a whole hidden row apart cost them more than copying the tile
// (a hot, cache-sized copy, not the op-level copy kernels it replaces).
// 16-bit rows are always widened into `scratch` (exactly), so the tiles' arithmetic is the f32
// kernel's on the same values.
template <class T, class S>
const T* dense_rows(const S* src, int64_t ld, int64_t n, int64_t width, T* scratch) {
  if constexpr (std::is_same_v<S, T>) {
    if (ld == width || n <= 1) return src;
  }
  for (int64_t r = 0; r < n; ++r) {
    const S* row = src + r * ld;
    T* out = scratch + r * width;
    for (int64_t c = 0; c < width; ++c) out[c] = T(row[c]);
  }
  return scratch;
}

// ---- forward ----

template <class T, class S>
struct ForwardScratch {
  std::vector<T> s, z, acc, m, l, q, k, v;  // q, k, v: dense copies of strided rows
  explicit ForwardScratch(const Problem<T, S>& P)
      : s(size_t(kQueryBlock * kKeyTile)),
        z(kKeyTile),
        acc(size_t(kQueryBlock * P.dv)),
        m(kQueryBlock),
        l(kQueryBlock),
        q(size_t(kQueryBlock * P.d)),
        k(size_t(kKeyTile * P.d)),
        v(size_t(kKeyTile * P.dv)) {}
};

// Query rows [i0, i1) of batch b; the output in O (S, or T for 16-bit S: see forward_typed).
template <class T, class S, class O>
void forward_block(const Problem<T, S>& P, int64_t b, int64_t i0, int64_t i1, const Rows<O>& out,
                   T* lse, ForwardScratch<T, S>& w) {
  const int64_t nq = i1 - i0, d = P.d, dv = P.dv;
  const T* q = dense_rows(P.q.at(b, i0), P.q.row, nq, d, w.q.data());
  std::fill(w.m.begin(), w.m.begin() + nq, neg_inf<T>());
  std::fill(w.l.begin(), w.l.begin() + nq, T(0));
  std::fill(w.acc.begin(), w.acc.begin() + nq * dv, T(0));
  T* z = w.z.data();
  // Causal rows below i1 see only keys below i1.
  const int64_t j_end = P.causal ? std::min(P.tk, i1) : P.tk;
  for (int64_t j0 = 0; j0 < j_end; j0 += kKeyTile) {
    const int64_t nj = std::min(kKeyTile, P.tk - j0);
    // S = scale * Q K^T for the whole block, then the softmax bookkeeping row by row.
    const T* k = dense_rows(P.k.at(b, j0), P.k.row, nj, d, w.k.data());
    tile_gemm(false, true, nq, nj, d, P.scale, q, d, k, d, T(0), w.s.data(), kKeyTile);
    bool any = false;
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t i = i0 + r;
      T* s = w.s.data() + r * kKeyTile;
      mask_row(P, b, i, j0, nj, s);
      // In lanes (vec_math.h): GCC compiled `omp simd reduction(max)` over std::max to a scalar
      // vmaxss chain, 37% of this function's time at T = 512.
      const T tile_max = row_max(s, nj);
      if (tile_max == neg_inf<T>()) {  // every key of this tile is masked for this row
        std::fill(s, s + nj, T(0));
        continue;
      }
      any = true;
      T* acc = w.acc.data() + r * dv;
      const T m_new = std::max(w.m[size_t(r)], tile_max);
      if (m_new != w.m[size_t(r)]) {
        // Rescale what was accumulated under the old max (0 when there was none).
        const T correction = exp_elem(w.m[size_t(r)] - m_new);
        w.l[size_t(r)] *= correction;
#pragma omp simd
        for (int64_t c = 0; c < dv; ++c) acc[c] *= correction;
        w.m[size_t(r)] = m_new;
      }
      w.l[size_t(r)] += exp_shifted_sum(s, m_new, nj);
      if (P.dropout) {
        dropout_factors(P, b, i, j0, nj, z);
#pragma omp simd
        for (int64_t jj = 0; jj < nj; ++jj) s[jj] *= z[jj];
      }
    }
    // acc += P V
    if (any) {
      const T* v = dense_rows(P.v.at(b, j0), P.v.row, nj, dv, w.v.data());
      tile_gemm(false, false, nq, dv, nj, T(1), w.s.data(), kKeyTile, v, dv, T(1), w.acc.data(),
                dv);
    }
  }
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t i = i0 + r;
    O* o = out.at(b, i);
    const T l = w.l[size_t(r)];
    if (l == T(0)) {  // fully masked row: defined as zeros
      std::fill(o, o + dv, O(T(0)));
      lse[b * P.tq + i] = neg_inf<T>();
      continue;
    }
    const T inv = T(1) / l;
    const T* acc = w.acc.data() + r * dv;
#pragma omp simd
    for (int64_t c = 0; c < dv; ++c) o[c] = O(acc[c] * inv);
    lse[b * P.tq + i] = w.m[size_t(r)] + std::log(l);
  }
}

// For 16-bit q, k, v the output may be 16-bit or T: the op asks for T on the cpu, to round it
// once itself and keep the unrounded output for the backward's row dots D = dO . O (the f32
// kernel's numerics on the widened inputs, bit for bit).
template <class T, class S, class O>
void forward_with_output(const AttentionForwardArgs& args) {
  const Problem<T, S> P(args);
  const Rows<O> out = rows_of<O>(args.out, P.batch, P.tq, P.dv, "out");
  T* lse = static_cast<T*>(args.lse);
  const int64_t blocks = (P.tq + kQueryBlock - 1) / kQueryBlock;
  const int64_t items = P.batch * blocks;
  const int64_t work = P.batch * P.tq * P.tk * (P.d + P.dv);
  const bool parallel = team_size() > 1 && items > 1 && work >= kParallelWork;
  keep_blas_single_threaded();
#pragma omp parallel if (parallel)
  {
    ForwardScratch<T, S> scratch(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / blocks, blk = item % blocks;
      const int64_t i0 = blk * kQueryBlock, i1 = std::min(P.tq, i0 + kQueryBlock);
      forward_block(P, b, i0, i1, out, lse, scratch);
    }
  }
}

// f32/f64 in their own type; bf16/f16 stored, computed in f32 (the tiles widened as they are read,
// the output rounded once).
template <class T, class S>
void forward_typed(const AttentionForwardArgs& args) {
  if (!std::is_same_v<S, T> && args.out.dtype == dtype_of<T>::value) {
    forward_with_output<T, S, T>(args);
  } else {
    LATHE_CHECK(args.out.dtype == args.dtype, "attention: out dtype ", args.out.dtype, " for ",
                args.dtype, " q");
    forward_with_output<T, S, S>(args);
  }
}

template <class Fn>
void dispatch_storage(DType dtype, const char* op, Fn&& fn) {
  if (dtype == DType::BF16) return fn.template operator()<float, BFloat16>();
  if (dtype == DType::F16) return fn.template operator()<float, Half>();
  dispatch_float(dtype, op, [&]<class T>() { fn.template operator()<T, T>(); });
}

void attention_forward_kernel(const AttentionForwardArgs& args) {
  if (args.batch == 0 || args.q_len == 0) return;
  dispatch_storage(args.dtype, "attention_forward",
                   [&]<class T, class S>() { forward_typed<T, S>(args); });
}

// ---- backward ----

template <class T, class S>
struct BackwardScratch {
  std::vector<T> s, dp, z, q, dout, k, v;  // q, dout, k, v: dense copies of strided rows
  std::vector<T> grad_k, grad_v;           // a key range's dK, dV in T when S is 16-bit
  explicit BackwardScratch(const Problem<T, S>& P)
      : s(size_t(kQueryBlock * kKeyTile)),
        dp(size_t(kQueryBlock * kKeyTile)),
        z(kKeyTile),
        q(size_t(kQueryBlock * P.d)),
        dout(size_t(kQueryBlock * P.dv)),
        k(size_t(kKeyTile * P.d)),
        v(size_t(kKeyTile * P.dv)) {}
};

template <class T, class S>
struct BackwardOut {
  Rows<const S> grad_out;
  const T* lse;
  const T* row_dot;  // D_i = dO_i . O_i
  Rows<S> grad_k, grad_v;
  T* grad_mask;
};

// Keys [jbeg, jend) of batch b against every query row; dq is batch b's [tq, d] accumulator, rows
// ld_dq apart. dK and dV of the range are summed over query blocks in place, or, for 16-bit
// storage, in T scratch rounded once at the end.
template <class T, class S>
void backward_chunk(const Problem<T, S>& P, const BackwardOut<T, S>& o, int64_t b, int64_t jbeg,
                    int64_t jend, T* dq, int64_t ld_dq, BackwardScratch<T, S>& w) {
  const int64_t d = P.d, dvw = P.dv, tq = P.tq, tk = P.tk;
  constexpr bool in_place = std::is_same_v<S, T>;

  const T* lse = o.lse + b * tq;
  const T* row_dot = o.row_dot + b * tq;
  // Row j of the range's dK (dV) at grad_k + (j - jbeg) * ldgk.
  T* grad_k;
  T* grad_v;
  int64_t ldgk, ldgv;
  if constexpr (in_place) {
    grad_k = o.grad_k.at(b, jbeg);
    grad_v = o.grad_v.at(b, jbeg);
    ldgk = o.grad_k.row;
    ldgv = o.grad_v.row;
  } else {
    w.grad_k.resize(size_t((jend - jbeg) * d));
    w.grad_v.resize(size_t((jend - jbeg) * dvw));
    grad_k = w.grad_k.data();
    grad_v = w.grad_v.data();
    ldgk = d;
    ldgv = dvw;
  }
  T* grad_mask = o.grad_mask ? o.grad_mask + b * tq * tk : nullptr;
  if (grad_mask) {
    for (int64_t i = 0; i < tq; ++i) {
      std::fill(grad_mask + i * tk + jbeg, grad_mask + i * tk + jend, T(0));
    }
  }
  for (int64_t j = 0; j < jend - jbeg; ++j) {
    std::fill(grad_k + j * ldgk, grad_k + j * ldgk + d, T(0));
    std::fill(grad_v + j * ldgv, grad_v + j * ldgv + dvw, T(0));
  }
  T* z = w.z.data();
  for (int64_t j0 = jbeg; j0 < jend; j0 += kKeyTile) {
    const int64_t nj = std::min(kKeyTile, jend - j0);
    const T* k = dense_rows(P.k.at(b, j0), P.k.row, nj, d, w.k.data());
    const T* v = dense_rows(P.v.at(b, j0), P.v.row, nj, dvw, w.v.data());
    // Causal: query blocks that end above the tile see none of its keys.
    const int64_t first = P.causal ? j0 / kQueryBlock * kQueryBlock : 0;
    for (int64_t i0 = first; i0 < tq; i0 += kQueryBlock) {
      const int64_t nq = std::min(kQueryBlock, tq - i0);
      const T* q = dense_rows(P.q.at(b, i0), P.q.row, nq, d, w.q.data());
      const T* dout = dense_rows(o.grad_out.at(b, i0), o.grad_out.row, nq, dvw, w.dout.data());
      // S = scale * Q K^T and dP = dO V^T for the block.
      tile_gemm(false, true, nq, nj, d, P.scale, q, d, k, d, T(0), w.s.data(), kKeyTile);
      tile_gemm(false, true, nq, nj, dvw, T(1), dout, dvw, v, dvw, T(0), w.dp.data(), kKeyTile);
      bool any = false;
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t i = i0 + r;
        T* s = w.s.data() + r * kKeyTile;
        T* dp = w.dp.data() + r * kKeyTile;
        const T lse_i = lse[i];
        if (lse_i == neg_inf<T>()) {  // fully masked row: zero gradient
          std::fill(s, s + nj, T(0));
          std::fill(dp, dp + nj, T(0));
          continue;
        }
        any = true;
        mask_row(P, b, i, j0, nj, s);
        exp_shifted(s, lse_i, nj);  // probabilities
        const T di = row_dot[i];
        if (P.dropout) {
          dropout_factors(P, b, i, j0, nj, z);
          // dS = P (Z dP' - D); the product with V used the kept probabilities Z P.
#pragma omp simd
          for (int64_t jj = 0; jj < nj; ++jj) {
            dp[jj] = s[jj] * (z[jj] * dp[jj] - di);
            s[jj] *= z[jj];
          }
        } else {
#pragma omp simd
          for (int64_t jj = 0; jj < nj; ++jj) dp[jj] = s[jj] * (dp[jj] - di);
        }
        if (grad_mask) std::copy(dp, dp + nj, grad_mask + i * tk + j0);
      }
      if (!any) continue;
      // dV += (Z P)^T dO, dK += scale dS^T Q, dQ += scale dS K.
      tile_gemm(true, false, nj, dvw, nq, T(1), w.s.data(), kKeyTile, dout, dvw, T(1),
                grad_v + (j0 - jbeg) * ldgv, ldgv);
      tile_gemm(true, false, nj, d, nq, P.scale, w.dp.data(), kKeyTile, q, d, T(1),
                grad_k + (j0 - jbeg) * ldgk, ldgk);
      tile_gemm(false, false, nq, d, nj, P.scale, w.dp.data(), kKeyTile, k, d, T(1),
                dq + i0 * ld_dq, ld_dq);
    }
  }
  if constexpr (!in_place) {
    for (int64_t j = jbeg; j < jend; ++j) {
      S* gk = o.grad_k.at(b, j);
      S* gv = o.grad_v.at(b, j);
      for (int64_t c = 0; c < d; ++c) gk[c] = S(grad_k[(j - jbeg) * ldgk + c]);
      for (int64_t c = 0; c < dvw; ++c) gv[c] = S(grad_v[(j - jbeg) * ldgv + c]);
    }
  }
}

template <class T, class S>
void backward_typed(const AttentionBackwardArgs& args) {
  const Problem<T, S> P(args.forward);
  const int64_t batch = P.batch, tq = P.tq, tk = P.tk, d = P.d, dv = P.dv;
  const int threads = team_size();
  const int64_t work = batch * tq * tk * (2 * d + 2 * dv);
  const bool parallel = threads > 1 && work >= kParallelWork;
  keep_blas_single_threaded();

  // D_i = dO_i . O_i, the row term of the softmax backward (unchanged by dropout, since
  // O = (Z o P) V already contains the dropout factors).
  std::vector<T> row_dot(size_t(batch * tq));
  const Rows<const S> grad_out = rows_of<const S>(args.grad_out, batch, tq, dv, "grad_out");
  // The forward's output as the forward wrote it: S, or T (forward_typed).
  auto row_dots = [&]<class O>() {
    const Rows<const O> out = rows_of<const O>(args.forward.out, batch, tq, dv, "out");
    const int64_t rows = batch * tq;
#pragma omp parallel for schedule(static) if (parallel && rows * dv >= kParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      const S* dout_row = grad_out.at(r / tq, r % tq);
      const O* out_row = out.at(r / tq, r % tq);
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < dv; ++c) acc += T(dout_row[c]) * T(out_row[c]);
      row_dot[size_t(r)] = acc;
    }
  };
  if (!std::is_same_v<S, T> && args.forward.out.dtype == dtype_of<T>::value) {
    row_dots.template operator()<T>();
  } else {
    row_dots.template operator()<S>();
  }

  // Split the keys of each batch into `splits` ranges when there are fewer batches than threads.
  const int64_t tiles = (tk + kKeyTile - 1) / kKeyTile;
  int64_t splits = 1;
  if (parallel && batch < 2 * threads && tiles > 1) {
    splits = std::clamp<int64_t>((2 * threads + batch - 1) / batch, 1, tiles);
  }
  const int64_t tiles_per_split = std::max<int64_t>(1, (tiles + splits - 1) / splits);
  splits = std::max<int64_t>(1, (tiles + tiles_per_split - 1) / tiles_per_split);

  const Rows<S> grad_q = rows_of<S>(args.grad_q, batch, tq, d, "grad_q");
  // dQ sums over key ranges: straight into grad_q for one range in T, else in T partials (16-bit
  // storage always: rounded once, after the sum).
  const bool dq_partials = splits > 1 || !std::is_same_v<S, T>;
  std::vector<T> partial;
  if (dq_partials) {
    partial.assign(size_t(splits * batch * tq * d), T(0));
  } else {
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < tq; ++i) std::fill(grad_q.at(b, i), grad_q.at(b, i) + d, S(T(0)));
    }
  }
  const BackwardOut<T, S> o{grad_out,
                            static_cast<const T*>(args.forward.lse),
                            row_dot.data(),
                            rows_of<S>(args.grad_k, batch, tk, d, "grad_k"),
                            rows_of<S>(args.grad_v, batch, tk, dv, "grad_v"),
                            static_cast<T*>(args.grad_mask)};
  const int64_t items = batch * splits;
#pragma omp parallel if (parallel && items > 1)
  {
    BackwardScratch<T, S> scratch(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / splits, part = item % splits;
      const int64_t jbeg = std::min(tk, part * tiles_per_split * kKeyTile);
      const int64_t jend = std::min(tk, jbeg + tiles_per_split * kKeyTile);
      if constexpr (std::is_same_v<S, T>) {
        if (!dq_partials) {
          backward_chunk(P, o, b, jbeg, jend, grad_q.at(b, 0), grad_q.row, scratch);
          continue;
        }
      }
      backward_chunk(P, o, b, jbeg, jend, partial.data() + (part * batch + b) * tq * d, d, scratch);
    }
  }
  if (dq_partials) {
    const int64_t n = batch * tq * d, rows = batch * tq;
#pragma omp parallel for schedule(static) if (parallel && n >= kParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      S* dq_row = grad_q.at(r / tq, r % tq);
      for (int64_t c = 0; c < d; ++c) {
        T acc = 0;
        for (int64_t part = 0; part < splits; ++part) acc += partial[size_t(part * n + r * d + c)];
        dq_row[c] = S(acc);
      }
    }
  }
}

void attention_backward_kernel(const AttentionBackwardArgs& args) {
  dispatch_storage(args.forward.dtype, "attention_backward",
                   [&]<class T, class S>() { backward_typed<T, S>(args); });
}

}  // namespace

extern const AttentionForwardFn attention_forward = attention_forward_kernel;
extern const AttentionBackwardFn attention_backward = attention_backward_kernel;

}  // namespace lathe::kernels::cpu
