// bf16 GEMM on the cpu's own bf16 instructions. Why: autocast on the cpu used to widen bf16
// operands to f32 and call SGEMM, so bf16 was no faster than f32, while x86 processors now
// multiply bf16 pairs directly:
//   - Intel AMX (Sapphire Rapids and later): one TDPBF16PS tile product does 16 x 16 x 32
//     multiply-adds into f32;
//   - AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake; the AMX processors have it too): one
//     VDPBF16PS adds the products of 16 bf16 pairs into 16 f32 lanes, twice the multiply-adds of an
//     f32 FMA of the same width.
//
// Both multiply bf16 values exactly and accumulate in f32 (subnormal inputs and results flushed to
// zero), so the result is the widened SGEMM's up to the order of the f32 sums; C is rounded once to
// bf16 (round-to-nearest-even).
//
// Scheme (both paths): the team packs A into 32-row blocks of the tiles' row-major layout and B
// into 32-column blocks of their pair-interleaved (VNNI) layout, K padded with zeros to a multiple
// of 32 (each operand read along its stored rows; gemm_bf16.cpp). VDPBF16PS wants exactly these
// layouts too: a row's k pair is one dword of A's pack to broadcast, a k pair of 16 columns one
// vector of B's. Then each thread computes its share of the 32 x 32 blocks of C — in four AMX
// accumulator tiles, or in sixteen vector registers eight rows at a time — column panels of B sized
// to stay in L2 outermost. Tails are zero-padded in the packs and cut when C is written.
#pragma once

#include "kernels/kernel_api.h"

namespace lathe::kernels::cpu {

// How the cpu multiplies bf16 matrices.
enum class Bf16Gemm {
  Widen,       // convert to f32 and call SGEMM (every processor)
  Avx512Bf16,  // VDPBF16PS dot products
  Amx,         // AMX tiles
};

const char* bf16_gemm_name(Bf16Gemm path);

// Whether the processor has the instructions and the OS saves their state (for AMX, Linux must also
// grant this process the tile data); decided once. Widen is always supported.
bool bf16_gemm_supported(Bf16Gemm path);

// The path the cpu gemm takes for bf16: the fastest supported one, except that LATHE_CPU_AMX=0 in
// the environment leaves out AMX. set_bf16_gemm_path picks one (tests and benchmarks compare them);
// an unsupported path is an error naming it.
Bf16Gemm bf16_gemm_path();
void set_bf16_gemm_path(Bf16Gemm path);

// C = alpha * op(A) op(B) + beta * C for one matrix (row-major, GemmArgs' trans flags and leading
// dims), A, B and C bf16, on the calling thread's OpenMP team of `threads`, by `path` (Avx512Bf16
// or Amx, which must be supported).
void gemm_bf16_native(Bf16Gemm path, const GemmArgs& args, const void* a, const void* b, void* c,
                      int threads);

}  // namespace lathe::kernels::cpu
