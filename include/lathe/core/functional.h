// The functional API: every op a model uses. nn/, optim/ and data/ call only these. Each op is
// declared once in core/op_table.def (name, schema, kernels, backward) — see docs/ops.md.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "lathe/core/tensor.h"

namespace lathe {

// ---- factories ----
Tensor empty(const Shape& shape, TensorOptions options = {});
Tensor zeros(const Shape& shape, TensorOptions options = {});
Tensor ones(const Shape& shape, TensorOptions options = {});
Tensor full(const Shape& shape, double value, TensorOptions options = {});
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
// [start, end) with `step`; the dtype defaults to I64 unless the options name one.
Tensor arange(double start, double end, double step = 1.0, TensorOptions options = {});
Tensor arange(int64_t end, TensorOptions options = {});
// Philox-based, reproducible for a given manual_seed() on every device.
Tensor rand(const Shape& shape, TensorOptions options = {});   // U[0, 1)
Tensor randn(const Shape& shape, TensorOptions options = {});  // N(0, 1)
// A 0-dim tensor holding `value`.
Tensor scalar_tensor(double value, TensorOptions options = {});
// The dtype defaults to T's (float -> F32, int64_t -> I64, ...); options may convert.
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions options = {});
template <class T>
Tensor from_vector(const std::vector<T>& values) {
  return from_vector(values, Shape{static_cast<int64_t>(values.size())});
}

// ---- elementwise binary (numpy broadcasting; gradients reduced to each input's shape) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, double exponent);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
// Comparisons return Bool tensors and are not differentiable.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);
Tensor operator-(const Tensor& a);

// ---- elementwise unary ----
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
enum class GeluApproximation { None, Tanh };  // None = exact erf form
Tensor gelu(const Tensor& x, GeluApproximation approximate = GeluApproximation::None);
Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max);

// ---- reductions (dims empty = all dims) ----
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// Gradient is shared equally between tied maxima (like torch.amax).
Tensor max(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor min(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// correction = 1 is the unbiased estimator, 0 the population variance.
Tensor var(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false,
           int64_t correction = 1);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // I64, not differentiable
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
// Sums a (broadcast) gradient back down to `shape`.
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- linear algebra ----
// 1-D/2-D/batched with numpy broadcasting of batch dims.
Tensor matmul(const Tensor& a, const Tensor& b);
// x @ weight^T + bias, weight is [out_features, in_features] as in PyTorch.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- shape ops (copying) ----
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

// ---- neural-network ops ----
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// Normalizes over the last weight.dim() dims (or the last dim when weight is undefined).
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
Tensor layer_norm_slow(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       double eps = 1e-5);  // composite reference
// layer_norm(x + residual, weight, bias, eps) in one kernel (post-LN residual blocks); x and
// residual have the same shape and dtype; the sum is rounded to that dtype, as add would store it.
Tensor add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                      const Tensor& bias, double eps = 1e-5);
// gelu(x + bias) in one kernel, bias [x.size(-1)] broadcast over the rows (a feed-forward block's
// Linear without its bias, then this); a bias of another floating dtype is cast to x's.
Tensor bias_gelu(const Tensor& x, const Tensor& bias,
                 GeluApproximation approximate = GeluApproximation::None);
// Rows of `weight` picked by integer `indices`; rows equal to padding_idx get no gradient.
Tensor embedding(const Tensor& indices, const Tensor& weight,
                 std::optional<int64_t> padding_idx = std::nullopt);
// Inverted dropout with a Philox mask; identity when !training or p == 0.
Tensor dropout(const Tensor& x, double p, bool training = true);

enum class Reduction { Mean, Sum, None };
struct CrossEntropyOptions {
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  Reduction reduction = Reduction::Mean;
};
// logits [N, C] (or [C]), targets I64 [N] of class indices.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, CrossEntropyOptions options = {});
Tensor cross_entropy_slow(const Tensor& logits, const Tensor& targets,
                          CrossEntropyOptions options = {});  // composite reference

// q [..., Tq, D], k/v [..., Tk, D]. mask broadcastable to [..., Tq, Tk]: Bool (true = attend) or
// floating (added to the scores). A row with every key masked returns zeros.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& mask = Tensor(), bool causal = false,
                                    double dropout_p = 0.0,
                                    std::optional<double> scale = std::nullopt);
Tensor scaled_dot_product_attention_slow(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& mask = Tensor(), bool causal = false,
                                         double dropout_p = 0.0,
                                         std::optional<double> scale = std::nullopt);

}  // namespace lathe
