// Dropout: inverted dropout with a Philox mask while training, the identity in eval mode.
#pragma once

#include "lathe/nn/module.h"

namespace lathe::nn {

class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) const;
  double p() const { return p_; }
  void set_p(double p);

 private:
  double p_;
};

}  // namespace lathe::nn
