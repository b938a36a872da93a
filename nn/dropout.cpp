#include "lathe/nn/dropout.h"

#include "lathe/core/functional.h"

namespace lathe::nn {

Dropout::Dropout(double p) : Module("Dropout"), p_(0) {
  set_p(p);
}

void Dropout::set_p(double p) {
  LATHE_CHECK(p >= 0 && p < 1, "Dropout: p must be in [0, 1), got ", p);
  p_ = p;
}

Tensor Dropout::forward(const Tensor& x) const {
  return dropout(x, p_, is_training());
}

}  // namespace lathe::nn
