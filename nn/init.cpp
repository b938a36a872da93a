#include "lathe/nn/init.h"

#include <cmath>

#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"

namespace lathe::nn::init {

namespace {
TensorOptions options_of(const Tensor& t) {
  return TensorOptions(t.dtype()).device(t.device());
}
}  // namespace

void normal_(const Tensor& t, double mean, double std) {
  NoGradGuard no_grad;
  Tensor(t).copy_(randn(t.shape(), options_of(t)) * std + mean);
}

void uniform_(const Tensor& t, double low, double high) {
  NoGradGuard no_grad;
  Tensor(t).copy_(rand(t.shape(), options_of(t)) * (high - low) + low);
}

void zeros_(const Tensor& t) {
  NoGradGuard no_grad;
  Tensor(t).zero_();
}

void ones_(const Tensor& t) {
  NoGradGuard no_grad;
  Tensor(t).fill_(1.0);
}

void linear_default_(const Tensor& weight, const Tensor& bias, int64_t fan_in) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(double(fan_in)) : 0.0;
  uniform_(weight, -bound, bound);
  if (bias.defined()) uniform_(bias, -bound, bound);
}

}  // namespace lathe::nn::init
