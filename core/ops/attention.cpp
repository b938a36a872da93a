// Scaled dot-product attention: the fused op (one forward and one backward kernel, never a
// [Tq, Tk] matrix per batch in memory) and its composite twin built from public ops, which the
// tests hold the fused kernels to.
//
// Conventions shared by both (and by every device's kernels):
// - causal masks key j > query i (PyTorch's top-left tril(ones(Tq, Tk))), also when Tq != Tk;
// - a query row whose every key is masked returns zeros and gets a zero gradient (PyTorch returns
//   NaN there; zeros keep padded sequences from poisoning a whole batch);
// - dropout on the probabilities reserves batch * Tq * Tk Philox values once per call and keeps
//   element n (row-major over [batch, Tq, Tk]) by the same rule as dropout(), so the two versions
//   agree for the same seed;
// - leading dims of q, k, v (and the mask) broadcast; a floating mask is differentiable;
// - f16/bf16 q, k, v are attended in f32 (scores, softmax statistics, the weighted sum) and the
//   output rounded once, as flash attention keeps its statistics and accumulators in f32; a
//   floating mask is read in f32 then. On cuda (head dims 32/64/128) the flash kernel does this on
//   tensor cores: f32 scores and statistics, the probabilities rounded to f16/bf16 for P V (and
//   for the backward's products), as FlashAttention does. Under autocast q, k and v are cast down
//   first, the mask is left as it is.
// - layouts: on cuda the flash kernel reads q, k, v and dO where they are (any strides with
//   contiguous, 16-byte aligned rows; others are copied) and writes the output and dq, dk, dv in
//   the memory order of q, k and v, so a [B, H, T, d] head view of a [B, T, H, d] buffer gets its
//   output and gradients as such views and splitting or merging heads costs no copy either way.
//   The cpu kernel and the composite work on contiguous copies.
// - determinism: the backward hands lathe::deterministic_algorithms() (read when the backward
//   runs) to the kernels; off, the cuda flash kernels accumulate dq with float atomics, whose
//   order (and so dq's last bits) varies between runs. Every other result is reproducible.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>

#include "core/tensor_internal.h"
#include "lathe/core/determinism.h"
#include "lathe/core/random.h"

namespace lathe {

namespace {

constexpr const char* kFused = "scaled_dot_product_attention";
constexpr const char* kSlow = "scaled_dot_product_attention_slow";

struct AttentionShapes {
  Shape lead;  // broadcast leading dims of q, k and v
  int64_t batch = 1, tq = 0, tk = 0, d = 0, dv = 0;
  double scale = 1.0;
  Shape scores() const {
    Shape s = lead;
    s.push_back(tq);
    s.push_back(tk);
    return s;
  }
  Shape with_last2(int64_t rows, int64_t cols) const {
    Shape s = lead;
    s.push_back(rows);
    s.push_back(cols);
    return s;
  }
};

Shape leading(const Tensor& t) {
  return Shape(t.shape().begin(), t.shape().end() - 2);
}

AttentionShapes check_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                           double dropout_p, std::optional<double> scale, const char* op) {
  detail::check_defined(q, op, "q");
  detail::check_defined(k, op, "k");
  detail::check_defined(v, op, "v");
  LATHE_CHECK(is_floating(q.dtype()), op,
              ": q must be f32 or f64 (or f16/bf16, attended in f32), got ", detail::describe(q));
  LATHE_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op,
              ": q, k and v must share a dtype, got q ", detail::describe(q), ", k ",
              detail::describe(k), ", v ", detail::describe(v));
  LATHE_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k and v must be on one device, got q ", detail::describe(q), ", k ",
              detail::describe(k), ", v ", detail::describe(v));
  LATHE_CHECK(q.dim() >= 2 && k.dim() >= 2 && v.dim() >= 2, op,
              ": q, k and v need at least 2 dims ([..., T, D]), got q ", detail::describe(q),
              ", k ", detail::describe(k), ", v ", detail::describe(v));
  AttentionShapes s;
  s.tq = q.size(-2);
  s.tk = k.size(-2);
  s.d = q.size(-1);
  s.dv = v.size(-1);
  LATHE_CHECK(k.size(-1) == s.d, op, ": head dims of q and k differ (q ", detail::describe(q),
              ", k ", detail::describe(k), ")");
  LATHE_CHECK(v.size(-2) == s.tk, op, ": k and v must have the same number of keys (k ",
              detail::describe(k), ", v ", detail::describe(v), ")");
  s.lead = broadcast_shapes(broadcast_shapes(leading(q), leading(k), op), leading(v), op);
  s.batch = shape_numel(s.lead);
  LATHE_CHECK(int64_t(s.lead.size()) + 2 <= kernels::kMaxDims, op, ": too many dims in q ",
              detail::describe(q));
  LATHE_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, op, ": dropout_p must be in [0, 1], got ",
              dropout_p);
  s.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(double(s.d));
  LATHE_CHECK(std::isfinite(s.scale) || s.d == 0, op, ": scale must be finite, got ", s.scale);
  if (mask.defined()) {
    LATHE_CHECK(mask.dtype() == DType::Bool || is_floating(mask.dtype()), op,
                ": mask must be bool (true = attend) or floating (added to the scores), got ",
                detail::describe(mask));
    LATHE_CHECK(mask.device() == q.device(), op, ": mask is on another device than q (mask ",
                detail::describe(mask), ", q ", detail::describe(q), ")");
    const Shape target = s.scores();
    bool ok = mask.dim() <= int64_t(target.size());
    for (int64_t i = 0; ok && i < mask.dim(); ++i) {
      const int64_t m = mask.shape()[size_t(mask.dim() - 1 - i)];
      ok = m == 1 || m == target[target.size() - 1 - size_t(i)];
    }
    LATHE_CHECK(ok, op, ": mask ", detail::describe(mask), " does not broadcast to the scores ",
                shape_str(target), " (q ", detail::describe(q), ", k ", detail::describe(k), ")");
  }
  return s;
}

// The fused kernels of both devices read and write strided rows where they are: any batch, head
// and row strides with contiguous rows, on cuda 16-byte aligned (kernels::attention_rows_aligned),
// on the cpu at a row stride BLAS takes as its leading dimension
// (kernels::attention_rows_strided). BERT's heads are [B, H, T, d] views of [B, T, H, d]
// projections, and copying q, k, v, the output, dO and three gradients around every attention was
// a good part of the copy kernels of a GPU training step (about 2% of a cpu one).
bool rows_in_place(const Tensor& x) {
  const kernels::View view = detail::make_view(x);
  return x.device().is_cuda() ? kernels::attention_rows_aligned(view)
                              : kernels::attention_rows_strided(view);
}

// An operand as the fused kernel takes it (differentiably): where it is when the kernel reads that
// layout, else a contiguous copy (clone also moves a contiguous view off a 16-byte boundary).
Tensor kernel_operand(const Tensor& x) {
  return rows_in_place(x) ? x : x.clone();
}

// q/k/v broadcast to the common leading dims (a view: stride 0 is a layout the cuda kernels read).
Tensor prepare(const Tensor& t, const AttentionShapes& s) {
  Shape full = s.with_last2(t.size(-2), t.size(-1));
  return kernel_operand(t.shape() == full ? t : t.expand(full));
}

// An uninitialized tensor of `shape` whose memory is ordered like `like`'s (dims by decreasing
// stride, the last dim innermost): the output of attention on a [B, H, T, d] view of a
// [B, T, H, d] buffer is itself such a view, so context.transpose(1, 2).reshape(B, T, H * d) needs
// no copy, and the gradients of q, k and v flow back through view and transpose the same way.
Tensor empty_like_rows(const Tensor& like, const Shape& shape, const TensorOptions& options) {
  const int64_t n = like.dim();
  const Strides& strides = like.strides();
  std::vector<int64_t> order(size_t(n - 1));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return strides[size_t(a)] > strides[size_t(b)]; });
  order.push_back(n - 1);
  Shape physical(order.size()), inverse(order.size());
  for (int64_t i = 0; i < n; ++i) {
    physical[size_t(i)] = shape[size_t(order[size_t(i)])];
    inverse[size_t(order[size_t(i)])] = i;
  }
  return Tensor::empty(physical, options).permute(inverse);
}

kernels::AttentionForwardArgs make_args(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& mask, bool causal, double dropout_p,
                                        PhiloxState philox, const AttentionShapes& s) {
  kernels::AttentionForwardArgs a;
  a.dtype = q.dtype();
  a.batch = s.batch;
  a.q_len = s.tq;
  a.kv_len = s.tk;
  a.head_dim = s.d;
  a.value_dim = s.dv;
  a.q = detail::make_view(q);
  a.k = detail::make_view(k);
  a.v = detail::make_view(v);
  if (mask.defined()) a.mask = detail::make_broadcast_view(mask, s.scores());
  a.causal = causal;
  a.scale = s.scale;
  a.dropout_p = dropout_p;
  a.philox = philox;
  return a;
}

// The attention of f16/bf16 q, k, v computed in f32 by `attend`, rounded back; the casts are
// recorded, so the gradients arrive in the dtypes of q, k, v (and of the mask).
template <class Attend>
Tensor attend_in_f32(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                     Attend&& attend) {
  auto widen = [](const Tensor& t) {
    return t.defined() && is_low_precision(t.dtype()) ? t.to(DType::F32) : t;
  };
  return attend(widen(q), widen(k), widen(v), widen(mask)).to(q.dtype());
}

// Whether the fused kernel of q's device takes this dtype and shape. cpu: every floating dtype
// (f16/bf16 read and written as they are, computed in f32); cuda: f16/bf16 with head dim = value
// dim in {32, 64, 128} on tensor cores (kernels/cuda/attention.cu), f32/f64 with head and value
// dims up to 128 on SIMT kernels (kernels/cuda/attention_simt.cu); other f16/bf16 shapes are
// widened to f32. Larger head dims compose themselves from primitives
// (scaled_dot_product_attention_slow).
bool fused_kernel_takes(const Tensor& q, const AttentionShapes& s) {
  if (!detail::kernels_of(q).attention_forward) return false;
  if (q.device().is_cuda()) {
    if (!is_low_precision(q.dtype())) return s.d <= 128 && s.dv <= 128;
    return s.d == s.dv && (s.d == 32 || s.d == 64 || s.d == 128);
  }
  return true;
}

// Autocast casts q, k and v but not the mask: a floating mask (-inf or large negative biases) is
// read in f32 by the computation anyway, so rounding it to bf16 would only lose precision.
std::optional<std::vector<Tensor>> autocast_qkv(const char* op, const Tensor& q, const Tensor& k,
                                                const Tensor& v) {
  return detail::autocast_inputs(op, {&q, &k, &v});
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                    const Tensor& mask_in, bool causal, double dropout_p,
                                    std::optional<double> scale) {
  if (auto cast = autocast_qkv(kFused, q_in, k_in, v_in)) {
    NoAutocastGuard inside;
    return scaled_dot_product_attention((*cast)[0], (*cast)[1], (*cast)[2], mask_in, causal,
                                        dropout_p, scale);
  }
  const AttentionShapes s = check_args(q_in, k_in, v_in, mask_in, dropout_p, scale, kFused);
  if (!fused_kernel_takes(q_in, s)) {
    if (is_low_precision(q_in.dtype())) {
      return attend_in_f32(q_in, k_in, v_in, mask_in,
                           [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& m) {
                             return scaled_dot_product_attention(q, k, v, m, causal, dropout_p,
                                                                 scale);
                           });
    }
    // Devices (and dtypes) without the fused kernel use the composite twin, which reserves the
    // same Philox state, so dropout masks agree too.
    return scaled_dot_product_attention_slow(q_in, k_in, v_in, mask_in, causal, dropout_p, scale);
  }
  Tensor q = prepare(q_in, s), k = prepare(k_in, s), v = prepare(v_in, s);
  // Statistics (lse) are kept in the accumulation type: f32 for f16/bf16. The kernel reads a
  // floating mask in that type too; bool masks are read as they are.
  const DType acc = is_low_precision(q.dtype()) ? DType::F32 : q.dtype();
  Tensor mask = mask_in;
  if (mask.defined() && mask.dtype() != DType::Bool && mask.dtype() != acc) {
    mask = mask.to(acc);
  }
  const TensorOptions options = TensorOptions(q.dtype()).device(q.device());
  // The cpu kernel computes f16/bf16 in f32; it writes that f32 output, which the backward's row
  // dots (dO . O) then read unrounded, and the op rounds it once into `out`: the numerics of the
  // f32 kernel on widened inputs, with one output-sized copy instead of casts of q, k, v and out.
  // (The cuda kernels write 16-bit outputs and read them back, as FlashAttention does.) Without a
  // backward to record (inference), the kernel rounds each output row itself, to the same bits.
  const bool mask_grad = mask.defined() && mask.dtype() != DType::Bool;
  const bool records = autograd::any_requires_grad({&q, &k, &v, mask_grad ? &mask : nullptr});
  const bool round_after = q.device().is_cpu() && is_low_precision(q.dtype()) && records;
  const Shape out_shape = s.with_last2(s.tq, s.dv);
  Tensor out_kernel =
      empty_like_rows(q, out_shape, round_after ? TensorOptions(acc).device(q.device()) : options);
  Tensor lse = Tensor::empty({s.batch, s.tq}, TensorOptions(acc).device(q.device()));

  const int64_t draws = s.batch * s.tq * s.tk;
  const PhiloxState philox =
      dropout_p > 0 && draws > 0 ? philox_reserve(draws, q.device()) : PhiloxState{};
  kernels::AttentionForwardArgs args = make_args(q, k, v, mask, causal, dropout_p, philox, s);
  args.out = detail::make_view(out_kernel);
  args.lse = lse.data_ptr();
  if (s.batch > 0 && s.tq > 0) LATHE_KERNEL(q.device(), attention_forward, kFused)(args);
  Tensor out = out_kernel;
  if (round_after) {
    out = empty_like_rows(q, out_shape, options);
    NoGradGuard no_grad;
    out.copy_(out_kernel);
  }

  if (records) {
    autograd::record(
        kFused, {q, k, v, mask_grad ? mask : Tensor()}, {out},
        [sq = autograd::SavedTensor(q, kFused), sk = autograd::SavedTensor(k, kFused),
         sv = autograd::SavedTensor(v, kFused), sout = autograd::SavedTensor(out_kernel, kFused),
         smask = autograd::SavedTensor(mask, kFused), lse, causal, dropout_p, philox, s,
         mask_grad](const std::vector<Tensor>& g) {
          const Tensor& q0 = sq.get();
          const Tensor& k0 = sk.get();
          const Tensor& v0 = sv.get();
          const Tensor& out0 = sout.get();
          const Tensor mask0 = smask.defined() ? smask.get() : Tensor();
          Tensor grad_out = kernel_operand(g[0]);
          const TensorOptions opts = TensorOptions(q0.dtype()).device(q0.device());
          Tensor grad_q = empty_like_rows(q0, q0.shape(), opts);
          Tensor grad_k = empty_like_rows(k0, k0.shape(), opts);
          Tensor grad_v = empty_like_rows(v0, v0.shape(), opts);
          Tensor grad_scores =
              mask_grad
                  ? Tensor::empty(s.scores(), TensorOptions(mask0.dtype()).device(q0.device()))
                  : Tensor();
          kernels::AttentionBackwardArgs b;
          b.forward = make_args(q0, k0, v0, mask0, causal, dropout_p, philox, s);
          b.forward.out = detail::make_view(out0);
          b.forward.lse = lse.data_ptr();
          b.grad_out = detail::make_view(grad_out);
          b.grad_q = detail::make_view(grad_q);
          b.grad_k = detail::make_view(grad_k);
          b.grad_v = detail::make_view(grad_v);
          if (mask_grad) b.grad_mask = grad_scores.data_ptr();
          b.deterministic = deterministic_algorithms();
          if (s.batch > 0) LATHE_KERNEL(q0.device(), attention_backward, kFused)(b);
          Tensor grad_mask = mask_grad ? sum_to(grad_scores, mask0.shape()) : Tensor();
          return std::vector<Tensor>{grad_q, grad_k, grad_v, grad_mask};
        });
  }
  return out;
}

Tensor scaled_dot_product_attention_slow(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& mask, bool causal, double dropout_p,
                                         std::optional<double> scale) {
  if (auto cast = autocast_qkv(kSlow, q, k, v)) {
    NoAutocastGuard inside;
    return scaled_dot_product_attention_slow((*cast)[0], (*cast)[1], (*cast)[2], mask, causal,
                                             dropout_p, scale);
  }
  const AttentionShapes s = check_args(q, k, v, mask, dropout_p, scale, kSlow);
  if (is_low_precision(q.dtype())) {
    return attend_in_f32(
        q, k, v, mask,
        [&](const Tensor& q32, const Tensor& k32, const Tensor& v32, const Tensor& m) {
          return scaled_dot_product_attention_slow(q32, k32, v32, m, causal, dropout_p, scale);
        });
  }
  const TensorOptions options = TensorOptions(q.dtype()).device(q.device());
  const double inf = std::numeric_limits<double>::infinity();
  Tensor neg_inf = scalar_tensor(-inf, options);
  Tensor zero = scalar_tensor(0.0, options);

  Tensor scores = matmul(q, k.transpose(-2, -1)) * s.scale;
  if (mask.defined()) {
    if (mask.dtype() == DType::Bool) {
      scores = where(mask, scores, neg_inf);
    } else {
      scores = scores + (mask.dtype() == q.dtype() ? mask : mask.to(q.dtype()));
    }
  }
  if (causal) {
    const TensorOptions index_options = TensorOptions(DType::I64).device(q.device());
    Tensor rows = arange(s.tq, index_options).unsqueeze(1);
    Tensor cols = arange(s.tk, index_options).unsqueeze(0);
    scores = where(ge(rows, cols), scores, neg_inf);
  }
  Tensor probs;
  if (mask.defined() || causal) {
    // Rows with every key masked would be NaN; softmax a finite stand-in and zero them after, so
    // neither the values nor the gradients see a NaN.
    Tensor valid;
    {
      NoGradGuard no_grad;
      valid = gt(max(scores.detach(), {-1}, true), neg_inf);
    }
    probs = where(valid, softmax(where(valid, scores, zero), -1), zero);
  } else {
    probs = softmax(scores, -1);
  }
  if (dropout_p > 0 && probs.numel() > 0) {
    // Exactly the Philox slice the fused op would reserve.
    probs =
        detail::dropout_with_state(probs, dropout_p, philox_reserve(probs.numel(), probs.device()));
  }
  return matmul(probs, v);
}

}  // namespace lathe
