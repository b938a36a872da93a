// What the two attention kernel test files share (test_flash_attention.cpp: the f16/bf16
// tensor-core kernels; test_attention_simt.cpp: the f32/f64 SIMT kernels): the kinds of mask and
// the key-padding lengths every case draws, the key-padding mask itself, and the dropout
// determinism check. Each file keeps its own Case (different defaults and fields), inputs and
// reference; the helpers take what they need as parameters or as a template argument.
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>
#include <vector>

#include "cuda/kernel_test_util.h"
#include "support/test_util.h"

namespace lathe::attention_test {

enum class MaskKind {
  None,
  KeyPaddingBool,   // [B, 1, 1, Tk] bool
  KeyPaddingFloat,  // [B, 1, 1, Tk] additive, -inf on padding
  Bias,             // [H, Tq, Tk] additive, broadcast over B
  RowsBool,         // [B, H, Tq, Tk] bool with some rows fully masked (SIMT tests)
};

// A detached copy of t that requires grad: an autograd leaf for the op-level tests.
inline lathe::Tensor grad_leaf(const lathe::Tensor& t) {
  lathe::Tensor x = t.detach().clone();
  x.requires_grad_();
  return x;
}

inline const char* mask_name(MaskKind k) {
  switch (k) {
    case MaskKind::None:
      return "none";
    case MaskKind::KeyPaddingBool:
      return "key padding (bool)";
    case MaskKind::KeyPaddingFloat:
      return "key padding (additive)";
    case MaskKind::Bias:
      return "bias [H, Tq, Tk]";
    default:
      return "bool [B, H, Tq, Tk] with masked rows";
  }
}

// Key-padding lengths: batch 0 keeps ~2/3 of its keys (at least one), batch 1 none (every row fully
// masked), further batches all keys.
inline int64_t valid_keys(int64_t b, int64_t tk) {
  if (b == 0) return std::max<int64_t>(1, tk - tk / 3);
  if (b == 1) return 0;
  return tk;
}

// The [B, 1, 1, tk] key-padding mask on the cuda device: bool keep flags, or (additive) a random
// bias in [-1, 0] on the valid keys and -inf on the padding, in `additive_dtype`.
inline Tensor key_padding_mask(int64_t B, int64_t tk, bool additive, uint64_t seed,
                               DType additive_dtype) {
  std::vector<double> keep(size_t(B * tk));
  const std::vector<double> bias = testing::random_values(B * tk, seed, -1, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < tk; ++j) {
      const bool valid = j < valid_keys(b, tk);
      const size_t n = size_t(b * tk + j);
      keep[n] = additive ? (valid ? bias[n] : -std::numeric_limits<double>::infinity())
                         : (valid ? 1.0 : 0.0);
    }
  }
  Tensor m = from_vector(keep, {B, 1, 1, tk}, TensorOptions(DType::F64));
  return (additive ? m.to(additive_dtype) : m.to(DType::Bool)).to(kernel_test::kCuda);
}

// Dropout is a function of (seed, offset) alone: running case c twice gives the same bits in
// every result, another seed changes the output and all three gradients, another offset the
// output. `run(case)` returns results with out, dq, dk, dv and all() (out, lse, dq, dk, dv, ...).
template <class Case, class Run>
void check_dropout_determinism(const Case& c, Run&& run) {
  using kernel_test::bytes_of;
  const auto r = run(c);
  const auto again = run(c);
  for (size_t i = 0; i < 5; ++i) CHECK(bytes_of(again.all()[i]) == bytes_of(r.all()[i]));
  Case other = c;
  other.seed = c.seed + 1;
  const auto r2 = run(other);
  CHECK(bytes_of(r2.out) != bytes_of(r.out));
  CHECK(bytes_of(r2.dq) != bytes_of(r.dq));
  CHECK(bytes_of(r2.dk) != bytes_of(r.dk));
  CHECK(bytes_of(r2.dv) != bytes_of(r.dv));
  other = c;
  other.offset = c.offset + 1;
  CHECK(bytes_of(run(other).out) != bytes_of(r.out));
  // The state read from device memory (a graph's draw): the same bits, whatever the launch's
  // values.
  other = c;
  other.philox_state =
      from_vector(std::vector<int64_t>{int64_t(c.seed), int64_t(c.offset)}).to(kernel_test::kCuda);
  other.seed = c.seed + 3;
  other.offset = c.offset + 5;
  const auto from_device = run(other);
  for (size_t i = 0; i < 5; ++i) CHECK(bytes_of(from_device.all()[i]) == bytes_of(r.all()[i]));
}

}  // namespace lathe::attention_test
