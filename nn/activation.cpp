#include "lathe/nn/activation.h"

#include "lathe/core/error.h"
#include "lathe/core/functional.h"

namespace lathe::nn {

Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::Gelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    return Activation::GeluTanh;
  }
  if (name == "relu") return Activation::Relu;
  if (name == "tanh") return Activation::Tanh;
  if (name == "silu" || name == "swish") return Activation::Silu;
  LATHE_FAIL("unknown activation '", name,
             "' (expected gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, tanh, silu)");
}

Tensor apply_activation(Activation act, const Tensor& x) {
  switch (act) {
    case Activation::Gelu:
      return gelu(x, GeluApproximation::None);
    case Activation::GeluTanh:
      return gelu(x, GeluApproximation::Tanh);
    case Activation::Relu:
      return relu(x);
    case Activation::Tanh:
      return tanh(x);
    case Activation::Silu:
      return x * sigmoid(x);
  }
  LATHE_FAIL("apply_activation: bad enum value");
}

}  // namespace lathe::nn
