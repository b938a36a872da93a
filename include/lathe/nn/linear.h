// Linear: y = x Wᵀ + b with W [out_features, in_features], PyTorch's layout and names ("weight",
// "bias"), so checkpoints map one to one.
#pragma once

#include "lathe/nn/module.h"

namespace lathe::nn {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) const;  // [..., in] -> [..., out]

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  Tensor weight;
  Tensor bias;  // undefined when built without bias

 private:
  int64_t in_features_;
  int64_t out_features_;
};

}  // namespace lathe::nn
