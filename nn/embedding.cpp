#include "lathe/nn/embedding.h"

#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"
#include "lathe/nn/init.h"

namespace lathe::nn {

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim,
                     std::optional<int64_t> padding_idx)
    : Module("Embedding"), num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {
  LATHE_CHECK(num_embeddings > 0 && embedding_dim > 0, "Embedding: sizes must be positive, got ",
              num_embeddings, " x ", embedding_dim);
  if (padding_idx) {
    int64_t p = *padding_idx < 0 ? *padding_idx + num_embeddings : *padding_idx;
    LATHE_CHECK(p >= 0 && p < num_embeddings, "Embedding: padding_idx ", *padding_idx,
                " outside [0, ", num_embeddings, ")");
    padding_idx_ = p;
  }
  weight = register_parameter("weight", empty({num_embeddings, embedding_dim}));
  init::normal_(weight, 0.0, 1.0);
  if (padding_idx_) {
    NoGradGuard no_grad;
    weight.select(0, *padding_idx_).zero_();
  }
}

Tensor Embedding::forward(const Tensor& indices) const {
  return embedding(indices, weight, padding_idx_);
}

}  // namespace lathe::nn
