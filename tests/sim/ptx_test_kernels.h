// Host entry points of the PTX wrapper test kernels (tests/sim/ptx_test_kernels.cu). They take and
// return host arrays and move them to and from the device themselves, so the same calls run the
// kernels on the simulator (simulated build) or on a real GPU (nvcc build) — on a GPU they confirm
// that the simulator's emulation of mma/ldmatrix/cp.async/wgmma matches the hardware.
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

// ---- wgmma (sm_90a): one warpgroup of 128 threads ----

// How wgmma_tile places its K-major operands (R rows: 64 for A, N for B; K = 16 * ksteps) in
// shared memory, with cuda::wgmma_offset, and where k step s starts:
//  - InterleaveMN: no swizzle, the 8-row core matrices of a column pair contiguous along M/N:
//    SBO = 128, LBO = R*16; k step s at s*R*32 bytes.
//  - InterleaveK: no swizzle, the two core matrices along K adjacent: LBO = 128, SBO = 256; k step
//    s at s*R*32.
//  - Swizzle128: 128-byte swizzle, SBO = 1024, 1024-byte aligned blocks of R rows x 64 columns
//    (R*128 bytes each); k step s at (s/4)*R*128 + (s%4)*32 bytes, i.e. within a block the start
//    address moves by 32 bytes, the way FlashAttention-3 style kernels step along K.
// Descriptors are made once per operand and stepped by adding (offset >> 4).
enum class WgmmaLayout { InterleaveMN, InterleaveK, Swizzle128 };
inline constexpr WgmmaLayout kWgmmaLayouts[] = {WgmmaLayout::InterleaveMN, WgmmaLayout::InterleaveK,
                                                WgmmaLayout::Swizzle128};
const char* wgmma_layout_name(WgmmaLayout layout);

// cuda::wgmma_desc_bits and cuda::wgmma_offset (host side of ptx.cuh; swizzle128 picks the
// 128-byte swizzle, else none), for tests of the encodings against the PTX ISA.
uint64_t wgmma_desc_bits(uint32_t smem_address, uint32_t lbo, uint32_t sbo, bool swizzle128);
uint32_t wgmma_layout_offset(bool swizzle128, int row, int k, uint32_t lbo, uint32_t sbo);
// cuda::wgmma_offset_mn: element (n, k) of an MN-major B.
uint32_t wgmma_layout_offset_mn(bool swizzle128, int n, int k, uint32_t lbo, uint32_t sbo);

// Whether wgmma can run here: always in the simulated build; on a GPU, compute capability 9.x
// (and the kernels must have been compiled for sm_90a, as LATHE_CUDA_ARCHS' default does).
bool wgmma_supported();

// D [64][n] (f32, row-major) = C [64][n] + A [64][K] * B through `ksteps` m64n{n}k16 wgmma
// instructions (K = 16 * ksteps), A row-major and B given K-major as b[n][K] (b[j*K + k] =
// B(k, j)). rs: A comes from registers (the mma A-fragment layout per warp) instead of shared
// memory. accumulate = false: the first instruction has scale-d = 0 and must overwrite the
// accumulators, which hold garbage (c is not read). n is 64, 128 or 256; n*K is at most 8192
// elements, with K rounded up to 64 for a K-major Swizzle128 B (so no n = 256 there).
// b_mn_major: B is placed MN-major ([K][N], wgmma_placement_mn in the .cu: the same three layout
// names, no swizzle with SBO 128 or LBO 128, and 128-byte swizzle with 64-column blocks K*128
// bytes apart) and read with imm-trans-b = 1; b is given as b[n][K] either way.
void wgmma_tile(Elem elem, bool rs, int n, WgmmaLayout layout, int ksteps, bool accumulate,
                const uint16_t* a, const uint16_t* b, const float* c, float* d,
                bool b_mn_major = false);

// Misuse the simulator must report: a descriptor of a pointer that is not 16-byte aligned, or
// not in shared memory, one not made by make_wgmma_desc, one with 64-byte swizzle, a block of 96
// threads, and a warpgroup of which only 64 threads reach the wgmma.
enum class WgmmaMisuse {
  MisalignedPointer,
  GlobalPointer,
  RawDescriptor,
  Swizzle64,
  BlockOf96,
  PartialWarpgroup
};
void wgmma_misuse(WgmmaMisuse misuse);

// Runs the kernels above on fixed pseudo-random inputs and compares them with references computed
// here on the host (matrix products in f64, ldmatrix layouts as the PTX ISA documents them).
// Returns the number of failed checks; `report` gets one line per check.
int self_check(std::string* report);

// Misuse the simulator must report (not meaningful on a GPU): an ldmatrix row address that is not
// 16-byte aligned, and an mma executed by only 16 lanes of a warp.
void ldmatrix_misaligned();
void mma_partial_warp();

}  // namespace lathe::ptx_tests
