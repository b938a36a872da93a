// The contract between core/ and every device backend: plain data (pointers, sizes, strides,
// dtypes) and one function-pointer type per kernel family. Nothing here knows about Tensor or
// autograd, so a backend (cpu, cuda, the cuda simulator) is a set of functions over raw memory,
// like ggml's host launchers. core/ turns tensors into these structs and picks the backend's
// function from its KernelTable (kernel_table.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "lathe/core/dtype.h"
#include "lathe/core/random.h"

namespace lathe::kernels {

inline constexpr int kMaxDims = 16;

// The op a kernel names when it reports bad data it found on the device (an index out of range,
// kernels/cuda/device_report.h), for the scope of a call whose op is not the kernel's own:
// embedding's forward runs the index_select kernel, and its error should say "embedding". Set by
// the op around the kernel call; the cpu kernels validate before the call and ignore it.
class ReportAs {
 public:
  explicit ReportAs(const char* op) : previous_(slot()) { slot() = op; }
  ~ReportAs() { slot() = previous_; }
  ReportAs(const ReportAs&) = delete;
  ReportAs& operator=(const ReportAs&) = delete;
  // The op set for this thread, or nullptr.
  static const char* current() { return slot(); }

 private:
  static const char*& slot() {
    static thread_local const char* op = nullptr;
    return op;
  }
  const char* previous_;
};

// A strided n-d view of device memory. `data` points at the view's first element (the tensor's
// offset is already applied); strides are in elements and may be 0 (broadcast).
struct View {
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= size[i];
    return n;
  }
  bool is_contiguous() const {
    int64_t expected = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (size[i] != 1 && stride[i] != expected) return false;
      expected *= size[i];
    }
    return true;
  }
};

// `v` without dim `dim`; when `size_from` is given its sizes are used, so that an operand larger
// than the iteration shape (gather's input) is walked with the iteration shape. The index kernels
// of every backend iterate this way over the dims other than the indexed one.
inline View drop_dim(const View& v, int dim, const View* size_from = nullptr) {
  View r;
  r.data = v.data;
  r.dtype = v.dtype;
  r.ndim = v.ndim - 1;
  for (int d = 0, w = 0; d < v.ndim; ++d) {
    if (d == dim) continue;
    r.size[w] = size_from ? size_from->size[d] : v.size[d];
    r.stride[w] = v.stride[d];
    ++w;
  }
  return r;
}

enum class UnaryOp : uint8_t {
  Neg,
  Exp,
  Log,
  Sqrt,
  Rsqrt,
  Abs,
  Tanh,
  Sigmoid,
  Relu,
  Gelu,       // exact: x * Phi(x)
  GeluTanh,   // tanh approximation
  Clamp,      // alpha = min (or -inf), beta = max (or +inf)
  PowScalar,  // x ^ alpha
};

enum class BinaryOp : uint8_t {
  Add,
  Sub,
  Mul,
  Div,
  Pow,
  Maximum,
  Minimum,
  Eq,
  Ne,
  Lt,
  Le,
  Gt,
  Ge,  // write Bool outputs
};

enum class ReduceOp : uint8_t { Sum, Max, Min };
enum class RandomDist : uint8_t { Uniform, Normal };

// Row-major batched GEMM: C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b], op = transpose or not.
// A is [m, k] (or [k, m] when trans_a), B is [k, n] (or [n, k] when trans_b), C is [m, n].
struct GemmArgs {
  DType dtype = DType::F32;
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  const void* a = nullptr;
  int64_t lda = 0, batch_stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, batch_stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, batch_stride_c = 0;
  double alpha = 1.0, beta = 0.0;
  // f32 only: the cuda device may compute in TF32 on tensor cores (set_float32_matmul_precision);
  // the cpu device has no TF32 and ignores it.
  bool allow_tf32 = false;
};

// Statistics (mean, rstd, lse) are kept in the accumulation type: f64 for f64 data, f32 otherwise.
struct LayerNormForwardArgs {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* x = nullptr;
  const void* weight = nullptr;  // [cols] or null
  const void* bias = nullptr;    // [cols] or null
  void* y = nullptr;
  void* mean = nullptr;  // [rows]
  void* rstd = nullptr;  // [rows]
  double eps = 1e-5;
};

struct LayerNormBackwardArgs {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* x = nullptr;
  const void* weight = nullptr;  // may be null
  const void* mean = nullptr;
  const void* rstd = nullptr;
  const void* grad_y = nullptr;
  void* grad_x = nullptr;       // may be null
  void* grad_weight = nullptr;  // may be null; overwritten, not accumulated
  void* grad_bias = nullptr;    // may be null; overwritten
};

// Residual add fused into layer norm: s = x + residual, rounded to `dtype` (what a separate add
// would store), then y = layer_norm(s) exactly as LayerNormForwardArgs. `sum` (nullable) receives
// s for the backward, which is layer_norm_backward on s (and d residual = d x).
struct AddLayerNormForwardArgs {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* x = nullptr;         // [rows, cols], contiguous
  const void* residual = nullptr;  // [rows, cols], contiguous
  const void* weight = nullptr;    // [cols] or null
  const void* bias = nullptr;      // [cols] or null
  void* y = nullptr;
  void* sum = nullptr;   // [rows, cols] or null
  void* mean = nullptr;  // [rows], accumulation type
  void* rstd = nullptr;  // [rows], accumulation type
  double eps = 1e-5;
};

// Bias add fused into GELU over contiguous [rows, cols]: y = gelu(x + bias[col]) (x + bias in the
// accumulation type, not rounded), erf form or tanh approximation.
struct BiasGeluArgs {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* x = nullptr;
  const void* bias = nullptr;  // [cols]
  void* y = nullptr;
  bool tanh = false;
};

// grad_x = grad_y * gelu'(x + bias); grad_bias = sum over rows of grad_x (of the unrounded values),
// deterministic. Either output may be null; grad_bias is overwritten, not accumulated.
struct BiasGeluBackwardArgs {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* x = nullptr;
  const void* bias = nullptr;
  const void* grad_y = nullptr;
  void* grad_x = nullptr;
  void* grad_bias = nullptr;
  bool tanh = false;
};

struct CrossEntropyForwardArgs {
  DType dtype = DType::F32;
  int64_t rows = 0, classes = 0;
  const void* logits = nullptr;      // [rows, classes]
  const int64_t* targets = nullptr;  // [rows]
  void* loss = nullptr;              // [rows], 0 where target == ignore_index
  void* lse = nullptr;               // [rows] log-sum-exp, accumulation type
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
};

struct CrossEntropyBackwardArgs {
  DType dtype = DType::F32;
  int64_t rows = 0, classes = 0;
  const void* logits = nullptr;
  const int64_t* targets = nullptr;
  const void* lse = nullptr;
  const void* grad_loss = nullptr;  // [rows]
  void* grad_logits = nullptr;      // [rows, classes]
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
};

// q: [lead..., q_len, head_dim], k: [lead..., kv_len, head_dim], v: [lead..., kv_len, value_dim],
// out: [lead..., q_len, value_dim]: views with the same leading sizes (batch x heads, broadcast
// already applied), whose product is `batch`; batch index b is row-major over them. The cpu kernels
// take any views with contiguous rows (attention_rows_strided). The cuda kernels take any strides
// whose rows they can copy in 16-byte pieces (attention_rows_aligned), so a [B, H, T, d] head view
// of a [B, T, H, d] projection is read, and out written, where it is, without a layout copy on
// either side. mask: a view of shape [leading dims..., q_len, kv_len] whose leading sizes multiply
// to `batch` (strides may be 0: a [B, 1, 1, T] key-padding mask broadcast over heads cannot be
// flattened to one batch stride), or data == null. Bool masks keep true positions; floating masks
// (of the accumulation type: `dtype`, f32 for f16/bf16) are added to the scaled scores. causal
// masks key j > query i (PyTorch's top-left tril). Dropout keeps element n = (b * q_len + i) *
// kv_len + j of the probabilities iff philox::to_uniform(block(offset + n / 4, seed)[n % 4]) >=
// float(dropout_p) (the dropout kernel's rule), scaled by 1 / (1 - p).
struct AttentionForwardArgs {
  DType dtype = DType::F32;
  int64_t batch = 0, q_len = 0, kv_len = 0, head_dim = 0, value_dim = 0;
  View q, k, v;
  View mask;
  bool causal = false;
  double scale = 1.0;
  double dropout_p = 0.0;
  PhiloxState philox;  // of the dropout mask over [batch, q_len, kv_len]; cuda only: device_state
  View out;
  void* lse = nullptr;  // [batch, q_len] contiguous, accumulation type; -inf for fully masked rows
};
// Which dtypes a backend's attention kernels take: cpu f32/f64; cuda f16/bf16 with head_dim ==
// value_dim in {32, 64, 128} (tensor cores) and f32/f64 with head_dim, value_dim <= 128 (SIMT);
// the op widens or composes the rest, see core/ops/attention.cpp. A fully masked row gives zeros
// and zero gradients.

// Whether the cuda attention kernels can read or write `v` where it is (see AttentionForwardArgs):
// the last dim contiguous, the address and every other stride of a dim longer than 1 multiples of
// 16 bytes.
inline bool attention_rows_aligned(const View& v) {
  const int64_t elem = int64_t(element_size(v.dtype));
  if (reinterpret_cast<uintptr_t>(v.data) % 16 != 0) return false;
  for (int i = 0; i < v.ndim; ++i) {
    if (v.size[i] <= 1) continue;
    if (i == v.ndim - 1 ? v.stride[i] != 1 : (v.stride[i] * elem) % 16 != 0) return false;
  }
  return true;
}

// Whether the cpu attention kernels can read or write `v` where it is: contiguous rows (the last
// dim of stride 1) at a row stride of at least the row length (BLAS's leading dimension), any
// non-negative stride, 0 included, over the leading dims.
inline bool attention_rows_strided(const View& v) {
  if (v.ndim < 2) return false;
  const int last = v.ndim - 1;
  if (v.size[last] > 1 && v.stride[last] != 1) return false;
  if (v.size[last - 1] > 1 && v.stride[last - 1] < v.size[last]) return false;
  for (int i = 0; i < last - 1; ++i) {
    if (v.stride[i] < 0) return false;
  }
  return true;
}

// Gradients are overwritten, not accumulated; grad_out, grad_q, grad_k and grad_v are views like
// out, q, k and v (with the same rules on strides), grad_q/k/v of the shapes of q/k/v. grad_mask
// (optional, contiguous [batch, q_len, kv_len] of the accumulation type) receives the gradient of
// the scores, i.e. of an additive mask before it is reduced over its broadcast dims.
struct AttentionBackwardArgs {
  AttentionForwardArgs forward;  // the same inputs; out and lse as written by the forward
  View grad_out;
  View grad_q, grad_k, grad_v;
  void* grad_mask = nullptr;
  // true: every gradient is bit-reproducible (the cuda flash kernels recompute S and dP in a
  // separate dQ pass that sums in a fixed order). false: the cuda flash kernels accumulate dQ with
  // float atomicAdd from the dK/dV pass instead, which saves that recomputation but lets grad_q
  // vary in its last bits between runs (FlashAttention-2's default). The other kernels are
  // deterministic either way and ignore it. The op sets it from lathe::deterministic_algorithms().
  bool deterministic = true;
};

using CopyFn = void (*)(const View& src, const View& dst);  // same shape; converts dtype
using FillFn = void (*)(const View& dst, double value);
using UnaryFn = void (*)(UnaryOp op, const View& in, const View& out, double alpha, double beta);
// grad_in = grad_out * d op(x) / dx
using UnaryBackwardFn = void (*)(UnaryOp op, const View& x, const View& grad_out,
                                 const View& grad_in, double alpha, double beta);
// a and b already broadcast to out's shape (stride 0 on broadcast dims).
using BinaryFn = void (*)(BinaryOp op, const View& a, const View& b, const View& out);
using WhereFn = void (*)(const View& cond, const View& a, const View& b, const View& out);
// out has in's ndim with size 1 on the reduced dims.
using ReduceFn = void (*)(ReduceOp op, const View& in, const View& out);
// Index (I64) of the max/min along `dim`; out has size 1 on `dim`. First index wins ties.
using ArgReduceFn = void (*)(ReduceOp op, const View& in, int dim, const View& out);
using GemmFn = void (*)(const GemmArgs& args);
// out.select(dim, i) = in.select(dim, index[i]); index is I64 1-d.
using IndexSelectFn = void (*)(const View& in, int dim, const View& index, const View& out);
// out.select(dim, index[i]) += src.select(dim, i), deterministic order.
using IndexAddFn = void (*)(const View& out, int dim, const View& index, const View& src);
// out[..i..] = in[..index[..i..]..] along dim; index has out's shape.
using GatherFn = void (*)(const View& in, int dim, const View& index, const View& out);
// out[..index[..i..]..] += src[..i..] along dim, deterministic order.
using ScatterAddFn = void (*)(const View& out, int dim, const View& index, const View& src);
// out (contiguous f32/f64) filled from Philox(seed, offset), element i from block i / 4.
// `state` may carry a device_state on cuda (a draw inside a graph capture).
using RandomFn = void (*)(RandomDist dist, const View& out, const PhiloxState& state);
// out = in * keep / (1 - p), keep = uniform(i) >= p; also computes the backward (in = grad).
using DropoutFn = void (*)(const View& in, const View& out, double p, const PhiloxState& state);
// Over the last dim of contiguous x/y: y = softmax(x) or log_softmax(x).
using SoftmaxForwardFn = void (*)(const View& x, const View& y, bool log);
using SoftmaxBackwardFn = void (*)(const View& y, const View& grad_y, const View& grad_x, bool log);
using LayerNormForwardFn = void (*)(const LayerNormForwardArgs& args);
using LayerNormBackwardFn = void (*)(const LayerNormBackwardArgs& args);
using AddLayerNormForwardFn = void (*)(const AddLayerNormForwardArgs& args);
using BiasGeluForwardFn = void (*)(const BiasGeluArgs& args);
using BiasGeluBackwardFn = void (*)(const BiasGeluBackwardArgs& args);
using CrossEntropyForwardFn = void (*)(const CrossEntropyForwardArgs& args);
using CrossEntropyBackwardFn = void (*)(const CrossEntropyBackwardArgs& args);
using AttentionForwardFn = void (*)(const AttentionForwardArgs& args);
using AttentionBackwardFn = void (*)(const AttentionBackwardArgs& args);

// The gradient of an embedding lookup: grad_weight[v] = sum of grad_out[k] over the positions k
// with indices[k] == v, in increasing k (backends may group the terms, always in the same way for
// the same indices), for every v except padding_idx; rows that no index names (and the padding
// row) are zero. grad_weight is overwritten, not accumulated.
struct EmbeddingBackwardArgs {
  const int64_t* indices = nullptr;  // [n], contiguous
  int64_t n = 0;
  View grad_out;                // [n, dim], any strides; its dtype is the gradient's
  void* grad_weight = nullptr;  // [num_embeddings, dim], contiguous
  int64_t num_embeddings = 0;
  int64_t padding_idx = -1;  // < 0: none
};
using EmbeddingBackwardFn = void (*)(const EmbeddingBackwardArgs& args);

// One tensor of a fused Adam/AdamW step (multi-tensor apply): `numel` contiguous elements in each
// buffer. param and grad have AdamWArgs::param_dtype; the moments are f32. master (f32) is the
// master copy of a 16-bit param: the update runs on it and param receives it rounded; null for f32
// params.
struct AdamWTensor {
  void* param = nullptr;
  const void* grad = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  float* master = nullptr;
  int64_t numel = 0;
};

// Every tensor gets the same scalars, computed on the host in f64 and rounded to f32 once, then per
// element in f32 (torch.optim's single-tensor formulas, in this order):
//   decoupled:  p = p * (1 - lr * weight_decay)          else  g = g + weight_decay * p
//   m = m + (1 - beta1) * (g - m)
//   v = v * beta2 + (1 - beta2) * g * g
//   p = p - (lr / bias_correction1) * (m / (sqrt(v) / sqrt(bias_correction2) + eps))
// with bias_correction_k = 1 - beta_k^step.
struct AdamWArgs {
  DType param_dtype = DType::F32;        // F32, or F16/BF16 with master weights
  const AdamWTensor* tensors = nullptr;  // host array of `count` entries (device pointers inside)
  int64_t count = 0;
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled_weight_decay = true;  // AdamW; false: Adam's L2 term added to the gradient
  double bias_correction1 = 1.0, bias_correction2 = 1.0;
  // cuda only: when set, the kernel reads the step's scalars from this device address instead of
  // computing them from lr, weight_decay and the bias corrections above. A CUDA graph's replays
  // refill it (adamw_step_scalars of the step being taken), as the launch's values would be baked
  // in.
  const struct AdamWStepScalars* device_step_scalars = nullptr;
  // Elements per unit of work (a CUDA block's chunk, a cpu thread's share); 0 = the backend's
  // default. Results do not depend on it; tests set it small to cover multi-launch splitting.
  int64_t chunk = 0;
};
using AdamWFn = void (*)(const AdamWArgs& args);

// The scalars of an Adam/AdamW step that change from step to step (they depend on lr, weight decay
// and the step count), rounded from f64 to f32 once. Every backend computes them with this
// function, and so does a graph replay (on the host), so a replayed step is the eager step's bits.
struct AdamWStepScalars {
  float decay = 1.0f;      // 1 - lr * weight_decay (decoupled weight decay)
  float l2 = 0.0f;         // weight_decay (Adam's L2 term)
  float step_size = 0.0f;  // lr / bias_correction1
  float bc2_sqrt = 1.0f;   // sqrt(bias_correction2)
};
inline AdamWStepScalars adamw_step_scalars(double lr, double weight_decay, double bias_correction1,
                                           double bias_correction2) {
  AdamWStepScalars s;
  s.decay = float(1.0 - lr * weight_decay);
  s.l2 = float(weight_decay);
  s.step_size = float(lr / bias_correction1);
  s.bc2_sqrt = float(std::sqrt(bias_correction2));
  return s;
}
inline AdamWStepScalars adamw_step_scalars(const AdamWArgs& a) {
  return adamw_step_scalars(a.lr, a.weight_decay, a.bias_correction1, a.bias_correction2);
}

// Many contiguous tensors of one device at once (gradient clipping): one or two launches instead
// of several per tensor. Tensors may differ in dtype (f32, f64, f16, bf16).
struct MultiTensor {
  void* data = nullptr;
  int64_t numel = 0;
  DType dtype = DType::F32;
};

// norms[k] = sum |x|^p over tensor k (p = norm_type), or max |x| when norm_type is infinite;
// computed in f64. The per-element order of the sums is fixed (chunks of `chunk` elements summed
// in a fixed tree, chunks added in order): the result does not depend on the thread count or the
// schedule. NaN propagates. When `total` is set, total[0] = the norms combined in tensor order
// (0 + norms[0] + norms[1] + ..., or their maximum with NaN winning), so that a caller's reduction
// of the norms has one fixed order on every device. `norms` and `total` point into the kernel's
// device memory (host memory for the cpu device). The cuda kernel is asynchronous on the current
// stream and never makes the host wait: the values are there once the stream reaches them.
struct MultiTensorNormArgs {
  const MultiTensor* tensors = nullptr;  // host array of `count` entries (device pointers inside)
  int64_t count = 0;
  double norm_type = 2.0;
  double* norms = nullptr;  // `count` f64 in device memory
  double* total = nullptr;  // optional: one f64 in device memory
  int64_t chunk = 0;        // 0: the backend's default; tests set it small
};
using MultiTensorNormFn = void (*)(const MultiTensorNormArgs& args);

// Gradient clipping's scaling, with the coefficient c = *scale (one f64 in the device's memory, so
// that a coefficient computed on the device never visits the host): every tensor is multiplied by
// c in place, in f32 (f64 for f64 data) and rounded once, unless c >= 1, which leaves the tensors
// untouched (clipping's min(c, 1) without writing memory; the cuda kernel's blocks return after
// reading c). A NaN c fails that test and poisons the tensors, as PyTorch's clipping does.
// Asynchronous on cuda, like the norm.
using MultiTensorScaleFn = void (*)(const MultiTensor* tensors, int64_t count, const double* scale);

}  // namespace lathe::kernels
