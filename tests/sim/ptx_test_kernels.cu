// Test kernels for the PTX wrappers of kernels/cuda/ptx.cuh. Compiled by g++ against the simulator
// in the simulated build and by nvcc in the real one, so the same kernels (and self_check, which
// compares them with host references) confirm on a GPU what the simulator's emulation assumes
// about fragment layouts. The host entry points copy their arrays to and from the device.
#include "tests/sim/ptx_test_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/tensor_map.h"
#include "kernels/sim/sim.h"  // LATHE_DYNAMIC_SHARED in both builds
#include "lathe/core/dtype.h"
#include "lathe/core/error.h"
#include "lathe/core/half.h"

namespace lathe::ptx_tests {

namespace {

using cuda::cp_async_16;
using cuda::cp_async_commit;
using cuda::cp_async_wait;
using cuda::cp_async_wait_all;
using cuda::ldmatrix_x1;
using cuda::ldmatrix_x1_trans;
using cuda::ldmatrix_x2;
using cuda::ldmatrix_x2_trans;
using cuda::ldmatrix_x4;
using cuda::ldmatrix_x4_trans;

// An array on the device initialized from host memory (zeros when `host` is null). In the
// simulated build device memory is host memory; the copy keeps exact bounds for ASan.
template <class T>
class DeviceArray {
 public:
  DeviceArray(const T* host, size_t n) : n_(n) {
#ifdef __CUDACC__
    check(cudaMalloc(&ptr_, bytes()), "cudaMalloc");
    if (host) {
      check(cudaMemcpy(ptr_, host, bytes(), cudaMemcpyHostToDevice), "cudaMemcpy to device");
    } else {
      check(cudaMemset(ptr_, 0, bytes()), "cudaMemset");
    }
#else
    data_.assign(n, T{});
    if (host) std::copy(host, host + n, data_.begin());
#endif
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
#ifdef __CUDACC__
    cudaFree(ptr_);
#endif
  }
  T* get() {
#ifdef __CUDACC__
    return ptr_;
#else
    return data_.data();
#endif
  }
  void to_host(T* host) {
#ifdef __CUDACC__
    check(cudaMemcpy(host, ptr_, bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
#else
    std::copy(data_.begin(), data_.end(), host);
#endif
  }

 private:
  size_t bytes() const {
    return n_ * sizeof(T);
  }
#ifdef __CUDACC__
  static void check(cudaError_t status, const char* what) {
    LATHE_CHECK(status == cudaSuccess, "ptx tests: ", what,
                " failed: ", cudaGetErrorString(status));
  }
  T* ptr_ = nullptr;
#else
  std::vector<T> data_;
#endif
  size_t n_;
};

template <bool BF16>
__device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2],
                                    const float c[4]) {
  if constexpr (BF16) {
    cuda::mma_m16n8k16_bf16(d, a, b, c);
  } else {
    cuda::mma_m16n8k16_f16(d, a, b, c);
  }
}

// ---- one m16n8k16 product from shared memory ----
template <bool BF16, bool BNMajor>
__global__ void mma_tile_kernel(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  // Rows padded to 48 bytes: 16-byte aligned as ldmatrix needs, and not one dense block.
  alignas(16) __shared__ uint16_t sa[16][24];
  alignas(16) __shared__ uint16_t sb[16][24];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) sa[i / 16][i % 16] = a[i];
  for (int i = lane; i < 128; i += 32) {
    if (BNMajor) {
      sb[i / 16][i % 16] = b[i];  // [n][k]
    } else {
      sb[i / 8][i % 8] = b[i];  // [k][n]
    }
  }
  __syncthreads();
  // A: matrices 0..3 are the quadrants top-left, bottom-left, top-right, bottom-right.
  uint32_t fa[4], fb[2];
  ldmatrix_x4(fa, &sa[lane % 8 + 8 * (lane / 8 % 2)][8 * (lane / 16)]);
  if (BNMajor) {
    ldmatrix_x2(fb, &sb[lane % 8][8 * (lane / 8 % 2)]);  // matrix m: k = 8m..8m+7
  } else {
    ldmatrix_x2_trans(fb, &sb[lane % 16][0]);  // matrix m: rows k = 8m..8m+7
  }
  const int g = lane / 4, t = lane % 4;
  float fc[4], fd[4];
  for (int i = 0; i < 4; ++i) fc[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
  mma<BF16>(fd, fa, fb, fc);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = fd[i];
}

// ---- ldmatrix registers lane by lane ----
__global__ void ldmatrix_kernel(const uint16_t* matrices, uint32_t* out) {
  // Row q = 8*matrix + row lives in slot (13 q) % 32 (a permutation); slot 32 is garbage that
  // lanes whose address the instruction ignores point at.
  alignas(16) __shared__ uint16_t rows[33][16];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    const int slot = (i / 8) * 13 % 32;
    rows[slot][i % 8] = matrices[i];
    rows[slot][8 + i % 8] = 0x7777;
  }
  if (lane < 16) rows[32][lane] = uint16_t(0xDEAD ^ lane);
  __syncthreads();
  const void* used[3] = {lane < 8 ? rows[lane * 13 % 32] : rows[32],
                         lane < 16 ? rows[lane * 13 % 32] : rows[32], rows[lane * 13 % 32]};
  uint32_t* o = out + lane * 4;
  uint32_t r[4];
  for (int v = 0; v < kLdmatrixVariants; ++v) {
    r[0] = r[1] = r[2] = r[3] = 0;
    switch (v) {
      case 0:
        ldmatrix_x1(r, used[0]);
        break;
      case 1:
        ldmatrix_x2(r, used[1]);
        break;
      case 2:
        ldmatrix_x4(r, used[2]);
        break;
      case 3:
        ldmatrix_x1_trans(r, used[0]);
        break;
      case 4:
        ldmatrix_x2_trans(r, used[1]);
        break;
      default:
        ldmatrix_x4_trans(r, used[2]);
        break;
    }
    for (int k = 0; k < 4; ++k) o[v * 32 * 4 + k] = r[k];
  }
}

// ---- cp.async with zero fill ----
__global__ void cp_async_kernel(const uint8_t* src, uint8_t* dst) {
  alignas(16) __shared__ uint8_t buf[32 * 16];
  const int lane = threadIdx.x;
  for (int i = lane; i < 32 * 16; i += 32) buf[i] = 0xAB;
  __syncthreads();
  cp_async_16(&buf[16 * lane], src + 16 * lane, lane % 17);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  for (int i = lane; i < 32 * 16; i += 32) dst[i] = buf[i];
}

__global__ void cp_async_early_kernel(const uint8_t* src, uint8_t* early, uint8_t* late) {
  alignas(16) __shared__ uint8_t buf[32 * 16];
  const int lane = threadIdx.x;
  for (int i = 0; i < 16; ++i) buf[16 * lane + i] = 0xAB;
  cp_async_16(&buf[16 * lane], src + 16 * lane);
  cp_async_commit();
  for (int i = 0; i < 16; ++i) early[16 * lane + i] = buf[16 * lane + i];  // no wait: a hazard
  cp_async_wait<0>();
  for (int i = 0; i < 16; ++i) late[16 * lane + i] = buf[16 * lane + i];
}

// ---- tiled tensor-core GEMM: one block of 4 warps (2x2, 16x16 each) walks 32x32 output tiles,
// staging 32-wide k slices of A and B in shared memory with double-buffered cp.async ----
constexpr int kTile = 32;  // BM = BN = BK
constexpr int kPad = 8;    // keeps rows 16-byte aligned (80 bytes) and off a single bank pattern

template <bool BF16, bool BNMajor>
__global__ void __launch_bounds__(128)
    hgemm_kernel(int M, int N, int K, const uint16_t* a, const uint16_t* b, float* c) {
  alignas(16) __shared__ uint16_t sa[2][kTile][kTile + kPad];  // [m][k]
  alignas(16) __shared__ uint16_t sb[2][kTile][kTile + kPad];  // [n][k] or [k][n]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / 2, wn = warp % 2, g = lane / 4, t = lane % 4;
  const int k_tiles = (K + kTile - 1) / kTile;

  // Each thread stages one 16-byte chunk of A and one of B; chunks past the matrix are zero-filled
  // (K and N are multiples of 8, so a chunk is entirely inside or outside).
  auto load = [&](int stage, int row0, int col0, int k0) {
    const int r = tid / 4, chunk = 8 * (tid % 4);
    {
      const int gm = row0 + r, gk = k0 + chunk;
      const bool inside = gm < M && gk < K;
      cp_async_16(&sa[stage][r][chunk], inside ? a + size_t(gm) * K + gk : a, inside ? 16 : 0);
    }
    if (BNMajor) {
      const int gn = col0 + r, gk = k0 + chunk;
      const bool inside = gn < N && gk < K;
      cp_async_16(&sb[stage][r][chunk], inside ? b + size_t(gn) * K + gk : b, inside ? 16 : 0);
    } else {
      const int gk = k0 + r, gn = col0 + chunk;
      const bool inside = gk < K && gn < N;
      cp_async_16(&sb[stage][r][chunk], inside ? b + size_t(gk) * N + gn : b, inside ? 16 : 0);
    }
  };

  for (int row0 = 0; row0 < M; row0 += kTile) {
    for (int col0 = 0; col0 < N; col0 += kTile) {
      float acc[2][4] = {};
      load(0, row0, col0, 0);
      cp_async_commit();
      for (int kt = 0; kt < k_tiles; ++kt) {
        if (kt + 1 < k_tiles) {
          load((kt + 1) % 2, row0, col0, (kt + 1) * kTile);
          cp_async_commit();
          cp_async_wait<1>();  // this k slice has landed, the next may still be in flight
        } else {
          cp_async_wait<0>();
        }
        __syncthreads();
        const int s = kt % 2, m = lane / 8, r = lane % 8;
        for (int kk = 0; kk < kTile; kk += 16) {
          uint32_t fa[4], fb[4];
          ldmatrix_x4(fa, &sa[s][wm * 16 + r + 8 * (m % 2)][kk + 8 * (m / 2)]);
          // fb[0..1]: B fragment of columns wn*16 + 0..7, fb[2..3]: of columns + 8..15.
          if (BNMajor) {
            ldmatrix_x4(fb, &sb[s][wn * 16 + 8 * (m / 2) + r][kk + 8 * (m % 2)]);
          } else {
            ldmatrix_x4_trans(fb, &sb[s][kk + 8 * (m % 2) + r][wn * 16 + 8 * (m / 2)]);
          }
          mma<BF16>(acc[0], fa, &fb[0], acc[0]);
          mma<BF16>(acc[1], fa, &fb[2], acc[1]);
        }
        __syncthreads();  // the stage is overwritten by the load two slices later
      }
      for (int j = 0; j < 2; ++j) {
        for (int i = 0; i < 4; ++i) {
          const int row = row0 + wm * 16 + g + 8 * (i / 2);
          const int col = col0 + wn * 16 + 8 * j + 2 * t + i % 2;
          if (row < M && col < N) c[size_t(row) * N + col] = acc[j][i];
        }
      }
    }
  }
}

// ---- misuse the simulator reports ----
__global__ void ldmatrix_misaligned_kernel(uint32_t* out) {
  alignas(16) __shared__ uint16_t rows[8][16];
  const int lane = threadIdx.x;
  if (lane < 8) {
    for (int i = 0; i < 16; ++i) rows[lane][i] = uint16_t(i);
  }
  __syncthreads();
  uint32_t r[1];
  ldmatrix_x1(r, &rows[lane % 8][1]);  // 2 bytes past a 16-byte boundary
  out[lane] = r[0];
}

__global__ void mma_partial_warp_kernel(float* out) {
  const uint32_t a[4] = {}, b[2] = {};
  const float c[4] = {};
  float d[4];
  if (threadIdx.x < 16) {
    mma<false>(d, a, b, c);
    out[threadIdx.x] = d[0];
  }
}

// ---- wgmma: one warpgroup, operands placed with cuda::wgmma_offset ----
using cuda::WgmmaSwizzle;

struct WgmmaPlacement {
  WgmmaSwizzle swizzle;
  uint32_t lbo, sbo;
  int rows;
  bool mn_major = false;
  // Byte offset of element (row, k) of the whole [rows][16 * ksteps] operand (WgmmaLayout).
  __device__ uint32_t offset(int row, int k) const {
    if (mn_major) {
      // Swizzled, K continues through SBO (8-k-row groups); without swizzle each k step is a
      // block of its own, as in the K-major case.
      if (swizzle == WgmmaSwizzle::B128) return cuda::wgmma_offset_mn(swizzle, row, k, lbo, sbo);
      return uint32_t(k / 16) * uint32_t(rows) * 32 +
             cuda::wgmma_offset_mn(swizzle, row, k % 16, lbo, sbo);
    }
    if (swizzle == WgmmaSwizzle::B128) {
      return uint32_t(k / 64) * uint32_t(rows) * 128 +
             cuda::wgmma_offset(swizzle, row, k % 64, lbo, sbo);
    }
    return uint32_t(k / 16) * uint32_t(rows) * 32 +
           cuda::wgmma_offset(swizzle, row, k % 16, lbo, sbo);
  }
};

__device__ WgmmaPlacement wgmma_placement(int layout, int rows) {
  switch (WgmmaLayout(layout)) {
    case WgmmaLayout::InterleaveMN:
      return {WgmmaSwizzle::None, uint32_t(rows) * 16, 128, rows};
    case WgmmaLayout::InterleaveK:
      return {WgmmaSwizzle::None, 128, 256, rows};
    default:
      return {WgmmaSwizzle::B128, 16, 1024, rows};
  }
}

// An MN-major B ([K][N] in the canonical layouts of cuda::wgmma_offset_mn), same names: no swizzle
// with the core matrices along N adjacent (SBO 128, LBO = N*16) or the two along K adjacent (LBO
// 128, SBO 256, a block per k step), or 128-byte swizzle with 8-k-row groups 1024 bytes apart and
// 64-column blocks of all K k-rows LBO = K*128 apart.
__device__ WgmmaPlacement wgmma_placement_mn(int layout, int rows, int K) {
  switch (WgmmaLayout(layout)) {
    case WgmmaLayout::InterleaveMN:
      return {WgmmaSwizzle::None, uint32_t(rows) * 16, 128, rows, true};
    case WgmmaLayout::InterleaveK:
      return {WgmmaSwizzle::None, 128, 256, rows, true};
    default:
      return {WgmmaSwizzle::B128, uint32_t(K) * 128, 1024, rows, true};
  }
}

template <bool BF16, int N, bool RS, bool BMN>
__global__ void __launch_bounds__(128)
    wgmma_kernel(int layout, int ksteps, int accumulate, const uint16_t* a, const uint16_t* b,
                 const float* c, float* d) {
  // 1024-byte aligned: the 128-byte swizzle is a function of shared addresses.
  alignas(1024) __shared__ uint16_t sa[64 * 128];
  alignas(1024) __shared__ uint16_t sb[8192];
  const int tid = threadIdx.x, K = 16 * ksteps;
  const WgmmaPlacement pa = wgmma_placement(layout, 64);
  const WgmmaPlacement pb = BMN ? wgmma_placement_mn(layout, N, K) : wgmma_placement(layout, N);
  constexpr cuda::WgmmaMajor kB = BMN ? cuda::WgmmaMajor::MN : cuda::WgmmaMajor::K;
  if (!RS) {
    for (int i = tid; i < 64 * K; i += 128) sa[pa.offset(i / K, i % K) / 2] = a[i];
  }
  for (int i = tid; i < N * K; i += 128) sb[pb.offset(i / K, i % K) / 2] = b[i];
  cuda::fence_proxy_async_shared();
  __syncthreads();

  // Thread r of the warpgroup: warp w = r/32, g = lane/4, t = lane%4; accumulator j is
  // D[16w + g + 8*((j/2)%2)][8*(j/4) + 2t + j%2].
  const int w = tid / 32, g = tid % 32 / 4, t = tid % 4;
  auto d_row = [&](int j) { return 16 * w + g + 8 * (j / 2 % 2); };
  auto d_col = [&](int j) { return 8 * (j / 4) + 2 * t + j % 2; };
  float acc[N / 2];
  for (int j = 0; j < N / 2; ++j) acc[j] = accumulate ? c[d_row(j) * N + d_col(j)] : 1.0e4f;
  // RS: every k step's A fragment before the first wgmma (registers a wgmma reads must not change
  // before its wait). Register r of a k step: rows 16w + g + 8*(r%2), columns 16s + 2t + 8*(r/2).
  uint32_t frag[8][4] = {};
  if (RS) {
    for (int s = 0; s < ksteps; ++s) {
      for (int r = 0; r < 4; ++r) {
        const int row = 16 * w + g + 8 * (r % 2), col = 16 * s + 2 * t + 8 * (r / 2);
        frag[s][r] = uint32_t(a[row * K + col]) | uint32_t(a[row * K + col + 1]) << 16;
      }
    }
  }
  const uint64_t desc_a = cuda::make_wgmma_desc(sa, pa.lbo, pa.sbo, pa.swizzle);
  const uint64_t desc_b = cuda::make_wgmma_desc(sb, pb.lbo, pb.sbo, pb.swizzle);
  cuda::wgmma_fence_operand(acc);
  cuda::wgmma_fence();
  for (int s = 0; s < ksteps; ++s) {
    // Step along K the way a kernel does: add the byte offset of (row 0, k = 16s) >> 4.
    const uint64_t da = desc_a + (pa.offset(0, 16 * s) >> 4);
    const uint64_t db = desc_b + (pb.offset(0, 16 * s) >> 4);
    const bool scale_d = accumulate || s > 0;
    if constexpr (RS) {
      if constexpr (BF16) {
        cuda::wgmma_rs_bf16<N, kB>(acc, frag[s], db, scale_d);
      } else {
        cuda::wgmma_rs_f16<N, kB>(acc, frag[s], db, scale_d);
      }
    } else {
      if constexpr (BF16) {
        cuda::wgmma_ss_bf16<N, kB>(acc, da, db, scale_d);
      } else {
        cuda::wgmma_ss_f16<N, kB>(acc, da, db, scale_d);
      }
    }
  }
  cuda::wgmma_commit();
  cuda::wgmma_wait<0>();
  cuda::wgmma_fence_operand(acc);
  for (int j = 0; j < N / 2; ++j) d[d_row(j) * N + d_col(j)] = acc[j];
}

__global__ void wgmma_misuse_kernel(int misuse, const uint16_t* global, float* out) {
  alignas(1024) __shared__ uint16_t tile[64 * 16];
  for (int i = threadIdx.x; i < 64 * 16; i += blockDim.x) tile[i] = 0;
  cuda::fence_proxy_async_shared();
  __syncthreads();
  uint64_t desc = 0;
  switch (WgmmaMisuse(misuse)) {
    case WgmmaMisuse::MisalignedPointer:
      desc = cuda::make_wgmma_desc(tile + 4, 128, 256, WgmmaSwizzle::None);  // 8 bytes in
      break;
    case WgmmaMisuse::GlobalPointer:
      desc = cuda::make_wgmma_desc(global, 128, 256, WgmmaSwizzle::None);
      break;
    case WgmmaMisuse::RawDescriptor:
      desc = cuda::wgmma_desc_bits(0, 128, 256, WgmmaSwizzle::None);
      break;
    case WgmmaMisuse::Swizzle64:
      desc = cuda::make_wgmma_desc(tile, 16, 1024, WgmmaSwizzle::B128);
      desc = (desc & ~(uint64_t(3) << 62)) | uint64_t(2) << 62;
      break;
    case WgmmaMisuse::BlockOf96:
      desc = cuda::make_wgmma_desc(tile, 128, 256, WgmmaSwizzle::None);
      break;
    case WgmmaMisuse::PartialWarpgroup:
      desc = cuda::make_wgmma_desc(tile, 128, 256, WgmmaSwizzle::None);
      if (threadIdx.x >= 64) return;
      break;
    default:
      desc = cuda::make_wgmma_desc(tile, 128, 256, WgmmaSwizzle::None);
      break;
  }
  float acc[32] = {};
  uint32_t frag[4] = {0x3F803F80u, 0x3F803F80u, 0x3F803F80u, 0x3F803F80u};  // bf16 ones
  cuda::wgmma_fence();
  if (WgmmaMisuse(misuse) == WgmmaMisuse::WriteRegistersEarly) {
    cuda::wgmma_rs_bf16<64>(acc, frag, desc, false);
  } else {
    cuda::wgmma_ss_bf16<64>(acc, desc, desc, false);
  }
  switch (WgmmaMisuse(misuse)) {
    case WgmmaMisuse::OverwriteOperand:
      tile[threadIdx.x * 8] = 0x3F80;  // every thread: some row of A (and B) it reads
      break;
    case WgmmaMisuse::WriteAccumulatorEarly:
      acc[0] *= 2.0f;
      break;
    case WgmmaMisuse::WriteRegistersEarly:
      frag[1] = 0;
      break;
    case WgmmaMisuse::WaitWithoutCommit:
      cuda::wgmma_wait<0>();
      break;
    case WgmmaMisuse::ExitInFlight:
      cuda::wgmma_commit();
      return;
    case WgmmaMisuse::ReadAccumulatorEarly:
      out[128 + threadIdx.x] = acc[0];
      break;
    default:
      break;
  }
  cuda::wgmma_commit();
  cuda::wgmma_wait<0>();
  out[threadIdx.x] = acc[0];
}

__global__ void wgmma_order_kernel(int misuse, const uint16_t* global, float* out) {
  using M = WgmmaOrderMisuse;
  const auto m = WgmmaOrderMisuse(misuse);
  LATHE_DYNAMIC_SHARED(uint16_t, tile);  // 64 x 16, no swizzle: 8 x 8 cores, LBO 128, SBO 256
  if (m == M::ProxyFenceBeforeStores) cuda::fence_proxy_async_shared();
  if (m == M::CpAsyncWithoutProxyFence) {
    for (int i = int(threadIdx.x) * 8; i < 64 * 16; i += int(blockDim.x) * 8) {
      cuda::cp_async_16(tile + i, global + i);
    }
    cuda::cp_async_wait_all();
  } else {
    for (int i = int(threadIdx.x); i < 64 * 16; i += int(blockDim.x)) tile[i] = 0x3F80;  // 1.0
  }
  if (m != M::MissingProxyFence && m != M::ProxyFenceBeforeStores &&
      m != M::CpAsyncWithoutProxyFence) {
    cuda::fence_proxy_async_shared();
  }
  __syncthreads();
  const uint64_t desc = cuda::make_wgmma_desc(tile, 128, 256, WgmmaSwizzle::None);
  float acc[32] = {};
  uint32_t frag[4] = {0x3F803F80u, 0x3F803F80u, 0x3F803F80u, 0x3F803F80u};  // bf16 ones
  for (int product = 0; product < 2; ++product) {
    if (product == 0) {
      if (m != M::NoWgmmaFence) cuda::wgmma_fence();
    } else {
      if (m == M::AccumulatorAfterWgmmaFence) cuda::wgmma_fence();
      acc[0] *= 2.0f;  // after the second product's fence in AccumulatorAfterWgmmaFence
      if (m == M::Correct || m == M::FragmentAfterWgmmaFence) cuda::wgmma_fence();
      frag[1] = 0x3F803F80u;                                       // the same value: no change
      if (m == M::FragmentAfterWgmmaFence) frag[2] = 0x40003F80u;  // after the fence
    }
    if (m == M::FragmentAfterWgmmaFence) {
      cuda::wgmma_rs_bf16<64>(acc, frag, desc, product > 0);
    } else {
      cuda::wgmma_ss_bf16<64>(acc, desc, desc, product > 0);
    }
    cuda::wgmma_commit();
    cuda::wgmma_wait<0>();
    cuda::wgmma_fence_operand(acc);
  }
  out[threadIdx.x] = acc[0];
  out[128 + threadIdx.x] = acc[1];
}

// ---- sm_90 pipelines ----
using cuda::mbarrier_arrive;
using cuda::mbarrier_arrive_expect_tx;
using cuda::mbarrier_init;
using cuda::mbarrier_wait_parity;

__host__ __device__ uint32_t phase_value(int producer, int round) {
  return uint32_t(producer * 7919 + round * 104729) % 65536u;
}

__global__ void __launch_bounds__(128) mbarrier_phases_kernel(int rounds, uint32_t* out) {
  __shared__ uint32_t slots[96];
  alignas(8) __shared__ uint64_t full;
  alignas(8) __shared__ uint64_t empty;
  const int tid = threadIdx.x;
  if (tid == 0) {
    mbarrier_init(&full, 96);
    mbarrier_init(&empty, 32);
    cuda::fence_mbarrier_init();
  }
  __syncthreads();
  if (tid >= 32) {
    for (int r = 0; r < rounds; ++r) {
      if (r > 0) mbarrier_wait_parity(&empty, (r - 1) & 1);  // warp 0 has read round r - 1
      slots[tid - 32] = phase_value(tid - 32, r);
      mbarrier_arrive(&full);
    }
  } else {
    for (int r = 0; r < rounds; ++r) {
      mbarrier_wait_parity(&full, r & 1);
      uint32_t sum = 0;
      for (int i = 0; i < 96; ++i) sum += slots[i];
      const bool this_phase = cuda::mbarrier_try_wait_parity(&full, r & 1);
      const bool next_phase = cuda::mbarrier_try_wait_parity(&full, (r + 1) & 1);
      if (tid == 0) {
        out[4 * r] = sum;
        out[4 * r + 1] = this_phase;
        out[4 * r + 2] = next_phase;
      }
      if (tid == 31) out[4 * r + 3] = sum;
      mbarrier_arrive(&empty);
    }
  }
  __syncthreads();
  if (tid == 0) {
    cuda::mbarrier_inval(&full);
    cuda::mbarrier_inval(&empty);
  }
}

constexpr int kRingStages = 3;
constexpr int kRingBoxElements = 64 * 64;
// FlashAttention-3's split of a 384-thread block's 64K registers: 128 * 40 + 256 * 232 <= 65536.
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;

struct TmaPipelineParams {
  int rank, stages;
  int grid[3];  // boxes along each dimension
  int box[3];
  int origin[3];
  int swizzle128;
};

__global__ void __launch_bounds__(384, 1)
    tma_pipeline_kernel(const __grid_constant__ cuda::TensorMap param_map,
                        const cuda::TensorMap* global_map, TmaPipelineParams p, uint16_t* out) {
  // One 1024-byte aligned box per stage (8 KiB, so every stage keeps the swizzle phase).
  alignas(1024) __shared__ uint16_t ring[kRingStages][kRingBoxElements];
  alignas(8) __shared__ uint64_t full[kRingStages];
  alignas(8) __shared__ uint64_t empty[kRingStages];
  const int tid = threadIdx.x, warpgroup = tid / 128;
  const int box_elements = p.box[0] * p.box[1] * p.box[2];
  const int boxes = p.grid[0] * p.grid[1] * p.grid[2];
  if (tid == 0) {
    for (int s = 0; s < p.stages; ++s) {
      mbarrier_init(&full[s], 1);     // the producer's arrive.expect_tx, then the copy's bytes
      mbarrier_init(&empty[s], 256);  // every consumer thread
    }
    cuda::fence_mbarrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    cuda::setmaxnreg_dec<kProducerRegisters>();
    if (tid == 0) {
      const cuda::TensorMap* map = global_map ? global_map : &param_map;
      cuda::prefetch_tensor_map(map);
      for (int t = 0; t < boxes; ++t) {
        const int s = t % p.stages, use = t / p.stages;
        if (use > 0) mbarrier_wait_parity(&empty[s], (use - 1) & 1);  // box t - stages consumed
        mbarrier_arrive_expect_tx(&full[s], uint32_t(box_elements) * 2);
        const int x = p.origin[0] + t % p.grid[0] * p.box[0];
        const int y = p.origin[1] + t / p.grid[0] % p.grid[1] * p.box[1];
        const int z = p.origin[2] + t / (p.grid[0] * p.grid[1]) * p.box[2];
        if (p.rank == 2) {
          cuda::tma_load_2d(ring[s], map, x, y, &full[s]);
        } else {
          cuda::tma_load_3d(ring[s], map, x, y, z, &full[s]);
        }
      }
    }
    return;
  }

  cuda::setmaxnreg_inc<kConsumerRegisters>();
  const int consumer = warpgroup - 1, rank = tid % 128;
  const int width = p.box[0], rows = p.box[1] * p.box[2];
  const int my_rows = (rows - consumer + 1) / 2;
  for (int t = 0; t < boxes; ++t) {
    const int s = t % p.stages;
    mbarrier_wait_parity(&full[s], (t / p.stages) & 1);
    for (int i = rank; i < my_rows * width; i += 128) {
      const int row = 2 * (i / width) + consumer, x = i % width;
      const uint32_t offset = p.swizzle128
                                  ? cuda::wgmma_offset(WgmmaSwizzle::B128, row, x, 16, 1024)
                                  : uint32_t(row * width + x) * 2;
      out[size_t(t) * box_elements + size_t(row) * width + x] = ring[s][offset / 2];
    }
    mbarrier_arrive(&empty[s]);
  }
}

template <bool BF16, bool BMN>
__global__ void __launch_bounds__(128)
    tma_wgmma_kernel(const __grid_constant__ cuda::TensorMap map_a,
                     const __grid_constant__ cuda::TensorMap map_b, const float* c, float* d) {
  alignas(1024) __shared__ uint16_t sa[64 * 64];
  alignas(1024) __shared__ uint16_t sb[64 * 64];
  alignas(8) __shared__ uint64_t bar;
  const int tid = threadIdx.x;
  if (tid == 0) {
    mbarrier_init(&bar, 1);
    cuda::fence_mbarrier_init();
  }
  __syncthreads();
  if (tid == 0) {
    // The phase expects both tiles' bytes: B's without an arrival, then A's with the one arrival.
    cuda::mbarrier_expect_tx(&bar, 64 * 64 * 2);
    cuda::tma_load_2d(sb, &map_b, 0, 0, &bar);
    mbarrier_arrive_expect_tx(&bar, 64 * 64 * 2);
    cuda::tma_load_2d(sa, &map_a, 0, 0, &bar);
  }
  mbarrier_wait_parity(&bar, 0);

  const int w = tid / 32, g = tid % 32 / 4, t = tid % 4;
  auto d_row = [&](int j) { return 16 * w + g + 8 * (j / 2 % 2); };
  auto d_col = [&](int j) { return 8 * (j / 4) + 2 * t + j % 2; };
  float acc[32];
  for (int j = 0; j < 32; ++j) acc[j] = c[d_row(j) * 64 + d_col(j)];
  // A and a K-major B: 64 rows of 128 bytes (64 k), a k16 step 32 bytes along the row. An
  // MN-major B: 64 k-rows of 128 bytes (64 n), a k16 step 16 rows (2048 bytes); its LBO (the next
  // 64 columns) is unused at N = 64.
  const uint64_t desc_a = cuda::make_wgmma_desc(sa, 16, 1024, WgmmaSwizzle::B128);
  const uint64_t desc_b = cuda::make_wgmma_desc(sb, BMN ? 8192 : 16, 1024, WgmmaSwizzle::B128);
  constexpr cuda::WgmmaMajor kB = BMN ? cuda::WgmmaMajor::MN : cuda::WgmmaMajor::K;
  cuda::wgmma_fence_operand(acc);
  cuda::wgmma_fence();
  for (int s = 0; s < 4; ++s) {
    const uint64_t da = desc_a + uint64_t(32 * s >> 4);
    const uint64_t db = desc_b + uint64_t((BMN ? 2048 * s : 32 * s) >> 4);
    if constexpr (BF16) {
      cuda::wgmma_ss_bf16<64, kB>(acc, da, db, true);
    } else {
      cuda::wgmma_ss_f16<64, kB>(acc, da, db, true);
    }
  }
  cuda::wgmma_commit();
  cuda::wgmma_wait<0>();
  cuda::wgmma_fence_operand(acc);
  for (int j = 0; j < 32; ++j) d[d_row(j) * 64 + d_col(j)] = acc[j];
}

__global__ void __launch_bounds__(256)
    pingpong_kernel(int rounds, uint32_t* acc_out, int32_t* turns) {
  __shared__ uint32_t acc[128];
  __shared__ int next_turn;
  const int tid = threadIdx.x, warpgroup = tid / 128, rank = tid % 128;
  if (tid < 128) acc[tid] = uint32_t(tid);
  if (tid == 0) next_turn = 0;
  __syncthreads();
  // Barrier 1 + g opens warpgroup g's turn: its 128 threads wait there (bar.sync) until the other
  // warpgroup's 128 arrive (bar.arrive) at the end of its own turn. Warpgroup 0 goes first.
  if (warpgroup == 1) cuda::named_barrier_arrive(1, 256);
  for (int r = 0; r < rounds; ++r) {
    cuda::named_barrier_sync(1 + warpgroup, 256);
    acc[rank] = acc[rank] * 3u + uint32_t(warpgroup + 1 + r);
    if (rank == 0) turns[next_turn++] = warpgroup;
    const bool last = warpgroup == 1 && r == rounds - 1;
    if (!last) cuda::named_barrier_arrive(2 - warpgroup, 256);
  }
  __syncthreads();
  if (tid < 128) acc_out[tid] = acc[tid];
}

__global__ void __launch_bounds__(128)
    tma_read_kernel(const __grid_constant__ cuda::TensorMap map, int skip_wait, uint16_t* out) {
  alignas(1024) __shared__ uint16_t tile[64 * 64];
  alignas(8) __shared__ uint64_t bar;
  const int tid = threadIdx.x;
  for (int i = tid; i < 64 * 64; i += 128) tile[i] = 0xDEAD;
  if (tid == 0) {
    mbarrier_init(&bar, 1);
    cuda::fence_mbarrier_init();
  }
  cuda::fence_proxy_async_shared();  // the fill above is ordered before the copy's writes
  __syncthreads();
  if (tid == 0) {
    mbarrier_arrive_expect_tx(&bar, 64 * 64 * 2);
    cuda::tma_load_2d(tile, &map, 0, 0, &bar);
  }
  __syncthreads();  // the copy has been issued before anyone reads
  if (!skip_wait) mbarrier_wait_parity(&bar, 0);
  for (int i = tid; i < 64 * 64; i += 128) out[i] = tile[i];
  if (skip_wait) {
    // The planted bug: nobody waited before reading. The wait (after every thread has read) only
    // lets the block end without a copy in flight.
    __syncthreads();
    mbarrier_wait_parity(&bar, 0);
  }
}

// Launch bounds with a block count: ptxas ignores setmaxnreg (C7508) unless they fix the register
// count at entry.
__global__ void __launch_bounds__(128, 1)
    pipeline_misuse_kernel(const __grid_constant__ cuda::TensorMap map, int misuse, uint16_t* out) {
  alignas(1024) __shared__ uint16_t tile[2 * 64 * 64];
  alignas(8) __shared__ uint64_t bar[2];
  const int tid = threadIdx.x;
  switch (PipelineMisuse(misuse)) {
    case PipelineMisuse::WaitWithoutInit:
      mbarrier_wait_parity(&bar[1], 0);
      break;
    case PipelineMisuse::BarrierOverwritten:
      if (tid == 0) mbarrier_init(&bar[0], 1);
      __syncthreads();
      if (tid == 1) reinterpret_cast<uint32_t*>(&bar[0])[1] = 0;
      __syncthreads();
      if (tid == 0) mbarrier_arrive(&bar[0]);
      break;
    case PipelineMisuse::MissingExpectTx:
      if (tid == 0) {
        mbarrier_init(&bar[0], 1);
        cuda::fence_mbarrier_init();
        cuda::tma_load_2d(tile, &map, 0, 0, &bar[0]);
        mbarrier_arrive(&bar[0]);
      }
      break;
    case PipelineMisuse::NeverWaited:
      if (tid == 0) {
        mbarrier_init(&bar[0], 1);
        cuda::fence_mbarrier_init();
        mbarrier_arrive_expect_tx(&bar[0], 64 * 64 * 2);
        cuda::tma_load_2d(tile, &map, 0, 0, &bar[0]);
      }
      break;
    case PipelineMisuse::NeverCompletes:
      if (tid == 0) mbarrier_init(&bar[0], 2);
      __syncthreads();
      if (tid == 0) mbarrier_arrive(&bar[0]);
      mbarrier_wait_parity(&bar[0], 0);
      break;
    case PipelineMisuse::PollsForever:
      if (tid == 0) {
        mbarrier_init(&bar[0], 1);
        while (!cuda::mbarrier_try_wait_parity(&bar[0], 0)) {
        }
      }
      break;
    case PipelineMisuse::MisalignedSwizzleDst:
      if (tid == 0) {
        mbarrier_init(&bar[0], 1);
        cuda::fence_mbarrier_init();
        mbarrier_arrive_expect_tx(&bar[0], 64 * 64 * 2);
        cuda::tma_load_2d(tile + 64, &map, 0, 0, &bar[0]);  // 128 bytes in
      }
      break;
    case PipelineMisuse::InitNotFenced:
      if (tid == 0) mbarrier_init(&bar[0], 1);  // fence.mbarrier_init missing here
      __syncthreads();
      if (tid == 0) {
        mbarrier_arrive_expect_tx(&bar[0], 64 * 64 * 2);
        cuda::tma_load_2d(tile, &map, 0, 0, &bar[0]);
      }
      mbarrier_wait_parity(&bar[0], 0);
      break;
    case PipelineMisuse::InitFencedByAnotherThread:
      if (tid == 0) mbarrier_init(&bar[0], 1);
      __syncthreads();
      if (tid == 32) {
        cuda::fence_mbarrier_init();  // orders this thread's inits (none), not thread 0's
        mbarrier_arrive_expect_tx(&bar[0], 64 * 64 * 2);
        cuda::tma_load_2d(tile, &map, 0, 0, &bar[0]);
      }
      mbarrier_wait_parity(&bar[0], 0);
      break;
    case PipelineMisuse::NamedBarrierCount:
      cuda::named_barrier_sync(1, 100);
      break;
    case PipelineMisuse::NamedBarrierMismatch:
      if (tid < 32) cuda::named_barrier_sync(3, 64);
      if (tid >= 32 && tid < 64) cuda::named_barrier_sync(3, 96);
      break;
    case PipelineMisuse::SetmaxnregPartial:
      if (tid < 64) cuda::setmaxnreg_dec<40>();
      break;
    case PipelineMisuse::StoresBeforeTma:
      if (tid == 0) {
        mbarrier_init(&bar[0], 1);
        cuda::fence_mbarrier_init();
      }
      __syncthreads();
      for (int round = 0; round < 2; ++round) {
        if (round == 1) {
          tile[tid] = 0x7777;  // after the first copy landed; fence.proxy.async missing here
          __syncthreads();
        }
        if (tid == 0) {
          mbarrier_arrive_expect_tx(&bar[0], 64 * 64 * 2);
          cuda::tma_load_2d(tile, &map, 0, 0, &bar[0]);
        }
        mbarrier_wait_parity(&bar[0], uint32_t(round));
        __syncthreads();
      }
      break;
  }
  out[tid] = tile[tid];
}

// ---- host references for self_check ----
struct Lcg {
  uint64_t state;
  float uniform() {  // in [-1, 1)
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return float(state >> 40) / float(1 << 23) - 1.0f;
  }
};

uint16_t to_bits(Elem e, float v) {
  return e == Elem::F16 ? Half::from_float(v) : BFloat16::from_float(v);
}
double to_double(Elem e, uint16_t bits) {
  return e == Elem::F16 ? double(Half::to_float(bits))
                        : double(detail::bits_float(uint32_t(bits) << 16));
}

std::vector<uint16_t> random_matrix(Elem e, size_t n, uint64_t seed) {
  Lcg rng{seed};
  std::vector<uint16_t> m(n);
  for (auto& v : m) v = to_bits(e, rng.uniform());
  return m;
}

const char* elem_name(Elem e) {
  return e == Elem::F16 ? "f16" : "bf16";
}

}  // namespace

void mma_tile(Elem elem, bool b_n_major, const uint16_t* a, const uint16_t* b, const float* c,
              float* d) {
  DeviceArray<uint16_t> da(a, 256), db(b, 128);
  DeviceArray<float> dc(c, 128), dd(nullptr, 128);
  auto run = [&](auto kernel) {
    cuda::launch(kernel, dim3(1), dim3(32), 0, nullptr, "mma_tile", da.get(), db.get(), dc.get(),
                 dd.get());
  };
  if (elem == Elem::F16) {
    b_n_major ? run(mma_tile_kernel<false, true>) : run(mma_tile_kernel<false, false>);
  } else {
    b_n_major ? run(mma_tile_kernel<true, true>) : run(mma_tile_kernel<true, false>);
  }
  dd.to_host(d);
}

void ldmatrix_fragments(const uint16_t* matrices, uint32_t* out) {
  DeviceArray<uint16_t> dm(matrices, 256);
  DeviceArray<uint32_t> dout(nullptr, kLdmatrixVariants * 32 * 4);
  cuda::launch(ldmatrix_kernel, dim3(1), dim3(32), 0, nullptr, "ldmatrix_fragments", dm.get(),
               dout.get());
  dout.to_host(out);
}

void cp_async_zero_fill(const uint8_t* src, uint8_t* dst) {
  DeviceArray<uint8_t> dsrc(src, 512), ddst(nullptr, 512);
  cuda::launch(cp_async_kernel, dim3(1), dim3(32), 0, nullptr, "cp_async_zero_fill", dsrc.get(),
               ddst.get());
  ddst.to_host(dst);
}

void cp_async_read_early(const uint8_t* src, uint8_t* early, uint8_t* late) {
  DeviceArray<uint8_t> dsrc(src, 512), dearly(nullptr, 512), dlate(nullptr, 512);
  cuda::launch(cp_async_early_kernel, dim3(1), dim3(32), 0, nullptr, "cp_async_read_early",
               dsrc.get(), dearly.get(), dlate.get());
  dearly.to_host(early);
  dlate.to_host(late);
}

void hgemm(Elem elem, bool b_n_major, int M, int N, int K, const uint16_t* a, const uint16_t* b,
           float* c) {
  LATHE_CHECK(M >= 1 && N >= 8 && K >= 8 && N % 8 == 0 && K % 8 == 0,
              "ptx_tests::hgemm: N and K must be positive multiples of 8, got M=", M, " N=", N,
              " K=", K);
  DeviceArray<uint16_t> da(a, size_t(M) * K), db(b, size_t(K) * N);
  DeviceArray<float> dc(nullptr, size_t(M) * N);
  auto run = [&](auto kernel) {
    cuda::launch(kernel, dim3(1), dim3(128), 0, nullptr, "hgemm", M, N, K, da.get(), db.get(),
                 dc.get());
  };
  if (elem == Elem::F16) {
    b_n_major ? run(hgemm_kernel<false, true>) : run(hgemm_kernel<false, false>);
  } else {
    b_n_major ? run(hgemm_kernel<true, true>) : run(hgemm_kernel<true, false>);
  }
  dc.to_host(c);
}

void ldmatrix_misaligned() {
  DeviceArray<uint32_t> out(nullptr, 32);
  cuda::launch(ldmatrix_misaligned_kernel, dim3(1), dim3(32), 0, nullptr, "ldmatrix_misaligned",
               out.get());
}

void mma_partial_warp() {
  DeviceArray<float> out(nullptr, 32);
  cuda::launch(mma_partial_warp_kernel, dim3(1), dim3(32), 0, nullptr, "mma_partial_warp",
               out.get());
}

const char* wgmma_layout_name(WgmmaLayout layout) {
  switch (layout) {
    case WgmmaLayout::InterleaveMN:
      return "no swizzle, SBO 128";
    case WgmmaLayout::InterleaveK:
      return "no swizzle, LBO 128";
    default:
      return "128B swizzle";
  }
}

uint64_t wgmma_desc_bits(uint32_t smem_address, uint32_t lbo, uint32_t sbo, bool swizzle128) {
  return cuda::wgmma_desc_bits(smem_address, lbo, sbo,
                               swizzle128 ? WgmmaSwizzle::B128 : WgmmaSwizzle::None);
}
uint32_t wgmma_layout_offset(bool swizzle128, int row, int k, uint32_t lbo, uint32_t sbo) {
  return cuda::wgmma_offset(swizzle128 ? WgmmaSwizzle::B128 : WgmmaSwizzle::None, row, k, lbo, sbo);
}
uint32_t wgmma_layout_offset_mn(bool swizzle128, int n, int k, uint32_t lbo, uint32_t sbo) {
  return cuda::wgmma_offset_mn(swizzle128 ? WgmmaSwizzle::B128 : WgmmaSwizzle::None, n, k, lbo,
                               sbo);
}

bool wgmma_supported() {
#ifdef __CUDACC__
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return false;
  }
  return major == 9;
#else
  return true;
#endif
}

void wgmma_tile(Elem elem, bool rs, int n, WgmmaLayout layout, int ksteps, bool accumulate,
                const uint16_t* a, const uint16_t* b, const float* c, float* d, bool b_mn_major) {
  const int K = 16 * ksteps;
  // The kernel's shared tiles hold 8192 elements each; a K-major swizzled block is 64 columns
  // wide however few of them are used (an MN-major one is 64 wide along N, which n fills).
  const int k_footprint = layout == WgmmaLayout::Swizzle128 ? (K + 63) / 64 * 64 : K;
  LATHE_CHECK((n == 64 || n == 128 || n == 256) && ksteps >= 1 && ksteps <= 8 &&
                  n * (b_mn_major ? K : k_footprint) <= 8192,
              "ptx_tests::wgmma_tile: n = ", n, ", ksteps = ", ksteps,
              " (n is 64, 128 or 256; 1 <= ksteps <= 8 and n * K <= 8192, K rounded up to 64 "
              "with a K-major 128-byte swizzled B)");
  DeviceArray<uint16_t> da(a, size_t(64) * K), db(b, size_t(n) * K);
  DeviceArray<float> dc(accumulate ? c : nullptr, size_t(64) * n), dd(nullptr, size_t(64) * n);
  auto run = [&](auto kernel) {
    cuda::launch(kernel, dim3(1), dim3(128), 0, nullptr, "wgmma_tile", int(layout), ksteps,
                 int(accumulate), da.get(), db.get(), dc.get(), dd.get());
  };
  auto by_major = [&](auto bf16, auto is_rs, auto n_value) {
    constexpr bool kBF16 = decltype(bf16)::value, kRS = decltype(is_rs)::value;
    constexpr int kN = decltype(n_value)::value;
    b_mn_major ? run(wgmma_kernel<kBF16, kN, kRS, true>) : run(wgmma_kernel<kBF16, kN, kRS, false>);
  };
  auto by_n = [&](auto bf16, auto is_rs) {
    if (n == 64) {
      by_major(bf16, is_rs, std::integral_constant<int, 64>{});
    } else if (n == 128) {
      by_major(bf16, is_rs, std::integral_constant<int, 128>{});
    } else {
      by_major(bf16, is_rs, std::integral_constant<int, 256>{});
    }
  };
  using F = std::false_type;
  using T = std::true_type;
  if (elem == Elem::F16) {
    rs ? by_n(F{}, T{}) : by_n(F{}, F{});
  } else {
    rs ? by_n(T{}, T{}) : by_n(T{}, F{});
  }
  dd.to_host(d);
}

std::vector<float> wgmma_misuse(WgmmaMisuse misuse) {
  DeviceArray<uint16_t> global(nullptr, 64 * 16);
  DeviceArray<float> out(nullptr, 256);
  cuda::launch(wgmma_misuse_kernel, dim3(1), dim3(misuse == WgmmaMisuse::BlockOf96 ? 96 : 128), 0,
               nullptr, "wgmma_misuse", int(misuse), global.get(), out.get());
  std::vector<float> host(256);
  out.to_host(host.data());
  return host;
}

std::vector<float> wgmma_order(WgmmaOrderMisuse misuse) {
  const std::vector<uint16_t> ones(64 * 16, 0x3F80);
  DeviceArray<uint16_t> global(ones.data(), ones.size());
  DeviceArray<float> out(nullptr, 256);
  cuda::launch(wgmma_order_kernel, dim3(1), dim3(128), 64 * 16 * sizeof(uint16_t), nullptr,
               "wgmma_order", int(misuse), global.get(), out.get());
  std::vector<float> host(256);
  out.to_host(host.data());
  return host;
}

bool tma_supported() {
  return wgmma_supported();
}

uint32_t mbarrier_phase_value(int producer, int round) {
  return phase_value(producer, round);
}

void mbarrier_phases(int rounds, uint32_t* out) {
  LATHE_CHECK(rounds >= 1, "ptx_tests::mbarrier_phases: rounds = ", rounds);
  DeviceArray<uint32_t> dout(nullptr, size_t(4) * rounds);
  cuda::launch(mbarrier_phases_kernel, dim3(1), dim3(128), 0, nullptr, "mbarrier_phases", rounds,
               dout.get());
  dout.to_host(out);
}

int tma_box_grid(const TmaCopyCase& c, int d) {
  const int64_t span = int64_t(c.sizes[d]) - c.origin[d];
  return int((span + c.box[d] - 1) / c.box[d]);
}

int tma_box_count(const TmaCopyCase& c) {
  return tma_box_grid(c, 0) * tma_box_grid(c, 1) * tma_box_grid(c, 2);
}

void tma_copy(const TmaCopyCase& c, const uint16_t* src, uint16_t* boxes) {
  const uint32_t box_elements = c.box[0] * c.box[1] * c.box[2];
  LATHE_CHECK((c.rank == 2 || c.rank == 3) && (c.stages == 2 || c.stages == 3) &&
                  box_elements <= uint32_t(kRingBoxElements) && c.pitch >= c.sizes[0] &&
                  (c.rank == 3 || (c.sizes[2] == 1 && c.box[2] == 1 && c.origin[2] == 0)),
              "ptx_tests::tma_copy: unsupported case");
  for (int d = 0; d < 3; ++d) {
    LATHE_CHECK(int64_t(c.sizes[d]) > c.origin[d], "ptx_tests::tma_copy: origin past the end");
  }
  const size_t elements = size_t(c.pitch * c.sizes[1] * c.sizes[2]);
  DeviceArray<uint16_t> dsrc(src, elements);
  const auto swizzle = c.swizzle128 ? cuda::TensorMapSwizzle::B128 : cuda::TensorMapSwizzle::None;
  const cuda::TensorMap map =
      c.rank == 2
          ? cuda::make_tensor_map_2d(DType::BF16, dsrc.get(), {c.sizes[0], c.sizes[1]}, c.pitch * 2,
                                     {c.box[0], c.box[1]}, swizzle)
          : cuda::make_tensor_map_3d(DType::BF16, dsrc.get(), {c.sizes[0], c.sizes[1], c.sizes[2]},
                                     {c.pitch * 2, c.pitch * c.sizes[1] * 2},
                                     {c.box[0], c.box[1], c.box[2]}, swizzle);
  DeviceArray<cuda::TensorMap> dmap(&map, 1);
  TmaPipelineParams p{};
  p.rank = c.rank;
  p.stages = c.stages;
  for (int d = 0; d < 3; ++d) {
    p.grid[d] = tma_box_grid(c, d);
    p.box[d] = int(c.box[d]);
    p.origin[d] = c.origin[d];
  }
  p.swizzle128 = c.swizzle128;
  const size_t out_elements = size_t(tma_box_count(c)) * box_elements;
  DeviceArray<uint16_t> dout(nullptr, out_elements);
  cuda::launch(tma_pipeline_kernel, dim3(1), dim3(384), 0, nullptr, "tma_pipeline", map,
               c.map_in_global ? dmap.get() : nullptr, p, dout.get());
  dout.to_host(boxes);
}

void tma_wgmma(Elem elem, bool b_mn_major, const uint16_t* a, const uint16_t* b, const float* c,
               float* d) {
  std::vector<uint16_t> b_upload(b, b + 64 * 64);
  if (b_mn_major) {
    for (int n = 0; n < 64; ++n) {
      for (int k = 0; k < 64; ++k) b_upload[size_t(k * 64 + n)] = b[n * 64 + k];
    }
  }
  DeviceArray<uint16_t> da(a, 64 * 64), db(b_upload.data(), 64 * 64);
  DeviceArray<float> dc(c, 64 * 64), dd(nullptr, 64 * 64);
  const DType dtype = elem == Elem::F16 ? DType::F16 : DType::BF16;
  const auto map_a = cuda::make_tensor_map_2d(dtype, da.get(), {64, 64}, 128, {64, 64},
                                              cuda::TensorMapSwizzle::B128);
  const auto map_b = cuda::make_tensor_map_2d(dtype, db.get(), {64, 64}, 128, {64, 64},
                                              cuda::TensorMapSwizzle::B128);
  auto run = [&](auto kernel) {
    cuda::launch(kernel, dim3(1), dim3(128), 0, nullptr, "tma_wgmma", map_a, map_b, dc.get(),
                 dd.get());
  };
  if (elem == Elem::F16) {
    b_mn_major ? run(tma_wgmma_kernel<false, true>) : run(tma_wgmma_kernel<false, false>);
  } else {
    b_mn_major ? run(tma_wgmma_kernel<true, true>) : run(tma_wgmma_kernel<true, false>);
  }
  dd.to_host(d);
}

void named_barrier_pingpong(int rounds, uint32_t* acc, int32_t* turns) {
  LATHE_CHECK(rounds >= 1, "ptx_tests::named_barrier_pingpong: rounds = ", rounds);
  DeviceArray<uint32_t> dacc(nullptr, 128);
  DeviceArray<int32_t> dturns(nullptr, size_t(2) * rounds);
  cuda::launch(pingpong_kernel, dim3(1), dim3(256), 0, nullptr, "named_barrier_pingpong", rounds,
               dacc.get(), dturns.get());
  dacc.to_host(acc);
  dturns.to_host(turns);
}

void tma_read(bool skip_wait, const uint16_t* src, uint16_t* out) {
  DeviceArray<uint16_t> dsrc(src, 64 * 64), dout(nullptr, 64 * 64);
  const auto map = cuda::make_tensor_map_2d(DType::BF16, dsrc.get(), {64, 64}, 128, {64, 64});
  cuda::launch(tma_read_kernel, dim3(1), dim3(128), 0, nullptr, "tma_read", map, int(skip_wait),
               dout.get());
  dout.to_host(out);
}

void pipeline_misuse(PipelineMisuse misuse) {
  DeviceArray<uint16_t> src(nullptr, 64 * 64), out(nullptr, 128);
  const auto map = cuda::make_tensor_map_2d(DType::BF16, src.get(), {64, 64}, 128, {64, 64},
                                            cuda::TensorMapSwizzle::B128);
  cuda::launch(pipeline_misuse_kernel, dim3(1), dim3(128), 0, nullptr, "pipeline_misuse", map,
               int(misuse), out.get());
}

int self_check(std::string* report) {
  std::ostringstream log;
  int failures = 0;
  // LATHE_SELF_CHECK_ECHO=1 (scripts/gpu-check.sh) also prints each line as it is decided: a check
  // that hangs the GPU then still leaves the lines before it in the log.
  const char* echo_env = std::getenv("LATHE_SELF_CHECK_ECHO");
  const bool echo = echo_env != nullptr && std::string(echo_env) == "1";
  auto record = [&](bool ok, const std::string& what) {
    failures += ok ? 0 : 1;
    log << (ok ? "ok   " : "FAIL ") << what << "\n";
    if (echo) std::fprintf(stderr, "self-check: %s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  };
  // Error of a computed product against an f64 reference, relative to sum_k |a_ik b_kj| + |c_ij|:
  // the error bound of a sum in f32 scales with it.
  auto product_check = [&](const std::string& what, Elem e, bool b_n_major, int M, int N, int K,
                           const std::vector<uint16_t>& a, const std::vector<uint16_t>& b,
                           const std::vector<float>& c, const std::vector<float>& got,
                           double limit = 1e-5) {
    double worst = 0;
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < N; ++j) {
        double sum = c.empty() ? 0.0 : double(c[size_t(i) * N + j]), scale = std::abs(sum);
        for (int k = 0; k < K; ++k) {
          const double p = to_double(e, a[size_t(i) * K + k]) *
                           to_double(e, b_n_major ? b[size_t(j) * K + k] : b[size_t(k) * N + j]);
          sum += p;
          scale += std::abs(p);
        }
        const double err = std::abs(double(got[size_t(i) * N + j]) - sum) / (scale + 1e-30);
        worst = std::isnan(err) ? INFINITY : std::max(worst, err);
      }
    }
    std::ostringstream line;
    line << what << ": max relative error " << worst << " (limit " << limit << ")";
    record(worst <= limit, line.str());
  };

  for (Elem e : {Elem::F16, Elem::BF16}) {
    for (bool n_major : {false, true}) {
      const std::string layout = n_major ? "n-major B (ldmatrix)" : "k-major B (ldmatrix.trans)";
      auto a = random_matrix(e, 256, 11), b = random_matrix(e, 128, 12);
      std::vector<float> c(128), d(128);
      Lcg rng{13};
      for (auto& v : c) v = rng.uniform();
      mma_tile(e, n_major, a.data(), b.data(), c.data(), d.data());
      product_check(std::string("mma m16n8k16 ") + elem_name(e) + ", " + layout, e, n_major, 16, 8,
                    16, a, b, c, d);

      const int M = 70, N = 40, K = 72;
      auto ga = random_matrix(e, size_t(M) * K, 21), gb = random_matrix(e, size_t(K) * N, 22);
      std::vector<float> gc(size_t(M) * N);
      hgemm(e, n_major, M, N, K, ga.data(), gb.data(), gc.data());
      product_check(std::string("hgemm 70x40x72 ") + elem_name(e) + ", " + layout, e, n_major, M, N,
                    K, ga, gb, {}, gc);
    }
  }

  std::vector<uint16_t> matrices(256);
  for (int i = 0; i < 256; ++i) matrices[size_t(i)] = uint16_t(0x1000 + 7 * i);
  std::vector<uint32_t> frags(kLdmatrixVariants * 32 * 4);
  ldmatrix_fragments(matrices.data(), frags.data());
  const char* names[kLdmatrixVariants] = {"x1", "x2", "x4", "x1.trans", "x2.trans", "x4.trans"};
  for (int v = 0; v < kLdmatrixVariants; ++v) {
    const int count = v % 3 == 2 ? 4 : v % 3 + 1;
    const bool trans = v >= 3;
    int wrong = 0;
    for (int lane = 0; lane < 32; ++lane) {
      for (int m = 0; m < 4; ++m) {
        auto at = [&](int row, int col) {
          return uint32_t(matrices[size_t(m * 64 + row * 8 + col)]);
        };
        const int pair = 2 * (lane % 4), other = lane / 4;
        uint32_t want = 0;
        if (m < count) {
          want = trans ? at(pair, other) | at(pair + 1, other) << 16
                       : at(other, pair) | at(other, pair + 1) << 16;
        }
        wrong += frags[size_t((v * 32 + lane) * 4 + m)] != want;
      }
    }
    record(wrong == 0, std::string("ldmatrix.") + names[v] + ": " + std::to_string(wrong) +
                           " wrong registers of 128");
  }

  std::vector<uint8_t> src(512), dst(512);
  for (int i = 0; i < 512; ++i) src[size_t(i)] = uint8_t(1 + i % 251);
  cp_async_zero_fill(src.data(), dst.data());
  int wrong = 0;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 16; ++i) {
      const size_t at = size_t(16 * lane + i);
      wrong += dst[at] != (i < lane % 17 ? src[at] : 0);
    }
  }
  record(wrong == 0, "cp.async 16 with src-size 0..16: " + std::to_string(wrong) + " wrong bytes");

  // wgmma: every supported shape, type, form and layout, stepping along K, against an f64
  // product; a looser limit than mma's (1e-4): the order in which the tensor cores sum 16-term
  // products in f32 is not documented, while a misplaced element errs by ~1/(16 ksteps).
  if (!wgmma_supported()) {
    log << "skip wgmma: needs compute capability 9.x (sm_90a code)\n";
  } else {
    auto wgmma_check = [&](Elem e, bool rs, int n, WgmmaLayout layout, int ksteps, bool accumulate,
                           bool b_mn_major) {
      const int K = 16 * ksteps;
      auto a = random_matrix(e, size_t(64) * K, 31 + n + ksteps);
      auto b = random_matrix(e, size_t(n) * K, 32 + n);
      std::vector<float> c(size_t(64) * n), d(size_t(64) * n);
      Lcg rng{33};
      for (auto& v : c) v = rng.uniform();
      wgmma_tile(e, rs, n, layout, ksteps, accumulate, a.data(), b.data(), c.data(), d.data(),
                 b_mn_major);
      double worst = 0;
      for (int i = 0; i < 64; ++i) {
        for (int j = 0; j < n; ++j) {
          double sum = accumulate ? double(c[size_t(i) * n + j]) : 0.0, scale = std::abs(sum);
          for (int k = 0; k < K; ++k) {
            const double p =
                to_double(e, a[size_t(i) * K + k]) * to_double(e, b[size_t(j) * K + k]);
            sum += p;
            scale += std::abs(p);
          }
          const double err = std::abs(double(d[size_t(i) * n + j]) - sum) / (scale + 1e-30);
          worst = std::isnan(err) ? INFINITY : std::max(worst, err);
        }
      }
      std::ostringstream line;
      line << "wgmma m64n" << n << "k16 " << elem_name(e) << (rs ? " RS" : " SS") << ", "
           << wgmma_layout_name(layout) << (b_mn_major ? ", B MN-major" : "") << ", " << ksteps
           << " k steps" << (accumulate ? ", accumulating" : ", scale-d 0")
           << ": max relative error " << worst << " (limit 1e-4)";
      record(worst <= 1e-4, line.str());
    };
    for (Elem e : {Elem::F16, Elem::BF16}) {
      for (bool rs : {false, true}) {
        for (bool mn : {false, true}) {
          for (int n : {64, 128}) {
            for (WgmmaLayout layout : kWgmmaLayouts) {
              wgmma_check(e, rs, n, layout, n == 64 ? 8 : 4, true, mn);
            }
          }
          wgmma_check(e, rs, 128, WgmmaLayout::Swizzle128, 2, false, mn);
          wgmma_check(e, rs, 256, WgmmaLayout::InterleaveK, 2, true, mn);
        }
        // 256 columns of MN-major B: four 64-column swizzled blocks, LBO apart.
        wgmma_check(e, rs, 256, WgmmaLayout::Swizzle128, 2, true, true);
      }
    }
  }

  // Named barriers exist on every architecture: two warpgroups alternate 6 turns each.
  {
    const int rounds = 6;
    std::vector<uint32_t> acc(128);
    std::vector<int32_t> turns(2 * rounds, -1);
    named_barrier_pingpong(rounds, acc.data(), turns.data());
    int bad = 0;
    for (int i = 0; i < 128; ++i) {
      uint32_t want = uint32_t(i);
      for (int r = 0; r < rounds; ++r) {
        for (int g = 0; g < 2; ++g) want = want * 3u + uint32_t(g + 1 + r);
      }
      bad += acc[size_t(i)] != want;
    }
    for (int k = 0; k < 2 * rounds; ++k) bad += turns[size_t(k)] != k % 2;
    record(bad == 0,
           "named barriers (bar.sync/bar.arrive) ping-pong of two warpgroups, 6 turns "
           "each: " +
               std::to_string(bad) + " wrong values of 140");
  }

  // mbarrier phases, TMA copies (every element, zero fill, swizzled placement) and TMA-fed wgmma.
  if (!tma_supported()) {
    log << "skip mbarrier/TMA/setmaxnreg: needs compute capability 9.x (sm_90a code)\n";
  } else {
    const int rounds = 6;
    std::vector<uint32_t> phases(4 * rounds);
    mbarrier_phases(rounds, phases.data());
    int phase_errors = 0;
    for (int r = 0; r < rounds; ++r) {
      uint32_t sum = 0;
      for (int p = 0; p < 96; ++p) sum += phase_value(p, r);
      const size_t at = size_t(4 * r);
      phase_errors += (phases[at] != sum) + (phases[at + 3] != sum) + (phases[at + 1] != 1) +
                      (phases[at + 2] != 0);
    }
    record(phase_errors == 0,
           "mbarrier phases: 6 rounds of 96 arrivals from 3 warps, try_wait.parity of "
           "the completed and the next phase: " +
               std::to_string(phase_errors) + " wrong values of 24");

    auto tma_case = [&](const std::string& what, TmaCopyCase c) {
      const size_t elements = size_t(c.pitch * c.sizes[1] * c.sizes[2]);
      std::vector<uint16_t> tensor(elements);
      for (size_t i = 0; i < elements; ++i) tensor[i] = uint16_t(1 + i * 40503u % 65521u);
      const uint32_t box_elements = c.box[0] * c.box[1] * c.box[2];
      std::vector<uint16_t> got(size_t(tma_box_count(c)) * box_elements, 0x5555);
      tma_copy(c, tensor.data(), got.data());
      int bad = 0;
      for (int t = 0; t < tma_box_count(c); ++t) {
        const int b[3] = {t % tma_box_grid(c, 0), t / tma_box_grid(c, 0) % tma_box_grid(c, 1),
                          t / (tma_box_grid(c, 0) * tma_box_grid(c, 1))};
        for (uint32_t i = 0; i < box_elements; ++i) {
          const int64_t e[3] = {i % c.box[0], i / c.box[0] % c.box[1], i / (c.box[0] * c.box[1])};
          int64_t g[3];
          bool inside = true;
          for (int d = 0; d < 3; ++d) {
            g[d] = c.origin[d] + int64_t(b[d]) * c.box[d] + e[d];
            inside = inside && g[d] >= 0 && g[d] < int64_t(c.sizes[d]);
          }
          const uint16_t want =
              inside ? tensor[size_t((g[2] * int64_t(c.sizes[1]) + g[1]) * int64_t(c.pitch) + g[0])]
                     : 0;
          bad += got[size_t(t) * box_elements + i] != want;
        }
      }
      record(bad == 0, what + ": " + std::to_string(bad) + " wrong elements of " +
                           std::to_string(got.size()));
    };
    TmaCopyCase a;
    a.sizes[0] = 72, a.sizes[1] = 300, a.pitch = 72;
    a.box[0] = 64, a.box[1] = 64, a.stages = 3, a.swizzle128 = true;
    tma_case("tma 2d bf16 300x72, box 64x64, 128B swizzle, 3 stages, map parameter", a);
    TmaCopyCase b = a;
    b.box[0] = 24, b.box[1] = 40, b.stages = 2, b.swizzle128 = false, b.map_in_global = true;
    tma_case("tma 2d bf16 300x72, box 40x24, no swizzle, 2 stages, map in global memory", b);
    TmaCopyCase odd;
    odd.sizes[0] = 71, odd.sizes[1] = 129, odd.pitch = 72;
    odd.box[0] = 32, odd.box[1] = 16, odd.stages = 3, odd.origin[0] = -5, odd.origin[1] = -3;
    tma_case("tma 2d bf16 129x71 (pitch 72), box 16x32 from (-5, -3), no swizzle", odd);
    TmaCopyCase cube;
    cube.rank = 3, cube.sizes[0] = 64, cube.sizes[1] = 50, cube.sizes[2] = 3, cube.pitch = 64;
    cube.box[0] = 64, cube.box[1] = 16, cube.box[2] = 2, cube.swizzle128 = true;
    tma_case("tma 3d bf16 3x50x64, box 2x16x64, 128B swizzle, 2 stages", cube);

    for (Elem e : {Elem::F16, Elem::BF16}) {
      for (bool mn : {false, true}) {
        auto ta = random_matrix(e, 64 * 64, 41), tb = random_matrix(e, 64 * 64, 42);
        std::vector<float> c(64 * 64), d(64 * 64);
        Lcg rng{43};
        for (auto& v : c) v = rng.uniform();
        tma_wgmma(e, mn, ta.data(), tb.data(), c.data(), d.data());
        product_check(std::string("tma (128B swizzle) + wgmma m64n64k16 ") + elem_name(e) +
                          (mn ? ", B MN-major" : ", B K-major") + ", 4 k steps",
                      e, true, 64, 64, 64, ta, tb, c, d, 1e-4);
      }
    }
  }

  if (report) *report = log.str();
  return failures;
}

}  // namespace lathe::ptx_tests
