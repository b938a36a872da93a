// The fused Adam/AdamW update as a tensor-level op (op table: fused_adamw_): one multi-tensor
// kernel launch updates a whole list of parameters and their moments in place. AdamW::step calls
// it; it is public for callers that manage their own optimizer state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lathe/core/tensor.h"

namespace lathe::optim {

struct FusedAdamWStep {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled_weight_decay = true;  // AdamW; false: Adam's L2 term
  int64_t step = 1;                    // the step being taken (>= 1), for the bias corrections
};

// params[i], grads[i], exp_avgs[i], exp_avg_sqs[i] (and masters[i]) must all have the same shape,
// be contiguous and live on one device. params and grads: f32, or f16/bf16 with f32 `masters`
// (one per param; empty for f32 params); moments f32. Bumps the storage version of everything it
// writes. The formula is documented on kernels::AdamWArgs (kernels/kernel_api.h).
void fused_adamw_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                  const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                  const std::vector<Tensor>& masters, const FusedAdamWStep& step);

// Whether fused_adamw_ accepts `param` with `grad`; when not, `why` says what is missing.
bool fused_adamw_supports(const Tensor& param, const Tensor& grad, std::string* why = nullptr);

}  // namespace lathe::optim
