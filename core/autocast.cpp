// Autocast state (per thread, per device type) and the op policy table. Ops in the table call
// detail::autocast_inputs() at their entry; everything else runs on its inputs as they are.
#include "lathe/core/autocast.h"

#include <array>
#include <cstdint>
#include <memory>
#include <unordered_map>

#include "core/graph_internal.h"
#include "core/tensor_internal.h"
#include "kernels/device_api.h"
#include "lathe/core/storage.h"

namespace lathe {

namespace {

struct Slot {
  bool enabled = false;
  DType dtype = DType::BF16;
};

// Per thread, like grad mode: a data-loader or evaluation thread is not affected by the training
// thread's guard.
thread_local std::array<Slot, kNumDeviceTypes> g_slots{};

// The cast cache (see autocast.h): while an AutocastGuard is alive and grad mode is off, a
// parameter's cast is made once and reused, so an inference or evaluation loop under one guard
// does not re-read every f32 weight and write its bf16 copy for each batch (and, on cuda, does not
// launch a cast kernel per weight and bias per forward).
//
// An entry is keyed by the source tensor's TensorImpl and the target dtype, and it is used only if
// the same tensor (a live weak reference, not merely a reused address) still has the same storage,
// layout and storage version: an in-place update (an optimizer step, load_state_dict, copy_) or a
// move to another device makes the entry stale, and the next lookup casts again and replaces it.
struct CastEntry {
  std::weak_ptr<TensorImpl> source;
  std::weak_ptr<Storage> storage;  // weak, as `source`: a freed block's address may come back
  uint64_t version = 0;
  Shape shape;
  Strides strides;
  int64_t offset = 0;
  DType dtype = DType::F32;
  Tensor cast;
};

// The stream is part of the key: a cast queued on one stream may not have run yet when another
// stream of the same thread reads it (lathe/core/stream.h), so each stream casts its own.
struct CastKey {
  const TensorImpl* source;
  DType target;
  const void* stream;
  bool operator==(const CastKey&) const = default;
};

struct CastKeyHash {
  size_t operator()(const CastKey& k) const {
    return std::hash<const void*>()(k.source) ^ (size_t(k.target) * 0x9E3779B97F4A7C15ull) ^
           (std::hash<const void*>()(k.stream) << 1);
  }
};

thread_local int g_guard_depth = 0;  // AutocastGuards alive in this thread
thread_local std::unordered_map<CastKey, CastEntry, CastKeyHash> g_cast_cache;

// Parameters: leaves that require grad, or that did and were frozen (requires_grad_(false) leaves
// their autograd record in place). Activations under NoGradGuard have no autograd record, so a
// cache entry cannot outlive the batch it was made for and hold its memory.
bool cacheable(const Tensor& t) {
  const TensorImpl& impl = t.impl();
  return g_guard_depth > 0 && !grad_mode_enabled() && impl.autograd != nullptr &&
         impl.autograd->grad_fn == nullptr && impl.storage != nullptr;
}

bool entry_matches(const CastEntry& e, const TensorImpl& impl, uint64_t version) {
  return e.source.lock().get() == &impl && e.storage.lock() == impl.storage &&
         e.version == version && e.shape == impl.shape && e.strides == impl.strides &&
         e.offset == impl.offset && e.dtype == impl.dtype;
}

Tensor cast_for_autocast(const Tensor& t, DType target) {
  if (!cacheable(t)) return t.to(target);
  const TensorImpl& impl = t.impl();
  const uint64_t version = impl.storage->version();
  // Only the handle: current_stream() would also look up the stream's kind, on every cast.
  const kernels::DeviceApi* api = kernels::device_api(t.device().type);
  const void* stream =
      api && api->streams ? api->streams->current_stream(t.device().index) : nullptr;
  CastEntry& e = g_cast_cache[CastKey{&impl, target, stream}];
  if (!entry_matches(e, impl, version)) {
    e = CastEntry{t.impl_ptr(), impl.storage, version,    impl.shape,
                  impl.strides, impl.offset,  impl.dtype, t.to(target)};
  }
  return e.cast;
}

}  // namespace

namespace detail {
void forget_autocast_casts(const void* stream) {
  std::erase_if(g_cast_cache, [stream](const auto& entry) { return entry.first.stream == stream; });
}
}  // namespace detail

size_t autocast_cached_casts() {
  return g_cast_cache.size();
}

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
  ++g_guard_depth;
}

AutocastGuard::~AutocastGuard() {
  for (int i = 0; i < kNumDeviceTypes; ++i) {
    g_slots[size_t(i)] = {previous_[i].enabled, previous_[i].dtype};
  }
  if (--g_guard_depth == 0) g_cast_cache.clear();
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
    out.push_back(cast ? cast_for_autocast(*t, target) : *t);
  }
  return out;
}

}  // namespace detail

}  // namespace lathe
