// Declarations of the cuda backend's kernels, one per family of kernels/kernel_table.def, with the
// same signatures and semantics as the cpu backend's (kernels/cpu). Each family lives in its own
// .cu file; cuda_device.cpp puts them in the cuda KernelTable. Attention is fused: f16/bf16 on
// tensor cores (attention.cu), f32/f64 on SIMT kernels (attention_simt.cu). docs/kernels.md
// describes the transformer kernels (softmax, layer_norm, cross_entropy, embedding_backward, flash
// attention).
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
extern const SoftmaxForwardFn softmax_forward;
extern const SoftmaxBackwardFn softmax_backward;
extern const LayerNormForwardFn layer_norm_forward;
extern const LayerNormBackwardFn layer_norm_backward;
extern const AddLayerNormForwardFn add_layer_norm_forward;
extern const BiasGeluForwardFn bias_gelu_forward;
extern const BiasGeluBackwardFn bias_gelu_backward;
extern const CrossEntropyForwardFn cross_entropy_forward;
extern const CrossEntropyBackwardFn cross_entropy_backward;
extern const AttentionForwardFn attention_forward;  // attention.cu: f16/bf16 only
extern const AttentionBackwardFn attention_backward;
extern const AttentionForwardFn attention_forward_simt;  // attention_simt.cu: f32/f64
extern const AttentionBackwardFn attention_backward_simt;
extern const AdamWFn adamw;
extern const EmbeddingBackwardFn embedding_backward;
extern const MultiTensorNormFn multi_tensor_norm;  // multi_tensor.cu
extern const MultiTensorScaleFn multi_tensor_scale;

}  // namespace lathe::kernels::cuda
