// Activations by Hugging Face's `hidden_act` names, so a config.json picks the function.
#pragma once

#include <string>

#include "lathe/core/tensor.h"

namespace lathe::nn {

enum class Activation { Gelu, GeluTanh, Relu, Tanh, Silu };

// "gelu" (exact erf form), "gelu_new" / "gelu_pytorch_tanh" / "gelu_fast" (tanh approximation),
// "relu", "tanh", "silu" / "swish". Anything else: lathe::Error naming the value.
Activation parse_activation(const std::string& name);
Tensor apply_activation(Activation act, const Tensor& x);

}  // namespace lathe::nn
