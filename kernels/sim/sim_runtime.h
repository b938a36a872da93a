// The CUDA simulator's execution engine: launches a grid block by block on the calling OS thread,
// each block's threads as fibers, and implements the synchronizing built-ins (__syncthreads, warp
// collectives) as rendezvous between fibers. Misuse that would hang or silently corrupt on a GPU —
// threads waiting at different barriers, deadlocks, shuffles reading lanes outside the mask or
// past the end of the block, launch limits — raises lathe::Error naming the thread and block.
#pragma once

#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace lathe::sim {

enum class Schedule { Forward, Reverse, Random, WarpRandom };

// From LATHE_SIM_SCHEDULE / LATHE_SIM_SEED unless overridden by set_schedule().
Schedule current_schedule();
uint64_t current_seed();
void set_schedule(Schedule schedule, uint64_t seed);
Schedule parse_schedule(const std::string& name);  // throws lathe::Error on unknown names
const char* schedule_name(Schedule schedule);

// Device limits the simulator enforces (those of an H100).
inline constexpr unsigned kMaxThreadsPerBlock = 1024;
inline constexpr size_t kMaxDynamicSharedBytes = 227 * 1024;

// Runs `kernel_body` (the kernel call with its arguments bound) for every thread of the grid, on
// the calling thread. Launches from several host threads wait for each other: one kernel runs at a
// time in the process.
void launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes,
            const std::function<void()>& kernel_body, const char* kernel_name = "kernel");

// ---- used by the built-ins in sim.h ----
void* dynamic_shared_memory();
void barrier(int kind, int predicate, int* result, const char* file, int line);
enum class WarpOp : int { Sync, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All };
// A warp-wide rendezvous: each lane in `mask` contributes `in` (up to 16 bytes) and an int
// argument; `out` receives the lane's result once every lane of the mask has arrived.
void warp_collective(WarpOp op, uint32_t mask, const void* in, size_t bytes, int arg, int width,
                     void* out, const char* file, int line);
unsigned lane_id();
uint32_t active_mask();
// Whether the calling code runs inside a simulated kernel.
bool in_kernel();

// A warp-level operation evaluated by the last lane to arrive, for wrappers of tensor-core and
// matrix-load instructions: `compute(inputs, outputs)` sees every lane's input record pointer.
using WarpCompute = void (*)(void* const* lane_inputs, void* const* lane_outputs, uint32_t mask,
                             void* context);
void warp_compute(uint32_t mask, void* lane_input, void* lane_output, WarpCompute compute,
                  void* context, const char* file, int line);

// The same over the 128 threads of a warpgroup (linear thread ids 128i .. 128i+127), for the
// sm_90 wgmma instructions, which the four warps of a warpgroup execute together: `compute` (may
// be null) sees the 128 input records, indexed by rank in the warpgroup, with mask 0. Raises
// lathe::Error when the block is not a whole number of warpgroups, when threads of one warpgroup
// meet at different call sites (`what` names the instruction), or when one exits while the others
// wait for it.
void warpgroup_compute(void* thread_input, void* thread_output, WarpCompute compute, void* context,
                       const char* what, const char* file, int line);
// ---- sm_90 asynchronous barriers (mbarrier) and copies that complete on them (TMA) ----
// The simulator keeps each mbarrier's state (kernels/sim/ptx_emulation.h explains the emulation)
// in a table of the running block keyed by the barrier's shared-memory address; the 8 bytes there
// hold a marker that tells an initialized barrier from stale shared memory and shows when ordinary
// stores overwrote it. Every function raises lathe::Error (naming file:line and the thread) on
// misuse: a barrier that is not 8-byte aligned shared memory or not initialized in this block, an
// arrival count outside [1, 2^20 - 1], a transaction count out of range, a phase that completes
// while copies signalling it are still pending (a missing or short expect_tx).
void mbarrier_init(void* bar, uint32_t count, const char* file, int line);
// fence.mbarrier_init: the calling thread's earlier inits become visible to the async proxy. A TMA
// copy signalling a barrier whose initializing thread has not fenced it since (this or
// fence.proxy.async) is an error.
void fence_mbarrier_init(const char* file, int line);
void mbarrier_inval(void* bar, const char* file, int line);
// One arrival, after adding `expect_tx_bytes` to the current phase's transaction count; returns the
// phase the arrival belongs to (the emulation's state token).
uint64_t mbarrier_arrive(void* bar, uint32_t expect_tx_bytes, const char* file, int line);
void mbarrier_expect_tx(void* bar, uint32_t bytes, const char* file, int line);
// Whether the phase of parity `parity` completed (the current phase's parity differs). Performs the
// copies pending on the barrier first. When the answer is no, the calling thread is suspended
// until the barrier changes or no other thread can run (as a GPU's try_wait suspends for a while),
// so a polling loop lets the other threads progress; a thread that keeps polling a barrier that
// cannot change is reported as a deadlock.
bool mbarrier_try_wait_parity(void* bar, uint32_t parity, const char* file, int line);
// Blocks until the phase of parity `parity` completed; a wait that can never end is a deadlock.
void mbarrier_wait_parity(void* bar, uint32_t parity, const char* file, int line);
// An asynchronous copy of `bytes` bytes that signals complete_tx on `bar`: `perform` runs when a
// thread next tests or waits on the barrier (not at issue time; under warp-random, at issue for a
// random half of the copies), then the bytes count against the transaction count. `what` names the
// instruction in errors. A block that exits with copies still pending, or with a copy performed at
// issue that no wait observed, is an error.
void mbarrier_async_copy(void* bar, uint32_t bytes, std::function<void()> perform, const char* what,
                         const char* file, int line);

// ---- named barriers (bar.sync / bar.arrive with an id and a thread count) ----
// `wait` = bar.sync (arrive and wait until `nthreads` threads arrived at barrier `id`), else
// bar.arrive (count and continue). Ids 1..15 (0 is __syncthreads' barrier, kept apart here),
// nthreads a positive multiple of 32 no larger than the block rounded up to whole warps; threads
// meeting at one barrier with different counts are an error.
void named_barrier(unsigned id, unsigned nthreads, bool wait, const char* file, int line);

// ---- asynchronous operations of the calling thread: cp.async copies and wgmma products ----
// The PTX emulation (kernels/sim/ptx_emulation.h) defers both to the wait that retires their group
// (cp.async.wait_group, wgmma.wait_group), since a GPU may perform them at any time until then.
// The runtime keeps each thread's groups: operations issued since the last commit ("open"), then
// committed groups, oldest first; a block start clears them.
struct CpAsyncCopy {
  void* dst;
  const void* src;
  int cp_size, src_size;
};
void cp_async_issue(const CpAsyncCopy& copy);
void cp_async_commit_group();
// Takes the copies of the oldest committed groups (issue order) until at most `pending` committed
// groups remain; copies not yet committed stay, as on a GPU. The vector is the calling thread's
// own, valid until its next call.
const std::vector<CpAsyncCopy>& cp_async_retire(int pending);

// A wgmma product in flight: `retire(wait_file, wait_line)` performs it (and checks its operands).
using WgmmaRetire = std::function<void(const char* wait_file, int wait_line)>;
void wgmma_issue(WgmmaRetire retire, const char* what, const char* file, int line);
void wgmma_commit_group();
// Runs the products of the oldest committed groups (issue order) until at most `pending`
// committed groups remain. A product issued but not committed is an error: wait_group would not
// cover it, and nothing else can.
void wgmma_retire(int pending, const char* file, int line);
// The calling thread's accumulators with wgmma products in flight, by address: how many products
// still write each one, and its value after the products retired so far (for the next one).
struct PendingAccumulator {
  int products = 0;
  bool has_value = false;
  std::vector<float> value;
};
std::unordered_map<const float*, PendingAccumulator>& wgmma_accumulators();

// ---- proxies and wgmma.fence (kernels/sim/ptx_emulation.h explains the model) ----
// The async proxy's view of shared memory: what a wgmma reading its operands (or any other
// async-proxy reader) is entitled to see. fence.proxy.async by any thread of the block copies the
// block's shared memory into it; a TMA copy writes both views. Dynamic shared memory is mirrored
// whole; a `static __shared__` 16-byte chunk is mirrored from the first time an async-proxy
// access touches it (before that it cannot be checked).
void fence_proxy_async(const char* file, int line);
// An async-proxy write (a TMA copy) of [p, p + bytes) that just happened.
void async_proxy_wrote(const void* p, size_t bytes);
// Before that write: raises lathe::Error (naming the copy `what` issued at file:line) when
// ordinary stores changed any of those bytes since the last fence.proxy.async, which leaves the
// order of the two writes undefined on a GPU.
void async_proxy_check_destination(const void* p, size_t bytes, const char* what, const char* file,
                                   int line);
// The async proxy's view of the 2-byte element at p (shared memory, 2-byte aligned).
uint16_t async_proxy_element(const void* p);
// The mirror of the running block's dynamic shared memory, for checks that read many elements:
// the view of address a in [begin, end) is at a + delta.
struct AsyncProxyWindow {
  uintptr_t begin = 0, end = 0;
  ptrdiff_t delta = 0;
};
AsyncProxyWindow async_proxy_window();
// wgmma.fence by the calling thread: the registers a later wgmma accesses must hold what they
// hold now (unless a wgmma changed them since).
void wgmma_fence_registers();
// At a wgmma's issue: raises lathe::Error when the thread has not executed wgmma.fence since the
// block started, or when the `words` 32-bit registers at `regs` (an accumulator, or the RS form's
// A fragment) changed since its last wgmma.fence other than through a wgmma. `role` names them.
void wgmma_check_registers(const void* regs, size_t words, const char* role,
                           const char* instruction, const char* file, int line);
// The wgmma emulation itself changed those registers (the in-flight pattern, a retired product).
void wgmma_registers_changed(const void* regs, size_t words);

// threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z) of the calling thread.
unsigned linear_thread_id();
// Whether [p, p + bytes) can be shared memory: inside the running block's dynamic shared memory,
// or inside a writable segment of a loaded object (where `static __shared__` arrays live). Locals
// (fiber stacks) and heap memory (what cudaMalloc gives in this build) are not.
bool is_shared_memory(const void* p, size_t bytes);

}  // namespace lathe::sim
