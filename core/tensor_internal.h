// Helpers shared by the op implementations in core/: turning tensors into kernel views, making
// outputs, picking a device's kernels and checking arguments with uniform error messages.
#pragma once

#include <string>
#include <vector>

#include "kernels/kernel_table.h"
#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"
#include "lathe/core/tensor.h"

namespace lathe::detail {

// The tensor's layout as a kernel view (offset applied to the pointer).
kernels::View make_view(const Tensor& t);
// The tensor broadcast (stride 0) to `shape`; `shape` must be a valid broadcast target.
kernels::View make_broadcast_view(const Tensor& t, const Shape& shape);
// A view of t with `shape` (same numel, t contiguous).
kernels::View make_reshaped_view(const Tensor& t, const Shape& shape);

// The kernel table of the tensor's device.
inline const kernels::KernelTable& kernels_of(const Tensor& t) {
  return kernels::kernel_table(t.device().type);
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

}  // namespace lathe::detail
