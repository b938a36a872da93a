// Kernels that exercise the simulator: written as ordinary CUDA, compiled by g++ through
// kernels/sim/sim.h in the simulated build (and by nvcc in the real one).
#include "tests/sim/sim_test_kernels.h"

namespace lathe::sim_tests {

// Block-wide sum with shared memory and a tree of barriers (correct).
__global__ void block_sum(const float* in, float* out, int n) {
  __shared__ float partial[256];
  int t = threadIdx.x;
  float v = 0.f;
  for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += in[i];
  partial[t] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

// The same reduction with the barrier inside the loop missing: a race.
__global__ void block_sum_racy(const float* in, float* out, int n) {
  __shared__ float partial[256];
  int t = threadIdx.x;
  float v = 0.f;
  for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += in[i];
  partial[t] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

// Each lane records what every shuffle flavour returns.
__global__ void shuffles(int* out, int width) {
  int lane = threadIdx.x % 32;
  int value = 100 + int(threadIdx.x);
  int* row = out + threadIdx.x * 8;
  row[0] = __shfl_sync(0xffffffffu, value, 3, width);
  row[1] = __shfl_up_sync(0xffffffffu, value, 2, width);
  row[2] = __shfl_down_sync(0xffffffffu, value, 5, width);
  row[3] = __shfl_xor_sync(0xffffffffu, value, 6, width);
  row[4] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
  row[5] = __any_sync(0xffffffffu, lane == 7);
  row[6] = __all_sync(0xffffffffu, lane < 31);
  row[7] = __syncthreads_count(lane % 2 == 0);
}

// Warp-shuffle reduction that assumes full warps: wrong when blockDim % 32 != 0.
__global__ void warp_sum_full_warps(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) atomicAdd(out, v);
}

__global__ void mismatched_barriers(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Lanes 0-15 shuffle with a full mask while lanes 16-31 of the same warp wait at a barrier.
__global__ void shuffle_while_others_wait(int* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x), 0);
  } else {
    __syncthreads();
  }
}

// Uses dynamic shared memory and atomics on shared and global memory.
__global__ void histogram(const int* values, int n, int bins, int* global_counts) {
  LATHE_DYNAMIC_SHARED(int, counts);
  for (int b = threadIdx.x; b < bins; b += blockDim.x) counts[b] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    atomicAdd(&counts[values[i] % bins], 1);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x) atomicAdd(&global_counts[b], counts[b]);
}

__global__ void out_of_bounds_read(const float* in, float* out, int n) {
  // Reads one element past the end.
  out[threadIdx.x] = in[threadIdx.x + n];
}

void launch_block_sum(const float* in, float* out, int n, int blocks, int threads, bool racy) {
  if (racy) {
    cuda::launch(block_sum_racy, dim3(blocks), dim3(threads), 0, nullptr, "block_sum_racy", in, out,
                 n);
  } else {
    cuda::launch(block_sum, dim3(blocks), dim3(threads), 0, nullptr, "block_sum", in, out, n);
  }
}
void launch_shuffles(int* out, int threads, int width) {
  cuda::launch(shuffles, dim3(1), dim3(threads), 0, nullptr, "shuffles", out, width);
}
void launch_warp_sum_full_warps(const float* in, float* out, int threads) {
  cuda::launch(warp_sum_full_warps, dim3(1), dim3(threads), 0, nullptr, "warp_sum_full_warps", in,
               out);
}
void launch_mismatched_barriers(int* out) {
  cuda::launch(mismatched_barriers, dim3(1), dim3(64), 0, nullptr, "mismatched_barriers", out);
}
void launch_shuffle_while_others_wait(int* out) {
  cuda::launch(shuffle_while_others_wait, dim3(1), dim3(64), 0, nullptr,
               "shuffle_while_others_wait", out);
}
void launch_histogram(const int* values, int n, int bins, int* counts) {
  cuda::launch(histogram, dim3(3), dim3(96), size_t(bins) * sizeof(int), nullptr, "histogram",
               values, n, bins, counts);
}
void launch_out_of_bounds_read(const float* in, float* out, int n) {
  cuda::launch(out_of_bounds_read, dim3(1), dim3(n), 0, nullptr, "out_of_bounds_read", in, out, n);
}
void launch_with_block(unsigned x, unsigned y, unsigned z, size_t smem) {
  int dummy[1];
  cuda::launch(mismatched_barriers, dim3(1), dim3(x, y, z), smem, nullptr, "limits", dummy);
}

}  // namespace lathe::sim_tests
