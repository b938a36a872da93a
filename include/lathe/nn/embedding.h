// Embedding: a lookup table [num_embeddings, embedding_dim]. The padding row (when given) starts at
// zero and receives no gradient, as in PyTorch.
#pragma once

#include <optional>

#include "lathe/nn/module.h"

namespace lathe::nn {

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim,
            std::optional<int64_t> padding_idx = std::nullopt);
  Tensor forward(const Tensor& indices) const;  // integer [...] -> [..., embedding_dim]

  int64_t num_embeddings() const { return num_embeddings_; }
  int64_t embedding_dim() const { return embedding_dim_; }
  std::optional<int64_t> padding_idx() const { return padding_idx_; }
  Tensor weight;

 private:
  int64_t num_embeddings_;
  int64_t embedding_dim_;
  std::optional<int64_t> padding_idx_;
};

}  // namespace lathe::nn
