#include "lathe/nn/layer_norm.h"

#include "lathe/core/functional.h"

namespace lathe::nn {

LayerNorm::LayerNorm(int64_t normalized_size, double eps) : Module("LayerNorm"), eps_(eps) {
  LATHE_CHECK(normalized_size > 0, "LayerNorm: size must be positive, got ", normalized_size);
  LATHE_CHECK(eps > 0, "LayerNorm: eps must be positive, got ", eps);
  weight = register_parameter("weight", ones({normalized_size}));
  bias = register_parameter("bias", zeros({normalized_size}));
}

Tensor LayerNorm::forward(const Tensor& x) const {
  LATHE_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(0), "LayerNorm(", weight.size(0),
              "): input of shape ", shape_str(x.shape()), " does not end in ", weight.size(0));
  return layer_norm(x, weight, bias, eps_);
}

}  // namespace lathe::nn
