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

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "lathe/core/random.h"

namespace lathe::kernels::cpu {

inline constexpr int kPhiloxBatch = 64;  // blocks per vectorized batch (256 elements)

// u[4 * l + j] = to_uniform(word j of block counter + l), for l < blocks <= kPhiloxBatch: the
// rounds over arrays of counters, which the compiler vectorizes (portable; with AVX2 only the
// last blocks % 8 blocks take it).
inline void philox_uniform_blocks_arrays(uint64_t counter, uint64_t seed, int blocks, float* u) {
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

#if defined(__AVX2__)
// The high and low 32 bits of the eight 32 x 32 -> 64-bit products a[i] * k (k in every lane).
// GCC vectorized the array loop above into 64-bit lanes with a permute or shuffle per product half
// (dropout_factors was 19% of a MiniLM attention forward + backward with dropout); two even-lane
// multiplies, two shifts and two blends do it here.
inline void philox_mul_hi_lo(__m256i a, __m256i k, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, k);                        // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);  // lanes 1, 3, 5, 7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Blocks counter .. counter + 7 into u[0 .. 32): philox::block and to_uniform on eight counters
// in the lanes of four vectors (c0..c3, one per word), then a 4 x 8 transpose into block order.
inline void philox_uniform_8_blocks(uint64_t counter, uint64_t seed, float* u) {
  const uint32_t lo = uint32_t(counter), hi = uint32_t(counter >> 32);
  __m256i c0 =
      _mm256_add_epi32(_mm256_set1_epi32(int(lo)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  // A lane whose low word wrapped past 2^32 - 1 carries into the high word: c0 < lo unsigned,
  // compared as signed after flipping the sign bits; the all-ones mask subtracted adds 1.
  const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(_mm256_set1_epi32(int(lo)), sign),
                                           _mm256_xor_si256(c0, sign));
  __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(int(hi)), carry);
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  const __m256i mul0 = _mm256_set1_epi32(int(philox::kMul0));
  const __m256i mul1 = _mm256_set1_epi32(int(philox::kMul1));
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    philox_mul_hi_lo(c0, mul0, hi0, lo0);
    philox_mul_hi_lo(c2, mul1, hi1, lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(int(k0)));
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(int(k1)));
    c1 = lo1;
    c3 = lo0;
    k0 += philox::kKey0;
    k1 += philox::kKey1;
  }
  // to_uniform: the top 24 bits, exact in f32, times 2^-24 (exact).
  const __m256 scale = _mm256_set1_ps(1.0f / 16777216.0f);
  auto uniform = [&](__m256i c) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(c, 8)), scale);
  };
  const __m256 f0 = uniform(c0), f1 = uniform(c1), f2 = uniform(c2), f3 = uniform(c3);
  const __m256 t0 = _mm256_unpacklo_ps(f0, f1), t1 = _mm256_unpackhi_ps(f0, f1);
  const __m256 t2 = _mm256_unpacklo_ps(f2, f3), t3 = _mm256_unpackhi_ps(f2, f3);
  const __m256 b04 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 0 | 4
  const __m256 b15 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 1 | 5
  const __m256 b26 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 2 | 6
  const __m256 b37 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 3 | 7
  _mm256_storeu_ps(u + 0, _mm256_permute2f128_ps(b04, b15, 0x20));
  _mm256_storeu_ps(u + 8, _mm256_permute2f128_ps(b26, b37, 0x20));
  _mm256_storeu_ps(u + 16, _mm256_permute2f128_ps(b04, b15, 0x31));
  _mm256_storeu_ps(u + 24, _mm256_permute2f128_ps(b26, b37, 0x31));
}
#endif

// u[4 * l + j] = to_uniform(word j of block counter + l), for l < blocks <= kPhiloxBatch.
inline void philox_uniform_blocks(uint64_t counter, uint64_t seed, int blocks, float* u) {
  int l = 0;
#if defined(__AVX2__)
  for (; l + 8 <= blocks; l += 8) philox_uniform_8_blocks(counter + uint64_t(l), seed, u + 4 * l);
#endif
  if (l < blocks) philox_uniform_blocks_arrays(counter + uint64_t(l), seed, blocks - l, u + 4 * l);
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
