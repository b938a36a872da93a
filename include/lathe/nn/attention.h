// Multi-head self-attention as BERT lays it out: separate query/key/value projections (Hugging
// Face's `attention.self.{query,key,value}`), heads split from the hidden dimension, and the
// attention itself through the scaled_dot_product_attention op, which runs the fused kernel of the
// device (probabilities never stored as a [T, T] tensor per head on the cpu device).
#pragma once

#include "lathe/nn/dropout.h"
#include "lathe/nn/linear.h"

namespace lathe::nn {

// [B, T] attention mask (1/true = token, 0/false = padding; any integer or bool dtype) -> a Bool
// key-padding mask [B, 1, 1, T] for scaled_dot_product_attention.
Tensor key_padding_mask(const Tensor& attention_mask);

class MultiHeadSelfAttention : public Module {
 public:
  MultiHeadSelfAttention(int64_t hidden_size, int64_t num_heads, double attention_dropout = 0.0,
                         bool causal = false);
  // x [B, T, hidden], mask a Bool [B, 1, 1, T] key-padding mask (or anything that broadcasts to
  // [B, heads, T, T]; undefined = attend everywhere) -> context [B, T, hidden], before the output
  // projection (which BERT keeps in `attention.output.dense`).
  Tensor forward(const Tensor& x, const Tensor& mask = Tensor()) const;

  int64_t num_heads() const { return num_heads_; }
  double attention_dropout() const { return attention_dropout_; }
  void set_attention_dropout(double p);

  std::shared_ptr<Linear> query, key, value;

 private:
  int64_t hidden_size_;
  int64_t num_heads_;
  double attention_dropout_;
  bool causal_;
};

}  // namespace lathe::nn
