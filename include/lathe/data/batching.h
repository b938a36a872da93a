// Length-bucketed batching with dynamic padding. Works on already-tokenized examples, so it does
// not depend on the tokenizer: similar lengths share a batch and each batch is padded only to its
// own longest example, which saves most of the padding compute on short-sentence data.
#pragma once

#include <cstdint>
#include <vector>

#include "lathe/core/tensor.h"

namespace lathe::data {

struct EncodedExample {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> token_type_ids;  // empty: all zeros
  int64_t label = 0;
};

struct Batch {
  Tensor input_ids;              // [B, L] I64, padded with pad_id
  Tensor attention_mask;         // [B, L] I64, 1 for tokens, 0 for padding
  Tensor token_type_ids;         // [B, L] I64, 0 in padding
  Tensor labels;                 // [B] I64
  std::vector<int64_t> indices;  // positions of the batch's examples in the input
};

struct BatchOptions {
  int64_t batch_size = 32;
  // true: examples are shuffled (seed, epoch), then sorted by length inside pools of
  // batch_size * pool_batches examples, and the batches are shuffled. false: the whole set is
  // sorted by length (stable), for evaluation with the least padding.
  bool shuffle = true;
  uint64_t seed = 0;
  int64_t pool_batches = 50;
  bool drop_last = false;  // drop a final batch smaller than batch_size
  int64_t pad_id = 0;
  // > 0: each batch's length is padded up to a multiple of this (transformers'
  // pad_to_multiple_of), so batches take few distinct shapes (one CUDA graph per shape), but not
  // past max_padded_length when that is > 0 (the tokenizer's max length) unless an example is
  // longer.
  int64_t pad_to_multiple_of = 0;
  int64_t max_padded_length = 0;
};

class Batcher {
 public:
  // Validates every example (non-empty ids, token_type_ids of matching length) up front.
  Batcher(std::vector<EncodedExample> examples, BatchOptions options);

  int64_t size() const { return static_cast<int64_t>(examples_.size()); }
  const std::vector<EncodedExample>& examples() const { return examples_; }
  // The batches of one epoch as lists of example indices; deterministic in (seed, epoch).
  std::vector<std::vector<int64_t>> plan(int64_t epoch = 0) const;
  // Pads the given examples into one batch.
  Batch collate(const std::vector<int64_t>& indices) const;
  // plan(epoch), collated.
  std::vector<Batch> batches(int64_t epoch = 0) const;

 private:
  std::vector<EncodedExample> examples_;
  BatchOptions options_;
};

}  // namespace lathe::data
