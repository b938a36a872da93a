#include "lathe/nn/linear.h"

#include <algorithm>

#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"
#include "lathe/nn/init.h"

namespace lathe::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias)
    : Module("Linear"), in_features_(in_features), out_features_(out_features) {
  LATHE_CHECK(in_features > 0 && out_features > 0,
              "Linear: sizes must be positive, got in=", in_features, " out=", out_features);
  weight = register_parameter("weight", empty({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", empty({out_features}));
  init::linear_default_(weight, bias, in_features);
}

Tensor Linear::forward(const Tensor& x) const {
  LATHE_CHECK(x.dim() >= 1 && x.size(-1) == in_features_, "Linear(", in_features_, " -> ",
              out_features_, "): input of shape ", shape_str(x.shape()), " does not end in ",
              in_features_);
  Tensor y = linear(x, weight, bias);
  if (has_lora()) {
    const Tensor dx = lora_dropout_ > 0 ? dropout(x, lora_dropout_, is_training()) : x;
    y = y + linear(linear(dx, lora_A), lora_B) * lora_scale_;
  }
  return y;
}

void Linear::enable_lora(int64_t rank, double alpha, double dropout_p) {
  LATHE_CHECK(!has_lora(), "Linear.enable_lora: this layer already has an adapter");
  LATHE_CHECK(rank > 0 && rank <= std::min(in_features_, out_features_),
              "Linear.enable_lora: rank must be in [1, ", std::min(in_features_, out_features_),
              "], got ", rank);
  LATHE_CHECK(alpha > 0, "Linear.enable_lora: alpha must be positive, got ", alpha);
  LATHE_CHECK(dropout_p >= 0 && dropout_p < 1,
              "Linear.enable_lora: dropout must be in [0, 1), got ", dropout_p);
  const TensorOptions like = TensorOptions(weight.dtype()).device(weight.device());
  lora_A = register_parameter("lora_A", empty({rank, in_features_}, like));
  lora_B = register_parameter("lora_B", zeros({out_features_, rank}, like));
  init::linear_default_(lora_A, Tensor(), in_features_);
  lora_scale_ = alpha / double(rank);
  lora_dropout_ = dropout_p;
  weight.requires_grad_(false);
  if (bias.defined()) bias.requires_grad_(false);
}

Tensor Linear::merged_weight() const {
  NoGradGuard no_grad;
  if (!has_lora()) return weight.detach();
  return weight + matmul(lora_B, lora_A) * lora_scale_;
}

}  // namespace lathe::nn
