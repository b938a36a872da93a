// Activation checkpointing (torch.utils.checkpoint): trade compute for memory in backward.
//
// A block of a network normally keeps every tensor its ops save for backward (a BERT layer: the
// inputs of its six GEMMs, the attention's outputs and statistics, the LayerNorm inputs, the
// FFN's 4x-wide activation) from the forward until backward reaches it, so training memory grows
// with depth x batch x sequence. checkpoint(fn, inputs) runs the block and keeps only its inputs:
// the graph the block built is dropped as soon as it returns, and one node stands for the whole
// block. When backward reaches that node, it runs fn again on the saved inputs, with grad mode
// on, and backpropagates through the rebuilt graph: gradients flow to the inputs (returned to the
// outer graph) and to every parameter fn uses (accumulated into their .grad, as a plain backward
// would). The price is one more forward of the block per backward.
//
// The re-run sees what the first run saw, so the gradients are the ones without checkpointing:
// - the random stream: the re-run is given exactly the Philox reservations the first run made on
//   its thread (dropout masks are the same bits), without touching the global generator, so draws
//   after the block, and other threads' draws meanwhile, are not moved; a re-run that draws a
//   different count or size is an error;
// - autocast: the first run's autocast state (backward itself runs with autocast off);
// - the inputs: saved with their versions, so modifying one in place before backward is an error,
//   as it is for any op's saved tensor.
// What it cannot see is state fn reads from elsewhere: switch a module between train() and eval()
// between the forward and its backward and the re-run differs. fn must also return tensors of the
// same shapes and dtypes both times (checked).
//
// Outputs require grad exactly when fn's would (fn runs with grad mode as it is; the block's graph
// is built once and dropped), including when only parameters inside fn need gradients. Under
// NoGradGuard, checkpoint is a plain call of fn.
#pragma once

#include <functional>
#include <vector>

#include "lathe/core/tensor.h"

namespace lathe {

using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

// Runs fn(inputs) keeping only `inputs` (undefined entries allowed, passed as they are) for
// backward; see above. fn must not keep references to the tensors it is given beyond the call.
std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs);

// The one-tensor form: checkpoint([&](const Tensor& x) { return layer->forward(x); }, h).
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input);

}  // namespace lathe
