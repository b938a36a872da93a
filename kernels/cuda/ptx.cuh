// Wrappers of the PTX instructions lathe's tensor-core kernels use (flash attention, tiled GEMM):
// mma.sync m16n8k16 (f16/bf16 inputs, f32 accumulate), ldmatrix m8n8 x1/x2/x4 (+ .trans) and
// cp.async with commit/wait groups. Kernels call these instead of writing asm, so that:
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
// There, cp.async copies at issue time, so a missing cp_async_wait shows only on a real GPU.
#pragma once

#include <cstdint>

#ifndef __CUDACC__
#include "kernels/sim/ptx_emulation.h"
#include "kernels/sim/sim.h"
#endif

namespace lathe::cuda {

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
// The copies above complete at issue time, so groups need no bookkeeping.
__forceinline__ void cp_async_commit() {}
template <int N>
__forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group takes a non-negative group count");
}
__forceinline__ void cp_async_wait_all() {}

#endif

}  // namespace lathe::cuda
