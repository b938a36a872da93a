// Helpers shared by the op implementations in core/: turning tensors into kernel views, making
// outputs, picking a device's kernels and checking arguments with uniform error messages.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "kernels/kernel_table.h"
#include "lathe/core/autocast.h"
#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"
#include "lathe/core/random.h"
#include "lathe/core/tensor.h"

namespace lathe::detail {

// The tensor's layout as a kernel view (offset applied to the pointer).
kernels::View make_view(const Tensor& t);
// The tensor broadcast (stride 0) to `shape`; `shape` must be a valid broadcast target.
kernels::View make_broadcast_view(const Tensor& t, const Shape& shape);
// A view of t with `shape` (same numel, t contiguous).
kernels::View make_reshaped_view(const Tensor& t, const Shape& shape);

// The kernel table of the tensor's device, that device made current for its kernels.
inline const kernels::KernelTable& kernels_of(const Tensor& t) {
  return kernels::kernel_table(t.device());
}

void check_defined(const Tensor& t, const char* op, const char* arg);
void check_same_device(const Tensor& a, const Tensor& b, const char* op);
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);
void check_floating(const Tensor& t, const char* op);
// "f32 [2, 3] on cpu"
std::string describe(const Tensor& t);

// Normalizes reduction dims (empty = all), wrapping negatives and rejecting duplicates.
std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t ndim, const char* op);
// `shape` with the reduced dims set to 1 (keepdim shape).
Shape keepdim_shape(const Shape& shape, const std::vector<int64_t>& dims);
// `shape` with the reduced dims removed.
Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims);

// Strided element copy with dtype conversion; shapes of src and dst must match.
void copy_into(const Tensor& src, const Tensor& dst);

// f16/bf16 arithmetic on a device whose kernels only store those types (the cpu backend): the op
// widens its operands to f32 (exact), runs the f32 kernel and rounds the result once. That is what
// the cuda kernels do in f32 registers, so both devices give the same values.
inline bool half_via_f32(const Tensor& t) {
  return t.device().is_cpu() && is_low_precision(t.dtype());
}

// dropout(x, p, training = true) with the Philox reservation given instead of taken from the
// generator (core/ops/dropout.cpp); for composites that must draw exactly where a fused op would.
Tensor dropout_with_state(const Tensor& x, double p, PhiloxState state);

// Autocast at an op's entry (core/autocast.cpp). When autocast is on for the device of the inputs
// and `op` is in the policy table, returns the inputs cast as the policy says (undefined and
// non-floating ones as they are); the op then calls itself again with them under NoAutocastGuard,
// so the ops it is built from do not cast again. nullopt otherwise.
// Costs two thread-local reads while autocast is off.
std::optional<std::vector<Tensor>> autocast_inputs(const char* op,
                                                   std::initializer_list<const Tensor*> inputs);

}  // namespace lathe::detail
