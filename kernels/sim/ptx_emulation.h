// The simulator's side of the PTX wrappers in kernels/cuda/ptx.cuh: tensor-core mma, ldmatrix and
// cp.async emulated on the CPU with the fragment layouts the PTX ISA documents.
//
// mma and ldmatrix are warp collectives (lathe::sim::warp_compute): every lane deposits its
// registers, the last lane to arrive computes all 32 lanes' results. Memory is touched only in the
// inline parts below, which are compiled into the kernel's own translation unit, so ASan and TSan
// attribute each shared-memory access to the CUDA thread that makes it (the simulator's .cpp files
// are not TSan-instrumented): ldmatrix reads each row in the lane that supplies its address, and
// the collective only moves register values between lanes.
//
// cp.async is emulated synchronously: the copy (with its zero fill) happens at issue time and
// commit/wait are no-ops. A kernel that reads the destination before cp.async.wait_group therefore
// still sees the data here; only the real-GPU run of the same test catches a missing wait.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/sim/sim_runtime.h"

namespace lathe::sim {

enum class MmaInput { F16, BF16 };

// One lane's part of mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32.
void mma_m16n8k16(MmaInput type, float d[4], const uint32_t a[4], const uint32_t b[2],
                  const float c[4], const char* file, int line);

// The row of an 8x8 b16 matrix one lane contributes to ldmatrix (read by that lane).
struct LdmatrixRow {
  uint16_t elements[8];
};
// Exchanges the rows read by lanes 0..8*count-1 into every lane's `count` registers.
void ldmatrix_exchange(int count, bool trans, const LdmatrixRow* row, uint32_t* regs,
                       const char* file, int line);
[[noreturn]] void ldmatrix_misaligned(int count, bool trans, const void* address, const char* file,
                                      int line);
[[noreturn]] void cp_async_invalid(const void* dst, const void* src, int cp_size, int src_size,
                                   const char* file, int line);

// ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16: lanes 8*m .. 8*m+7 give the row addresses
// of matrix m; addresses of lanes past 8*count are ignored, as on the GPU.
inline void ldmatrix(int count, bool trans, uint32_t* regs, const void* row_address,
                     const char* file, int line) {
  LdmatrixRow row{};
  if (lane_id() < unsigned(8 * count)) {
    if (reinterpret_cast<uintptr_t>(row_address) % 16 != 0) {
      ldmatrix_misaligned(count, trans, row_address, file, line);
    }
    std::memcpy(row.elements, row_address, sizeof(row.elements));
  }
  ldmatrix_exchange(count, trans, &row, regs, file, line);
}

// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size: copies src_size bytes and
// zero-fills the rest of the cp_size bytes.
inline void cp_async(void* dst, const void* src, int cp_size, int src_size, const char* file,
                     int line) {
  const bool size_ok =
      (cp_size == 4 || cp_size == 8 || cp_size == 16) && src_size >= 0 && src_size <= cp_size;
  if (!size_ok || reinterpret_cast<uintptr_t>(dst) % unsigned(cp_size) != 0 ||
      (src_size > 0 && reinterpret_cast<uintptr_t>(src) % unsigned(cp_size) != 0)) {
    cp_async_invalid(dst, src, cp_size, src_size, file, line);
  }
  if (src_size > 0) std::memcpy(dst, src, size_t(src_size));
  if (src_size < cp_size)
    std::memset(static_cast<char*>(dst) + src_size, 0, size_t(cp_size - src_size));
}

}  // namespace lathe::sim
