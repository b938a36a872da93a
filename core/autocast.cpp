// Autocast state (per thread, per device type) and the op policy table. Ops in the table call
// detail::autocast_inputs() at their entry; everything else runs on its inputs as they are.
#include "lathe/core/autocast.h"

#include <array>

#include "core/tensor_internal.h"

namespace lathe {

namespace {

struct Slot {
  bool enabled = false;
  DType dtype = DType::BF16;
};

// Per thread, like grad mode: a data-loader or evaluation thread is not affected by the training
// thread's guard.
thread_local std::array<Slot, kNumDeviceTypes> g_slots{};

}  // namespace

const std::vector<std::pair<std::string_view, AutocastPolicy>>& autocast_policy_table() {
  using P = AutocastPolicy;
  // The whole policy. Names are op-table names; a test checks each one exists there.
  static const std::vector<std::pair<std::string_view, AutocastPolicy>> table = {
      // GEMM-bound: half the memory traffic and tensor cores. The kernels accumulate in f32
      // (cuBLASLt's compute type, the simulator's and the cpu's f32 GEMM) and attention keeps its
      // softmax statistics in f32, so only the inputs and the output are rounded.
      {"matmul", P::LowPrecision},
      {"linear", P::LowPrecision},
      {"scaled_dot_product_attention", P::LowPrecision},
      {"scaled_dot_product_attention_slow", P::LowPrecision},
      // exp/log over a row, normalization statistics and long sums: bf16's 8-bit mantissa (f16's
      // range) would lose the loss, the variance or the sum itself.
      {"softmax", P::F32},
      {"log_softmax", P::F32},
      {"layer_norm", P::F32},
      {"layer_norm_slow", P::F32},
      {"add_layer_norm", P::F32},
      {"cross_entropy", P::F32},
      {"cross_entropy_slow", P::F32},
      {"sum", P::F32},
      {"mean", P::F32},
      {"var", P::F32},
  };
  return table;
}

AutocastPolicy autocast_policy(std::string_view op) {
  for (const auto& [name, policy] : autocast_policy_table()) {
    if (name == op) return policy;
  }
  return AutocastPolicy::None;
}

AutocastGuard::AutocastGuard(DType dtype, std::optional<DeviceType> device_type) {
  LATHE_CHECK(is_low_precision(dtype), "AutocastGuard: dtype must be bf16 or f16, got ", dtype);
  for (int i = 0; i < kNumDeviceTypes; ++i) {
    previous_[i] = {g_slots[size_t(i)].enabled, g_slots[size_t(i)].dtype};
    if (!device_type || int(*device_type) == i) g_slots[size_t(i)] = {true, dtype};
  }
}

AutocastGuard::~AutocastGuard() {
  for (int i = 0; i < kNumDeviceTypes; ++i) {
    g_slots[size_t(i)] = {previous_[i].enabled, previous_[i].dtype};
  }
}

NoAutocastGuard::NoAutocastGuard() {
  for (int i = 0; i < kNumDeviceTypes; ++i) {
    previous_[i] = g_slots[size_t(i)].enabled;
    g_slots[size_t(i)].enabled = false;
  }
}

NoAutocastGuard::~NoAutocastGuard() {
  for (int i = 0; i < kNumDeviceTypes; ++i) g_slots[size_t(i)].enabled = previous_[i];
}

AutocastState autocast_state() {
  AutocastState state;
  for (int i = 0; i < kNumDeviceTypes; ++i) {
    state.enabled[i] = g_slots[size_t(i)].enabled;
    state.dtype[i] = g_slots[size_t(i)].dtype;
  }
  return state;
}

AutocastStateGuard::AutocastStateGuard(const AutocastState& state) : previous_(autocast_state()) {
  for (int i = 0; i < kNumDeviceTypes; ++i) g_slots[size_t(i)] = {state.enabled[i], state.dtype[i]};
}

AutocastStateGuard::~AutocastStateGuard() {
  for (int i = 0; i < kNumDeviceTypes; ++i) {
    g_slots[size_t(i)] = {previous_.enabled[i], previous_.dtype[i]};
  }
}

bool autocast_enabled(DeviceType type) {
  return g_slots[size_t(type)].enabled;
}

std::optional<DType> autocast_dtype(DeviceType type) {
  const Slot& slot = g_slots[size_t(type)];
  return slot.enabled ? std::optional<DType>(slot.dtype) : std::nullopt;
}

namespace detail {

std::optional<std::vector<Tensor>> autocast_inputs(const char* op,
                                                   std::initializer_list<const Tensor*> inputs) {
  bool any = false;
  for (const Slot& s : g_slots) any = any || s.enabled;
  if (!any) return std::nullopt;  // the common case: no allocation, no lookup
  const Tensor* first = nullptr;
  for (const Tensor* t : inputs) {
    if (t->defined()) {
      first = t;
      break;
    }
  }
  if (first == nullptr) return std::nullopt;
  const DeviceType device = first->device().type;
  const Slot& slot = g_slots[size_t(device)];
  if (!slot.enabled) return std::nullopt;
  const AutocastPolicy policy = autocast_policy(op);
  if (policy == AutocastPolicy::None) return std::nullopt;
  const DType target = policy == AutocastPolicy::LowPrecision ? slot.dtype : DType::F32;
  std::vector<Tensor> out;
  out.reserve(inputs.size());
  for (const Tensor* t : inputs) {
    // f64 is never cast (the caller asked for it explicitly), nor are integer tensors; a tensor on
    // another device is left for the op to report.
    const bool cast = t->defined() && is_floating(t->dtype()) && t->dtype() != DType::F64 &&
                      t->dtype() != target && t->device().type == device;
    out.push_back(cast ? t->to(target) : *t);
  }
  return out;
}

}  // namespace detail

}  // namespace lathe
