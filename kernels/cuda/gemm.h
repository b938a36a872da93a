// GEMM on the cuda device. The real build calls cuBLASLt; the simulated build computes the same
// product on the host with the cpu backend's GEMM (simulated device memory is host memory), with
// the same layouts, transposes, accumulation precision and epilogues, so code above cannot tell
// them apart.
//
// gemm_ex extends the KernelTable's GemmArgs (row-major, batched, alpha/beta) with:
//  - mixed precision: A and B of `args.dtype` (f32, f64, f16, bf16), C/D of `c_dtype` (f16/bf16
//    inputs may write f32 or their own type); f16/bf16/f32 accumulate in f32, f64 in f64;
//  - allow_tf32: f32 inputs on tensor cores with TF32 rounding (about 3 decimal digits);
//  - epilogues on the row-major [m, n] result: + bias[n] (bias of c_dtype, broadcast over rows,
//    as in a linear layer), or GELU(. + bias[n]) with GELU's tanh approximation (cuBLASLt's
//    CUBLASLT_EPILOGUE_GELU_BIAS). Epilogues apply after alpha/beta: D = act(alpha*AB + beta*C +
//    bias).
#pragma once

#include <driver_types.h>

#include "kernels/kernel_api.h"

namespace lathe::cuda {

enum class GemmEpilogue { None, Bias, BiasGelu };

struct GemmExArgs {
  kernels::GemmArgs gemm;      // gemm.dtype: the dtype of A and B
  DType c_dtype = DType::F32;  // dtype of C (and of bias)
  bool allow_tf32 = false;
  GemmEpilogue epilogue = GemmEpilogue::None;
  const void* bias = nullptr;  // [n], contiguous; required by the bias epilogues
};

// Runs on `stream`; throws lathe::Error naming the shapes and dtypes for invalid arguments or
// unsupported combinations.
void gemm_ex(const GemmExArgs& args, cudaStream_t stream);

// Drops `stream`'s workspace (the real build keeps one per stream, from the caching allocator) and
// frees it; the next GEMM on the stream takes a new one. A graph capture calls it at its start and
// end (lathe/core/graph.h): the workspace its GEMMs use then comes from the graph's private pool,
// and two graphs never share one (their replays may overlap on different streams).
void forget_workspace(int device, cudaStream_t stream);

// The KernelTable's gemm passes GemmArgs::allow_tf32 (set by the ops from
// set_float32_matmul_precision, lathe/core/matmul_precision.h) on as allow_tf32.

}  // namespace lathe::cuda
