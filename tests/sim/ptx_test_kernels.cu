// Test kernels for the PTX wrappers of kernels/cuda/ptx.cuh. Compiled by g++ against the simulator
// in the simulated build and by nvcc in the real one, so the same kernels (and self_check, which
// compares them with host references) confirm on a GPU what the simulator's emulation assumes
// about fragment layouts. The host entry points copy their arrays to and from the device.
#include "tests/sim/ptx_test_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <type_traits>
#include <vector>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ptx.cuh"
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
  }
  float acc[32] = {};
  cuda::wgmma_fence();
  cuda::wgmma_ss_bf16<64>(acc, desc, desc, false);
  cuda::wgmma_commit();
  cuda::wgmma_wait<0>();
  out[threadIdx.x] = acc[0];
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

void wgmma_misuse(WgmmaMisuse misuse) {
  DeviceArray<uint16_t> global(nullptr, 64 * 16);
  DeviceArray<float> out(nullptr, 128);
  cuda::launch(wgmma_misuse_kernel, dim3(1), dim3(misuse == WgmmaMisuse::BlockOf96 ? 96 : 128), 0,
               nullptr, "wgmma_misuse", int(misuse), global.get(), out.get());
}

int self_check(std::string* report) {
  std::ostringstream log;
  int failures = 0;
  auto record = [&](bool ok, const std::string& what) {
    failures += ok ? 0 : 1;
    log << (ok ? "ok   " : "FAIL ") << what << "\n";
  };
  // Error of a computed product against an f64 reference, relative to sum_k |a_ik b_kj| + |c_ij|:
  // the error bound of a sum in f32 scales with it.
  auto product_check = [&](const std::string& what, Elem e, bool b_n_major, int M, int N, int K,
                           const std::vector<uint16_t>& a, const std::vector<uint16_t>& b,
                           const std::vector<float>& c, const std::vector<float>& got) {
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
    line << what << ": max relative error " << worst << " (limit 1e-5)";
    record(worst <= 1e-5, line.str());
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

  if (report) *report = log.str();
  return failures;
}

}  // namespace lathe::ptx_tests
