#include "lathe/nn/linear.h"

#include "lathe/core/functional.h"
#include "lathe/nn/init.h"

namespace lathe::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias)
    : Module("Linear"), in_features_(in_features), out_features_(out_features) {
  LATHE_CHECK(in_features > 0 && out_features > 0,
              "Linear: sizes must be positive, got in=", in_features, " out=", out_features);
  weight = register_parameter("weight", empty({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", empty({out_features}));
  init::linear_default_(weight, bias, in_features);
}

Tensor Linear::forward(const Tensor& x) const {
  LATHE_CHECK(x.dim() >= 1 && x.size(-1) == in_features_, "Linear(", in_features_, " -> ",
              out_features_, "): input of shape ", shape_str(x.shape()), " does not end in ",
              in_features_);
  return linear(x, weight, bias);
}

}  // namespace lathe::nn
