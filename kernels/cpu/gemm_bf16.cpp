// bf16 GEMM on AMX tiles or AVX512-BF16 dot products (design in gemm_bf16.h). This file alone is
// compiled with -mamx-tile -mamx-bf16 (CMakeLists.txt); the AVX-512 code is compiled for its
// instruction sets by target attributes. Each path runs only after bf16_gemm_supported() said the
// processor and the OS allow it; without compiler support a path builds to "not supported".
#include "kernels/cpu/gemm_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/env_flag.h"
#include "lathe/core/error.h"
#include "lathe/core/half.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define LATHE_CPU_X86_64 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define LATHE_CPU_X86_64 0
#endif

#if LATHE_CPU_X86_64 && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define LATHE_CPU_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#else
#define LATHE_CPU_AMX 0
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lathe::kernels::cpu {

namespace {

#if LATHE_CPU_X86_64
// XCR0: the state the OS saves on a context switch.
uint64_t xcr0() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1u)) return 0;  // no OSXSAVE
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// AVX-512 F, BW and VL (the packs and the epilogue use them on every path) with their register
// state saved: SSE, AVX, opmask and both halves of the upper ZMM registers (XCR0 bits 1, 2, 5-7).
bool avx512_usable() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool f = (ebx >> 16) & 1u, bw = (ebx >> 30) & 1u, vl = (ebx >> 31) & 1u;
  return f && bw && vl && (xcr0() & 0xe6) == 0xe6;
}
#endif

bool avx512_bf16_usable() {
#if LATHE_CPU_X86_64
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!avx512_usable() || !__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax >> 5) & 1u;  // AVX512_BF16
#else
  return false;
#endif
}

bool amx_usable() {
#if LATHE_CPU_AMX
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!avx512_usable() || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = (edx >> 22) & 1u, amx_tile = (edx >> 24) & 1u;
  if (!amx_bf16 || !amx_tile) return false;
  if ((xcr0() & (3u << 17)) != (3u << 17)) return false;  // XTILECFG and XTILEDATA state saved
  // Linux keeps tile data disabled for a process until it asks (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); a refusal (an old kernel, a sandbox) leaves the other paths.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

Bf16Gemm default_path() {
  if (bf16_gemm_supported(Bf16Gemm::Amx) && env_flag("LATHE_CPU_AMX", true)) return Bf16Gemm::Amx;
  if (bf16_gemm_supported(Bf16Gemm::Avx512Bf16)) return Bf16Gemm::Avx512Bf16;
  return Bf16Gemm::Widen;
}

std::atomic<Bf16Gemm>& current_path() {
  static std::atomic<Bf16Gemm> path{default_path()};
  return path;
}

}  // namespace

const char* bf16_gemm_name(Bf16Gemm path) {
  switch (path) {
    case Bf16Gemm::Widen:
      return "f32 (widened)";
    case Bf16Gemm::Avx512Bf16:
      return "AVX512-BF16";
    case Bf16Gemm::Amx:
      return "AMX";
  }
  return "?";
}

bool bf16_gemm_supported(Bf16Gemm path) {
  static const bool dot = avx512_bf16_usable(), amx = amx_usable();
  switch (path) {
    case Bf16Gemm::Widen:
      return true;
    case Bf16Gemm::Avx512Bf16:
      return dot;
    case Bf16Gemm::Amx:
      return amx;
  }
  return false;
}

Bf16Gemm bf16_gemm_path() {
  return current_path().load(std::memory_order_relaxed);
}

void set_bf16_gemm_path(Bf16Gemm path) {
  LATHE_CHECK(bf16_gemm_supported(path), "bf16 gemm: this processor (or this build) has no ",
              bf16_gemm_name(path), " path");
  current_path().store(path, std::memory_order_relaxed);
}

#if LATHE_CPU_X86_64

namespace {

constexpr int64_t kBlock = 32;                     // C block rows / columns, K per tile step
constexpr int64_t kTileElems = kBlock * kBlock;    // bf16 elements of one packed 32 x 32 step
constexpr int64_t kPanelBytes = int64_t(1) << 20;  // B columns kept hot in L2 per panel

#if LATHE_CPU_AMX
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: the 2 x 2 f32 accumulators of a 32 x 32 block of C; 4-5: A's two 16-row halves;
// 6-7: B's two 16-column halves. Every tile is 16 rows of 64 bytes.
void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}
#endif

struct Operands {
  const uint16_t* a;
  const uint16_t* b;
  int64_t m, n, k, lda, ldb;
  bool trans_a, trans_b;
  int64_t k_steps;  // ceil(k / 32)
};

// The packs. A block of op(A) is [k step][32 rows][32 k]; a block of op(B) is the tiles'
// pair-interleaved layout [k step][16 pairs][32 columns][2], element (p, j) at pair p / 2, slot
// p % 2. Both are zero past m / n and k (the buffers are cleared first).
//
// Each operand is read along its stored rows. When those run along k (A as stored, B transposed:
// x and w^T of a forward) a block is packed from its own rows; when they run across the blocks
// (A transposed, B as stored: dy^T and x of a weight gradient, both [tokens, features]) a k step
// is packed for every block at once from whole stored rows (block by block read a cache line per
// stored row, a row's stride apart), with AVX-512 row-pair interleaves and 16 x 16 dword
// transposes for full 32 x 32 steps: the weight gradient went from 0.20 to 1.48 TFLOP/s
// (docs/benchmarks.md).

// Block mb of op(A) from A's stored rows (A untransposed).
void pack_a_block(const Operands& o, int64_t mb, uint16_t* dst) {
  const int64_t i0 = mb * kBlock, rows = std::min(kBlock, o.m - i0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t s = 0; s < o.k_steps; ++s) {
      const int64_t p0 = s * kBlock, count = std::min(kBlock, o.k - p0);
      std::memcpy(dst + s * kTileElems + r * kBlock, o.a + (i0 + r) * o.lda + p0,
                  size_t(count) * sizeof(uint16_t));
    }
  }
}

// GCC 12's _mm512_shuffle_i32x4 passes an "undefined" vector it then reports as uninitialized
// (GCC bug 105593); the value is never read (the mask is all ones).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The weight gradient's packs with AVX-512 (every processor with AMX has it; these run only
// after amx_bf16_available()). Two stored rows p, p + 1 interleave into the (p, p + 1) pairs of 32
// columns: 16-bit unpacks work inside 128-bit lanes, so a lane shuffle puts columns back in order.
// `lo` gets columns 0..15 (32 words), `hi` columns 16..31.
__attribute__((target("avx512f,avx512bw"))) inline void interleave_rows(const uint16_t* even,
                                                                        const uint16_t* odd,
                                                                        __m512i& lo, __m512i& hi) {
  const __m512i e = _mm512_loadu_si512(even), o = _mm512_loadu_si512(odd);
  const __m512i a = _mm512_unpacklo_epi16(e, o);  // columns 8L + 0..3 of lane L
  const __m512i b = _mm512_unpackhi_epi16(e, o);  // columns 8L + 4..7
  lo = _mm512_shuffle_i32x4(_mm512_shuffle_i32x4(a, b, 0x44), _mm512_shuffle_i32x4(a, b, 0x44),
                            0xD8);  // a0 b0 a1 b1
  hi = _mm512_shuffle_i32x4(_mm512_shuffle_i32x4(a, b, 0xEE), _mm512_shuffle_i32x4(a, b, 0xEE),
                            0xD8);  // a2 b2 a3 b3
}

// r[row] holds 16 dwords; afterwards r[c] holds column c (a 16 x 16 transpose of 32-bit units).
__attribute__((target("avx512f,avx512bw"))) inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + j]: rows 4g..4g+3 of column 4L + j in each lane L.
  __m512i u[16];
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i a = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);       // lanes 0, 2 of g 0, 1
    const __m512i b = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);       // lanes 1, 3
    const __m512i c = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);  // g 2, 3
    const __m512i d = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_i32x4(a, c, 0x88);       // column j (lane 0 of every g)
    r[8 + j] = _mm512_shuffle_i32x4(a, c, 0xDD);   // column 8 + j
    r[4 + j] = _mm512_shuffle_i32x4(b, d, 0x88);   // column 4 + j
    r[12 + j] = _mm512_shuffle_i32x4(b, d, 0xDD);  // column 12 + j
  }
}

// One full 32 x 32 step of a block of op(A) from the stored rows p0..p0+31, columns i0..i0+31
// of A (A transposed): the row pairs' dwords, transposed, are the tile rows.
__attribute__((target("avx512f,avx512bw"))) void pack_a_tile_avx512(const uint16_t* a, int64_t lda,
                                                                    uint16_t* out) {
  __m512i lo[16], hi[16];
  for (int pair = 0; pair < 16; ++pair) {
    interleave_rows(a + (2 * pair) * lda, a + (2 * pair + 1) * lda, lo[pair], hi[pair]);
  }
  transpose16(lo);
  transpose16(hi);
  for (int r = 0; r < 16; ++r) {
    _mm512_store_si512(out + r * kBlock, lo[r]);
    _mm512_store_si512(out + (16 + r) * kBlock, hi[r]);
  }
}

// One full 32 x 32 step of a block of op(B) from the stored rows p0..p0+31 (B untransposed):
// each row pair interleaved is one 64-word row of the tile layout.
__attribute__((target("avx512f,avx512bw"))) void pack_b_tile_avx512(const uint16_t* b, int64_t ldb,
                                                                    uint16_t* out) {
  for (int pair = 0; pair < 16; ++pair) {
    __m512i lo, hi;
    interleave_rows(b + (2 * pair) * ldb, b + (2 * pair + 1) * ldb, lo, hi);
    _mm512_store_si512(out + pair * 2 * kBlock, lo);
    _mm512_store_si512(out + pair * 2 * kBlock + kBlock, hi);
  }
}

// One full 32 x 32 step of a block of op(B) from the stored rows j0..j0+31, columns p0..p0+31 of
// B (B transposed): a stored row's k pairs are its dwords, so the tile row of pair c is dword c
// of each of the 32 rows, two 16 x 16 dword transposes.
__attribute__((target("avx512f,avx512bw"))) void pack_b_tile_transposed_avx512(const uint16_t* b,
                                                                               int64_t ldb,
                                                                               uint16_t* out) {
  for (int half = 0; half < 2; ++half) {
    __m512i r[16];
    for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_si512(b + (16 * half + j) * ldb);
    transpose16(r);
    for (int pair = 0; pair < 16; ++pair) {
      _mm512_store_si512(out + pair * 2 * kBlock + 16 * half * 2, r[pair]);
    }
  }
}

#pragma GCC diagnostic pop

// K step s of every block of op(A) from stored rows p = k (A transposed).
void pack_a_step(const Operands& o, int64_t s, int64_t block_elems, uint16_t* packed) {
  const int64_t p0 = s * kBlock, p1 = std::min(o.k, p0 + kBlock);
  for (int64_t i0 = 0; i0 < o.m; i0 += kBlock) {
    uint16_t* out = packed + (i0 / kBlock) * block_elems + s * kTileElems;
    const int64_t rows = std::min(kBlock, o.m - i0);
    if (rows == kBlock && p1 - p0 == kBlock) {
      pack_a_tile_avx512(o.a + p0 * o.lda + i0, o.lda, out);
      continue;
    }
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t r = 0; r < rows; ++r) out[r * kBlock + (p - p0)] = o.a[p * o.lda + i0 + r];
    }
  }
}

// Block nb of op(B) from B's stored rows j (B transposed).
void pack_b_block(const Operands& o, int64_t nb, uint16_t* dst) {
  const int64_t j0 = nb * kBlock, cols = std::min(kBlock, o.n - j0);
  const int64_t full_steps = cols == kBlock ? o.k / kBlock : 0;
  for (int64_t s = 0; s < full_steps; ++s) {
    pack_b_tile_transposed_avx512(o.b + j0 * o.ldb + s * kBlock, o.ldb, dst + s * kTileElems);
  }
  for (int64_t c = 0; c < cols; ++c) {
    const uint16_t* row = o.b + (j0 + c) * o.ldb;
    for (int64_t p = full_steps * kBlock; p < o.k; ++p) {
      dst[(p / kBlock) * kTileElems + ((p % kBlock) / 2) * (2 * kBlock) + 2 * c + (p % 2)] = row[p];
    }
  }
}

// K step s of every block of op(B) from stored rows p = k (B untransposed).
void pack_b_step(const Operands& o, int64_t s, int64_t block_elems, uint16_t* packed) {
  const int64_t p0 = s * kBlock, p1 = std::min(o.k, p0 + kBlock);
  for (int64_t j0 = 0; j0 < o.n; j0 += kBlock) {
    uint16_t* out = packed + (j0 / kBlock) * block_elems + s * kTileElems;
    const int64_t cols = std::min(kBlock, o.n - j0);
    if (cols == kBlock && p1 - p0 == kBlock) {
      pack_b_tile_avx512(o.b + p0 * o.ldb + j0, o.ldb, out);
      continue;
    }
    for (int64_t p = p0; p < p1; ++p) {
      uint16_t* pair = out + ((p - p0) / 2) * (2 * kBlock) + (p % 2);
      for (int64_t c = 0; c < cols; ++c) pair[2 * c] = o.b[p * o.ldb + j0 + c];
    }
  }
}

#if LATHE_CPU_AMX
// acc[32][32] = A block x B block over every k step, on the AMX tiles.
void multiply_block_amx(const uint16_t* a_block, const uint16_t* b_block, int64_t k_steps,
                        float* acc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < k_steps; ++s) {
    const uint16_t* a_step = a_block + s * kTileElems;
    const uint16_t* b_step = b_block + s * kTileElems;
    _tile_loadd(4, a_step, 64);                // rows 0..15: 32 k each
    _tile_loadd(5, a_step + 16 * kBlock, 64);  // rows 16..31
    _tile_loadd(6, b_step, 128);               // columns 0..15 of each k pair
    _tile_loadd(7, b_step + kBlock, 128);      // columns 16..31
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, acc, 128);
  _tile_stored(1, acc + 16, 128);
  _tile_stored(2, acc + 16 * kBlock, 128);
  _tile_stored(3, acc + 16 * kBlock + 16, 128);
}
#endif

// acc[32][32] = A block x B block over every k step, by VDPBF16PS: eight rows of C at a time in
// sixteen registers; for each k pair, B's two 16-column vectors are loaded once and each row's A
// dword is broadcast from the pack (an embedded-broadcast operand).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void multiply_block_dot(
    const uint16_t* a_block, const uint16_t* b_block, int64_t k_steps, float* acc) {
  constexpr int kRows = 8;
  for (int64_t r0 = 0; r0 < kBlock; r0 += kRows) {
    __m512 c[kRows][2];
    for (int r = 0; r < kRows; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int64_t s = 0; s < k_steps; ++s) {
      const uint16_t* a_step = a_block + s * kTileElems + r0 * kBlock;
      const uint16_t* b_step = b_block + s * kTileElems;
      for (int pair = 0; pair < kBlock / 2; ++pair) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(b_step + pair * 2 * kBlock);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(b_step + pair * 2 * kBlock + kBlock);
        for (int r = 0; r < kRows; ++r) {
          int32_t dword;
          std::memcpy(&dword, a_step + r * kBlock + 2 * pair, sizeof(dword));
          const __m512bh a = (__m512bh)_mm512_set1_epi32(dword);
          c[r][0] = _mm512_dpbf16_ps(c[r][0], a, b0);
          c[r][1] = _mm512_dpbf16_ps(c[r][1], a, b1);
        }
      }
    }
    for (int r = 0; r < kRows; ++r) {
      _mm512_store_ps(acc + (r0 + r) * kBlock, c[r][0]);
      _mm512_store_ps(acc + (r0 + r) * kBlock + 16, c[r][1]);
    }
  }
}

#pragma GCC diagnostic push  // GCC bug 105593 again (see the packs)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Sixteen f32 to bf16, rounded to nearest even as BFloat16(float) does (NaN kept quiet). Integer
// arithmetic rather than VCVTNEPS2BF16, which treats subnormal inputs as zero.
__attribute__((target("avx512f,avx512bw"))) inline __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i bits =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  bits = _mm512_mask_or_epi32(bits, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(bits);
}

struct Output {
  BFloat16* c;
  int64_t ldc;
  float alpha, beta;

  // C[i0.., j0..] = alpha * acc + beta * C over the block's valid rows and columns, rounded once
  // to bf16; beta == 0 never reads C (whatever it held, NaN included, is overwritten). Sixteen
  // columns at a time under a mask: written element by element, this took longer than the tile
  // products of a block when k is a few hundred.
  __attribute__((target("avx512f,avx512bw,avx512vl"))) void write(const float* acc, int64_t i0,
                                                                  int64_t j0, int64_t rows,
                                                                  int64_t cols) const {
    const __m512 scale = _mm512_set1_ps(alpha), keep = _mm512_set1_ps(beta);
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = acc + r * kBlock;
      uint16_t* out = reinterpret_cast<uint16_t*>(c + (i0 + r) * ldc + j0);
      for (int64_t q = 0; q < cols; q += 16) {
        const __mmask16 lanes =
            cols - q >= 16 ? __mmask16(0xffff) : __mmask16((1u << (cols - q)) - 1);
        __m512 v = _mm512_mul_ps(scale, _mm512_load_ps(in + q));
        if (beta != 0.0f) {
          const __m512i old = _mm512_slli_epi32(
              _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, out + q)), 16);
          v = _mm512_fmadd_ps(keep, _mm512_castsi512_ps(old), v);
        }
        _mm256_mask_storeu_epi16(out + q, lanes, to_bf16(v));
      }
    }
  }
};

#pragma GCC diagnostic pop

// Grow-only 64-byte-aligned scratch for the packs, one per calling thread: packs of a few MB
// allocated afresh on every call came back from the kernel as new pages, and zeroing them (page
// faults) cost 7% of a bf16 training step.
uint16_t* scratch(int which, int64_t elems) {
  struct Buffer {
    uint16_t* data = nullptr;
    int64_t capacity = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[2];
  Buffer& b = buffers[which];
  if (b.capacity < elems) {
    std::free(b.data);
    const size_t bytes = (size_t(elems) * sizeof(uint16_t) + 63) / 64 * 64;
    b.data = static_cast<uint16_t*>(std::aligned_alloc(64, bytes));
    b.capacity = b.data != nullptr ? elems : 0;
  }
  return b.data;
}

}  // namespace

void gemm_bf16_native(Bf16Gemm path, const GemmArgs& args, const void* a, const void* b, void* c,
                      int threads) {
  LATHE_CHECK(path != Bf16Gemm::Widen && bf16_gemm_supported(path), "gemm (bf16): no ",
              bf16_gemm_name(path), " path on this processor (or in this build)");
  [[maybe_unused]] const bool amx = path == Bf16Gemm::Amx;  // (unused without AMX in the build)
  Operands o{static_cast<const uint16_t*>(a),
             static_cast<const uint16_t*>(b),
             args.m,
             args.n,
             args.k,
             args.lda,
             args.ldb,
             args.trans_a,
             args.trans_b,
             (args.k + kBlock - 1) / kBlock};
  const Output out{static_cast<BFloat16*>(c), args.ldc, float(args.alpha), float(args.beta)};
  const int64_t m_blocks = (o.m + kBlock - 1) / kBlock, n_blocks = (o.n + kBlock - 1) / kBlock;
  const int64_t block_elems = o.k_steps * kTileElems;

  uint16_t* const a_packed = scratch(0, m_blocks * block_elems);
  uint16_t* const b_packed = scratch(1, n_blocks * block_elems);
  LATHE_CHECK(a_packed != nullptr && b_packed != nullptr, "gemm (bf16, ", bf16_gemm_name(path),
              "): out of memory packing ", o.m, " x ", o.k, " and ", o.k, " x ", o.n, " operands");
  // Columns of B per panel: as many blocks as fit the L2 budget, at least one.
  const int64_t panel_blocks =
      std::clamp<int64_t>(kPanelBytes / (block_elems * int64_t(sizeof(uint16_t))), 1, n_blocks);
  // Split C by row blocks when there are enough for the team, else by column blocks.
  const bool split_rows = m_blocks >= threads;
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, split_rows ? m_blocks : n_blocks)));

  // Zero what the packs leave unwritten: the last k step of every block when k is not a multiple
  // of 32, the last block of A (B) when m (n) is not.
  const size_t step_bytes = size_t(kTileElems) * sizeof(uint16_t);
  if (o.k % kBlock != 0) {
    for (int64_t mb = 0; mb < m_blocks; ++mb) {
      std::memset(a_packed + mb * block_elems + (o.k_steps - 1) * kTileElems, 0, step_bytes);
    }
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
      std::memset(b_packed + nb * block_elems + (o.k_steps - 1) * kTileElems, 0, step_bytes);
    }
  }
  if (o.m % kBlock != 0) {
    std::memset(a_packed + (m_blocks - 1) * block_elems, 0, size_t(o.k_steps) * step_bytes);
  }
  if (o.n % kBlock != 0) {
    std::memset(b_packed + (n_blocks - 1) * block_elems, 0, size_t(o.k_steps) * step_bytes);
  }

#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int t = 0, team = 1;
#endif
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < (o.trans_a ? o.k_steps : m_blocks); ++i) {
      if (o.trans_a) {
        pack_a_step(o, i, block_elems, a_packed);
      } else {
        pack_a_block(o, i, &a_packed[i * block_elems]);
      }
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < (o.trans_b ? n_blocks : o.k_steps); ++i) {
      if (o.trans_b) {
        pack_b_block(o, i, &b_packed[i * block_elems]);
      } else {
        pack_b_step(o, i, block_elems, b_packed);
      }
    }
    // (the implicit barrier of the second loop: every block is packed from here on)
    const int64_t split = split_rows ? m_blocks : n_blocks;
    const int64_t lo = split * t / team, hi = split * (t + 1) / team;
    const int64_t m_lo = split_rows ? lo : 0, m_hi = split_rows ? hi : m_blocks;
    const int64_t n_lo = split_rows ? 0 : lo, n_hi = split_rows ? n_blocks : hi;
    alignas(64) float acc[kBlock * kBlock];
#if LATHE_CPU_AMX
    if (amx) configure_tiles();
#endif
    for (int64_t p0 = n_lo; p0 < n_hi; p0 += panel_blocks) {
      const int64_t p1 = std::min(n_hi, p0 + panel_blocks);
      for (int64_t mb = m_lo; mb < m_hi; ++mb) {
        for (int64_t nb = p0; nb < p1; ++nb) {
          const uint16_t* a_block = &a_packed[mb * block_elems];
          const uint16_t* b_block = &b_packed[nb * block_elems];
#if LATHE_CPU_AMX
          if (amx) {
            multiply_block_amx(a_block, b_block, o.k_steps, acc);
          } else {
            multiply_block_dot(a_block, b_block, o.k_steps, acc);
          }
#else
          multiply_block_dot(a_block, b_block, o.k_steps, acc);
#endif
          out.write(acc, mb * kBlock, nb * kBlock, std::min(kBlock, o.m - mb * kBlock),
                    std::min(kBlock, o.n - nb * kBlock));
        }
      }
    }
#if LATHE_CPU_AMX
    if (amx) _tile_release();
#endif
  }
}

#else  // not x86-64: only the widened path

void gemm_bf16_native(Bf16Gemm path, const GemmArgs&, const void*, const void*, void*, int) {
  LATHE_FAIL("gemm (bf16): this build has no ", bf16_gemm_name(path), " path");
}

#endif

}  // namespace lathe::kernels::cpu
