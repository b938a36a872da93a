// A transformer encoder layer with BERT's module tree, so that its parameter names are Hugging
// Face's:
//   attention.self.{query,key,value}   MultiHeadSelfAttention
//   attention.output.{dense,LayerNorm} projection, dropout, residual, LayerNorm
//   intermediate.dense                 first FFN projection + activation
//   output.{dense,LayerNorm}           second FFN projection, dropout, residual, LayerNorm
// Post-LN (BERT): h = LN(x + drop(W_o · attn(x))); out = LN(h + drop(W_2 · act(W_1 · h))).
// Pre-LN (option): h = x + drop(W_o · attn(LN_a(x))); out = h + drop(W_2 · act(W_1 · LN_f(h))),
// where LN_a / LN_f are the same two LayerNorm modules, applied before their sublayer instead of
// after (a pre-LN stack usually wants a final LayerNorm, which is the caller's choice).
#pragma once

#include "lathe/nn/activation.h"
#include "lathe/nn/attention.h"
#include "lathe/nn/layer_norm.h"

namespace lathe::nn {

struct TransformerLayerOptions {
  int64_t hidden_size = 768;
  int64_t num_heads = 12;
  int64_t intermediate_size = 3072;
  std::string activation = "gelu";  // a Hugging Face hidden_act name
  double hidden_dropout = 0.1;
  double attention_dropout = 0.1;
  double layer_norm_eps = 1e-12;
  bool pre_layer_norm = false;
  bool causal = false;
};

// dense -> dropout -> (+ residual) -> LayerNorm. BERT has two: `attention.output`, `output`.
class ResidualOutput : public Module {
 public:
  ResidualOutput(int64_t in_features, int64_t hidden_size, double dropout, double eps);
  // Post-LN: LayerNorm(dropout(dense(h)) + residual). Pre-LN: residual + dropout(dense(h)).
  Tensor forward(const Tensor& h, const Tensor& residual, bool pre_layer_norm = false) const;

  std::shared_ptr<Linear> dense;
  std::shared_ptr<LayerNorm> layer_norm;  // registered as "LayerNorm"
  std::shared_ptr<Dropout> dropout;
};

// Self-attention plus its output block (`attention`).
class AttentionBlock : public Module {
 public:
  explicit AttentionBlock(const TransformerLayerOptions& options);
  Tensor forward(const Tensor& x, const Tensor& mask, bool pre_layer_norm = false) const;

  std::shared_ptr<MultiHeadSelfAttention> self;
  std::shared_ptr<ResidualOutput> output;
};

// The FFN's first half (`intermediate`): dense + activation.
class FeedForwardIn : public Module {
 public:
  FeedForwardIn(int64_t hidden_size, int64_t intermediate_size, const std::string& activation);
  Tensor forward(const Tensor& x) const;

  std::shared_ptr<Linear> dense;

 private:
  Activation activation_;
};

class TransformerEncoderLayer : public Module {
 public:
  explicit TransformerEncoderLayer(const TransformerLayerOptions& options);
  // x [B, T, hidden]; mask as MultiHeadSelfAttention::forward.
  Tensor forward(const Tensor& x, const Tensor& mask = Tensor()) const;

  const TransformerLayerOptions& options() const { return options_; }
  std::shared_ptr<AttentionBlock> attention;
  std::shared_ptr<FeedForwardIn> intermediate;
  std::shared_ptr<ResidualOutput> output;

 private:
  TransformerLayerOptions options_;
};

}  // namespace lathe::nn
