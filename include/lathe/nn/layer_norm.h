// LayerNorm over the last dimension with an affine weight and bias (PyTorch's names; older BERT
// checkpoints call them gamma and beta — nn::from_pretrained renames those).
#pragma once

#include "lathe/nn/module.h"

namespace lathe::nn {

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t normalized_size, double eps = 1e-5);
  Tensor forward(const Tensor& x) const;

  double eps() const { return eps_; }
  Tensor weight;
  Tensor bias;

 private:
  double eps_;
};

}  // namespace lathe::nn
