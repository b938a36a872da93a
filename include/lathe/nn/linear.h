// Linear: y = x Wᵀ + b with W [out_features, in_features], PyTorch's layout and names ("weight",
// "bias"), so checkpoints map one to one.
//
// Optional LoRA adapter (Hu et al., 2021): y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ with
// A [r, in] (uniform like a Linear weight) and B [out, r] = 0, so training starts from exactly the
// pretrained function while W stays frozen. merged_weight() folds the adapter into W for export.
#pragma once

#include "lathe/nn/module.h"

namespace lathe::nn {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) const;  // [..., in] -> [..., out]

  // Adds the adapter (parameters "lora_A", "lora_B") and freezes weight and bias.
  void enable_lora(int64_t rank, double alpha, double dropout = 0.0);
  bool has_lora() const { return lora_A.defined(); }
  int64_t lora_rank() const { return has_lora() ? lora_A.size(0) : 0; }
  double lora_scale() const { return lora_scale_; }
  // W + (alpha / r) · B A (just W without an adapter); not part of the graph.
  Tensor merged_weight() const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  Tensor weight;
  Tensor bias;            // undefined when built without bias
  Tensor lora_A, lora_B;  // undefined without an adapter

 private:
  double lora_scale_ = 0.0;
  double lora_dropout_ = 0.0;
  int64_t in_features_;
  int64_t out_features_;
};

}  // namespace lathe::nn
