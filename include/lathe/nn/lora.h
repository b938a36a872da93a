// LoRA for transformer encoders: adapters on the attention and FFN projections (nn::Linear's
// enable_lora), everything else frozen but the task head; export folds the adapters into the
// weights so the result is a plain checkpoint any BERT loader reads.
#pragma once

#include <string>
#include <vector>

#include "lathe/nn/module.h"

namespace lathe::nn {

// Adds LoRA adapters to the attention (query, key, value, attention output) and FFN
// (intermediate, output) projections of every encoder layer below `root`, freezes every other
// parameter except those whose names start with one of `trainable_prefixes` (e.g. "classifier."),
// and returns how many layers got an adapter.
int64_t enable_lora(Module& root, int64_t rank, double alpha, double dropout = 0.0,
                    const std::vector<std::string>& trainable_prefixes = {"classifier."});
// The state dict with every adapter folded into its layer's weight and the lora_A / lora_B
// entries left out: what save_pretrained writes, loadable as a plain model.
StateDict merged_state_dict(const Module& root);

}  // namespace lathe::nn
