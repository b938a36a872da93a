// The build-independent half of tensor maps (tensor_map.h): arguments checked against the
// constraints cuTensorMapEncodeTiled documents, so both builds reject the same calls with the same
// message. Only the encoding differs (runtime_cudart.cpp / runtime_sim.cpp).
#include "kernels/cuda/tensor_map.h"

#include <cstdint>

#include "lathe/core/error.h"

namespace lathe::cuda {

namespace detail {

void check_tensor_map_args(const TensorMapArgs& a) {
  const char* fn = a.rank == 2 ? "make_tensor_map_2d" : "make_tensor_map_3d";
  LATHE_CHECK(a.rank == 2 || a.rank == 3, "make_tensor_map: rank ", a.rank,
              " (lathe wraps ranks 2 and 3)");
  const uint64_t element = element_size(a.dtype);
  const auto base = reinterpret_cast<uintptr_t>(a.base);
  LATHE_CHECK(a.base != nullptr && base % 16 == 0, fn, ": base ", a.base,
              " must be a non-null, 16-byte aligned global address");
  for (int d = 0; d < a.rank; ++d) {
    LATHE_CHECK(a.sizes[d] >= 1 && a.sizes[d] <= (uint64_t(1) << 32), fn, ": sizes[", d,
                "] = ", a.sizes[d], " must be in [1, 2^32]");
    LATHE_CHECK(a.box[d] >= 1 && a.box[d] <= 256, fn, ": box[", d, "] = ", a.box[d],
                " must be in [1, 256]");
  }
  // The driver takes the strides of dimensions 1.. in bytes; each must hold the dimension below.
  uint64_t spanned = a.sizes[0] * element;
  for (int d = 1; d < a.rank; ++d) {
    const char* name = a.rank == 2 ? "row_stride_bytes"
                       : d == 1    ? "byte_strides[0]"
                                   : "byte_strides[1]";
    LATHE_CHECK(a.strides[d] % 16 == 0 && a.strides[d] < (uint64_t(1) << 40), fn, ": ", name, " = ",
                a.strides[d], " must be a multiple of 16 below 2^40");
    LATHE_CHECK(a.strides[d] >= spanned, fn, ": ", name, " = ", a.strides[d],
                " is smaller than the ", spanned, " bytes dimension ", d - 1,
                " spans (the driver requires strides that do not overlap)");
    spanned = a.strides[d] * a.sizes[d];
  }
  const uint64_t inner_box_bytes = a.box[0] * element;
  LATHE_CHECK(inner_box_bytes % 16 == 0, fn, ": box[0] = ", a.box[0], " elements of ",
              dtype_name(a.dtype), " is ", inner_box_bytes,
              " bytes, which must be a multiple of 16");
  if (a.swizzle == TensorMapSwizzle::B128) {
    LATHE_CHECK(inner_box_bytes <= 128, fn, ": box[0] = ", a.box[0], " elements of ",
                dtype_name(a.dtype), " is ", inner_box_bytes,
                " bytes; with the 128-byte swizzle the inner box dimension is at most 128 bytes");
  }
}

}  // namespace detail

TensorMap make_tensor_map_2d(DType dtype, const void* base, std::array<uint64_t, 2> sizes,
                             uint64_t row_stride_bytes, std::array<uint32_t, 2> box,
                             TensorMapSwizzle swizzle) {
  detail::TensorMapArgs a;
  a.dtype = dtype;
  a.base = base;
  a.rank = 2;
  a.sizes[0] = sizes[0];
  a.sizes[1] = sizes[1];
  a.strides[0] = element_size(dtype);
  a.strides[1] = row_stride_bytes;
  a.box[0] = box[0];
  a.box[1] = box[1];
  a.swizzle = swizzle;
  detail::check_tensor_map_args(a);
  return detail::encode_tensor_map(a);
}

TensorMap make_tensor_map_3d(DType dtype, const void* base, std::array<uint64_t, 3> sizes,
                             std::array<uint64_t, 2> byte_strides, std::array<uint32_t, 3> box,
                             TensorMapSwizzle swizzle) {
  detail::TensorMapArgs a;
  a.dtype = dtype;
  a.base = base;
  a.rank = 3;
  for (int d = 0; d < 3; ++d) {
    a.sizes[d] = sizes[size_t(d)];
    a.box[d] = box[size_t(d)];
  }
  a.strides[0] = element_size(dtype);
  a.strides[1] = byte_strides[0];
  a.strides[2] = byte_strides[1];
  a.swizzle = swizzle;
  detail::check_tensor_map_args(a);
  return detail::encode_tensor_map(a);
}

}  // namespace lathe::cuda
