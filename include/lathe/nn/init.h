// Parameter initializers, in place and outside the graph. They draw from lathe's Philox stream
// (manual_seed), so a model built twice after the same seed has identical weights on every device.
#pragma once

#include "lathe/core/tensor.h"

namespace lathe::nn::init {

void normal_(const Tensor& t, double mean = 0.0, double std = 1.0);
void uniform_(const Tensor& t, double low, double high);
void zeros_(const Tensor& t);
void ones_(const Tensor& t);
// PyTorch's default for Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
// (kaiming_uniform_ with a = sqrt(5)).
void linear_default_(const Tensor& weight, const Tensor& bias, int64_t fan_in);

}  // namespace lathe::nn::init
