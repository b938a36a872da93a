// Host entry points of the PTX wrapper test kernels (tests/sim/ptx_test_kernels.cu). They take and
// return host arrays and move them to and from the device themselves, so the same calls run the
// kernels on the simulator (simulated build) or on a real GPU (nvcc build) — on a GPU they confirm
// that the simulator's emulation of mma/ldmatrix/cp.async/wgmma matches the hardware.
//
// 16-bit matrices are passed as raw f16 or bf16 bit patterns, row-major.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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
// The same copies (src_size 16), the destination read once before cp.async.wait_group (into
// early[32*16]) and once after (into late[32*16]). In the simulator a copy lands at the issuing
// thread's wait, so early holds the 0xAB fill; on a GPU it may hold either.
void cp_async_read_early(const uint8_t* src, uint8_t* early, uint8_t* late);

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
// threads, and a warpgroup of which only 64 threads reach the wgmma. Then the hazards of a product
// in flight (issued, not yet retired by wgmma.wait_group): its shared-memory operand overwritten,
// an accumulator written, the RS form's A registers written, a wait_group without commit_group
// and a thread that exits without waiting. ReadAccumulatorEarly is no error: the accumulator read
// before the wait (returned in out[thread]) holds the in-flight NaN pattern, as it holds garbage
// on a GPU. Returns out[128], each thread's accumulator 0 (after the wait).
enum class WgmmaMisuse {
  MisalignedPointer,
  GlobalPointer,
  RawDescriptor,
  Swizzle64,
  BlockOf96,
  PartialWarpgroup,
  OverwriteOperand,
  WriteAccumulatorEarly,
  WriteRegistersEarly,
  WaitWithoutCommit,
  ExitInFlight,
  ReadAccumulatorEarly
};
std::vector<float> wgmma_misuse(WgmmaMisuse misuse);

// The ordering rules the simulator models for wgmma (kernels/sim/ptx_emulation.h): a 128-thread
// block fills a 64 x 16 bf16 tile of dynamic shared memory with ones and runs two wgmma products
// on it (A = B = the tile, the second accumulating onto the first, whose accumulator 0 is doubled
// in between). Each misuse breaks one rule: tile stores with no fence.proxy.async before the
// barrier, the fence placed before the stores, the tile filled by cp.async (retired by its wait)
// with no fence, no wgmma.fence before the first wgmma, the accumulator doubled after the second
// product's wgmma.fence, the RS form's A fragment changed after it. Correct breaks none and
// returns out[t] = accumulator 0 (2 * 16 + 16 = 48) and out[128 + t] = accumulator 1 (16 + 16).
enum class WgmmaOrderMisuse {
  Correct,
  MissingProxyFence,
  ProxyFenceBeforeStores,
  CpAsyncWithoutProxyFence,
  NoWgmmaFence,
  AccumulatorAfterWgmmaFence,
  FragmentAfterWgmmaFence
};
std::vector<float> wgmma_order(WgmmaOrderMisuse misuse);

// ---- sm_90 pipelines: mbarrier, TMA, named barriers, setmaxnreg ----

// Whether the mbarrier/TMA/setmaxnreg kernels can run: always in the simulated build; on a GPU,
// compute capability 9.x (sm_90a code).
bool tma_supported();

// One block of 128 threads: warps 1..3 (96 producers) write a value each into shared slots and
// arrive on a `full` barrier (count 96); warp 0 waits for the phase (parity r % 2), sums the slots
// and arrives on an `empty` barrier (count 32) that the producers wait on before the next round.
// Per round r: out[4r] = the sum lane 0 read, out[4r + 3] = the sum lane 31 read, out[4r + 1] =
// try_wait.parity(full, r % 2) after the wait (1: a completed phase stays completed), out[4r + 2] =
// try_wait.parity(full, (r + 1) % 2) (0: the next phase cannot complete before warp 0 arrives on
// `empty`). Producer p (0..95) writes mbarrier_phase_value(p, r).
uint32_t mbarrier_phase_value(int producer, int round);
void mbarrier_phases(int rounds, uint32_t* out);

// A bf16 tensor streamed through shared memory by TMA: one block of three warpgroups, the first a
// producer (setmaxnreg.dec; one thread issues the copies), the other two consumers (setmaxnreg.inc)
// that wait on a `full` barrier per stage and release it through an `empty` one, over a ring of
// `stages` boxes. Boxes are taken in order over the grid of boxes that starts at `origin` and
// covers the tensor (x fastest); consumer warpgroup c reads the box rows (y, z merged) r with r % 2
// == c from shared memory through the layout the copy produced (dense, or cuda::wgmma_offset's
// 128-byte swizzle) and writes them out unswizzled: boxes[t][z][y][x].
struct TmaCopyCase {
  int rank = 2;                   // 2 or 3
  uint64_t sizes[3] = {1, 1, 1};  // elements, innermost first
  uint64_t pitch = 0;             // elements from one row to the next (>= sizes[0])
  uint32_t box[3] = {1, 1, 1};    // at most 64 x 64 elements in all; 64 wide with the swizzle
  int stages = 2;                 // 2 or 3
  bool swizzle128 = false;
  bool map_in_global = false;     // read the map from global memory, not a __grid_constant__ param
  int32_t origin[3] = {0, 0, 0};  // coordinates of the first box (negative: over the low edge)
};
// Boxes along dimension d: ceil((sizes[d] - origin[d]) / box[d]).
int tma_box_grid(const TmaCopyCase& c, int d);
int tma_box_count(const TmaCopyCase& c);
// src holds pitch * sizes[1] * sizes[2] elements (planes pitch * sizes[1] apart); boxes gets
// tma_box_count(c) * box elements.
void tma_copy(const TmaCopyCase& c, const uint16_t* src, uint16_t* boxes);

// D [64][64] (f32) = C + A [64][64] * B through 4 wgmma.m64n64k16 whose operands TMA loaded with
// the 128-byte swizzle straight into the layout the descriptors read. b is given [n][k]; with
// b_mn_major it is uploaded as [k][n] and read as an MN-major B.
void tma_wgmma(Elem elem, bool b_mn_major, const uint16_t* a, const uint16_t* b, const float* c,
               float* d);

// Two warpgroups take `rounds` turns each, alternating through named barriers 1 and 2
// (FlashAttention-3's ping-pong): warpgroup 1 arrives on barrier 1 first, then each waits on its
// own barrier (bar.sync 1 + g, 256), updates acc[i] = acc[i] * 3 + g + 1 + round (i = its thread's
// rank, acc[i] starting at i) and arrives on the other's (bar.arrive). Out: acc[128] and
// turns[2 * rounds], the warpgroup of each turn in order.
void named_barrier_pingpong(int rounds, uint32_t* acc, int32_t* turns);

// One 64 x 64 bf16 TMA copy into shared memory filled with 0xDEAD, read by all 128 threads after
// waiting on the barrier, or (skip_wait, a planted bug) with no thread waiting before all have
// read: the simulator performs the copy only when a thread waits, so those reads see 0xDEAD (on a
// GPU the result would be racy).
void tma_read(bool skip_wait, const uint16_t* src, uint16_t* out);

// Misuse the simulator must report.
enum class PipelineMisuse {
  WaitWithoutInit,            // a wait on a barrier no thread initialized
  BarrierOverwritten,         // an ordinary store over an initialized barrier
  MissingExpectTx,            // TMA onto a barrier whose phase expects no bytes
  NeverWaited,                // TMA whose barrier nobody waits on before the block ends
  NeverCompletes,             // a wait for 2 arrivals when only 1 comes: deadlock
  PollsForever,               // a try_wait loop on a barrier nobody arrives at
  MisalignedSwizzleDst,       // 128-byte swizzled box at a 128- but not 1024-byte aligned address
  NamedBarrierCount,          // bar.sync with 100 threads
  NamedBarrierMismatch,       // warps meeting at one named barrier with 64 and 96 threads
  SetmaxnregPartial,          // setmaxnreg by half a warpgroup
  StoresBeforeTma,            // a second copy into a tile stored to after the first, with no fence
  InitNotFenced,              // TMA onto a barrier with no fence.mbarrier_init after its init
  InitFencedByAnotherThread,  // the fence by a thread other than the one that initialized it
};
void pipeline_misuse(PipelineMisuse misuse);

// Runs the kernels above on fixed pseudo-random inputs and compares them with references computed
// here on the host (matrix products in f64, ldmatrix layouts as the PTX ISA documents them).
// Returns the number of failed checks; `report` gets one line per check.
int self_check(std::string* report);

// Misuse the simulator must report (not meaningful on a GPU): an ldmatrix row address that is not
// 16-byte aligned, and an mma executed by only 16 lanes of a warp.
void ldmatrix_misaligned();
void mma_partial_warp();

}  // namespace lathe::ptx_tests
