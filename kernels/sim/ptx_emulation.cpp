// Warp-level halves of the PTX emulations (see ptx_emulation.h). The fragment layouts follow the
// PTX ISA sections "Matrix Fragments for mma.m16n8k16 with floating point type" and "ldmatrix";
// with groupID = lane / 4 and threadID_in_group = lane % 4 (g and t below):
//   A (16x16, row):  register r holds A[g + 8*(r%2)][2t + 8*(r/2) + {0,1}]
//   B (16x8, col):   register r holds B[2t + 8r + {0,1}][g]
//   C, D (16x8 f32): element i is C[g + 8*(i/2)][2t + i%2]
//   ldmatrix:        register m holds M_m[lane/4][2*(lane%4) + {0,1}], .trans M_m[2*(lane%4) +
//   {0,1}][lane/4]
// where {0,1} are the low and high 16 bits of the register.
#include "kernels/sim/ptx_emulation.h"

#include <sstream>

#include "lathe/core/error.h"
#include "lathe/core/half.h"

namespace lathe::sim {

namespace {

struct MmaLane {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

float to_float(MmaInput type, uint16_t bits) {
  return type == MmaInput::F16 ? Half::to_float(bits) : detail::bits_float(uint32_t(bits) << 16);
}

// D = A*B + C for the whole warp. Products of f16 or bf16 values are exact in f32; they are summed
// as a fixed binary tree in f32 and C is added last, so the result does not depend on which lane
// arrived last (or on the schedule).
template <MmaInput Type>
void mma_compute(void* const* lane_inputs, void* const* lane_outputs, uint32_t, void*) {
  float a[16][16], b[16][8], c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const auto& in = *static_cast<const MmaLane*>(lane_inputs[lane]);
    const int g = lane / 4, t = lane % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
      a[row][col] = to_float(Type, uint16_t(in.a[r]));
      a[row][col + 1] = to_float(Type, uint16_t(in.a[r] >> 16));
    }
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * t + 8 * r;
      b[k][g] = to_float(Type, uint16_t(in.b[r]));
      b[k + 1][g] = to_float(Type, uint16_t(in.b[r] >> 16));
    }
    for (int i = 0; i < 4; ++i) c[g + 8 * (i / 2)][2 * t + i % 2] = in.c[i];
  }
  float d[16][8];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      float s[16];
      for (int k = 0; k < 16; ++k) s[k] = a[i][k] * b[k][j];
      for (int width = 8; width >= 1; width /= 2) {
        for (int k = 0; k < width; ++k) s[k] = s[k] + s[k + width];
      }
      d[i][j] = s[0] + c[i][j];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    auto* out = static_cast<float*>(lane_outputs[lane]);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) out[i] = d[g + 8 * (i / 2)][2 * t + i % 2];
  }
}

template <int Count, bool Trans>
void ldmatrix_compute(void* const* lane_inputs, void* const* lane_outputs, uint32_t, void*) {
  for (int lane = 0; lane < 32; ++lane) {
    auto* regs = static_cast<uint32_t*>(lane_outputs[lane]);
    for (int m = 0; m < Count; ++m) {
      auto element = [&](int row, int col) -> uint32_t {
        return static_cast<const LdmatrixRow*>(lane_inputs[8 * m + row])->elements[col];
      };
      const int pair = 2 * (lane % 4), other = lane / 4;
      const uint32_t lo = Trans ? element(pair, other) : element(other, pair);
      const uint32_t hi = Trans ? element(pair + 1, other) : element(other, pair + 1);
      regs[m] = lo | hi << 16;
    }
  }
}

template <int Count>
WarpCompute ldmatrix_fn(bool trans) {
  return trans ? &ldmatrix_compute<Count, true> : &ldmatrix_compute<Count, false>;
}

std::string ldmatrix_name(int count, bool trans) {
  std::ostringstream out;
  out << "ldmatrix.sync.aligned.m8n8.x" << count << (trans ? ".trans" : "") << ".shared.b16";
  return out.str();
}

}  // namespace

void mma_m16n8k16(MmaInput type, float d[4], const uint32_t a[4], const uint32_t b[2],
                  const float c[4], const char* file, int line) {
  // Copied by value: d may alias c (the usual accumulate-in-place call).
  MmaLane in;
  std::memcpy(in.a, a, sizeof(in.a));
  std::memcpy(in.b, b, sizeof(in.b));
  std::memcpy(in.c, c, sizeof(in.c));
  float out[4];
  warp_compute(0xffffffffu, &in, out,
               type == MmaInput::F16 ? &mma_compute<MmaInput::F16> : &mma_compute<MmaInput::BF16>,
               nullptr, file, line);
  std::memcpy(d, out, sizeof(out));
}

void ldmatrix_exchange(int count, bool trans, const LdmatrixRow* row, uint32_t* regs,
                       const char* file, int line) {
  WarpCompute fn = nullptr;
  switch (count) {
    case 1:
      fn = ldmatrix_fn<1>(trans);
      break;
    case 2:
      fn = ldmatrix_fn<2>(trans);
      break;
    case 4:
      fn = ldmatrix_fn<4>(trans);
      break;
    default:
      LATHE_FAIL("ldmatrix: .x", count, " is not a valid matrix count (1, 2 or 4) at ", file, ":",
                 line);
  }
  uint32_t out[4];
  warp_compute(0xffffffffu, const_cast<LdmatrixRow*>(row), out, fn, nullptr, file, line);
  std::memcpy(regs, out, sizeof(uint32_t) * size_t(count));
}

void ldmatrix_misaligned(int count, bool trans, const void* address, const char* file, int line) {
  LATHE_FAIL("cuda simulator: ", ldmatrix_name(count, trans), " at ", file, ":", line, ": lane ",
             lane_id(), " gives row address ", address,
             ", which is not 16-byte aligned (each row must be 16 contiguous bytes)");
}

void cp_async_invalid(const void* dst, const void* src, int cp_size, int src_size, const char* file,
                      int line) {
  LATHE_FAIL("cuda simulator: cp.async at ", file, ":", line, " with dst ", dst, ", src ", src,
             ", cp-size ", cp_size, ", src-size ", src_size,
             ": cp-size must be 4, 8 or 16, 0 <= src-size <= cp-size, and both addresses aligned "
             "to cp-size");
}

}  // namespace lathe::sim
