// Host launchers of the simulator's test kernels (pointers are device pointers; in the simulated
// build device memory is host memory).
#pragma once

#include <cstddef>

#include "kernels/cuda/launch.cuh"

namespace lathe::sim_tests {
void launch_block_sum(const float* in, float* out, int n, int blocks, int threads, bool racy);
void launch_shuffles(int* out, int threads, int width);
void launch_warp_sum_full_warps(const float* in, float* out, int threads);
void launch_mismatched_barriers(int* out);
void launch_shuffle_while_others_wait(int* out);
void launch_histogram(const int* values, int n, int bins, int* counts);
void launch_out_of_bounds_read(const float* in, float* out, int n);
void launch_with_block(unsigned x, unsigned y, unsigned z, size_t smem);
}  // namespace lathe::sim_tests
