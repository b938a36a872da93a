// Declarations of the cuda backend's kernels, one per family of kernels/kernel_table.def, with the
// same signatures and semantics as the cpu backend's (kernels/cpu). Each family lives in its own
// .cu file; cuda_device.cpp puts them in the cuda KernelTable. The fused transformer families
// (softmax, layer_norm, cross_entropy, attention) have no cuda kernel yet: their slots stay null
// and the op layer composes them from these primitives.
#pragma once

#include "kernels/kernel_api.h"

namespace lathe::kernels::cuda {

extern const CopyFn copy;
extern const FillFn fill;
extern const UnaryFn unary;
extern const UnaryBackwardFn unary_backward;
extern const BinaryFn binary;
extern const WhereFn where;
extern const ReduceFn reduce;
extern const ArgReduceFn arg_reduce;
extern const GemmFn gemm;
extern const IndexSelectFn index_select;
extern const IndexAddFn index_add;
extern const GatherFn gather;
extern const ScatterAddFn scatter_add;
extern const RandomFn random;
extern const DropoutFn dropout;
extern const AdamWFn adamw;

}  // namespace lathe::kernels::cuda
