// Length-bucketed batching with dynamic padding (see batching.h). Bucketing inside pools of a few
// dozen batches, rather than globally, keeps batches similar in length while leaving enough
// randomness that each epoch sees different batch compositions.
#include "lathe/data/batching.h"

#include <algorithm>
#include <numeric>

#include "lathe/core/error.h"
#include "lathe/core/functional.h"
#include "lathe/data/dataset.h"

namespace lathe::data {

Batcher::Batcher(std::vector<EncodedExample> examples, BatchOptions options)
    : examples_(std::move(examples)), options_(options) {
  LATHE_CHECK(options_.batch_size > 0, "Batcher: batch_size must be positive, got ",
              options_.batch_size);
  LATHE_CHECK(options_.pool_batches > 0, "Batcher: pool_batches must be positive, got ",
              options_.pool_batches);
  LATHE_CHECK(options_.pad_to_multiple_of >= 0 && options_.max_padded_length >= 0,
              "Batcher: pad_to_multiple_of and max_padded_length must be >= 0, got ",
              options_.pad_to_multiple_of, " and ", options_.max_padded_length);
  LATHE_CHECK(!examples_.empty(), "Batcher: no examples");
  for (size_t i = 0; i < examples_.size(); ++i) {
    const auto& e = examples_[i];
    LATHE_CHECK(!e.input_ids.empty(), "Batcher: example ", i, " has no tokens");
    LATHE_CHECK(e.token_type_ids.empty() || e.token_type_ids.size() == e.input_ids.size(),
                "Batcher: example ", i, " has ", e.input_ids.size(), " input_ids but ",
                e.token_type_ids.size(), " token_type_ids");
  }
}

std::vector<std::vector<int64_t>> Batcher::plan(int64_t epoch) const {
  const auto n = static_cast<int64_t>(examples_.size());
  const int64_t b = options_.batch_size;
  auto length = [&](int64_t i) { return examples_[static_cast<size_t>(i)].input_ids.size(); };
  auto by_length = [&](int64_t x, int64_t y) { return length(x) < length(y); };

  std::vector<int64_t> order;
  // Distinct, well-mixed seeds per epoch and per purpose (example order vs batch order).
  const uint64_t epoch_seed =
      options_.seed ^ (0xD1B54A32D192ED03ULL * (static_cast<uint64_t>(epoch) + 1));
  if (options_.shuffle) {
    order = permutation(n, epoch_seed);
    const int64_t pool = b * options_.pool_batches;
    for (int64_t start = 0; start < n; start += pool) {
      auto first = order.begin() + start;
      std::stable_sort(first, first + std::min(pool, n - start), by_length);
    }
  } else {
    order.resize(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(), by_length);
  }

  std::vector<std::vector<int64_t>> batches;
  for (int64_t start = 0; start < n; start += b) {
    const int64_t count = std::min(b, n - start);
    if (count < b && options_.drop_last) break;
    batches.emplace_back(order.begin() + start, order.begin() + start + count);
  }
  if (options_.shuffle) {
    auto perm = permutation(static_cast<int64_t>(batches.size()), ~epoch_seed);
    std::vector<std::vector<int64_t>> mixed;
    mixed.reserve(batches.size());
    for (int64_t p : perm) mixed.push_back(std::move(batches[static_cast<size_t>(p)]));
    batches = std::move(mixed);
  }
  return batches;
}

Batch Batcher::collate(const std::vector<int64_t>& indices) const {
  LATHE_CHECK(!indices.empty(), "Batcher::collate: empty batch");
  const auto rows = static_cast<int64_t>(indices.size());
  int64_t max_len = 0;
  for (int64_t i : indices) {
    LATHE_CHECK(i >= 0 && i < size(), "Batcher::collate: index ", i, " out of range [0, ", size(),
                ")");
    max_len = std::max<int64_t>(
        max_len, static_cast<int64_t>(examples_[static_cast<size_t>(i)].input_ids.size()));
  }
  if (options_.pad_to_multiple_of > 0) {
    const int64_t m = options_.pad_to_multiple_of;
    const int64_t longest = max_len;
    max_len = (longest + m - 1) / m * m;
    if (options_.max_padded_length > 0) {
      max_len = std::max(longest, std::min(max_len, options_.max_padded_length));
    }
  }
  const auto cells = static_cast<size_t>(rows * max_len);
  std::vector<int64_t> ids(cells, options_.pad_id), mask(cells, 0), types(cells, 0), labels;
  labels.reserve(indices.size());
  for (int64_t r = 0; r < rows; ++r) {
    const auto& e = examples_[static_cast<size_t>(indices[static_cast<size_t>(r)])];
    const size_t row = static_cast<size_t>(r * max_len);
    std::copy(e.input_ids.begin(), e.input_ids.end(), ids.begin() + row);
    std::fill_n(mask.begin() + row, e.input_ids.size(), 1);
    std::copy(e.token_type_ids.begin(), e.token_type_ids.end(), types.begin() + row);
    labels.push_back(e.label);
  }
  Batch batch;
  batch.input_ids = from_vector(ids, Shape{rows, max_len});
  batch.attention_mask = from_vector(mask, Shape{rows, max_len});
  batch.token_type_ids = from_vector(types, Shape{rows, max_len});
  batch.labels = from_vector(labels, Shape{rows});
  batch.indices = indices;
  return batch;
}

std::vector<Batch> Batcher::batches(int64_t epoch) const {
  std::vector<Batch> out;
  for (const auto& indices : plan(epoch)) out.push_back(collate(indices));
  return out;
}

}  // namespace lathe::data
