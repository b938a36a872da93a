// Parameter groups for fine-tuning, from named parameters: the weight-decay split of Hugging Face's
// Trainer, and layer-wise learning-rate decay (LLRD) for BERT-style encoders. The rules are in
// docs/optim.md.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "lathe/optim/optimizer.h"

namespace lathe::optim {

// Whether a parameter gets no weight decay: its last name component is "bias", or some component
// is "LayerNorm", contains "layer_norm" or "layernorm" (any case), starts with "norm" ("norm",
// "norm1", "norm_f") or is "ln" / starts with "ln_" (GPT-2's ln_1, ln_f).
bool is_no_decay_parameter(std::string_view name);

// Groups "decay" (weight_decay) and "no_decay" (weight decay 0), each keeping the order of
// `named`; an empty group is left out.
std::vector<ParamGroup> no_decay_param_groups(const NamedParameters& named, double lr,
                                              double weight_decay);

// The depth of a parameter for layer-wise lr decay: 0 for embeddings (a name component
// "embeddings"), i + 1 for encoder layer i (the components "encoder.layer.<i>" anywhere in the
// name, e.g. "bert.encoder.layer.3.output.dense.weight"), num_layers + 1 for everything else
// (pooler, classifier head). Throws when i >= num_layers.
int64_t lr_decay_depth(std::string_view name, int64_t num_layers);

// One group per depth and decay class, lr * decay^(num_layers + 1 - depth): the head and pooler
// get lr, encoder layer i gets lr * decay^(num_layers - i), the embeddings
// lr * decay^(num_layers + 1). Each depth is split as no_decay_param_groups does. Groups are
// ordered embeddings, layer 0 .. num_layers - 1, head, "decay" before "no_decay", and named
// "embeddings.decay", "layer.3.no_decay", "head.decay", ...; empty groups are left out. decay must
// be positive and finite.
std::vector<ParamGroup> layerwise_lr_decay_groups(const NamedParameters& named, double lr,
                                                  double weight_decay, double decay,
                                                  int64_t num_layers);

}  // namespace lathe::optim
