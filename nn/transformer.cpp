#include "lathe/nn/transformer.h"

#include "lathe/core/autocast.h"
#include "lathe/core/functional.h"

namespace lathe::nn {

ResidualOutput::ResidualOutput(int64_t in_features, int64_t hidden_size, double dropout_p,
                               double eps)
    : Module("ResidualOutput") {
  dense = register_module("dense", std::make_shared<Linear>(in_features, hidden_size));
  layer_norm = register_module("LayerNorm", std::make_shared<LayerNorm>(hidden_size, eps));
  dropout = register_module("dropout", std::make_shared<Dropout>(dropout_p));
}

Tensor ResidualOutput::forward(const Tensor& h, const Tensor& residual, bool pre_layer_norm) const {
  const Tensor projected = dropout->forward(dense->forward(h));
  if (pre_layer_norm) return projected + residual;
  // Post-LN: the add fused into the LayerNorm kernel (add_layer_norm) when the two operands can
  // meet in one kernel: same shape, and the same dtype, or any non-f64 dtypes under autocast
  // (which runs add_layer_norm in f32). Otherwise the add, then the LayerNorm module.
  const bool same_dtype = projected.dtype() == residual.dtype();
  const bool autocast_f32 = autocast_enabled(projected.device().type) &&
                            projected.dtype() != DType::F64 && residual.dtype() != DType::F64;
  if (projected.shape() == residual.shape() && (same_dtype || autocast_f32) &&
      residual.size(-1) == layer_norm->weight.size(0)) {
    return add_layer_norm(projected, residual, layer_norm->weight, layer_norm->bias,
                          layer_norm->eps());
  }
  return layer_norm->forward(projected + residual);
}

AttentionBlock::AttentionBlock(const TransformerLayerOptions& o) : Module("AttentionBlock") {
  self = register_module("self", std::make_shared<MultiHeadSelfAttention>(
                                     o.hidden_size, o.num_heads, o.attention_dropout, o.causal));
  output = register_module(
      "output", std::make_shared<ResidualOutput>(o.hidden_size, o.hidden_size, o.hidden_dropout,
                                                 o.layer_norm_eps));
}

Tensor AttentionBlock::forward(const Tensor& x, const Tensor& mask, bool pre_layer_norm) const {
  if (pre_layer_norm) {
    return output->forward(self->forward(output->layer_norm->forward(x), mask), x, true);
  }
  return output->forward(self->forward(x, mask), x, false);
}

FeedForwardIn::FeedForwardIn(int64_t hidden_size, int64_t intermediate_size,
                             const std::string& activation)
    : Module("FeedForwardIn"), activation_(parse_activation(activation)) {
  dense = register_module("dense", std::make_shared<Linear>(hidden_size, intermediate_size));
}

Tensor FeedForwardIn::forward(const Tensor& x) const {
  // GELU: the Linear without its bias add, then bias + GELU in one kernel (bias_gelu), unless the
  // layer has no bias or a LoRA adapter (whose output joins before the bias would be added).
  const bool gelu = activation_ == Activation::Gelu || activation_ == Activation::GeluTanh;
  if (gelu && dense->bias.defined() && !dense->has_lora()) {
    LATHE_CHECK(x.dim() >= 1 && x.size(-1) == dense->in_features(), "Linear(", dense->in_features(),
                " -> ", dense->out_features(), "): input of shape ", shape_str(x.shape()),
                " does not end in ", dense->in_features());
    return bias_gelu(
        linear(x, dense->weight), dense->bias,
        activation_ == Activation::GeluTanh ? GeluApproximation::Tanh : GeluApproximation::None);
  }
  return apply_activation(activation_, dense->forward(x));
}

TransformerEncoderLayer::TransformerEncoderLayer(const TransformerLayerOptions& o)
    : Module("TransformerEncoderLayer"), options_(o) {
  attention = register_module("attention", std::make_shared<AttentionBlock>(o));
  intermediate = register_module(
      "intermediate",
      std::make_shared<FeedForwardIn>(o.hidden_size, o.intermediate_size, o.activation));
  output = register_module("output",
                           std::make_shared<ResidualOutput>(o.intermediate_size, o.hidden_size,
                                                            o.hidden_dropout, o.layer_norm_eps));
}

Tensor TransformerEncoderLayer::forward(const Tensor& x, const Tensor& mask) const {
  const bool pre = options_.pre_layer_norm;
  const Tensor h = attention->forward(x, mask, pre);
  const Tensor ffn_in = pre ? output->layer_norm->forward(h) : h;
  return output->forward(intermediate->forward(ffn_in), h, pre);
}

}  // namespace lathe::nn
