// bf16 GEMM on Intel AMX (Sapphire Rapids and later), the cpu's bf16 path when the processor has
// it. Why: autocast on the cpu used to widen bf16 operands to f32 and call SGEMM, so bf16 was no
// faster than f32 (AVX-512 f32 FMA: 64 flops per cycle per core), while an AMX tile multiply
// (TDPBF16PS) does 16 x 16 x 32 bf16 multiply-adds into f32 in one instruction.
//
// The products of two bf16 values are exact in f32 and TDPBF16PS accumulates in f32, so the
// result is the widened SGEMM's up to the order of the f32 sums; C is rounded once to bf16
// (round-to-nearest-even).
//
// Scheme: the team packs A into 32-row blocks of the tiles' row-major layout and B into 32-column
// blocks of their pair-interleaved (VNNI) layout, K padded with zeros to a multiple of 32 (each
// operand read along its stored rows; gemm_amx.cpp). Then each thread computes its share of the
// 32 x 32 blocks of C in four accumulator tiles (two A tiles and two B tiles per 32-deep step: all
// eight tile registers), column panels of B sized to stay in L2 outermost. Tails are zero-padded
// in the packs and cut when C is written.
#pragma once

#include "kernels/kernel_api.h"

namespace lathe::kernels::cpu {

// True when the processor has AMX-TILE and AMX-BF16, the OS saves tile state and (Linux) granted
// this process permission to use it; decided once. LATHE_CPU_AMX=0 in the environment, or
// set_amx_enabled(false), turns the AMX path off (benchmarks and tests compare both paths).
bool amx_bf16_available();
void set_amx_enabled(bool enabled);

// C = alpha * op(A) op(B) + beta * C for one matrix (row-major, GemmArgs' trans flags and leading
// dims), A, B and C bf16, on the calling thread's OpenMP team of `threads`. Requires
// amx_bf16_available().
void gemm_bf16_amx(const GemmArgs& args, const void* a, const void* b, void* c, int threads);

}  // namespace lathe::kernels::cpu
