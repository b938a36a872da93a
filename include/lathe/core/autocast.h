// Automatic mixed precision, like torch.autocast: inside an AutocastGuard, ops that gain from low
// precision (matmul, linear, attention: tensor-core GEMMs that accumulate in f32) run in bf16 or
// f16, and ops whose accuracy needs range or many-term sums (softmax, layer norm, cross-entropy,
// sum/mean) run in f32. Every other op runs in the dtype its inputs have, with binary ops promoting
// mixed dtypes (bf16 + f32 -> f32), so a bf16 linear output added to an f32 residual is f32.
//
// The casts are ordinary differentiable Tensor::to() calls, so an f32 parameter used by a bf16
// matmul receives an f32 gradient, and optimizers keep updating f32 weights. Backward passes run
// with autocast off: each op's gradient runs in the dtypes its forward saw.
//
// The state is per thread and per device type, off by default. The policy (which op casts how) is
// one table in core/autocast.cpp; docs/mixed_precision.md explains it.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "lathe/core/device.h"
#include "lathe/core/dtype.h"

namespace lathe {

// Enables autocast to `dtype` (BF16 or F16) for tensors on `device_type` (every device type when
// nullopt) until destruction, which restores the previous state. Nests: an inner guard overrides
// an outer one for its scope.
//
// Cast cache: with grad mode off (NoGradGuard), a parameter's cast — a leaf tensor that requires
// grad, or was frozen with requires_grad_(false) — is made once and reused until the outermost
// guard of the thread ends, like torch.autocast's cache. So hold one guard around a whole
// inference or evaluation loop, not one per batch: the weights are then cast once, not per
// forward. An entry is used only while its parameter's storage, layout and version are unchanged
// (an in-place update or a device move casts again), and only on the stream that made it: a
// thread that switches streams under one guard gets a cast per stream (lathe/core/stream.h). Casts
// made with grad mode on are never cached: each forward records its own cast for backward.
class AutocastGuard {
 public:
  explicit AutocastGuard(DType dtype, std::optional<DeviceType> device_type = DeviceType::CUDA);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  struct Saved {
    bool enabled;
    DType dtype;
  };
  Saved previous_[kNumDeviceTypes];
};

// Turns autocast off for every device type in its scope (torch.autocast(enabled=False)); ops use
// it internally so a composite op casts once at its entry, not again in each op it is built from.
class NoAutocastGuard {
 public:
  NoAutocastGuard();
  ~NoAutocastGuard();
  NoAutocastGuard(const NoAutocastGuard&) = delete;
  NoAutocastGuard& operator=(const NoAutocastGuard&) = delete;

 private:
  bool previous_[kNumDeviceTypes];
};

// This thread's whole autocast state, and a guard that puts a recorded state back for its scope:
// activation checkpointing re-runs a forward inside backward, where autocast is off, and needs
// the ops to cast exactly as they did the first time.
struct AutocastState {
  bool enabled[kNumDeviceTypes] = {};
  DType dtype[kNumDeviceTypes] = {};
};
AutocastState autocast_state();

class AutocastStateGuard {
 public:
  explicit AutocastStateGuard(const AutocastState& state);
  ~AutocastStateGuard();
  AutocastStateGuard(const AutocastStateGuard&) = delete;
  AutocastStateGuard& operator=(const AutocastStateGuard&) = delete;

 private:
  AutocastState previous_;
};

// How many casts the cast cache of this thread holds (0 outside any AutocastGuard).
size_t autocast_cached_casts();

// Whether autocast is on for tensors on `type` in this thread, and to which dtype.
bool autocast_enabled(DeviceType type);
std::optional<DType> autocast_dtype(DeviceType type);

// How autocast treats an op: LowPrecision casts its f32/f16/bf16 inputs to the autocast dtype,
// F32 casts its f16/bf16 inputs to f32; f64 inputs are never cast. None: the op is not in the table
// and runs on its inputs as they are.
enum class AutocastPolicy { None, LowPrecision, F32 };

AutocastPolicy autocast_policy(std::string_view op);
// The whole table, op names as in the op table (core/op_table.def).
const std::vector<std::pair<std::string_view, AutocastPolicy>>& autocast_policy_table();

}  // namespace lathe
