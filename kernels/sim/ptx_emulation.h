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
// cp.async and wgmma are asynchronous here too: a GPU may perform them at any time until the wait
// that retires their group, so the emulation performs them at that wait (sim_runtime.h keeps each
// thread's groups), in the thread that waits:
// - cp.async: the operands are checked at issue, the copy (with its zero fill) happens at the
//   issuing thread's cp.async.wait_group that retires its group. A thread that reads the
//   destination before that wait, or another thread that reads it without the issuer's wait and a
//   barrier in between, sees what was there before (stale or poisoned shared memory).
// - wgmma: the descriptors are checked and the shared-memory operands read at issue (inline,
//   before the warpgroup rendezvous, so a missing __syncthreads before the wgmma still changes
//   results under warp-random and TSan still sees the race); the accumulators are saved and set to
//   a signalling-NaN pattern. At wgmma.wait_group the operands are read again — one that changed
//   in between (overwritten shared memory, or the RS form's A registers) is reported, since a GPU
//   may read it at any time until then — and the product is computed into the accumulators, which
//   must still hold the pattern: a thread that writes them while a product is in flight is
//   reported, and one that reads them early computes with NaN. Products chained on one
//   accumulator (k steps, or P·V of consecutive tiles) take the previous product's result. A
//   wgmma.wait_group with products not committed, and a thread that exits with products in flight,
//   are errors. Each thread computes its own accumulator elements; only the RS form's A fragments
//   cross threads: the warpgroup rendezvous moves each warp's registers into the rows its threads
//   need.
// - fence.proxy.async: wgmma reads shared memory through the async proxy, which has its own view
//   of shared memory here (sim_runtime.h): a fence by any thread copies shared memory into it, a
//   TMA copy writes both views, and each operand element a wgmma reads at issue must equal the
//   view (else stores reached the tile after the last fence); a TMA copy's destination must equal
//   it when the copy lands (else ordinary stores and the copy write it unordered). Looser than a
//   GPU in one way: one thread's fence publishes every thread's stores so far.
// - wgmma.fence: a thread's first wgmma in the block needs one before it, and the accumulator and
//   RS A registers a wgmma uses must hold what they held at the thread's last wgmma.fence, unless
//   a wgmma changed them since (the in-flight pattern, a retired product). Register writes are
//   found by comparing values; reads between the fence and the wgmma are not seen.

// mbarrier (sm_90 asynchronous transaction barriers) is emulated in sim_runtime.cpp: each barrier's
// state (arrival count, pending arrivals, transaction count, completed phases) lives in a table of
// the running block keyed by its shared address, and the 8 bytes in shared memory hold a marker, so
// a barrier used before mbarrier.init in this block, or overwritten by ordinary stores, is
// reported, and so is a TMA copy onto a barrier whose initializing thread has not executed
// fence.mbarrier_init or fence.proxy.async since the init (the async proxy may not see it). A phase
// completes when its arrivals are all in and its transaction count is 0, as the PTX ISA describes.
// try_wait.parity answers whether the phase of that parity completed; when it did not, the thread
// is suspended until the barrier changes (or nothing else can run), so a polling loop lets the
// producer make progress, and a wait that can never complete is reported as a deadlock naming the
// wait's file:line instead of hanging.
//
// TMA (cp.async.bulk.tensor) is deliberately *not* performed at issue time: the issuing thread
// validates the copy (tensor map, destination alignment and extent, barrier) and records it on the
// mbarrier it signals, with its byte count. The copy happens when a thread next tests or waits on
// that barrier (try_wait / the wait loop), which then subtracts the bytes from the transaction
// count and completes the phase if the arrivals are in. Under the warp-random schedule a random
// half of the copies is performed at issue instead, so that a stage released to the producer
// while a consumer's wgmma still reads it is overwritten in flight (and reported at the wgmma's
// wait, below). So a thread that reads the destination
// without waiting on the barrier sees whatever was there before (stale or poisoned shared memory),
// as it could on a GPU; a phase that would complete while copies signalling it are still pending (a
// missing or short expect_tx) and a block that ends with copies pending are errors. The copy itself
// runs inside the simulator's (uninstrumented) code, so TSan sees neither its writes nor races
// against them; ordering mistakes show as wrong data instead. Out-of-bounds elements of the box
// (negative coordinates included) are zero-filled; with the 128-byte swizzle, box rows must be
// exactly 128 bytes and the destination 1024-byte aligned, and the 16-byte chunk c of row r lands
// in chunk c ^ (r % 8) (the layout cuda::wgmma_offset describes). Tensor maps in this build are
// lathe's own encoding of the same parameters (TmaFields below, made by cuda::make_tensor_map_*).
//
// Named barriers (bar.sync / bar.arrive id, nthreads) count arriving threads per id and release
// the bar.sync waiters when the count is reached; setmaxnreg only checks that the whole warpgroup
// executes it together.
//
// A simulated descriptor cannot hold a 64-bit host address in its 14-bit address field, so
// make_wgmma_desc keeps the documented fields (address bits 4..17 in bits 0..13, LBO, SBO, swizzle
// mode, base offset 0) and stores in the reserved bits 52..61 the index of the 256 KiB-aligned
// window of host memory the address lies in. The emulation decodes bits 0..15 as the address
// field, so adding (byte offset >> 4) to a descriptor, as kernels do to step along K, works even
// when the carry leaves the 14-bit field (which cannot happen with real shared addresses, all
// below 2^18). The swizzle XOR uses host address bits, which equal shared-window bits because
// windows are 256 KiB aligned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/sim/sim_runtime.h"
#include "lathe/core/half.h"

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
  cp_async_issue({dst, src, cp_size, src_size});
}

// cp.async.wait_group pending: performs the copies of the groups it retires (here, inline, so the
// sanitizers attribute the writes to the kernel's thread).
inline void cp_async_wait(int pending) {
  for (const CpAsyncCopy& c : cp_async_retire(pending)) {
    if (c.src_size > 0) std::memcpy(c.dst, c.src, size_t(c.src_size));
    if (c.src_size < c.cp_size) {
      std::memset(static_cast<char*>(c.dst) + c.src_size, 0, size_t(c.cp_size - c.src_size));
    }
  }
}

// ---- TMA ----

// The simulated build's tensor map: cuda::TensorMap's 128 bytes hold these fields (the real build
// holds the driver's CUtensorMap there). Dimension 0 is the innermost (contiguous) one.
struct TmaFields {
  uint64_t marker;  // kTmaMarker: the map was made by cuda::make_tensor_map_*
  uint64_t base;
  uint64_t sizes[3];    // elements per dimension (1 past the rank)
  uint64_t strides[3];  // bytes between neighbours along each dimension; strides[0] = element
  uint32_t box[3];      // box elements per dimension (1 past the rank)
  uint32_t rank;
  uint32_t element_bytes;
  uint32_t swizzle128;
};
static_assert(sizeof(TmaFields) <= 128, "a tensor map is 128 bytes");
inline constexpr uint64_t kTmaMarker = 0x70616d726f736e65ULL;  // "ensormap"

// cp.async.bulk.tensor.{rank}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes: checks
// the operands (raising lathe::Error that names file:line) and records the copy on the barrier.
void tma_load(const void* tensor_map, void* dst, void* bar, int rank, const int32_t* coords,
              const char* file, int line);
// prefetch.tensormap: checks that the map is one (in this build, made by make_tensor_map_*).
void tma_prefetch(const void* tensor_map, const char* file, int line);
// setmaxnreg.{inc,dec}.sync.aligned.u32: every thread of the warpgroup must execute it together.
void setmaxnreg(bool increase, int registers, const char* file, int line);

// ---- wgmma ----

inline constexpr int kWgmmaWindowShift = 52;  // simulated descriptors: window index, 10 bits

inline float wgmma_value(MmaInput type, uint16_t bits) {
  return type == MmaInput::F16 ? Half::to_float(bits)
                               : lathe::detail::bits_float(uint32_t(bits) << 16);
}

// make_wgmma_desc of the simulated build; swizzle is the descriptor's 2-bit mode.
uint64_t wgmma_make_desc(const void* smem, uint32_t lbo, uint32_t sbo, unsigned swizzle,
                         const char* file, int line);

// A decoded descriptor: where the matrix starts in host memory and how it is laid out.
struct WgmmaOperand {
  uintptr_t start;
  uint32_t lbo, sbo;
  bool swizzle128;
  bool mn_major;  // B with imm-trans-b = 1 (see wgmma_element)
};
// Decodes the descriptor of an operand with `rows` rows (64 for A, N for B) by 16 elements along
// K, K-major or (B only) MN-major, and raises lathe::Error (naming `instruction` and file:line)
// unless it was made by make_wgmma_desc, uses a supported mode (none, 128-byte swizzle; base
// offset 0) and every element lies in shared memory.
WgmmaOperand wgmma_operand(uint64_t desc, int rows, bool mn_major, char which,
                           const char* instruction, const char* file, int line);

// The address of K-major element (row, k), 0 <= k < 16, of a decoded operand. Canonical layouts,
// in bytes (T = 8 16-bit elements = 16 bytes):
//   none ("interleave"): 8x8 core matrices of 8 rows of 16 contiguous bytes; core matrices are
//     SBO apart along M/N and LBO apart along K:
//       start + (row/8)*SBO + (k/8)*LBO + (row%8)*16 + (k%8)*2
//   128-byte swizzle: rows of 128 bytes (64 elements along K), 8-row groups SBO apart (1024 when
//     dense); LBO unused. The unswizzled address
//       u = start + (row/8)*SBO + (row%8)*128 + k*2
//     has its 16-byte chunk (bits 4..6) XORed with bits 7..9 of the *shared address*, i.e. the
//     swizzle pattern repeats on 1024-byte boundaries of the address space, not of the operand.
//     That is why a kernel may step along K inside a 128-byte row by adding 32 bytes to the start
//     address without changing the base offset.
// MN-major (B only, row = n; cuda::wgmma_offset_mn has the derivation):
//   none: start + (n/8)*SBO + (k/8)*LBO + (k%8)*16 + (n%8)*2 (8 k-rows of 8 contiguous n)
//   128-byte swizzle: u = start + (n/64)*LBO + (k/8)*SBO + (k%8)*128 + (n%64)*2, XORed as above.
inline const uint16_t* wgmma_element(const WgmmaOperand& op, int row, int k) {
  uintptr_t u;
  if (op.mn_major) {
    if (op.swizzle128) {
      u = op.start + uintptr_t(row / 64) * op.lbo + uintptr_t(k / 8) * op.sbo +
          uintptr_t(k % 8) * 128 + uintptr_t(row % 64) * 2;
      u ^= (u >> 7 & 7) << 4;
    } else {
      u = op.start + uintptr_t(row / 8) * op.sbo + uintptr_t(k / 8) * op.lbo +
          uintptr_t(k % 8) * 16 + uintptr_t(row % 8) * 2;
    }
  } else if (op.swizzle128) {
    u = op.start + uintptr_t(row / 8) * op.sbo + uintptr_t(row % 8) * 128 + uintptr_t(k) * 2;
    u ^= (u >> 7 & 7) << 4;
  } else {
    u = op.start + uintptr_t(row / 8) * op.sbo + uintptr_t(k / 8) * op.lbo +
        uintptr_t(row % 8) * 16 + uintptr_t(k % 8) * 2;
  }
  return reinterpret_cast<const uint16_t*>(u);
}

// The instruction's PTX name, for errors.
const char* wgmma_name(MmaInput type, int n, bool rs);
// wgmma.fence / commit_group / wait_group: the warpgroup check, nothing else.
void wgmma_sync(const char* instruction, const char* file, int line);
// RS form: rows g and g+8 of the 16x16 A block of this thread's warp (g = lane / 4), gathered from
// the warp's fragments a[r] = {A[g + 8*(r%2)][2t + 8*(r/2)], ... + 1} (t = lane % 4), as 8
// registers of two elements each.
void wgmma_gather_a(const uint32_t a[4], uint32_t rows[2][8], const char* instruction,
                    const char* file, int line);

// D (64xN, f32) = A (64x16) * B (16xN) [+ D]. Thread r of the warpgroup (warp w = r/32, g and t of
// its lane) holds d[4i + e] = D[16w + g + 8*(e/2)][8i + 2t + e%2], i < N/8: the m16n8 mma
// accumulator layout, repeated along N and stacked over the four warps. `a` holds the thread's
// rows 16w + g and 16w + g + 8 of A.
template <int N>
inline void wgmma_accumulate(float* d, const float a[2][16], const float b[N / 4][16],
                             bool scale_d) {
  for (int c = 0; c < N / 4; ++c) {
    for (int h = 0; h < 2; ++h) {
      // Products of 16-bit values are exact in f32; a fixed summation tree keeps results
      // independent of the schedule.
      float s[16];
      for (int k = 0; k < 16; ++k) s[k] = a[h][k] * b[c][k];
      for (int width = 8; width >= 1; width /= 2) {
        for (int k = 0; k < width; ++k) s[k] = s[k] + s[k + width];
      }
      float& out = d[4 * (c / 2) + 2 * h + c % 2];
      out = scale_d ? s[0] + out : s[0];
    }
  }
}

// The bits an accumulator holds while products write it (a signalling NaN: arithmetic on it
// quiets it, so a thread that scales an accumulator in flight changes the bits too).
inline constexpr uint32_t kAccumulatorInFlight = 0x7FBADBADu;

// Raises the error of a shared-memory operand element whose generic value (`value`, read at issue)
// differs from the async proxy's view (`seen`): stores not followed by fence.proxy.async.
[[noreturn]] void wgmma_proxy_hazard(const char* instruction, const char* file, int line,
                                     char operand, int row, int k, const void* address,
                                     uint16_t value, uint16_t seen);

// Raises the error of an operand or accumulator touched while a product was in flight.
[[noreturn]] void wgmma_hazard(const char* instruction, const char* issue_file, int issue_line,
                               const char* wait_file, int wait_line, const std::string& what);

// One wgmma in flight: its operands as read at issue, and where to read them again at the wait.
template <int N>
struct WgmmaProduct {
  MmaInput type;
  float* d;
  bool scale_d, rs;
  const char* name;
  const char* file;
  int line;
  WgmmaOperand a_op{}, b_op{};
  int row0 = 0, t = 0;          // this thread's first A row, its lane % 4
  uint16_t a_bits[2][16] = {};  // rows row0 and row0 + 8 of A
  // The B columns the thread needs: n = 8i + 2t + j (t = its lane % 4) at index 2i + j.
  uint16_t b_bits[N / 4][16] = {};
  const uint32_t* a_regs = nullptr;  // RS: the thread's A fragment registers, and their values
  uint32_t a_saved[4] = {};
  std::vector<float> saved;  // d at issue, when no other product was writing it

  // Reads the thread's B columns; at issue (`w` given) also checks each element against the async
  // proxy's view, since wgmma reads shared memory through the async proxy (fence.proxy.async).
  void read_b(uint16_t (&out)[N / 4][16], const AsyncProxyWindow* w = nullptr) const {
    for (int i = 0; i < N / 8; ++i) {
      for (int j = 0; j < 2; ++j) {
        const int n = 8 * i + 2 * t + j;
        for (int k = 0; k < 16; ++k) {
          const uint16_t* e = wgmma_element(b_op, n, k);
          out[2 * i + j][k] = *e;
          if (w) check_proxy(*w, 'B', n, k, e, *e);
        }
      }
    }
  }
  void read_a(uint16_t (&out)[2][16], const AsyncProxyWindow* w = nullptr) const {
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 16; ++k) {
        const uint16_t* e = wgmma_element(a_op, row0 + 8 * h, k);
        out[h][k] = *e;
        if (w) check_proxy(*w, 'A', row0 + 8 * h, k, e, *e);
      }
    }
  }
  void check_proxy(const AsyncProxyWindow& w, char operand, int row, int k, const uint16_t* e,
                   uint16_t value) const {
    const auto a = reinterpret_cast<uintptr_t>(e);
    uint16_t seen;
    if (a >= w.begin && a < w.end) {
      std::memcpy(&seen, reinterpret_cast<const void*>(a + uintptr_t(w.delta)), 2);
    } else {
      seen = async_proxy_element(e);  // static shared memory
    }
    if (seen != value) wgmma_proxy_hazard(name, file, line, operand, row, k, e, value, seen);
  }

  // At issue (after the operands were read): d's value is saved unless a product in flight
  // already writes it, and d takes the in-flight pattern.
  void begin() {
    PendingAccumulator& acc = wgmma_accumulators()[d];
    if (acc.products++ == 0) {
      saved.assign(d, d + N / 2);
      for (int i = 0; i < N / 2; ++i) std::memcpy(&d[i], &kAccumulatorInFlight, 4);
      wgmma_registers_changed(d, N / 2);
    }
  }

  void retire(const char* wait_file, int wait_line) {
    auto hazard = [&](const std::string& what) {
      wgmma_hazard(name, file, line, wait_file, wait_line, what);
    };
    uint16_t now_b[N / 4][16];
    read_b(now_b);
    if (std::memcmp(now_b, b_bits, sizeof(now_b)) != 0) {
      hazard("its shared-memory B operand was overwritten");
    }
    if (!rs) {
      uint16_t now_a[2][16];
      read_a(now_a);
      if (std::memcmp(now_a, a_bits, sizeof(now_a)) != 0) {
        hazard("its shared-memory A operand was overwritten");
      }
    } else if (std::memcmp(a_regs, a_saved, sizeof(a_saved)) != 0) {
      hazard("its A fragment registers were written");
    }
    float a[2][16], b[N / 4][16];
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 16; ++k) a[h][k] = wgmma_value(type, a_bits[h][k]);
    }
    for (int c = 0; c < N / 4; ++c) {
      for (int k = 0; k < 16; ++k) b[c][k] = wgmma_value(type, b_bits[c][k]);
    }
    auto& all = wgmma_accumulators();
    const auto it = all.find(d);
    PendingAccumulator& acc = it->second;
    float value[N / 2];
    const float* in = acc.has_value ? acc.value.data() : saved.data();
    std::memcpy(value, in, sizeof(value));
    wgmma_accumulate<N>(value, a, b, scale_d);
    if (--acc.products > 0) {
      acc.value.assign(value, value + N / 2);
      acc.has_value = true;
      return;
    }
    all.erase(it);
    for (int i = 0; i < N / 2; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &d[i], 4);
      if (bits != kAccumulatorInFlight) {
        hazard("its accumulator register " + std::to_string(i) +
               " was written while the product was in flight");
      }
    }
    std::memcpy(d, value, sizeof(value));
    wgmma_registers_changed(d, N / 2);
  }
};

// A product's common part: the fields, B decoded and read, this thread's lane in the warpgroup.
template <int N>
std::shared_ptr<WgmmaProduct<N>> wgmma_product(MmaInput type, float* d, bool rs, uint64_t desc_b,
                                               bool b_mn_major, bool scale_d, const char* file,
                                               int line) {
  auto p = std::make_shared<WgmmaProduct<N>>();
  p->type = type;
  p->d = d;
  p->scale_d = scale_d;
  p->rs = rs;
  p->name = wgmma_name(type, N, rs);
  p->file = file;
  p->line = line;
  p->b_op = wgmma_operand(desc_b, N, b_mn_major, 'B', p->name, file, line);
  const unsigned rank = linear_thread_id() % 128;
  p->row0 = int(16 * (rank / 32) + rank % 32 / 4);
  p->t = int(rank % 4);
  wgmma_check_registers(d, N / 2, "accumulator", p->name, file, line);
  const AsyncProxyWindow window = async_proxy_window();
  p->read_b(p->b_bits, &window);
  return p;
}

// The thread's queue owns the product from before the warpgroup rendezvous on: when another
// thread's error abandons the block there, this thread's stack is dropped without unwinding, and a
// shared_ptr held only on it would leak.
template <int N>
WgmmaProduct<N>* wgmma_queue(std::shared_ptr<WgmmaProduct<N>> p) {
  WgmmaProduct<N>* raw = p.get();
  wgmma_issue([p = std::move(p)](const char* wf, int wl) { p->retire(wf, wl); }, raw->name,
              raw->file, raw->line);
  return raw;
}

template <int N>
inline void wgmma_ss(MmaInput type, float* d, uint64_t desc_a, uint64_t desc_b, bool b_mn_major,
                     bool scale_d, const char* file, int line) {
  auto p = wgmma_product<N>(type, d, false, desc_b, b_mn_major, scale_d, file, line);
  p->a_op = wgmma_operand(desc_a, 64, false, 'A', p->name, file, line);
  const AsyncProxyWindow window = async_proxy_window();
  p->read_a(p->a_bits, &window);
  WgmmaProduct<N>* product = wgmma_queue(std::move(p));
  wgmma_sync(product->name, file, line);
  product->begin();  // after the rendezvous: d takes the in-flight pattern
}

template <int N>
inline void wgmma_rs(MmaInput type, float* d, const uint32_t a_frag[4], uint64_t desc_b,
                     bool b_mn_major, bool scale_d, const char* file, int line) {
  auto p = wgmma_product<N>(type, d, true, desc_b, b_mn_major, scale_d, file, line);
  wgmma_check_registers(a_frag, 4, "A fragment", p->name, file, line);
  WgmmaProduct<N>* product = wgmma_queue(std::move(p));
  uint32_t rows[2][8];
  wgmma_gather_a(a_frag, rows, product->name, file, line);  // the warpgroup rendezvous
  for (int h = 0; h < 2; ++h) {
    for (int q = 0; q < 8; ++q) {
      product->a_bits[h][2 * q] = uint16_t(rows[h][q]);
      product->a_bits[h][2 * q + 1] = uint16_t(rows[h][q] >> 16);
    }
  }
  product->a_regs = a_frag;
  std::memcpy(product->a_saved, a_frag, sizeof(product->a_saved));
  product->begin();
}

}  // namespace lathe::sim
