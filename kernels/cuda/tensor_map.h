// Tensor maps for TMA (the sm_90 tensor memory accelerator): the host-side description of a tiled
// view of a tensor in global memory that cp.async.bulk.tensor (cuda::tma_load_2d/3d in ptx.cuh)
// copies boxes of into shared memory. Made on the host, passed to a kernel as a
// `const __grid_constant__ cuda::TensorMap` parameter (or copied to global memory and passed by
// pointer).
//
// Dimensions are listed innermost first, as the driver and the instruction's coordinates list
// them: a row-major [rows][cols] matrix is sizes {cols, rows} with row_stride_bytes the distance
// between rows, and a box {box_cols, box_rows}. The box lands in shared memory densely (dimension 0
// fastest), or with TensorMapSwizzle::B128 in the 128-byte swizzled layout that wgmma descriptors
// with WgmmaSwizzle::B128 read (box rows of exactly 128 bytes, destination 1024-byte aligned; see
// cuda::wgmma_offset). Elements of the box outside the tensor are zero-filled.
//
// The arguments are checked against the constraints cuTensorMapEncodeTiled documents (CUDA 13
// cuda.h) in both builds, so a bad one raises the same lathe::Error naming it everywhere: base 16-
// byte aligned; sizes in [1, 2^32]; strides multiples of 16 below 2^40 and no smaller than the
// dimension below them spans; box sizes in [1, 256], the inner box a multiple of 16 bytes and, with
// the 128-byte swizzle, at most 128 bytes. The real build then calls cuTensorMapEncodeTiled
// (reached through cudaGetDriverEntryPointByVersion, so lathe does not link libcuda) and reports a
// failure with every argument; the simulated build stores its own encoding
// (kernels/sim/ptx_emulation.h, TmaFields) and additionally requires 128-byte box rows with the
// 128-byte swizzle.
#pragma once

#include <array>
#include <cstdint>

#include "lathe/core/dtype.h"

namespace lathe::cuda {

// The 128-byte tensor-map object: the driver's CUtensorMap in the real build (the driver needs 64-
// byte alignment; CUDA 13's cuda.h declares 128), opaque to kernels, which only hand its address
// to the TMA instructions.
struct alignas(128) TensorMap {
  uint64_t opaque[16];
};

// CU_TENSOR_MAP_SWIZZLE_NONE and _128B (the driver's 32- and 64-byte modes are not wrapped).
enum class TensorMapSwizzle : uint8_t { None, B128 };

// A [sizes[1]][sizes[0]] matrix whose rows are row_stride_bytes apart, copied in boxes of
// box[1] rows of box[0] elements.
TensorMap make_tensor_map_2d(DType dtype, const void* base, std::array<uint64_t, 2> sizes,
                             uint64_t row_stride_bytes, std::array<uint32_t, 2> box,
                             TensorMapSwizzle swizzle = TensorMapSwizzle::None);
// A [sizes[2]][sizes[1]][sizes[0]] tensor with byte strides {dimension 1, dimension 2}.
TensorMap make_tensor_map_3d(DType dtype, const void* base, std::array<uint64_t, 3> sizes,
                             std::array<uint64_t, 2> byte_strides, std::array<uint32_t, 3> box,
                             TensorMapSwizzle swizzle = TensorMapSwizzle::None);

namespace detail {

// What both builds encode: rank 2 or 3, entries past the rank are 1 (sizes, box) or unused.
struct TensorMapArgs {
  DType dtype = DType::F32;
  const void* base = nullptr;
  int rank = 2;
  uint64_t sizes[3] = {1, 1, 1};
  uint64_t strides[3] = {0, 0, 0};  // bytes; strides[0] is the element size
  uint32_t box[3] = {1, 1, 1};
  TensorMapSwizzle swizzle = TensorMapSwizzle::None;
};

// Throws lathe::Error naming the first argument that breaks a documented constraint
// (tensor_map.cpp, shared by both builds).
void check_tensor_map_args(const TensorMapArgs& args);
// The build's encoding (runtime_cudart.cpp: cuTensorMapEncodeTiled; runtime_sim.cpp: TmaFields).
TensorMap encode_tensor_map(const TensorMapArgs& args);

}  // namespace detail

}  // namespace lathe::cuda
