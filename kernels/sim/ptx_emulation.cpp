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
#include "kernels/sim/sim_tsan.h"

#include <cstdio>
#include <mutex>
#include <sstream>
#include <vector>

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

// ---- TMA ----

namespace {

TmaFields decode_tensor_map(const void* tensor_map, const char* what, const char* file, int line) {
  LATHE_CHECK(tensor_map != nullptr, "cuda simulator: ", what, " at ", file, ":", line,
              ": null tensor map");
  TmaFields f;
  std::memcpy(&f, tensor_map, sizeof(f));
  LATHE_CHECK(f.marker == kTmaMarker, "cuda simulator: ", what, " at ", file, ":", line,
              ": the tensor map at ", tensor_map,
              " was not made by cuda::make_tensor_map_2d/3d (or was overwritten)");
  return f;
}

const char* tma_name(int rank) {
  return rank == 2 ? "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                   : "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes";
}

// The copy of one box, performed when a thread tests the barrier: element (x, y, z) of the box
// goes to byte (((z * box1) + y) * box0 + x) * element of the destination, with the 128-byte
// swizzle applied to that shared address; elements outside the tensor are zeros.
void tma_perform(const TmaFields& f, unsigned char* dst, const int64_t coords[3]) {
  const size_t element = f.element_bytes;
  const auto* base = reinterpret_cast<const unsigned char*>(f.base);
  uintptr_t linear = reinterpret_cast<uintptr_t>(dst);
  for (uint32_t z = 0; z < f.box[2]; ++z) {
    const int64_t gz = coords[2] + z;
    for (uint32_t y = 0; y < f.box[1]; ++y) {
      const int64_t gy = coords[1] + y;
      const bool row_inside =
          gz >= 0 && uint64_t(gz) < f.sizes[2] && gy >= 0 && uint64_t(gy) < f.sizes[1];
      for (uint32_t x = 0; x < f.box[0]; ++x, linear += element) {
        const int64_t gx = coords[0] + x;
        uintptr_t at = linear;
        if (f.swizzle128) at ^= (at >> 7 & 7) << 4;
        auto* out = reinterpret_cast<unsigned char*>(at);
        if (row_inside && gx >= 0 && uint64_t(gx) < f.sizes[0]) {
          std::memcpy(out,
                      base + uint64_t(gx) * element + uint64_t(gy) * f.strides[1] +
                          uint64_t(gz) * f.strides[2],
                      element);
        } else {
          std::memset(out, 0, element);
        }
      }
    }
  }
}

}  // namespace

void tma_load(const void* tensor_map, void* dst, void* bar, int rank, const int32_t* coords,
              const char* file, int line) {
  const char* what = tma_name(rank);
  const TmaFields f = decode_tensor_map(tensor_map, what, file, line);
  LATHE_CHECK(int(f.rank) == rank, "cuda simulator: ", what, " at ", file, ":", line,
              ": the tensor map describes a rank-", f.rank, " tensor");
  const uint64_t bytes = uint64_t(f.box[0]) * f.box[1] * f.box[2] * f.element_bytes;
  const unsigned alignment = f.swizzle128 ? 1024 : 128;
  LATHE_CHECK(reinterpret_cast<uintptr_t>(dst) % alignment == 0, "cuda simulator: ", what, " at ",
              file, ":", line, ": destination ", dst, " is not ", alignment, "-byte aligned",
              f.swizzle128 ? " (the 128-byte swizzle pattern repeats every 1024 bytes of the "
                             "shared address space, so the box must start on such a boundary)"
                           : " (the PTX ISA's requirement for bulk tensor copies)");
  LATHE_CHECK(is_shared_memory(dst, bytes), "cuda simulator: ", what, " at ", file, ":", line,
              ": the ", bytes, "-byte box at ", dst, " is not all shared memory");
  int64_t at[3] = {coords[0], coords[1], rank == 3 ? coords[2] : 0};
  auto* out = static_cast<unsigned char*>(dst);
  // The copy's closure is allocated here and run and freed on whichever simulated thread first
  // waits on the barrier (sim_tsan.h); TSan does not see the copy itself either.
  const BookkeepingGuard bookkeeping;
  mbarrier_async_copy(
      bar, uint32_t(bytes),
      [f, out, bytes, what, file, line, at0 = at[0], at1 = at[1], at2 = at[2]] {
        async_proxy_check_destination(out, bytes, what, file, line);
        const int64_t c[3] = {at0, at1, at2};
        tma_perform(f, out, c);
        async_proxy_wrote(out, bytes);  // an async-proxy write: both views see it
      },
      what, file, line);
}

void tma_prefetch(const void* tensor_map, const char* file, int line) {
  decode_tensor_map(tensor_map, "prefetch.tensormap", file, line);
}

void setmaxnreg(bool increase, int registers, const char* file, int line) {
  const char* what =
      increase ? "setmaxnreg.inc.sync.aligned.u32" : "setmaxnreg.dec.sync.aligned.u32";
  LATHE_CHECK(registers >= 24 && registers <= 256 && registers % 8 == 0, "cuda simulator: ", what,
              " ", registers, " at ", file, ":", line,
              ": the register count must be a multiple of 8 in [24, 256]");
  warpgroup_compute(nullptr, nullptr, nullptr, nullptr, what, file, line);
}

// ---- wgmma ----

namespace {

// Index (from 1) of each 256 KiB-aligned window of host memory that a descriptor has pointed into.
std::mutex g_window_mutex;
std::vector<uintptr_t> g_windows;

constexpr uintptr_t kWindowBytes = uintptr_t(1) << 18;
constexpr unsigned kMaxWindows = 1023;

unsigned window_index(uintptr_t window) {
  std::lock_guard<std::mutex> lock(g_window_mutex);
  for (size_t i = 0; i < g_windows.size(); ++i) {
    if (g_windows[i] == window) return unsigned(i + 1);
  }
  LATHE_CHECK(g_windows.size() < kMaxWindows,
              "cuda simulator: wgmma descriptors point into more than ", kMaxWindows,
              " distinct 256 KiB windows of host memory");
  g_windows.push_back(window);
  return unsigned(g_windows.size());
}

uintptr_t window_base(unsigned index) {
  std::lock_guard<std::mutex> lock(g_window_mutex);
  return index >= 1 && index <= g_windows.size() ? g_windows[index - 1] : 0;
}

// Per warpgroup rank: the A fragment registers in, rows g and g + 8 out.
void gather_a_compute(void* const* inputs, void* const* outputs, uint32_t, void*) {
  for (int rank = 0; rank < 128; ++rank) {
    const int warp = rank / 32, g = rank % 32 / 4;
    auto* rows = static_cast<uint32_t(*)[8]>(outputs[rank]);
    for (int h = 0; h < 2; ++h) {
      for (int p = 0; p < 8; ++p) {
        // Columns 2p, 2p + 1 are in register 2*(p/4) + h of lane 4g + p%4 (see the header).
        const auto* a = static_cast<const uint32_t*>(inputs[warp * 32 + 4 * g + p % 4]);
        rows[h][p] = a[2 * (p / 4) + h];
      }
    }
  }
}

}  // namespace

uint64_t wgmma_make_desc(const void* smem, uint32_t lbo, uint32_t sbo, unsigned swizzle,
                         const char* file, int line) {
  const auto address = reinterpret_cast<uintptr_t>(smem);
  LATHE_CHECK(address % 16 == 0, "cuda simulator: make_wgmma_desc at ", file, ":", line,
              ": matrix start address ", smem,
              " is not 16-byte aligned (a wgmma descriptor holds address bits 4..17)");
  LATHE_CHECK(is_shared_memory(smem, 16), "cuda simulator: make_wgmma_desc at ", file, ":", line,
              ": ", smem,
              " is not shared memory (wgmma operands come from the block's shared memory: a "
              "__shared__ array or dynamic shared memory, not global memory or a local array)");
  LATHE_CHECK(lbo % 16 == 0 && sbo % 16 == 0 && lbo < kWindowBytes && sbo < kWindowBytes,
              "cuda simulator: make_wgmma_desc at ", file, ":", line, ": leading byte offset ", lbo,
              " and stride byte offset ", sbo,
              " must be multiples of 16 below 2^18 (the descriptor keeps bits 4..17)");
  LATHE_CHECK(swizzle <= 1, "cuda simulator: make_wgmma_desc at ", file, ":", line,
              ": swizzle mode ", swizzle, " is not supported (none = 0, 128-byte = 1)");
  const uint64_t window = window_index(address & ~(kWindowBytes - 1));
  return uint64_t((address & (kWindowBytes - 1)) >> 4) | uint64_t(lbo >> 4) << 16 |
         uint64_t(sbo >> 4) << 32 | window << kWgmmaWindowShift | uint64_t(swizzle) << 62;
}

WgmmaOperand wgmma_operand(uint64_t desc, int rows, bool mn_major, char which,
                           const char* instruction, const char* file, int line) {
  auto fail = [&](const std::string& why) {
    std::ostringstream out;
    out << "cuda simulator: " << instruction << " at " << file << ":" << line << ": descriptor 0x"
        << std::hex << desc << std::dec << " of " << which << ": " << why;
    throw lathe::Error(out.str());
  };
  const unsigned window = unsigned(desc >> kWgmmaWindowShift & 0x3FF);
  const uintptr_t base = window_base(window);
  if (base == 0) {
    fail(
        "not made by make_wgmma_desc from a shared-memory pointer (the simulator locates the "
        "matrix through the window index make_wgmma_desc keeps in reserved bits 52..61)");
  }
  const unsigned swizzle = unsigned(desc >> 62);
  if (swizzle != 0 && swizzle != 1) {
    fail("swizzle mode " + std::to_string(swizzle) +
         " (64- or 32-byte) is not supported by lathe's wrappers (none = 0, 128-byte = 1)");
  }
  if ((desc >> 49 & 7) != 0) fail("matrix base offset (bits 49..51) must be 0");
  WgmmaOperand op;
  op.start = base + uintptr_t(desc & 0xFFFF) * 16;  // bits 14..15: carries of K steps, see header
  op.lbo = uint32_t(desc >> 16 & 0x3FFF) * 16;
  op.sbo = uint32_t(desc >> 32 & 0x3FFF) * 16;
  op.swizzle128 = swizzle == 1;
  op.mn_major = mn_major;
  if (op.sbo == 0 || (!op.swizzle128 && op.lbo == 0)) {
    fail("stride byte offset " + std::to_string(op.sbo) + ", leading byte offset " +
         std::to_string(op.lbo) + ": a zero offset makes core matrices overlap");
  }
  if (op.swizzle128 && mn_major && op.start % 128 != 0) {
    // The wrappers' N is a multiple of 64: every k-row of a 64-column block is a whole swizzled
    // 128-byte row, and where the hardware would take a start inside a row is not documented.
    fail(
        "with 128-byte swizzle an MN-major B must start on a 128-byte row, but the start "
        "address is " +
        std::to_string(op.start % 128) + " bytes into a row");
  }
  if (op.swizzle128 && !mn_major && op.start % 128 > 96) {
    fail(
        "with 128-byte swizzle the 16 elements along K (32 bytes) must lie in one 128-byte row, "
        "but the start address is " +
        std::to_string(op.start % 128) + " bytes into a row");
  }
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  // 16 contiguous bytes: 8 elements along K (K-major) or along N (MN-major).
  const int r_step = mn_major ? 8 : 1, k_step = mn_major ? 1 : 8;
  for (int r = 0; r < rows; r += r_step) {
    for (int k = 0; k < 16; k += k_step) {
      const auto at = reinterpret_cast<uintptr_t>(wgmma_element(op, r, k));
      lo = std::min(lo, at);
      hi = std::max(hi, at + 16);
    }
  }
  if (!is_shared_memory(reinterpret_cast<const void*>(lo), hi - lo)) {
    std::ostringstream why;
    why << "its " << rows << "x16 matrix spans [" << reinterpret_cast<const void*>(lo) << ", "
        << reinterpret_cast<const void*>(hi) << "), which is not all shared memory";
    fail(why.str());
  }
  return op;
}

const char* wgmma_name(MmaInput type, int n, bool rs) {
  static const char* const names[2][2][3] = {
      {{"wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 (SS)",
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 (SS)",
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 (SS)"},
       {"wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 (RS)",
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 (RS)",
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 (RS)"}},
      {{"wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 (SS)",
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 (SS)",
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 (SS)"},
       {"wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 (RS)",
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 (RS)",
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 (RS)"}}};
  const int size = n == 64 ? 0 : n == 128 ? 1 : 2;
  return names[type == MmaInput::BF16][rs][size];
}

void wgmma_hazard(const char* instruction, const char* issue_file, int issue_line,
                  const char* wait_file, int wait_line, const std::string& what) {
  LATHE_FAIL("cuda simulator: ", instruction, " at ", issue_file, ":", issue_line, " (thread ",
             linear_thread_id(), "): ", what, " before the wgmma.wait_group that retires it (",
             wait_file, ":", wait_line,
             "); a GPU reads the operands and writes the accumulators at any time until then");
}

void wgmma_proxy_hazard(const char* instruction, const char* file, int line, char operand, int row,
                        int k, const void* address, uint16_t value, uint16_t seen) {
  char values[64];
  std::snprintf(values, sizeof(values), "0x%04x, the async proxy's view 0x%04x", unsigned(value),
                unsigned(seen));
  LATHE_FAIL("cuda simulator: ", instruction, " at ", file, ":", line, ": its shared-memory ",
             operand, " operand (row ", row, ", k ", k, ", at ", address, ": ", values,
             ") was written by ordinary stores (st.shared, or cp.async retired by its wait) after "
             "the last fence.proxy.async. wgmma reads shared memory through the async proxy: the "
             "threads that fill a tile must execute fence.proxy.async "
             "(cuda::fence_proxy_async_shared) after their stores and before the barrier that "
             "precedes the wgmma");
}

void wgmma_sync(const char* instruction, const char* file, int line) {
  warpgroup_compute(nullptr, nullptr, nullptr, nullptr, instruction, file, line);
}

void wgmma_gather_a(const uint32_t a[4], uint32_t rows[2][8], const char* instruction,
                    const char* file, int line) {
  uint32_t in[4];
  std::memcpy(in, a, sizeof(in));
  uint32_t out[2][8];
  warpgroup_compute(in, out, &gather_a_compute, nullptr, instruction, file, line);
  std::memcpy(rows, out, sizeof(out));
}

}  // namespace lathe::sim
