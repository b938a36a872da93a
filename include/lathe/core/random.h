// Random numbers come from Philox4x32-10, a counter-based generator: element i of a draw is a pure
// function of (seed, offset + i / 4, lane i % 4). Any device can therefore produce the identical
// stream in parallel, and dropout can regenerate its mask in backward from (seed, offset) instead
// of storing it.
#pragma once

#include <array>
#include <cstdint>

#include "lathe/core/device.h"

// The Philox functions below are also device code: nvcc compiles the cuda kernels' calls to them.
// (std::array's members are constexpr, which nvcc accepts in device code with
// --expt-relaxed-constexpr.)
#if defined(__CUDACC__)
#define LATHE_HOST_DEVICE __host__ __device__
#else
#define LATHE_HOST_DEVICE
#endif

namespace lathe {

// Seeds the global generator and resets its offset.
void manual_seed(uint64_t seed);

// Where a draw's numbers come from: Philox counter blocks offset, offset + 1, ... under key `seed`.
// Inside a CUDA graph capture the values are not known yet (each replay must draw new numbers), so
// the draw is given `device_state` instead: the device address of the pair {seed, offset}, which
// every replay refills before its kernels run (lathe/core/cuda_graph.h). Kernels read the pair
// through key() and first_block() (the attention kernels have an instantiation of their own for
// it, so that eager launches keep their code); cpu kernels never receive a device_state.
struct PhiloxState {
  uint64_t seed = 0;
  uint64_t offset = 0;  // in 128-bit counter blocks (4 values each)
  const uint64_t* device_state = nullptr;

  LATHE_HOST_DEVICE uint64_t key() const { return device_state ? device_state[0] : seed; }
  LATHE_HOST_DEVICE uint64_t first_block() const { return device_state ? device_state[1] : offset; }
};

// Reserves `numel` values from the global generator: returns the state to draw them from and
// advances the offset by ceil(numel / 4). Refused inside a CUDA graph capture, whose draws need
// the device (the overload below).
PhiloxState philox_reserve(int64_t numel);
// The same for a draw on `device`. Inside a capture of `device` on this thread it returns a
// device_state that each replay of the graph fills with a fresh reservation (taken from the global
// generator at replay time, in capture order), so replays draw what the same work run eagerly
// would have drawn.
PhiloxState philox_reserve(int64_t numel, Device device);
PhiloxState philox_current();
void philox_set(PhiloxState state);

namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
constexpr uint32_t kKey0 = 0x9E3779B9u, kKey1 = 0xBB67AE85u;

// Philox4x32 with 10 rounds (Salmon et al., SC'11): a 128-bit counter and a 64-bit key give four
// random 32-bit words.
LATHE_HOST_DEVICE inline std::array<uint32_t, 4> block4(std::array<uint32_t, 4> c, uint32_t k0,
                                                        uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kMul0) * c[0];
    uint64_t p1 = uint64_t(kMul1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k1,
         uint32_t(p0)};
    k0 += kKey0;
    k1 += kKey1;
  }
  return c;
}

// lathe's use: the counter is a 64-bit block index, the key the 64-bit seed.
LATHE_HOST_DEVICE inline std::array<uint32_t, 4> block(uint64_t counter, uint64_t seed) {
  return block4({uint32_t(counter), uint32_t(counter >> 32), 0u, 0u}, uint32_t(seed),
                uint32_t(seed >> 32));
}

// Uniform float in [0, 1) from the top 24 bits (exactly representable in f32).
LATHE_HOST_DEVICE inline float to_uniform(uint32_t bits) {
  return float(bits >> 8) * (1.0f / 16777216.0f);
}
// Uniform double in [0, 1) from 32 bits (used by f64 draws).
LATHE_HOST_DEVICE inline double to_uniform_double(uint32_t bits) {
  return double(bits) * (1.0 / 4294967296.0);
}

}  // namespace philox
}  // namespace lathe
