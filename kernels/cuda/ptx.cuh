// Wrappers of the PTX instructions lathe's tensor-core kernels use (flash attention, tiled GEMM):
// mma.sync m16n8k16 (f16/bf16 inputs, f32 accumulate), ldmatrix m8n8 x1/x2/x4 (+ .trans) and
// cp.async with commit/wait groups, and (sm_90a only) the warpgroup MMA wgmma.mma_async
// m64n{64,128,256}k16 with its fences and shared-memory descriptors (K-major operands, and an
// MN-major B through imm-trans-b; layouts documented at wgmma_desc_bits / wgmma_offset /
// wgmma_offset_mn below and in docs/cuda.md). Kernels call these instead of writing
// asm, so that:
//  - under nvcc (sm_80 and later) each is one inline PTX instruction;
//  - in the simulated build each is an emulation (kernels/sim/ptx_emulation.h) that follows the
//    fragment layouts of the PTX ISA, so the same kernel source runs on the CPU. The emulation is
//    only as right as its reading of the documented layouts: tests/sim/ptx_test_kernels.cu holds
//    kernels whose tests, run on a real GPU, confirm it.
//
// Fragment layouts (g = lane / 4, t = lane % 4; {lo, hi} = the two 16-bit halves of a register):
//   mma A (16x16, row-major), a[r] = {A[g + 8*(r%2)][2t + 8*(r/2)], ... + 1 column}
//   mma B (16x8, "col"),      b[r] = {B[2t + 8r][g], B[2t + 8r + 1][g]}
//   mma C/D (16x8, f32),      c[i] = C[g + 8*(i/2)][2t + i%2]
//   ldmatrix: lanes 8m..8m+7 give the row addresses of matrix m (16-byte aligned rows of 8 b16);
//             regs[m] = {M_m[lane/4][2*(lane%4)], ... + 1}; with .trans the column instead:
//             regs[m] = {M_m[2*(lane%4)][lane/4], M_m[2*(lane%4) + 1][lane/4]}.
// So ldmatrix_x4 over the four 8x8 quadrants of a row-major 16x16 tile (top-left, bottom-left,
// top-right, bottom-right) yields the A fragment; ldmatrix_x2 over an n-major [8][16] B tile (or
// ldmatrix_x2_trans over a k-major [16][8] one) yields the B fragment.
//
// All 32 lanes of the warp must execute mma/ldmatrix together (the simulator reports otherwise).
// In the simulated build the wrappers take two trailing defaulted arguments (the call site), which
// name the instruction in errors and tell lanes of a warp meeting at different instructions apart.
// There, a cp.async copy lands at the issuing thread's cp_async_wait that retires its group, and a
// wgmma product at the wgmma_wait that retires it (kernels/sim/ptx_emulation.h), so a missing or
// too-shallow wait reads stale data there too.
//
// The sm_90 producer/consumer machinery (FlashAttention-3 style pipelines) is wrapped too:
//  - mbarrier (64-bit barriers in shared memory with a phase, an arrival count and a transaction
//    byte count): mbarrier_init, fence_mbarrier_init, mbarrier_arrive, mbarrier_arrive_expect_tx,
//    mbarrier_expect_tx, mbarrier_try_wait_parity, mbarrier_wait_parity, mbarrier_inval;
//  - TMA: tma_load_2d/3d (cp.async.bulk.tensor from a cuda::TensorMap made on the host with
//    make_tensor_map_2d/3d, kernels/cuda/tensor_map.h, completing on an mbarrier) and
//    prefetch_tensor_map;
//  - named barriers: named_barrier_sync / named_barrier_arrive (bar.sync / bar.arrive id, n);
//  - setmaxnreg_inc<N> / setmaxnreg_dec<N> (sm_90a).
// Device code for sm_80 compiles them to a trap (named barriers excepted), as it does wgmma. In the
// simulated build a TMA copy completes only when a thread tests its barrier, so reading the
// destination without waiting sees stale data there too (kernels/sim/ptx_emulation.h).
//
// The usual pipeline over an S-stage ring (stage s = t % S of tile t, phase parity (t / S) % 2):
//   init (one thread):  mbarrier_init(&full[s], 1); mbarrier_init(&empty[s], consumers);
//                       fence_mbarrier_init();  then __syncthreads()
//   producer (one thread): if (t >= S) mbarrier_wait_parity(&empty[s], (t / S - 1) % 2);
//                       mbarrier_arrive_expect_tx(&full[s], box_bytes);
//                       tma_load_2d(ring[s], &map, x, y, &full[s]);
//   consumers:          mbarrier_wait_parity(&full[s], (t / S) % 2); read ring[s];
//                       mbarrier_arrive(&empty[s]);
#pragma once

#include <cstdint>

#include "kernels/cuda/tensor_map.h"

#ifndef __CUDACC__
#include "kernels/sim/ptx_emulation.h"
#include "kernels/sim/sim.h"
#endif

namespace lathe::cuda {

#ifdef __CUDACC__
#define LATHE_PTX_HD __host__ __device__
#else
#define LATHE_PTX_HD
#endif

// ---- wgmma matrix descriptors and canonical K-major layouts (host and device) ----

// Bits 62..63 of a descriptor. The PTX ISA also has 64-byte (2) and 32-byte (3) swizzles, which
// these wrappers do not use (the simulator reports them).
enum class WgmmaSwizzle : unsigned { None = 0, B128 = 1 };

// The 64-bit wgmma matrix descriptor (PTX ISA, "Matrix Descriptor Format"), with
// encode(x) = (x & 0x3FFFF) >> 4:
//   bits  0..13  encode(matrix start address in the shared window)
//   bits 16..29  encode(leading dimension byte offset, LBO)
//   bits 32..45  encode(stride dimension byte offset, SBO)
//   bits 49..51  base offset: 0 here, i.e. 128-byte swizzle patterns start on 1024-byte
//                boundaries of the shared address space
//   bits 62..63  swizzle mode
// So every address and offset is a multiple of 16 below 256 KiB. To step a descriptor along K a
// kernel adds (byte offset >> 4) to it (see wgmma_offset). In the simulated build descriptors come
// only from make_wgmma_desc (which also records where the host memory is); this function gives
// the bits a GPU would see.
constexpr LATHE_PTX_HD uint64_t wgmma_desc_bits(uint32_t smem_address, uint32_t lbo, uint32_t sbo,
                                                WgmmaSwizzle swizzle) {
  return uint64_t((smem_address & 0x3FFFFu) >> 4) | uint64_t((lbo & 0x3FFFFu) >> 4) << 16 |
         uint64_t((sbo & 0x3FFFFu) >> 4) << 32 | uint64_t(swizzle) << 62;
}

// Byte offset of element (row, k) of a K-major 16-bit operand (row = m of A or n of B), from the
// tile base the descriptor's start address points at, in the canonical layouts (as read from the
// PTX ISA, "Shared Memory Matrix Layout"; confirmed only by the GPU run of tests/sim/test_ptx.cpp):
//  - None ("interleave"): core matrices of 8 rows x 8 elements, each 128 contiguous bytes (row r
//    at 16r); along K core matrices are LBO bytes apart, along M/N (every 8 rows) SBO:
//      (row/8)*SBO + (k/8)*LBO + (row%8)*16 + (k%8)*2.
//    One m64nNk16 reads two core matrices along K, so k < 16 per instruction; a tile wider in K
//    is a kernel's choice (e.g. the next 16 columns 2*LBO further, or a separate block).
//  - B128: rows of 128 bytes (k < 64), groups of 8 rows SBO bytes apart (1024 when dense); LBO is
//    not used (the ISA says "assumed 1"; pass 16). The 16-byte chunk index (bits 4..6) of the
//    unswizzled offset u = (row/8)*SBO + (row%8)*128 + k*2 is XORed with bits 7..9:
//      u ^ (((u >> 7) & 7) << 4).
//    The hardware applies this XOR to shared *addresses*, so the tile base must be 1024-byte
//    aligned for this offset to be where a descriptor finds the element. A kernel steps along K
//    by adding 32 bytes per k16 step to the start address (the XOR then still uses the absolute
//    address bits), up to the 128-byte row; wider K tiles put further 64-column blocks elsewhere.
constexpr LATHE_PTX_HD uint32_t wgmma_offset(WgmmaSwizzle swizzle, int row, int k, uint32_t lbo,
                                             uint32_t sbo) {
  if (swizzle == WgmmaSwizzle::B128) {
    const uint32_t u = uint32_t(row / 8) * sbo + uint32_t(row % 8) * 128 + uint32_t(k) * 2;
    return u ^ ((u >> 7 & 7u) << 4);
  }
  return uint32_t(row / 8) * sbo + uint32_t(k / 8) * lbo + uint32_t(row % 8) * 16 +
         uint32_t(k % 8) * 2;
}

// How a B operand is laid out along K: K-major (B given as [N][K], imm-trans-b = 0, as above) or
// MN-major (B given as [K][N], N contiguous: imm-trans-b = 1, which the PTX ISA allows for 16-bit
// inputs only). Flash attention's P V reads V, stored [keys][d] with d contiguous, as an MN-major
// B with K = keys, without transposing it in shared memory.
enum class WgmmaMajor : int { K = 0, MN = 1 };

// Byte offset of element (n, k) of an MN-major 16-bit B operand in the canonical layouts (read
// from the PTX ISA's "Shared Memory Matrix Layout" figures for MN-major operands and CUTLASS's
// make_gmma_desc<Major::MN>, which spells them as, in 16-byte units,
//   INTERLEAVE ((1,n),(8,k)):((X,SBO),(1,LBO)) and B128 ((8,n),(8,k)):((1,LBO),(8,SBO));
// unconfirmed until the GPU run of tests/sim/test_ptx.cpp):
//  - None: core matrices of 8 k-rows x 8 n-elements, each 128 contiguous bytes (k-row r at 16r,
//    n contiguous inside it); along N core matrices are SBO apart, along K LBO:
//      (n/8)*SBO + (k/8)*LBO + (k%8)*16 + (n%8)*2,
//    i.e. the K-major formula with the roles of the two 8-element indices inside a core matrix
//    swapped, and LBO/SBO still along K/N.
//  - B128: k-rows of 128 bytes (64 n-elements), groups of 8 k-rows SBO apart (1024 when dense), and
//    the next 64 n-elements LBO further (the opposite naming of the K-major case, where SBO is the
//    step along M/N): u = (n/64)*LBO + (k/8)*SBO + (k%8)*128 + (n%64)*2, with the same XOR of the
//    16-byte chunk with bits 7..9 on shared addresses. So a [keys][64] row-major tile of 128-byte
//    rows, swizzled, is the MN-major B of 64 columns; a kernel steps along K by 16 k-rows (2048
//    bytes, which keeps the 1024-byte swizzle phase) and puts further 64-column blocks LBO apart.
constexpr LATHE_PTX_HD uint32_t wgmma_offset_mn(WgmmaSwizzle swizzle, int n, int k, uint32_t lbo,
                                                uint32_t sbo) {
  if (swizzle == WgmmaSwizzle::B128) {
    const uint32_t u = uint32_t(n / 64) * lbo + uint32_t(k / 8) * sbo + uint32_t(k % 8) * 128 +
                       uint32_t(n % 64) * 2;
    return u ^ ((u >> 7 & 7u) << 4);
  }
  return uint32_t(n / 8) * sbo + uint32_t(k / 8) * lbo + uint32_t(k % 8) * 16 + uint32_t(n % 8) * 2;
}

#undef LATHE_PTX_HD

#ifdef __CUDACC__

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define LATHE_PTX_UNSUPPORTED() __trap()
#else
#define LATHE_PTX_UNSUPPORTED()
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define LATHE_PTX_AVAILABLE 1
#else
#define LATHE_PTX_AVAILABLE 0
#endif

__device__ __forceinline__ uint32_t shared_address(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4]) {
#if LATHE_PTX_AVAILABLE
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4],
                                                  const uint32_t b[2], const float c[4]) {
#if LATHE_PTX_AVAILABLE
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t* regs, const void* smem_row_ptr) {
#if LATHE_PTX_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(regs[0])
               : "r"(shared_address(smem_row_ptr)));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t* regs, const void* smem_row_ptr) {
#if LATHE_PTX_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(regs[0]), "=r"(regs[1])
               : "r"(shared_address(smem_row_ptr)));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* regs, const void* smem_row_ptr) {
#if LATHE_PTX_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3])
               : "r"(shared_address(smem_row_ptr)));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t* regs, const void* smem_row_ptr) {
#if LATHE_PTX_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(regs[0])
               : "r"(shared_address(smem_row_ptr)));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t* regs, const void* smem_row_ptr) {
#if LATHE_PTX_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(regs[0]), "=r"(regs[1])
               : "r"(shared_address(smem_row_ptr)));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* regs, const void* smem_row_ptr) {
#if LATHE_PTX_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3])
               : "r"(shared_address(smem_row_ptr)));
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

// 16 bytes global -> shared, bypassing L1 (.cg). Both addresses must be 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
#if LATHE_PTX_AVAILABLE
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(smem)), "l"(gmem)
               : "memory");
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

// Copies the first src_size (0..16) bytes and zero-fills the rest: src_size = 0 is the usual way
// to pad a tile past the matrix edge (gmem must still be a valid address).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_size) {
#if LATHE_PTX_AVAILABLE
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(smem)),
               "l"(gmem), "r"(src_size)
               : "memory");
#else
  LATHE_PTX_UNSUPPORTED();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if LATHE_PTX_AVAILABLE
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight. Other threads'
// copies need a __syncthreads after the wait as well.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if LATHE_PTX_AVAILABLE
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if LATHE_PTX_AVAILABLE
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// ---- wgmma (sm_90a) ----
// Accumulator operand lists ("+f", N/2 registers) and their PTX register lists.
#define LATHE_WGMMA_ACC8(d, o)                                                                \
  "+f"(d[o]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3]), "+f"(d[o + 4]), "+f"(d[o + 5]), \
      "+f"(d[o + 6]), "+f"(d[o + 7])
#define LATHE_WGMMA_ACC32_AT(d, o)                                                 \
  LATHE_WGMMA_ACC8(d, o), LATHE_WGMMA_ACC8(d, o + 8), LATHE_WGMMA_ACC8(d, o + 16), \
      LATHE_WGMMA_ACC8(d, o + 24)
#define LATHE_WGMMA_ACC32(d) LATHE_WGMMA_ACC32_AT(d, 0)
#define LATHE_WGMMA_ACC64(d) LATHE_WGMMA_ACC32_AT(d, 0), LATHE_WGMMA_ACC32_AT(d, 32)
#define LATHE_WGMMA_ACC128(d) \
  LATHE_WGMMA_ACC64(d), LATHE_WGMMA_ACC32_AT(d, 64), LATHE_WGMMA_ACC32_AT(d, 96)
#define LATHE_WGMMA_REGS32                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LATHE_WGMMA_REGS64                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
  "%56, %57, %58, %59, %60, %61, %62, %63}"
#define LATHE_WGMMA_REGS128                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "    \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "     \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "     \
  "%56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, "     \
  "%74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, "     \
  "%92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, " \
  "%109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, "     \
  "%124, %125, %126, %127}"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LATHE_WGMMA_AVAILABLE 1
#else
#define LATHE_WGMMA_AVAILABLE 0
#endif
// wgmma exists only in sm_90a code: other device targets compile the wrappers to a trap.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LATHE_WGMMA_UNSUPPORTED() __trap()
#else
#define LATHE_WGMMA_UNSUPPORTED()
#endif

namespace detail {
template <int N, bool BF16, int kTransB>
__device__ __forceinline__ void wgmma_ss(float* d, uint64_t desc_a, uint64_t desc_b, int scale_d) {
#if LATHE_WGMMA_AVAILABLE
  if constexpr (BF16 == false && N == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " LATHE_WGMMA_REGS32
        ", %32, %33, p, 1, 1, 0, %35;\n}\n"
        : LATHE_WGMMA_ACC32(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == false && N == 128) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " LATHE_WGMMA_REGS64
        ", %64, %65, p, 1, 1, 0, %67;\n}\n"
        : LATHE_WGMMA_ACC64(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == false && N == 256) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " LATHE_WGMMA_REGS128
        ", %128, %129, p, 1, 1, 0, %131;\n}\n"
        : LATHE_WGMMA_ACC128(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == true && N == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LATHE_WGMMA_REGS32
        ", %32, %33, p, 1, 1, 0, %35;\n}\n"
        : LATHE_WGMMA_ACC32(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == true && N == 128) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LATHE_WGMMA_REGS64
        ", %64, %65, p, 1, 1, 0, %67;\n}\n"
        : LATHE_WGMMA_ACC64(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == true && N == 256) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " LATHE_WGMMA_REGS128
        ", %128, %129, p, 1, 1, 0, %131;\n}\n"
        : LATHE_WGMMA_ACC128(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  }
#else
  LATHE_WGMMA_UNSUPPORTED();
#endif
}

template <int N, bool BF16, int kTransB>
__device__ __forceinline__ void wgmma_rs(float* d, const uint32_t a[4], uint64_t desc_b,
                                         int scale_d) {
#if LATHE_WGMMA_AVAILABLE
  if constexpr (BF16 == false && N == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " LATHE_WGMMA_REGS32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : LATHE_WGMMA_ACC32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == false && N == 128) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " LATHE_WGMMA_REGS64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : LATHE_WGMMA_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == false && N == 256) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " LATHE_WGMMA_REGS128
        ", {%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n"
        : LATHE_WGMMA_ACC128(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == true && N == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LATHE_WGMMA_REGS32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : LATHE_WGMMA_ACC32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == true && N == 128) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LATHE_WGMMA_REGS64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : LATHE_WGMMA_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  } else if constexpr (BF16 == true && N == 256) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " LATHE_WGMMA_REGS128
        ", {%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n"
        : LATHE_WGMMA_ACC128(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB)
        : "memory");
  }
#else
  LATHE_WGMMA_UNSUPPORTED();
#endif
}
}  // namespace detail

// The matrix descriptor of a K-major operand at smem_ptr (see wgmma_desc_bits).
__device__ __forceinline__ uint64_t make_wgmma_desc(const void* smem_ptr, uint32_t lbo,
                                                    uint32_t sbo, WgmmaSwizzle swizzle) {
  return wgmma_desc_bits(shared_address(smem_ptr), lbo, sbo, swizzle);
}

// B is K-major unless kB = WgmmaMajor::MN (A is always K-major).
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__device__ __forceinline__ void wgmma_ss_f16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                             bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  detail::wgmma_ss<N, false, int(kB)>(d, desc_a, desc_b, accumulate);
}
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__device__ __forceinline__ void wgmma_ss_bf16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                              bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  detail::wgmma_ss<N, true, int(kB)>(d, desc_a, desc_b, accumulate);
}
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__device__ __forceinline__ void wgmma_rs_f16(float (&d)[N / 2], const uint32_t a[4],
                                             uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  detail::wgmma_rs<N, false, int(kB)>(d, a, desc_b, accumulate);
}
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__device__ __forceinline__ void wgmma_rs_bf16(float (&d)[N / 2], const uint32_t a[4],
                                              uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  detail::wgmma_rs<N, true, int(kB)>(d, a, desc_b, accumulate);
}

__device__ __forceinline__ void wgmma_fence() {
#if LATHE_WGMMA_AVAILABLE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  LATHE_WGMMA_UNSUPPORTED();
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if LATHE_WGMMA_AVAILABLE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  LATHE_WGMMA_UNSUPPORTED();
#endif
}
// Waits until at most N of the warpgroup's committed wgmma groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0..7");
#if LATHE_WGMMA_AVAILABLE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
  LATHE_WGMMA_UNSUPPORTED();
#endif
}

// Keeps the compiler from moving reads or writes of the accumulators across wgmma instructions
// (the asm statements above do not tell it that the registers change asynchronously until the
// wait).
template <int Count>
__device__ __forceinline__ void wgmma_fence_operand(float (&d)[Count]) {
#pragma unroll
  for (int i = 0; i < Count; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void wgmma_fence_operand(uint32_t (&a)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// Makes this thread's ordinary shared-memory stores (st.shared, cp.async) visible to the async
// proxy that wgmma reads operands through; needed between filling a tile and the __syncthreads
// before the wgmma that reads it.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// ---- sm_90: mbarrier, TMA, named barriers, setmaxnreg ----
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LATHE_SM90_AVAILABLE 1
#else
#define LATHE_SM90_AVAILABLE 0
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define LATHE_SM90_UNSUPPORTED() __trap()
#else
#define LATHE_SM90_UNSUPPORTED()
#endif

// Initializes the barrier at `bar` (8-byte aligned shared memory) for `count` arrivals per phase
// (1 .. 2^20 - 1), phase 0 in progress. One thread does it, then fence_mbarrier_init() and a
// __syncthreads() before any other thread (or a TMA copy) uses the barrier.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
#if LATHE_SM90_AVAILABLE
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(bar)), "r"(count)
               : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
}

// Makes this thread's preceding mbarrier.init visible to the other threads and to the async proxy
// (TMA's complete_tx), the fence the PTX ISA provides for that.
__device__ __forceinline__ void fence_mbarrier_init() {
#if LATHE_SM90_AVAILABLE
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
}

// One arrival (release semantics); returns the opaque state token of the phase arrived at.
__device__ __forceinline__ uint64_t mbarrier_arrive(uint64_t* bar) {
  uint64_t state = 0;
#if LATHE_SM90_AVAILABLE
  asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];\n"
               : "=l"(state)
               : "r"(shared_address(bar))
               : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
  return state;
}

// Adds `bytes` to the current phase's transaction count, then arrives: the phase then also waits
// for that many bytes of complete_tx (TMA copies signalling this barrier).
__device__ __forceinline__ uint64_t mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  uint64_t state = 0;
#if LATHE_SM90_AVAILABLE
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;\n"
               : "=l"(state)
               : "r"(shared_address(bar)), "r"(bytes)
               : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
  return state;
}

// Adds `bytes` to the current phase's transaction count without arriving.
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
#if LATHE_SM90_AVAILABLE
  asm volatile(
      "mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(bar)),
      "r"(bytes)
      : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
}

// Whether the phase of parity `parity` (0 or 1) has completed, i.e. the barrier's current phase has
// the other parity (acquire semantics when it has). The hardware may suspend the thread for a
// while before answering no.
__device__ __forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
#if LATHE_SM90_AVAILABLE
  asm volatile(
      "{\n.reg .pred done;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%1], %2;\n"
      "selp.u32 %0, 1, 0, done;\n}\n"
      : "=r"(done)
      : "r"(shared_address(bar)), "r"(parity)
      : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
  return done != 0;
}

// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}

// Ends the barrier's life, so its 8 bytes may be reused as ordinary shared memory.
__device__ __forceinline__ void mbarrier_inval(uint64_t* bar) {
#if LATHE_SM90_AVAILABLE
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(shared_address(bar)) : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
}

// TMA: copies the box of `map` whose first element has coordinates (x, y[, z]) (innermost first,
// signed: boxes may hang over any edge, outside elements become zeros) to `dst` in shared memory
// (128-byte aligned, 1024 with the 128-byte swizzle) and signals complete_tx of the box's bytes on
// `bar`. `map` is the address of a __grid_constant__ kernel parameter or of a map in global
// memory. One thread issues it; the bytes must be expected on the barrier's phase
// (mbarrier_arrive_expect_tx).
__device__ __forceinline__ void tma_load_2d(void* dst, const TensorMap* map, int32_t x, int32_t y,
                                            uint64_t* bar) {
#if LATHE_SM90_AVAILABLE
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(shared_address(bar))
      : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
}
__device__ __forceinline__ void tma_load_3d(void* dst, const TensorMap* map, int32_t x, int32_t y,
                                            int32_t z, uint64_t* bar) {
#if LATHE_SM90_AVAILABLE
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(z), "r"(shared_address(bar))
      : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
}

// Fetches the tensor map into the cache ahead of the first copy through it.
__device__ __forceinline__ void prefetch_tensor_map(const TensorMap* map) {
#if LATHE_SM90_AVAILABLE
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#else
  LATHE_SM90_UNSUPPORTED();
#endif
}

// Named barriers (every architecture): bar.sync waits until `nthreads` threads (a multiple of 32,
// counted by whole warps) have arrived at barrier `id`; bar.arrive counts this warp's threads and
// goes on. Id 0 is the one __syncthreads uses: kernels use 1..15 (the simulator enforces it).
// Every thread of a warp must execute the same instruction.
__device__ __forceinline__ void named_barrier_sync(int id, int nthreads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int nthreads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}

// setmaxnreg (sm_90a): the warpgroup's threads release registers down to N (dec) or wait for
// registers up to N (inc); N a multiple of 8 in [24, 256], executed by all 128 threads of the
// warpgroup together. A producer warpgroup that only issues TMA gives its registers to the
// consumers this way.
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: a multiple of 8 in [24, 256]");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: a multiple of 8 in [24, 256]");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

#undef LATHE_SM90_AVAILABLE
#undef LATHE_SM90_UNSUPPORTED

#undef LATHE_WGMMA_AVAILABLE
#undef LATHE_WGMMA_UNSUPPORTED
#undef LATHE_WGMMA_ACC8
#undef LATHE_WGMMA_ACC32_AT
#undef LATHE_WGMMA_ACC32
#undef LATHE_WGMMA_ACC64
#undef LATHE_WGMMA_ACC128
#undef LATHE_WGMMA_REGS32
#undef LATHE_WGMMA_REGS64
#undef LATHE_WGMMA_REGS128

#undef LATHE_PTX_AVAILABLE
#undef LATHE_PTX_UNSUPPORTED

#else  // simulated build

__forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                      const float c[4], const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
  sim::mma_m16n8k16(sim::MmaInput::F16, d, a, b, c, file, line);
}
__forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                       const float c[4], const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  sim::mma_m16n8k16(sim::MmaInput::BF16, d, a, b, c, file, line);
}

__forceinline__ void ldmatrix_x1(uint32_t* regs, const void* smem_row_ptr,
                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sim::ldmatrix(1, false, regs, smem_row_ptr, file, line);
}
__forceinline__ void ldmatrix_x2(uint32_t* regs, const void* smem_row_ptr,
                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sim::ldmatrix(2, false, regs, smem_row_ptr, file, line);
}
__forceinline__ void ldmatrix_x4(uint32_t* regs, const void* smem_row_ptr,
                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sim::ldmatrix(4, false, regs, smem_row_ptr, file, line);
}
__forceinline__ void ldmatrix_x1_trans(uint32_t* regs, const void* smem_row_ptr,
                                       const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  sim::ldmatrix(1, true, regs, smem_row_ptr, file, line);
}
__forceinline__ void ldmatrix_x2_trans(uint32_t* regs, const void* smem_row_ptr,
                                       const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  sim::ldmatrix(2, true, regs, smem_row_ptr, file, line);
}
__forceinline__ void ldmatrix_x4_trans(uint32_t* regs, const void* smem_row_ptr,
                                       const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  sim::ldmatrix(4, true, regs, smem_row_ptr, file, line);
}

__forceinline__ void cp_async_16(void* smem, const void* gmem, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  sim::cp_async(smem, gmem, 16, 16, file, line);
}
__forceinline__ void cp_async_16(void* smem, const void* gmem, int src_size,
                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sim::cp_async(smem, gmem, 16, src_size, file, line);
}
// The copies above happen when the wait that retires their group runs (ptx_emulation.h).
__forceinline__ void cp_async_commit() {
  sim::cp_async_commit_group();
}
template <int N>
__forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group takes a non-negative group count");
  sim::cp_async_wait(N);
}
// cp.async.wait_all is commit_group followed by wait_group 0 (PTX ISA).
__forceinline__ void cp_async_wait_all() {
  sim::cp_async_commit_group();
  sim::cp_async_wait(0);
}

// Descriptors carry the host memory window in reserved bits (kernels/sim/ptx_emulation.h).
__forceinline__ uint64_t make_wgmma_desc(const void* smem_ptr, uint32_t lbo, uint32_t sbo,
                                         WgmmaSwizzle swizzle, const char* file = __builtin_FILE(),
                                         int line = __builtin_LINE()) {
  return sim::wgmma_make_desc(smem_ptr, lbo, sbo, unsigned(swizzle), file, line);
}
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__forceinline__ void wgmma_ss_f16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                  bool accumulate, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  sim::wgmma_ss<N>(sim::MmaInput::F16, d, desc_a, desc_b, kB == WgmmaMajor::MN, accumulate, file,
                   line);
}
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__forceinline__ void wgmma_ss_bf16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                   bool accumulate, const char* file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  sim::wgmma_ss<N>(sim::MmaInput::BF16, d, desc_a, desc_b, kB == WgmmaMajor::MN, accumulate, file,
                   line);
}
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__forceinline__ void wgmma_rs_f16(float (&d)[N / 2], const uint32_t a[4], uint64_t desc_b,
                                  bool accumulate, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  sim::wgmma_rs<N>(sim::MmaInput::F16, d, a, desc_b, kB == WgmmaMajor::MN, accumulate, file, line);
}
template <int N, WgmmaMajor kB = WgmmaMajor::K>
__forceinline__ void wgmma_rs_bf16(float (&d)[N / 2], const uint32_t a[4], uint64_t desc_b,
                                   bool accumulate, const char* file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N is 64, 128 or 256");
  sim::wgmma_rs<N>(sim::MmaInput::BF16, d, a, desc_b, kB == WgmmaMajor::MN, accumulate, file, line);
}
// The products above are performed by the wait_group that retires their group (each thread its
// own); fence, commit and wait also check that the warpgroup executes them together.
__forceinline__ void wgmma_fence(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sim::wgmma_sync("wgmma.fence.sync.aligned", file, line);
  sim::wgmma_fence_registers();
}
__forceinline__ void wgmma_commit(const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  sim::wgmma_sync("wgmma.commit_group.sync.aligned", file, line);
  sim::wgmma_commit_group();
}
template <int N>
__forceinline__ void wgmma_wait(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0..7");
  sim::wgmma_sync("wgmma.wait_group.sync.aligned", file, line);
  sim::wgmma_retire(N, file, line);
}
// On the GPU these pin the registers' accesses in place; here the arrays live in memory, and the
// empty asm taking their address makes the C++ compiler treat them as live from this point on.
// Without it, an array the code mentions first at its wgmma may share its stack slot with
// temporaries of earlier wgmma calls in the same scope (GCC shares slots by first reference),
// which would overwrite the values the thread's wgmma.fence recorded for it.
template <int Count>
__forceinline__ void wgmma_fence_operand(float (&d)[Count]) {
  asm volatile("" : : "r"(&d[0]) : "memory");
}
__forceinline__ void wgmma_fence_operand(uint32_t (&a)[4]) {
  asm volatile("" : : "r"(&a[0]) : "memory");
}
__forceinline__ void fence_proxy_async_shared(const char* file = __builtin_FILE(),
                                              int line = __builtin_LINE()) {
  sim::fence_proxy_async(file, line);
}

// mbarrier, TMA, named barriers and setmaxnreg: kernels/sim/ptx_emulation.h describes the
// emulation.
__forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count,
                                   const char* file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
  sim::mbarrier_init(bar, count, file, line);
}
// The simulator checks that a barrier a TMA copy signals was fenced after its init.
__forceinline__ void fence_mbarrier_init(const char* file = __builtin_FILE(),
                                         int line = __builtin_LINE()) {
  sim::fence_mbarrier_init(file, line);
}
__forceinline__ uint64_t mbarrier_arrive(uint64_t* bar, const char* file = __builtin_FILE(),
                                         int line = __builtin_LINE()) {
  return sim::mbarrier_arrive(bar, 0, file, line);
}
__forceinline__ uint64_t mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes,
                                                   const char* file = __builtin_FILE(),
                                                   int line = __builtin_LINE()) {
  return sim::mbarrier_arrive(bar, bytes, file, line);
}
__forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes,
                                        const char* file = __builtin_FILE(),
                                        int line = __builtin_LINE()) {
  sim::mbarrier_expect_tx(bar, bytes, file, line);
}
__forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity,
                                              const char* file = __builtin_FILE(),
                                              int line = __builtin_LINE()) {
  return sim::mbarrier_try_wait_parity(bar, parity, file, line);
}
__forceinline__ void mbarrier_wait_parity(uint64_t* bar, uint32_t parity,
                                          const char* file = __builtin_FILE(),
                                          int line = __builtin_LINE()) {
  sim::mbarrier_wait_parity(bar, parity, file, line);
}
__forceinline__ void mbarrier_inval(uint64_t* bar, const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
  sim::mbarrier_inval(bar, file, line);
}
__forceinline__ void tma_load_2d(void* dst, const TensorMap* map, int32_t x, int32_t y,
                                 uint64_t* bar, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  const int32_t coords[2] = {x, y};
  sim::tma_load(map, dst, bar, 2, coords, file, line);
}
__forceinline__ void tma_load_3d(void* dst, const TensorMap* map, int32_t x, int32_t y, int32_t z,
                                 uint64_t* bar, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  const int32_t coords[3] = {x, y, z};
  sim::tma_load(map, dst, bar, 3, coords, file, line);
}
__forceinline__ void prefetch_tensor_map(const TensorMap* map, const char* file = __builtin_FILE(),
                                         int line = __builtin_LINE()) {
  sim::tma_prefetch(map, file, line);
}
__forceinline__ void named_barrier_sync(int id, int nthreads, const char* file = __builtin_FILE(),
                                        int line = __builtin_LINE()) {
  sim::named_barrier(unsigned(id), unsigned(nthreads), true, file, line);
}
__forceinline__ void named_barrier_arrive(int id, int nthreads, const char* file = __builtin_FILE(),
                                          int line = __builtin_LINE()) {
  sim::named_barrier(unsigned(id), unsigned(nthreads), false, file, line);
}
template <int N>
__forceinline__ void setmaxnreg_inc(const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: a multiple of 8 in [24, 256]");
  sim::setmaxnreg(true, N, file, line);
}
template <int N>
__forceinline__ void setmaxnreg_dec(const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: a multiple of 8 in [24, 256]");
  sim::setmaxnreg(false, N, file, line);
}

#endif

}  // namespace lathe::cuda
