// What the command-line tools share: the one-line failure (tool name, reason, exit 2) and
// argument parsing of positive integers. Header-only, so each tool stays one source file.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "lathe/lathe.h"

namespace lathe::tools {

// Set by each tool's main before parsing.
inline const char*& tool_name() {
  static const char* name = "lathe";
  return name;
}

[[noreturn]] inline void fail(const std::string& reason) {
  std::cerr << tool_name() << ": " << reason << "\n";
  std::exit(2);
}

inline int64_t positive_int(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || n < 1) fail(flag + " needs a positive integer, got '" + v + "'");
  return n;
}

// --precision of the inference tools: fp32; tf32 (f32 GEMMs on tensor cores, cuda only: the cpu
// computes in full f32 and says so); bf16 (autocast: linears and attention in bf16, layer norm
// and softmax in f32). The scope lives for the whole run, so autocast's cast cache converts each
// weight once rather than once per batch.
inline std::string precision_arg(const std::string& flag, const std::string& v) {
  if (v != "fp32" && v != "bf16" && v != "tf32") {
    fail(flag + " must be fp32, bf16 or tf32, got '" + v + "'");
  }
  return v;
}

class PrecisionScope {
 public:
  // `precision` as precision_arg returned it.
  PrecisionScope(const std::string& precision, Device device) {
    if (precision == "bf16") {
      autocast_.emplace(DType::BF16, device.type);
    } else if (precision == "tf32") {
      if (!device.is_cuda()) {
        std::cerr << tool_name() << ": --precision tf32 on the cpu computes in full f32\n";
      }
      set_float32_matmul_precision(MatmulPrecision::High);
    }
  }
  ~PrecisionScope() { set_float32_matmul_precision(previous_); }
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  MatmulPrecision previous_ = float32_matmul_precision();
  std::optional<AutocastGuard> autocast_;
};

// A padded batch of encodings (Padding::Longest: equal lengths) as [n, len] I64 tensors on
// `device`, ready for BertModel / BertForSequenceClassification::forward.
struct BatchTensors {
  Tensor input_ids, attention_mask, token_type_ids;
};

inline BatchTensors batch_tensors(const std::vector<data::Encoding>& encodings, Device device) {
  const auto n = static_cast<int64_t>(encodings.size());
  const auto len = static_cast<int64_t>(encodings.at(0).input_ids.size());
  std::vector<int64_t> ids, mask, types;
  for (const auto& e : encodings) {
    ids.insert(ids.end(), e.input_ids.begin(), e.input_ids.end());
    mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
    types.insert(types.end(), e.token_type_ids.begin(), e.token_type_ids.end());
  }
  const TensorOptions on_device = TensorOptions().device(device);
  return {from_vector(ids, {n, len}, on_device), from_vector(mask, {n, len}, on_device),
          from_vector(types, {n, len}, on_device)};
}

}  // namespace lathe::tools
