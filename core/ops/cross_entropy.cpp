// cross_entropy: the fused op (per-row loss and log-sum-exp in one kernel, a one-pass backward
// from the saved lse) and cross_entropy_slow, its composite twin (log_softmax + gather +
// arithmetic) whose gradient comes from autograd. Both follow PyTorch's semantics:
//   - rows whose target equals ignore_index contribute neither loss nor gradient;
//   - label smoothing eps gives (1 - eps) * nll + eps * mean over classes of -log p;
//   - Mean divides the summed loss by the number of non-ignored rows. When every row is ignored
//     that is 0 / 0 = NaN, exactly as PyTorch returns; the gradient is then 0, never NaN.
// A bad class index is reported by value and never read out of bounds. The fused op validates the
// targets here on the cpu only; on cuda its kernel checks them and the error is raised at the
// host's next wait for the device (kernels/cuda/device_report.h): reading the targets back made the
// host wait at every loss. For the same reason Mean's count of non-ignored rows is a tensor on the
// logits' device. The composite twin, a reference, validates on the host everywhere.
#include <cmath>

#include <limits>

#include "core/tensor_internal.h"

namespace lathe {

namespace {

struct CrossEntropyShape {
  int64_t rows = 0, classes = 0;
  int64_t counted = 0;  // rows whose target is not ignore_index (when validated on the host)
};

CrossEntropyShape check_cross_entropy(const Tensor& logits, const Tensor& targets,
                                      const CrossEntropyOptions& options, const char* op,
                                      bool validate_on_host) {
  detail::check_defined(logits, op, "logits");
  detail::check_defined(targets, op, "targets");
  LATHE_CHECK(is_floating(logits.dtype()), op,
              ": logits must be floating (f32, f64, f16, bf16), got ", detail::describe(logits));
  LATHE_CHECK(targets.dtype() == DType::I64, op, ": targets must be i64 class indices, got ",
              detail::describe(targets));
  detail::check_same_device(logits, targets, op);
  LATHE_CHECK(logits.dim() == 1 || logits.dim() == 2, op, ": logits must be [N, C] or [C], got ",
              detail::describe(logits));
  LATHE_CHECK(options.label_smoothing >= 0.0 && options.label_smoothing <= 1.0, op,
              ": label_smoothing must be in [0, 1], got ", options.label_smoothing);
  CrossEntropyShape s;
  if (logits.dim() == 2) {
    s.rows = logits.size(0);
    s.classes = logits.size(1);
    LATHE_CHECK(targets.dim() == 1 && targets.size(0) == s.rows, op, ": targets ",
                detail::describe(targets), " must have shape [", s.rows, "] for logits ",
                detail::describe(logits));
  } else {
    s.rows = 1;
    s.classes = logits.size(0);
    LATHE_CHECK(targets.dim() == 0, op, ": targets ", detail::describe(targets),
                " must be 0-dim for 1-d logits ", detail::describe(logits));
  }
  LATHE_CHECK(s.classes > 0, op, ": logits ", detail::describe(logits), " have no classes");
  if (!validate_on_host) return s;
  const std::vector<int64_t> values = targets.to_vector<int64_t>();
  for (size_t i = 0; i < values.size(); ++i) {
    const int64_t t = values[i];
    if (t == options.ignore_index) continue;
    LATHE_CHECK(t >= 0 && t < s.classes, op, ": target ", t, " (at row ", i,
                ") is out of range for ", s.classes, " classes (valid: 0..", s.classes - 1,
                " or ignore_index ", options.ignore_index, ")");
    ++s.counted;
  }
  return s;
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, CrossEntropyOptions options) {
  const char* op = "cross_entropy";
  if (auto cast = detail::autocast_inputs(op, {&logits, &targets})) {
    NoAutocastGuard inside;
    return cross_entropy((*cast)[0], (*cast)[1], options);
  }
  const CrossEntropyShape s =
      check_cross_entropy(logits, targets, options, op, targets.device().is_cpu());
  // Devices without the fused kernel use the composite twin (same values, autograd gradients).
  if (!detail::kernels_of(logits).cross_entropy_forward) {
    return cross_entropy_slow(logits, targets, options);
  }
  // f16/bf16 on the cpu: the f32 op on the widened logits, the loss rounded once; autograd goes
  // through the casts. On cuda the kernels read 16-bit logits and keep lse in f32.
  if (detail::half_via_f32(logits)) {
    return cross_entropy(logits.to(DType::F32), targets, options).to(logits.dtype());
  }
  const TensorOptions opts = TensorOptions(logits.dtype()).device(logits.device());
  Tensor x = logits.detach().reshape({s.rows, s.classes}).contiguous();
  Tensor t = targets.detach().reshape({s.rows}).contiguous();
  Tensor losses = empty({s.rows}, opts);
  // The accumulation type: f64 for f64, f32 for f32/f16/bf16.
  Tensor lse = empty({s.rows}, TensorOptions(logits.dtype() == DType::F64 ? DType::F64 : DType::F32)
                                   .device(logits.device()));
  if (s.rows > 0) {
    kernels::CrossEntropyForwardArgs args;
    args.dtype = logits.dtype();
    args.rows = s.rows;
    args.classes = s.classes;
    args.logits = x.data_ptr();
    args.targets = static_cast<const int64_t*>(t.data_ptr());
    args.loss = losses.data_ptr();
    args.lse = lse.data_ptr();
    args.ignore_index = options.ignore_index;
    args.label_smoothing = options.label_smoothing;
    LATHE_KERNEL(logits.device(), cross_entropy_forward, op)(args);
  }

  Tensor out;
  Tensor inv_count;  // Mean: d out / d loss[row], 1 / max(rows not ignored, 1), on the device
  {
    NoGradGuard no_grad;
    switch (options.reduction) {
      case Reduction::None:
        out = logits.dim() == 1 ? losses.reshape({}) : losses;
        break;
      case Reduction::Sum:
        out = sum(losses);
        break;
      case Reduction::Mean: {
        // 0 / 0 = NaN when every row is ignored, as in PyTorch; the gradient is then 0 (every
        // row's is), whatever inv_count says.
        const DType acc = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
        const Tensor ignore = full({}, double(options.ignore_index),
                                   TensorOptions(DType::I64).device(logits.device()));
        const Tensor counted = sum(ne(t, ignore).to(acc));
        out = (sum(losses).to(acc) / counted).to(logits.dtype());
        inv_count = 1.0 / maximum(counted, full_like(counted, 1.0));
        break;
      }
    }
  }

  if (autograd::any_requires_grad({&logits})) {
    autograd::record(
        op, {logits}, {out},
        [saved_x = autograd::SavedTensor(x, op), t, lse, s, options, inv_count,
         logits_shape = logits.shape()](const std::vector<Tensor>& g) {
          const Tensor& xs = saved_x.get();
          const TensorOptions o = TensorOptions(xs.dtype()).device(xs.device());
          Tensor grad_loss;
          if (options.reduction == Reduction::None) {
            grad_loss = g[0].to(xs.dtype()).reshape({s.rows}).contiguous();
          } else {
            const Tensor scaled =
                inv_count.defined() ? g[0].to(inv_count.dtype()) * inv_count : g[0];
            grad_loss = scaled.to(xs.dtype()).reshape({1}).expand({s.rows}).contiguous();
          }
          Tensor grad = empty({s.rows, s.classes}, o);
          if (s.rows > 0) {
            kernels::CrossEntropyBackwardArgs args;
            args.dtype = xs.dtype();
            args.rows = s.rows;
            args.classes = s.classes;
            args.logits = xs.data_ptr();
            args.targets = static_cast<const int64_t*>(t.data_ptr());
            args.lse = lse.data_ptr();
            args.grad_loss = grad_loss.data_ptr();
            args.grad_logits = grad.data_ptr();
            args.ignore_index = options.ignore_index;
            args.label_smoothing = options.label_smoothing;
            LATHE_KERNEL(xs.device(), cross_entropy_backward, "cross_entropy backward")(args);
          }
          return std::vector<Tensor>{grad.reshape(logits_shape)};
        });
  }
  return out;
}

Tensor cross_entropy_slow(const Tensor& logits, const Tensor& targets,
                          CrossEntropyOptions options) {
  const char* op = "cross_entropy_slow";
  if (auto cast = detail::autocast_inputs(op, {&logits, &targets})) {
    NoAutocastGuard inside;
    return cross_entropy_slow((*cast)[0], (*cast)[1], options);
  }
  const CrossEntropyShape s = check_cross_entropy(logits, targets, options, op, true);
  Tensor x = logits.reshape({s.rows, s.classes});
  Tensor t = targets.reshape({s.rows});
  Tensor log_p = log_softmax(x, 1);
  Tensor ignore =
      full({}, double(options.ignore_index), TensorOptions(DType::I64).device(targets.device()));
  Tensor valid = ne(t, ignore);
  // Ignored rows gather class 0 (always in range) and are masked out afterwards.
  Tensor safe_t = where(valid, t, zeros_like(t));
  Tensor nll = -gather(log_p, 1, safe_t.unsqueeze(1)).squeeze(1);
  Tensor row_loss = nll;
  if (options.label_smoothing > 0.0) {
    const double eps = options.label_smoothing;
    row_loss = nll * (1.0 - eps) + (-mean(log_p, {1})) * eps;
  }
  row_loss = row_loss * valid.to(logits.dtype());
  switch (options.reduction) {
    case Reduction::None:
      return logits.dim() == 1 ? row_loss.reshape({}) : row_loss;
    case Reduction::Sum:
      return sum(row_loss);
    case Reduction::Mean:
      if (s.counted == 0) {
        // Every row ignored: the mean is 0/0 = NaN, as in PyTorch, but the gradient is zero
        // (as the fused kernel's), not NaN.
        return sum(row_loss) * 0.0 + std::numeric_limits<double>::quiet_NaN();
      }
      return sum(row_loss) / double(s.counted);
  }
  return row_loss;
}

}  // namespace lathe
