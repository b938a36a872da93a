// How f32 matrix products may be computed (PyTorch's torch.set_float32_matmul_precision).
//
//   Highest  full f32: the default, and what PyTorch does by default, so f32 results and the
//            goldens made with PyTorch agree to f32 rounding.
//   High     the cuda device may run f32 GEMMs on tensor cores in TF32: each input rounded to 10
//            mantissa bits (about 3 decimal digits), products accumulated in f32. On an H100 that
//            is several times the f32 rate; training usually converges the same (Ampere and later
//            GPUs were built for it), but single products lose accuracy, so it is opt-in.
//
// It applies to every f32 GEMM an op issues, forward and backward: matmul, linear (and so the
// bias + GELU op's GEMM), the composite attention's products. The cpu device has no TF32 and
// always computes in full f32; the fused attention kernels are not GEMMs and keep their own
// precision (docs/mixed_precision.md). f16/bf16/f64 products are not affected.
//
// The initial value comes from the environment: LATHE_FLOAT32_MATMUL_PRECISION=highest | high
// (unset: highest; anything else is an error at first use). The setting is process-wide and read
// when an op issues its GEMM.
#pragma once

#include <string>

namespace lathe {

enum class MatmulPrecision { Highest, High };

void set_float32_matmul_precision(MatmulPrecision precision);
// "highest" or "high"; throws lathe::Error naming the accepted values otherwise.
void set_float32_matmul_precision(const std::string& precision);
MatmulPrecision float32_matmul_precision();
const char* matmul_precision_name(MatmulPrecision precision);

}  // namespace lathe
