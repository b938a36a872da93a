// The shared part of the sm_90a flash attention kernels on warpgroup MMA (attention_wgmma.cu: the
// forward variants 2 and 3; attention_wgmma_backward.cu: backward variant 2): blocks of two
// consumer warpgroups, tiles in the 128-byte-swizzled canonical layout wgmma reads, loaded with
// cp.async, and the typed wgmma calls. docs/kernels.md ("Forward variant 2") has the layout.
#pragma once

#include <type_traits>

#include "kernels/cuda/flash_attention.cuh"
#include "kernels/sim/sim.h"  // LATHE_DYNAMIC_SHARED in both builds

namespace lathe::kernels::cuda::flash {

constexpr int kWgConsumers = 2;
constexpr int kWgThreads = 128 * kWgConsumers;
constexpr int kWgRows = 64 * kWgConsumers;
// Compiled only where wgmma exists (sm_90a device code, and the simulator): the sm_80 pass gets a
// trapping stub instead of a body of trapping wrappers, and the launcher refuses other GPUs.
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LATHE_FLASH_WGMMA 1
#else
#define LATHE_FLASH_WGMMA 0
#endif

// Rows [0, valid) of a [ROWS, D] tile at gmem (row stride ld, rows 16-byte aligned) into the
// 128-byte-swizzled layout at smem (1024-byte aligned); rows past `valid` are zero-filled. Each
// thread copies the same 16-byte column chunk of rows r0, r0 + kStep, ...: kStep is a multiple of
// 8, so the swizzled offset inside a row is computed once (a loop over flat chunk indices, with its
// divisions and swizzle per chunk, cost ~500 more SASS instructions per tile at d = 128).
template <int D, int ROWS, class T>
LATHE_DEVICE_INLINE void load_tile_sw128(T* smem, const T* gmem, int64_t ld, int64_t valid,
                                         const T* any_valid) {
  constexpr int kChunks = D / 8;
  constexpr int kStep = kWgThreads / kChunks;
  static_assert(kWgThreads % kChunks == 0 && kStep % 8 == 0 && ROWS % kStep == 0,
                "every thread keeps one chunk column and swizzle phase");
  const int r0 = int(threadIdx.x) / kChunks, col = (int(threadIdx.x) % kChunks) * 8;
  char* dst = reinterpret_cast<char*>(smem) + uint32_t(col / 64) * ROWS * 128 +
              rt::wgmma_offset(rt::WgmmaSwizzle::B128, r0, col % 64, 16, 1024);
#pragma unroll
  for (int i = 0; i < ROWS / kStep; ++i) {
    const int r = r0 + i * kStep;
    const bool ok = r < valid;
    rt::cp_async_16(dst + i * kStep * 128, ok ? gmem + int64_t(r) * ld + col : any_valid,
                    ok ? 16 : 0);
  }
}

// One m64nNk16 wgmma of storage type T, both operands in shared memory: A K-major (rows are M, K
// contiguous), B K-major (rows are N), as S = Q K^T needs, or with kB = MN MN-major (rows are K,
// N contiguous), as the atomic backward's dQ = dS K needs.
template <class T, int N, rt::WgmmaMajor kB = rt::WgmmaMajor::K>
LATHE_DEVICE_INLINE void ss_wgmma(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                  bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    rt::wgmma_ss_f16<N, kB>(d, desc_a, desc_b, accumulate);
  } else {
    rt::wgmma_ss_bf16<N, kB>(d, desc_a, desc_b, accumulate);
  }
}
// One accumulating m64nNk16 wgmma with A from registers (mma fragments) and an MN-major B in
// shared memory (rows of B are K, N contiguous), as O += P V needs with V stored [keys][d].
template <class T, int N>
LATHE_DEVICE_INLINE void rs_wgmma_mn(float (&d)[N / 2], const uint32_t a[4], uint64_t desc_b) {
  if constexpr (std::is_same_v<T, __half>) {
    rt::wgmma_rs_f16<N, rt::WgmmaMajor::MN>(d, a, desc_b, true);
  } else {
    rt::wgmma_rs_bf16<N, rt::WgmmaMajor::MN>(d, a, desc_b, true);
  }
}

// cp.async writes through the generic proxy, wgmma reads through the async proxy: each thread
// fences its own copies, then the barrier publishes everyone's.
LATHE_DEVICE_INLINE void publish_to_wgmma() {
  rt::fence_proxy_async_shared();
  __syncthreads();
}

}  // namespace lathe::kernels::cuda::flash
