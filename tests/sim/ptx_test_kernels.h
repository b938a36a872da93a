// Host entry points of the PTX wrapper test kernels (tests/sim/ptx_test_kernels.cu). They take and
// return host arrays and move them to and from the device themselves, so the same calls run the
// kernels on the simulator (simulated build) or on a real GPU (nvcc build) — on a GPU they confirm
// that the simulator's emulation of mma/ldmatrix/cp.async matches the hardware.
//
// 16-bit matrices are passed as raw f16 or bf16 bit patterns, row-major.
#pragma once

#include <cstdint>
#include <string>

namespace lathe::ptx_tests {

enum class Elem { F16, BF16 };

// One warp: D = A*B + C through ldmatrix + mma.m16n8k16. A is 16x16; B is k-major [16][8] (loaded
// with ldmatrix_x2_trans) or, when b_n_major, n-major [8][16] (loaded with ldmatrix_x2); C and D
// are 16x8 f32.
void mma_tile(Elem elem, bool b_n_major, const uint16_t* a, const uint16_t* b, const float* c,
              float* d);

// The registers each lane receives from ldmatrix over four 8x8 b16 matrices `matrices[4][8][8]`,
// whose rows sit at scattered 16-byte aligned places in shared memory (lanes whose addresses the
// instruction ignores point at a row of garbage). out[variant][lane][4], variants in the order
// x1, x2, x4, x1.trans, x2.trans, x4.trans; registers past the variant's count are 0.
inline constexpr int kLdmatrixVariants = 6;
void ldmatrix_fragments(const uint16_t* matrices, uint32_t* out);

// Lane l of one warp copies src[16l .. 16l+15] to shared memory with cp_async_16(..., src_size =
// l % 17) over a destination prefilled with 0xAB, then writes shared memory to dst[32*16].
void cp_async_zero_fill(const uint8_t* src, uint8_t* dst);

// C[M][N] (f32) = A[M][K] * B, with B k-major [K][N] or (b_n_major) n-major [N][K]: a tiled
// tensor-core GEMM on one block of 4 warps, built only on the ptx.cuh wrappers, staging tiles with
// double-buffered cp.async. N and K must be multiples of 8 (16-byte rows); M is arbitrary.
void hgemm(Elem elem, bool b_n_major, int M, int N, int K, const uint16_t* a, const uint16_t* b,
           float* c);

// Runs the kernels above on fixed pseudo-random inputs and compares them with references computed
// here on the host (matrix products in f64, ldmatrix layouts as the PTX ISA documents them).
// Returns the number of failed checks; `report` gets one line per check.
int self_check(std::string* report);

// Misuse the simulator must report (not meaningful on a GPU): an ldmatrix row address that is not
// 16-byte aligned, and an mma executed by only 16 lanes of a warp.
void ldmatrix_misaligned();
void mma_partial_warp();

}  // namespace lathe::ptx_tests
