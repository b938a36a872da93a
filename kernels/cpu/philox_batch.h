// Philox uniforms for many consecutive elements at once, on the cpu. philox::block is ~10 rounds
// of 32x32->64-bit multiplies per 4 elements; called once per 4 elements it is a dependent scalar
// chain, while the same rounds written over arrays of counters compile to a few SIMD multiplies
// per round for 64 blocks at a time. Bit-identical to philox::block / philox::to_uniform, so the
// dropout kernel and the attention kernel (which regenerates its dropout mask in the backward)
// keep the one mask definition of lathe/core/random.h:
//   element e keeps iff philox::to_uniform(philox::block(offset + e / 4, seed)[e % 4]) >= p.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lathe/core/random.h"

namespace lathe::kernels::cpu {

inline constexpr int kPhiloxBatch = 64;  // blocks per vectorized batch (256 elements)

// u[4 * l + j] = to_uniform(word j of block counter + l), for l < blocks <= kPhiloxBatch.
inline void philox_uniform_blocks(uint64_t counter, uint64_t seed, int blocks, float* u) {
  uint32_t c0[kPhiloxBatch], c1[kPhiloxBatch], c2[kPhiloxBatch], c3[kPhiloxBatch];
  for (int l = 0; l < blocks; ++l) {
    const uint64_t ctr = counter + uint64_t(l);
    c0[l] = uint32_t(ctr);
    c1[l] = uint32_t(ctr >> 32);
    c2[l] = 0;
    c3[l] = 0;
  }
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int l = 0; l < blocks; ++l) {
      const uint64_t p0 = uint64_t(philox::kMul0) * c0[l];
      const uint64_t p1 = uint64_t(philox::kMul1) * c2[l];
      const uint32_t n0 = uint32_t(p1 >> 32) ^ c1[l] ^ k0;
      const uint32_t n2 = uint32_t(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = uint32_t(p1);
      c3[l] = uint32_t(p0);
      c0[l] = n0;
      c2[l] = n2;
    }
    k0 += philox::kKey0;
    k1 += philox::kKey1;
  }
  for (int l = 0; l < blocks; ++l) {
    u[4 * l + 0] = philox::to_uniform(c0[l]);
    u[4 * l + 1] = philox::to_uniform(c1[l]);
    u[4 * l + 2] = philox::to_uniform(c2[l]);
    u[4 * l + 3] = philox::to_uniform(c3[l]);
  }
}

// u[e] for the `count` consecutive elements starting at element index `first` of the stream
// (offset, seed): any start and length (partial first and last blocks included).
inline void philox_uniforms(uint64_t seed, uint64_t offset, uint64_t first, int64_t count,
                            float* u) {
  float buf[4 * kPhiloxBatch];
  int64_t done = 0;
  while (done < count) {
    const uint64_t e = first + uint64_t(done);
    const uint64_t lane = e % 4;
    const int64_t want = std::min<int64_t>(count - done + int64_t(lane), 4 * kPhiloxBatch);
    const int blocks = int((want + 3) / 4);
    philox_uniform_blocks(offset + e / 4, seed, blocks, buf);
    const int64_t take = std::min<int64_t>(count - done, 4 * int64_t(blocks) - int64_t(lane));
    std::copy(buf + lane, buf + lane + take, u + done);
    done += take;
  }
}

}  // namespace lathe::kernels::cpu
