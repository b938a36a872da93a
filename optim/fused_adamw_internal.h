// What Adam::step (optim/adam.cpp) shares with fused_adamw_ (optim/fused_adamw.cpp).
#pragma once

#include <vector>

#include "kernels/kernel_api.h"
#include "lathe/optim/fused_adamw.h"

namespace lathe::optim::internal {

// fused_adamw_ with the step's lr-, weight-decay- and step-dependent scalars read from device
// memory when `device_step_scalars` is set (a step inside a CUDA graph capture, whose replays
// refill them; `step` must still hold valid values, they are checked and the rest of them used).
// The public fused_adamw_ refuses a capture: it has no way to change its step per replay.
void fused_adamw_launch(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                        const std::vector<Tensor>& masters, const FusedAdamWStep& step,
                        const kernels::AdamWStepScalars* device_step_scalars);

}  // namespace lathe::optim::internal
