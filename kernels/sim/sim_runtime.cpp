// Execution engine of the CUDA simulator (see sim_runtime.h). Blocks run one after another; inside
// a block every thread is a fiber, and the scheduler picks the next runnable thread according to
// the schedule: forward/reverse index order, random, or warp-random (a warp runs until all of its
// lanes block, then a random warp continues). Correct kernels give bit-identical results under
// every schedule; racy ones usually do not, which is what the tests assert.
//
// This file and fiber.cpp are compiled without ThreadSanitizer instrumentation: the scheduler's
// bookkeeping is touched by every fiber but only ever from one OS thread. Barriers and warp
// collectives are announced to TSan as release/acquire pairs instead, so kernel memory accesses
// are checked with exactly the ordering CUDA guarantees.
#include "kernels/sim/sim_runtime.h"

#include <link.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "kernels/sim/fiber.h"
#include "lathe/core/error.h"

// LATHE_SIM_TSAN: this file is compiled without -fsanitize=thread, but the annotations must reach
// the TSan runtime the rest of the program uses.
#include "kernels/sim/sim_tsan.h"

// The CUDA built-in variables. thread_local because the scheduler rewrites them on every switch
// and fibers never migrate between OS threads.
thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace lathe::sim {

namespace {

// Mbarrier: blocked in mbarrier_wait_parity until the barrier changes. Poll: suspended by a
// try_wait that answered no, until the barrier changes or nothing else can run. Named: waiting at
// bar.sync.
enum class State { Runnable, Barrier, Warp, Group, Mbarrier, Poll, Named, Done };

struct ThreadState {
  Fiber fiber;
  uint3 tid{};
  unsigned linear = 0;
  State state = State::Runnable;
  const char* file = "";
  int line = 0;
  int barrier_result = 0;
  const void* mbarrier = nullptr;  // the barrier a Mbarrier/Poll thread waits on
  uint32_t parity = 0;
  unsigned named_id = 0;  // the named barrier a Named thread waits at
  // Asynchronous operations in flight (sim_runtime.h): issued since the last commit, then
  // committed groups, oldest first.
  std::vector<CpAsyncCopy> copies_open;
  std::deque<std::vector<CpAsyncCopy>> copy_groups;
  std::vector<CpAsyncCopy> copies_retired;  // cp_async_retire's answer
  struct Product {
    WgmmaRetire retire;
    const char* what;
    const char* file;
    int line;
  };
  std::vector<Product> products_open;
  std::deque<std::vector<Product>> product_groups;
  std::unordered_map<const float*, PendingAccumulator> accumulators;
  // wgmma.fence: whether the thread executed one in this block, and the registers wgmmas used, as
  // of its last wgmma.fence or the last change a wgmma made (wgmma_check_registers).
  bool wgmma_fenced = false;
  std::unordered_map<const void*, std::vector<uint32_t>> register_views;

  void clear_async() {
    copies_open.clear();
    copy_groups.clear();
    copies_retired.clear();
    products_open.clear();
    product_groups.clear();
    accumulators.clear();
    wgmma_fenced = false;
    register_views.clear();
  }
};

// An asynchronous copy waiting to be performed on a thread's next test of its mbarrier.
struct PendingCopy {
  uint32_t bytes = 0;
  std::function<void()> perform;
  const char* what = "";
  const char* file = "";
  int line = 0;
};

struct MbarrierState {
  uint32_t expected = 0;  // arrivals per phase
  uint32_t pending = 0;   // arrivals the current phase still needs
  int64_t tx = 0;         // transaction count (bytes expected minus bytes completed)
  uint64_t phase = 0;     // completed phases; the current phase's parity is phase & 1
  std::vector<PendingCopy> copies;
  std::vector<ThreadState*> waiters;  // may hold stale entries (see wake_waiters)
  const char* file = "";              // mbarrier.init's call site
  int line = 0;
  // Whether the thread that initialized the barrier has since executed fence.mbarrier_init or
  // fence.proxy.async: mbarrier.init is a generic-proxy write, and the TMA unit that completes
  // transaction bytes on the barrier works through the async proxy, which may not see it before.
  const void* init_thread = nullptr;
  bool init_fenced = false;
  // A copy performed at issue (warp-random) that no successful wait has observed since: a block
  // that ends so would, on a GPU, exit with the copy in flight.
  bool eager_unobserved = false;
  PendingCopy eager;  // that copy's what, file and line
};

struct NamedBarrierState {
  unsigned expected = 0;  // the thread count of the generation in progress
  unsigned arrived = 0;
  const char* file = "";
  int line = 0;
};
inline constexpr unsigned kNamedBarriers = 16;

struct WarpState {
  bool pending = false;
  WarpOp op = WarpOp::Sync;
  uint32_t mask = 0;
  uint32_t arrived = 0;  // bitmask of lanes that arrived
  const char* file = "";
  int line = 0;
  int width = 32;
  WarpCompute compute = nullptr;
  void* context = nullptr;
  unsigned char in[32][16] = {};
  int arg[32] = {};
  void* lane_in[32] = {};
  void* lane_out[32] = {};
  size_t bytes = 0;
  uint32_t ready = 0;  // runnable lanes (scheduler)
};

// A pending warpgroup rendezvous (warpgroup_compute).
struct GroupState {
  bool pending = false;
  const char* what = "";
  const char* file = "";
  int line = 0;
  unsigned arrived = 0;
  bool has_arrived[128] = {};
  WarpCompute compute = nullptr;
  void* context = nullptr;
  void* in[128] = {};
  void* out[128] = {};
};

struct BlockState {
  const char* kernel = "";
  dim3 dim;
  uint3 idx{};
  unsigned count = 0;
  std::vector<std::unique_ptr<ThreadState>> threads;
  std::vector<WarpState> warps;
  std::vector<GroupState> groups;  // count / 128 of them (none for other block sizes)
  unsigned live = 0;
  // The pending __syncthreads.
  unsigned barrier_arrived = 0;
  int barrier_kind = 0;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  int barrier_count = 0;
  std::vector<unsigned char> shared;
  std::vector<unsigned char> async_shared;  // the async proxy's view of `shared`
  Schedule schedule = Schedule::Forward;
  std::mt19937_64 rng;
  int current_warp = -1;
  std::unordered_map<uintptr_t, MbarrierState> mbarriers;
  NamedBarrierState named[kNamedBarriers];
  // How many times in a row the scheduler found no runnable thread and resumed the threads
  // polling mbarriers without anything having changed since (see wake_pollers).
  int idle_poll_rounds = 0;
};

thread_local BlockState* g_block = nullptr;
// The async proxy's view of the `static __shared__` 16-byte chunks async-proxy accesses touched,
// by address (static arrays keep their addresses from launch to launch).
thread_local std::unordered_map<uintptr_t, std::array<unsigned char, 16>> g_async_static;

// Copies the tracked static chunks' current contents into their async views.
void mirror_static_chunks() {
  for (auto& [address, view] : g_async_static) {
    std::memcpy(view.data(), reinterpret_cast<const void*>(address), view.size());
  }
}
thread_local ThreadState* g_thread = nullptr;
thread_local StackPool g_stacks;

struct ScheduleConfig {
  bool set = false;
  Schedule schedule = Schedule::Forward;
  uint64_t seed = 0;
};
ScheduleConfig& config() {
  static ScheduleConfig c;
  return c;
}
uint64_t g_launch_counter = 0;

std::string where(const BlockState& b, const uint3& t) {
  std::ostringstream out;
  out << "thread (" << t.x << "," << t.y << "," << t.z << ") of block (" << b.idx.x << ","
      << b.idx.y << "," << b.idx.z << ") in " << b.kernel;
  return out.str();
}

std::string here() {
  return where(*g_block, g_thread->tid);
}

void make_runnable(BlockState& b, ThreadState& t) {
  t.state = State::Runnable;
  b.warps[t.linear / 32].ready |= 1u << (t.linear % 32);
  b.idle_poll_rounds = 0;  // something happened that may let a polling thread progress
}

// Polls of an mbarrier that cannot change (every other thread blocked) tolerated in a row before
// the scheduler calls it a deadlock: a polling loop gets this many "no" answers, which is enough
// for a kernel that polls several barriers in turn.
inline constexpr int kMaxIdlePollRounds = 64;

// With no runnable thread, resumes every thread suspended in a try_wait that answered no (its
// try_wait returns false), as a GPU's try_wait returns after a time limit. False when there is
// none, or when they were resumed kMaxIdlePollRounds times in a row without anything changing.
bool wake_pollers(BlockState& b) {
  if (b.idle_poll_rounds >= kMaxIdlePollRounds) return false;
  const int rounds = b.idle_poll_rounds;
  bool any = false;
  for (auto& t : b.threads) {
    if (t->state == State::Poll) {
      make_runnable(b, *t);
      any = true;
    }
  }
  b.idle_poll_rounds = rounds + 1;
  return any;
}

// Picks the next thread to run, or nullptr when none is runnable.
ThreadState* pick(BlockState& b) {
  const int nwarps = int(b.warps.size());
  auto take = [&](int w, bool highest) -> ThreadState* {
    uint32_t r = b.warps[size_t(w)].ready;
    int lane = highest ? 31 - std::countl_zero(r) : std::countr_zero(r);
    b.warps[size_t(w)].ready &= ~(1u << lane);
    return b.threads[size_t(w * 32 + lane)].get();
  };
  switch (b.schedule) {
    case Schedule::Forward:
      for (int w = 0; w < nwarps; ++w) {
        if (b.warps[size_t(w)].ready) return take(w, false);
      }
      return nullptr;
    case Schedule::Reverse:
      for (int w = nwarps - 1; w >= 0; --w) {
        if (b.warps[size_t(w)].ready) return take(w, true);
      }
      return nullptr;
    case Schedule::Random: {
      int total = 0;
      for (const auto& w : b.warps) total += std::popcount(w.ready);
      if (total == 0) return nullptr;
      int k = int(b.rng() % uint64_t(total));
      for (int w = 0; w < nwarps; ++w) {
        uint32_t r = b.warps[size_t(w)].ready;
        int c = std::popcount(r);
        if (k >= c) {
          k -= c;
          continue;
        }
        for (int lane = 0; lane < 32; ++lane) {
          if ((r >> lane & 1u) && k-- == 0) {
            b.warps[size_t(w)].ready &= ~(1u << lane);
            return b.threads[size_t(w * 32 + lane)].get();
          }
        }
      }
      return nullptr;
    }
    case Schedule::WarpRandom: {
      if (b.current_warp >= 0 && b.warps[size_t(b.current_warp)].ready) {
        return take(b.current_warp, false);
      }
      std::vector<int> candidates;
      for (int w = 0; w < nwarps; ++w) {
        if (b.warps[size_t(w)].ready) candidates.push_back(w);
      }
      if (candidates.empty()) return nullptr;
      b.current_warp = candidates[size_t(b.rng() % candidates.size())];
      return take(b.current_warp, false);
    }
  }
  return nullptr;
}

std::string describe_blocked(const BlockState& b) {
  std::ostringstream out;
  int shown = 0;
  for (const auto& t : b.threads) {
    if (t->state == State::Done || t->state == State::Runnable) continue;
    if (shown++ == 6) {
      out << "; ...";
      break;
    }
    out << (shown > 1 ? "; " : "") << "thread (" << t->tid.x << "," << t->tid.y << "," << t->tid.z
        << ") ";
    switch (t->state) {
      case State::Barrier:
        out << "waits at __syncthreads";
        break;
      case State::Group:
        out << "waits at warpgroup instruction " << b.groups[t->linear / 128].what;
        break;
      case State::Mbarrier:
      case State::Poll: {
        out << (t->state == State::Poll ? "keeps polling" : "waits on") << " mbarrier "
            << t->mbarrier << " for the phase of parity " << t->parity;
        auto m = b.mbarriers.find(reinterpret_cast<uintptr_t>(t->mbarrier));
        if (m != b.mbarriers.end()) {
          out << " (phase " << m->second.phase << " in progress, " << m->second.pending
              << " arrivals and " << m->second.tx << " transaction bytes missing)";
        }
        break;
      }
      case State::Named:
        out << "waits at bar.sync " << t->named_id << " (" << b.named[t->named_id].arrived << " of "
            << b.named[t->named_id].expected << " threads arrived)";
        break;
      default:
        out << "waits at a warp collective";
    }
    out << " (" << t->file << ":" << t->line << ")";
  }
  return out.str();
}

void release_barrier(BlockState& b) {
  int result = b.barrier_count;
  if (b.barrier_kind == 2) result = b.barrier_count == int(b.barrier_arrived);  // and
  if (b.barrier_kind == 3) result = b.barrier_count > 0;                        // or
  for (auto& t : b.threads) {
    if (t->state == State::Barrier) {
      t->barrier_result = result;
      make_runnable(b, *t);
    }
  }
  b.barrier_arrived = 0;
  b.barrier_file = nullptr;
  b.barrier_count = 0;
}

unsigned threads_in_warp(const BlockState& b, unsigned warp) {
  return std::min(32u, b.count - warp * 32);
}

// Happens-before edges between the host and the kernel's threads (but none between the threads
// themselves, which only barriers and collectives provide): the host's writes before a launch are
// visible to every thread, and every thread's writes are visible to the host after it.
char g_host_to_kernel;
char g_kernel_to_host;

// At a thread's exit (in its fiber): a GPU may still be writing the accumulators of a wgmma no
// wait retired. cp.async copies left in flight are dropped: no thread may read them without the
// issuer's wait.
void check_async_at_exit(ThreadState& t) {
  const ThreadState::Product* p = nullptr;
  for (const auto& group : t.product_groups) {
    if (p == nullptr && !group.empty()) p = &group.front();
  }
  if (p == nullptr && !t.products_open.empty()) p = &t.products_open.front();
  if (p != nullptr) {
    LATHE_FAIL("cuda simulator: ", here(), " exited with ", p->what, " (", p->file, ":", p->line,
               ") in flight: no wgmma.wait_group retired it");
  }
  t.clear_async();
}

void run_block(BlockState& b, const std::function<void()>& body) {
  for (unsigned i = 0; i < b.count; ++i) {
    ThreadState& t = *b.threads[i];
    t.state = State::Runnable;
    t.fiber.reset(g_stacks.get(i), [&body, &t] {
      LATHE_SIM_TSAN_ACQUIRE(&g_host_to_kernel);
      try {
        // The thread's asynchronous bookkeeping is touched only in its own fiber (fiber switches
        // do not order memory for TSan, so the scheduler keeps out of it).
        t.clear_async();
        body();
        check_async_at_exit(t);
      } catch (...) {
        LATHE_SIM_TSAN_RELEASE(&g_kernel_to_host);  // the host reads the error object
        throw;
      }
      LATHE_SIM_TSAN_RELEASE(&g_kernel_to_host);
    });
  }
  for (auto& w : b.warps) w = WarpState{};
  for (auto& g : b.groups) g = GroupState{};
  for (unsigned i = 0; i < b.count; ++i) b.warps[i / 32].ready |= 1u << (i % 32);
  b.live = b.count;
  b.barrier_arrived = 0;
  b.barrier_file = nullptr;
  b.current_warp = -1;
  b.mbarriers.clear();
  for (auto& n : b.named) n = NamedBarrierState{};
  b.idle_poll_rounds = 0;
  if (!b.shared.empty()) std::memset(b.shared.data(), 0xFF, b.shared.size());  // NaN poison
  {
    // A block starts with both proxies seeing the same shared memory.
    const BookkeepingGuard bookkeeping;
    b.async_shared = b.shared;
    mirror_static_chunks();
  }
  // The block's threads see the state just reset (and everything the host did before).
  LATHE_SIM_TSAN_RELEASE(&g_host_to_kernel);

  while (b.live > 0) {
    ThreadState* t = pick(b);
    if (t == nullptr && wake_pollers(b)) continue;
    LATHE_CHECK(t != nullptr, "cuda simulator: deadlock in block (", b.idx.x, ",", b.idx.y, ",",
                b.idx.z, ") of ", b.kernel, ": ", describe_blocked(b));
    g_thread = t;
    threadIdx = t->tid;
    t->fiber.resume();
    g_thread = nullptr;
    if (t->fiber.finished()) {
      t->state = State::Done;
      --b.live;
      if (auto error = t->fiber.error()) {
        // The thread released g_kernel_to_host when it threw; the message it built is read here.
        LATHE_SIM_TSAN_ACQUIRE(&g_kernel_to_host);
        try {
          std::rethrow_exception(error);
        } catch (const lathe::Error& e) {
          std::string what = e.what();
          if (what.find(" of block (") == std::string::npos) what += " [" + where(b, t->tid) + "]";
          throw lathe::Error(what);
        }
      }
      const WarpState& w = b.warps[t->linear / 32];
      LATHE_CHECK(!(w.pending && (w.mask >> (t->linear % 32) & 1u) &&
                    !(w.arrived >> (t->linear % 32) & 1u)),
                  "cuda simulator: ", where(b, t->tid),
                  " exited while its warp waits for it in a collective with mask 0x", std::hex,
                  w.mask, std::dec, " (", w.file, ":", w.line, ")");
      if (t->linear / 128 < b.groups.size()) {
        const GroupState& g = b.groups[t->linear / 128];
        LATHE_CHECK(!(g.pending && !g.has_arrived[t->linear % 128]),
                    "cuda simulator: ", where(b, t->tid), " exited while its warpgroup (threads ",
                    t->linear / 128 * 128, "..", t->linear / 128 * 128 + 127, ") waits for it at ",
                    g.what, " (", g.file, ":", g.line, ")");
      }
      if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) release_barrier(b);
      b.idle_poll_rounds = 0;
    }
  }
  for (const auto& [address, m] : b.mbarriers) {
    if (m.tx < 0 && m.pending == 0) {
      LATHE_FAIL("cuda simulator: block (", b.idx.x, ",", b.idx.y, ",", b.idx.z, ") of ", b.kernel,
                 " ended with mbarrier ", reinterpret_cast<const void*>(address),
                 "'s arrivals in and its transaction count at ", m.tx,
                 ": copies completed bytes no expect_tx announced (the expect_tx bytes are "
                 "missing or fewer than the copies' bytes); the last copy performed at issue: ",
                 m.eager.what, " at ", m.eager.file, ":", m.eager.line);
    }
    if (m.eager_unobserved && m.copies.empty()) {
      LATHE_FAIL("cuda simulator: block (", b.idx.x, ",", b.idx.y, ",", b.idx.z, ") of ", b.kernel,
                 " ended with 1 asynchronous copy (", m.eager.what, " at ", m.eager.file, ":",
                 m.eager.line, ") on mbarrier ", reinterpret_cast<const void*>(address),
                 " that no thread waited for, so on a GPU the block could have exited (and its "
                 "shared memory been reused) while it was in flight");
    }
    if (m.copies.empty()) continue;
    const PendingCopy& c = m.copies.front();
    LATHE_FAIL("cuda simulator: block (", b.idx.x, ",", b.idx.y, ",", b.idx.z, ") of ", b.kernel,
               " ended with ", m.copies.size(), " asynchronous cop",
               m.copies.size() == 1 ? "y" : "ies", " (", c.what, " at ", c.file, ":", c.line,
               ") on mbarrier ", reinterpret_cast<const void*>(address),
               " still pending: no thread waited for the phase they complete, so the block could "
               "have exited (and its shared memory been reused) while they were in flight");
  }
}

}  // namespace

Schedule parse_schedule(const std::string& name) {
  if (name == "forward") return Schedule::Forward;
  if (name == "reverse") return Schedule::Reverse;
  if (name == "random") return Schedule::Random;
  if (name == "warp-random") return Schedule::WarpRandom;
  LATHE_FAIL("LATHE_SIM_SCHEDULE: unknown schedule '", name,
             "' (expected forward, reverse, random or warp-random)");
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::Forward:
      return "forward";
    case Schedule::Reverse:
      return "reverse";
    case Schedule::Random:
      return "random";
    case Schedule::WarpRandom:
      return "warp-random";
  }
  return "?";
}

namespace {
void load_config_from_env() {
  ScheduleConfig& c = config();
  if (c.set) return;
  c.set = true;
  if (const char* s = std::getenv("LATHE_SIM_SCHEDULE"); s && *s) c.schedule = parse_schedule(s);
  if (const char* s = std::getenv("LATHE_SIM_SEED"); s && *s)
    c.seed = std::strtoull(s, nullptr, 10);
}
}  // namespace

Schedule current_schedule() {
  load_config_from_env();
  return config().schedule;
}
uint64_t current_seed() {
  load_config_from_env();
  return config().seed;
}
void set_schedule(Schedule schedule, uint64_t seed) {
  config().set = true;
  config().schedule = schedule;
  config().seed = seed;
}

void launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes,
            const std::function<void()>& kernel_body, const char* kernel_name) {
  LATHE_CHECK(g_block == nullptr, "cuda simulator: launching ", kernel_name,
              " from inside a kernel is not supported");
  // One kernel at a time in the process, whichever host thread launches it, as on one GPU stream:
  // `static __shared__` arrays are process-wide statics (sim.h), so two launches of one kernel from
  // two host threads would otherwise share their shared memory; the launch counter and the
  // schedule configuration below are shared too.
  static std::mutex launch_mutex;
  const std::lock_guard<std::mutex> one_at_a_time(launch_mutex);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  LATHE_CHECK(threads >= 1 && threads <= kMaxThreadsPerBlock && block.z <= 64, "launch of ",
              kernel_name, ": block (", block.x, ",", block.y, ",", block.z, ") has ", threads,
              " threads; the limit is ", kMaxThreadsPerBlock, " (and z <= 64)");
  LATHE_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u &&
                  grid.y <= 65535 && grid.z <= 65535,
              "launch of ", kernel_name, ": invalid grid (", grid.x, ",", grid.y, ",", grid.z, ")");
  LATHE_CHECK(dynamic_shared_bytes <= kMaxDynamicSharedBytes, "launch of ", kernel_name, ": ",
              dynamic_shared_bytes, " bytes of dynamic shared memory exceed the limit of ",
              kMaxDynamicSharedBytes);

  BlockState b;
  b.kernel = kernel_name;
  b.dim = block;
  b.count = unsigned(threads);
  b.schedule = current_schedule();
  b.rng.seed(current_seed() * 0x9E3779B97F4A7C15ULL + ++g_launch_counter);
  b.threads.reserve(b.count);
  for (unsigned i = 0; i < b.count; ++i) {
    auto t = std::make_unique<ThreadState>();
    t->linear = i;
    t->tid = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    b.threads.push_back(std::move(t));
  }
  b.warps.resize((b.count + 31) / 32);
  b.groups.resize(b.count % 128 == 0 ? b.count / 128 : 0);
  b.shared.resize(dynamic_shared_bytes);
  blockDim = block;
  gridDim = grid;

  g_block = &b;
  LATHE_SIM_TSAN_RELEASE(&g_host_to_kernel);
  try {
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          b.idx = uint3{x, y, z};
          blockIdx = b.idx;
          // Blocks run one after another here, so the host orders each block after the previous
          // one (its shared memory and bookkeeping are reused; run_block releases to the next
          // block); TSan therefore checks races inside a block, not between blocks of a launch.
          run_block(b, kernel_body);
          LATHE_SIM_TSAN_ACQUIRE(&g_kernel_to_host);
        }
      }
    }
  } catch (...) {
    g_block = nullptr;
    for (auto& t : b.threads) {
      if (!t->fiber.finished()) t->fiber.sanitizer_release(&g_kernel_to_host);
    }
    LATHE_SIM_TSAN_ACQUIRE(&g_kernel_to_host);
    // The block's other threads were abandoned mid-kernel: their stacks are dropped rather than
    // reused, so no later fiber inherits their frames (or, under TSan, their unordered writes).
    b.threads.clear();
    g_stacks.clear();
    throw;
  }
  g_block = nullptr;
  LATHE_SIM_TSAN_ACQUIRE(&g_kernel_to_host);
}

bool in_kernel() {
  return g_block != nullptr;
}

void cp_async_issue(const CpAsyncCopy& copy) {
  g_thread->copies_open.push_back(copy);
}

void cp_async_commit_group() {
  ThreadState& t = *g_thread;
  t.copy_groups.push_back(std::move(t.copies_open));  // an empty group is a group too
  t.copies_open.clear();
}

const std::vector<CpAsyncCopy>& cp_async_retire(int pending) {
  ThreadState& t = *g_thread;
  t.copies_retired.clear();
  while (t.copy_groups.size() > size_t(std::max(pending, 0))) {
    const std::vector<CpAsyncCopy>& group = t.copy_groups.front();
    t.copies_retired.insert(t.copies_retired.end(), group.begin(), group.end());
    t.copy_groups.pop_front();
  }
  return t.copies_retired;
}

void wgmma_issue(WgmmaRetire retire, const char* what, const char* file, int line) {
  g_thread->products_open.push_back({std::move(retire), what, file, line});
}

void wgmma_commit_group() {
  ThreadState& t = *g_thread;
  t.product_groups.push_back(std::move(t.products_open));
  t.products_open.clear();
}

void wgmma_retire(int pending, const char* file, int line) {
  ThreadState& t = *g_thread;
  if (!t.products_open.empty()) {
    const auto& p = t.products_open.front();
    LATHE_FAIL("cuda simulator: wgmma.wait_group at ", file, ":", line, " (", here(), ") with ",
               p.what, " (", p.file, ":", p.line,
               ") not committed: wait_group covers committed groups only "
               "(wgmma.commit_group is missing)");
  }
  while (t.product_groups.size() > size_t(std::max(pending, 0))) {
    // Popped first: a product that raises an error leaves the queue consistent.
    std::vector<ThreadState::Product> group = std::move(t.product_groups.front());
    t.product_groups.pop_front();
    for (auto& p : group) p.retire(file, line);
  }
}

std::unordered_map<const float*, PendingAccumulator>& wgmma_accumulators() {
  return g_thread->accumulators;
}

namespace {

// fence.mbarrier_init and fence.proxy.async order the executing thread's earlier mbarrier.init
// before later async-proxy operations on those barriers (a TMA copy's complete_tx).
void fence_inits_of_this_thread(BlockState& b) {
  for (auto& [address, m] : b.mbarriers) {
    if (m.init_thread == g_thread) m.init_fenced = true;
  }
}

}  // namespace

void fence_proxy_async(const char* file, int line) {
  LATHE_CHECK(g_block != nullptr, "fence.proxy.async called outside a kernel (", file, ":", line,
              ")");
  const BookkeepingGuard bookkeeping;
  BlockState& b = *g_block;
  if (!b.shared.empty()) std::memcpy(b.async_shared.data(), b.shared.data(), b.shared.size());
  mirror_static_chunks();
  fence_inits_of_this_thread(b);
}

namespace {

// The async view of the byte at p, or null when p is not in the block's dynamic shared memory.
unsigned char* dynamic_async_view(uintptr_t p) {
  BlockState& b = *g_block;
  if (b.shared.empty()) return nullptr;
  const auto base = reinterpret_cast<uintptr_t>(b.shared.data());
  return p >= base && p < base + b.shared.size() ? b.async_shared.data() + (p - base) : nullptr;
}

// The async view of a static chunk, mirrored from shared memory as it is now when untracked.
std::array<unsigned char, 16>& static_async_view(uintptr_t chunk) {
  auto [it, inserted] = g_async_static.try_emplace(chunk);
  if (inserted) std::memcpy(it->second.data(), reinterpret_cast<const void*>(chunk), 16);
  return it->second;
}

}  // namespace

void async_proxy_wrote(const void* p, size_t bytes) {
  const BookkeepingGuard bookkeeping;
  const auto begin = reinterpret_cast<uintptr_t>(p);
  if (unsigned char* view = dynamic_async_view(begin)) {
    std::memcpy(view, p, bytes);
    return;
  }
  for (uintptr_t chunk = begin & ~uintptr_t(15); chunk < begin + bytes; chunk += 16) {
    std::array<unsigned char, 16>& view = static_async_view(chunk);
    std::memcpy(view.data(), reinterpret_cast<const void*>(chunk), 16);
  }
}

void async_proxy_check_destination(const void* p, size_t bytes, const char* what, const char* file,
                                   int line) {
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const auto* generic = static_cast<const unsigned char*>(p);
  size_t changed = bytes;  // the first byte whose views differ
  {
    const BookkeepingGuard bookkeeping;
    if (const unsigned char* view = dynamic_async_view(begin)) {
      for (size_t i = 0; i < bytes && changed == bytes; ++i) {
        if (generic[i] != view[i]) changed = i;
      }
    } else {
      for (uintptr_t chunk = begin & ~uintptr_t(15); chunk < begin + bytes && changed == bytes;
           chunk += 16) {
        const auto it = g_async_static.find(chunk);
        if (it == g_async_static.end()) continue;  // never touched by the async proxy
        for (uintptr_t a = std::max(chunk, begin); a < std::min(chunk + 16, begin + bytes); ++a) {
          if (*reinterpret_cast<const unsigned char*>(a) != it->second[a - chunk]) {
            changed = a - begin;
            break;
          }
        }
      }
    }
  }
  if (changed < bytes) {
    LATHE_FAIL("cuda simulator: ", what, " at ", file, ":", line, ": byte ", changed,
               " of its destination (", static_cast<const void*>(generic + changed),
               ") was written by ordinary stores after the last fence.proxy.async; a TMA copy "
               "writes shared memory through the async proxy, so stores to its destination need "
               "fence.proxy.async (cuda::fence_proxy_async_shared) before the copy is issued, and "
               "none may land while it is in flight");
  }
}

uint16_t async_proxy_element(const void* p) {
  const BookkeepingGuard bookkeeping;
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint16_t value;
  if (const unsigned char* view = dynamic_async_view(address)) {
    std::memcpy(&value, view, 2);
  } else {
    std::memcpy(&value, static_async_view(address & ~uintptr_t(15)).data() + address % 16, 2);
  }
  return value;
}

AsyncProxyWindow async_proxy_window() {
  BlockState& b = *g_block;
  if (b.shared.empty()) return {};
  const auto begin = reinterpret_cast<uintptr_t>(b.shared.data());
  return {begin, begin + b.shared.size(),
          reinterpret_cast<const unsigned char*>(b.async_shared.data()) -
              reinterpret_cast<const unsigned char*>(b.shared.data())};
}

namespace {

// Reads `words` 32-bit words at `regs`. A register array a wgmma used may be out of scope by the
// thread's next wgmma.fence (a loop body's fragments): its fiber stack is still mapped, so the read
// is harmless, and the view is refreshed before the array's next use, but AddressSanitizer reports
// stack use after scope. Hence no instrumentation here, and volatile loads (a memcpy call would be
// intercepted).
__attribute__((no_sanitize("address"))) void read_words(const void* regs, uint32_t* out,
                                                        size_t words) {
  const volatile uint32_t* in = static_cast<const volatile uint32_t*>(regs);
  for (size_t i = 0; i < words; ++i) out[i] = in[i];
}

}  // namespace

void wgmma_fence_registers() {
  ThreadState& t = *g_thread;
  t.wgmma_fenced = true;
  for (auto& [regs, view] : t.register_views) read_words(regs, view.data(), view.size());
}

void wgmma_check_registers(const void* regs, size_t words, const char* role,
                           const char* instruction, const char* file, int line) {
  ThreadState& t = *g_thread;
  if (!t.wgmma_fenced) {
    LATHE_FAIL("cuda simulator: ", instruction, " at ", file, ":", line, " (", here(),
               ") is issued before any wgmma.fence: the PTX ISA requires wgmma.fence before a "
               "warpgroup's first wgmma.mma_async");
  }
  const auto it = t.register_views.find(regs);
  if (it == t.register_views.end() || it->second.size() != words) {
    // First use of these registers: there is no earlier value to compare with.
    wgmma_registers_changed(regs, words);
    return;
  }
  const std::vector<uint32_t>& view = it->second;
  for (size_t i = 0; i < words; ++i) {
    uint32_t now;
    std::memcpy(&now, static_cast<const uint32_t*>(regs) + i, 4);
    if (now != view[i]) {
      LATHE_FAIL("cuda simulator: ", instruction, " at ", file, ":", line, " (", here(), "): its ",
                 role, " register ", i,
                 " was written after the thread's last wgmma.fence; the PTX ISA requires "
                 "wgmma.fence between a thread's accesses to registers and a wgmma.mma_async that "
                 "uses them (rt::wgmma_fence() after the writes, before the wgmma)");
    }
  }
}

void wgmma_registers_changed(const void* regs, size_t words) {
  std::vector<uint32_t>& view = g_thread->register_views[regs];
  view.resize(words);
  std::memcpy(view.data(), regs, words * sizeof(uint32_t));
}

void* dynamic_shared_memory() {
  LATHE_CHECK(g_block != nullptr, "dynamic shared memory used outside a kernel");
  return g_block->shared.empty() ? nullptr : g_block->shared.data();
}

void barrier(int kind, int predicate, int* result, const char* file, int line) {
  LATHE_CHECK(g_block != nullptr, "__syncthreads called outside a kernel (", file, ":", line, ")");
  BlockState& b = *g_block;
  ThreadState& t = *g_thread;
  if (b.barrier_arrived > 0) {
    LATHE_CHECK(b.barrier_file == file && b.barrier_line == line && b.barrier_kind == kind,
                "cuda simulator: threads of block (", b.idx.x, ",", b.idx.y, ",", b.idx.z, ") in ",
                b.kernel, " wait at different __syncthreads: ", b.barrier_file, ":", b.barrier_line,
                " and ", file, ":", line, " (", here(), ")");
  } else {
    b.barrier_file = file;
    b.barrier_line = line;
    b.barrier_kind = kind;
  }
  ++b.barrier_arrived;
  if (predicate) ++b.barrier_count;
  t.state = State::Barrier;
  t.file = file;
  t.line = line;
  LATHE_SIM_TSAN_RELEASE(&b);
  if (b.barrier_arrived == b.live) release_barrier(b);
  t.fiber.yield();
  LATHE_SIM_TSAN_ACQUIRE(&b);
  if (result) *result = t.barrier_result;
}

unsigned lane_id() {
  return g_thread ? g_thread->linear % 32 : 0;
}

uint32_t active_mask() {
  if (!g_block) return 0;
  unsigned warp = g_thread->linear / 32;
  uint32_t mask = 0;
  for (unsigned lane = 0; lane < threads_in_warp(*g_block, warp); ++lane) {
    if (g_block->threads[warp * 32 + lane]->state != State::Done) mask |= 1u << lane;
  }
  return mask;
}

namespace {

// Source lane of a shuffle, or -1 when the lane keeps its own value.
int shuffle_source(WarpOp op, int lane, int arg, int width) {
  int base = lane / width * width;
  switch (op) {
    case WarpOp::ShflIdx:
      return base + ((arg % width) + width) % width;
    case WarpOp::ShflUp:
      return (lane - base) < arg ? -1 : lane - arg;
    case WarpOp::ShflDown:
      return (lane - base) + arg >= width ? -1 : lane + arg;
    case WarpOp::ShflXor: {
      int src = lane ^ arg;
      return src >= base + width ? -1 : src;
    }
    default:
      return -1;
  }
}

void complete_collective(BlockState& b, unsigned warp, WarpState& w) {
  uint32_t mask = w.mask;
  if (w.compute) {
    w.compute(w.lane_in, w.lane_out, mask, w.context);
  } else {
    uint32_t ballot = 0;
    for (int lane = 0; lane < 32; ++lane) {
      if ((mask >> lane & 1u) && w.arg[lane]) ballot |= 1u << lane;
    }
    for (int lane = 0; lane < 32; ++lane) {
      if (!(mask >> lane & 1u)) continue;
      switch (w.op) {
        case WarpOp::Sync:
          break;
        case WarpOp::Ballot:
          std::memcpy(w.lane_out[lane], &ballot, 4);
          break;
        case WarpOp::Any: {
          int v = ballot != 0;
          std::memcpy(w.lane_out[lane], &v, 4);
          break;
        }
        case WarpOp::All: {
          int v = ballot == mask;
          std::memcpy(w.lane_out[lane], &v, 4);
          break;
        }
        default: {
          int src = shuffle_source(w.op, lane, w.arg[lane], w.width);
          if (src < 0) src = lane;
          const ThreadState& reader = *b.threads[warp * 32 + unsigned(lane)];
          LATHE_CHECK(unsigned(src) < threads_in_warp(b, warp),
                      "cuda simulator: ", where(b, reader.tid), " shuffles from lane ", src,
                      " but warp ", warp, " has only ", threads_in_warp(b, warp),
                      " threads (blockDim ", b.dim.x, "x", b.dim.y, "x", b.dim.z, ") at ", w.file,
                      ":", w.line);
          LATHE_CHECK(mask >> src & 1u, "cuda simulator: ", where(b, reader.tid),
                      " shuffles from lane ", src, " which is not in the mask 0x", std::hex, mask,
                      std::dec, " at ", w.file, ":", w.line);
          std::memcpy(w.lane_out[lane], w.in[src], w.bytes);
        }
      }
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    if (mask >> lane & 1u) make_runnable(b, *b.threads[warp * 32 + unsigned(lane)]);
  }
  w.pending = false;
  w.arrived = 0;
  w.compute = nullptr;
}

void join_collective(WarpOp op, uint32_t mask, const void* in, size_t bytes, int arg, int width,
                     void* out, WarpCompute compute, void* context, void* lane_input,
                     const char* file, int line) {
  LATHE_CHECK(g_block != nullptr, "warp collective called outside a kernel (", file, ":", line,
              ")");
  BlockState& b = *g_block;
  ThreadState& t = *g_thread;
  const unsigned warp = t.linear / 32;
  const int lane = int(t.linear % 32);
  const unsigned lanes = threads_in_warp(b, warp);
  WarpState& w = b.warps[warp];
  LATHE_CHECK(mask >> lane & 1u, "cuda simulator: ", here(),
              " calls a warp collective with mask 0x", std::hex, mask, std::dec,
              " that does not include its own lane ", lane, " (", file, ":", line, ")");
  LATHE_CHECK(lanes == 32 || (mask >> lanes) == 0, "cuda simulator: ", here(), " uses mask 0x",
              std::hex, mask, std::dec, " but warp ", warp, " has only ", lanes,
              " threads (blockDim ", b.dim.x, "x", b.dim.y, "x", b.dim.z, ") at ", file, ":", line);
  LATHE_CHECK(width > 0 && width <= 32 && (width & (width - 1)) == 0,
              "cuda simulator: shuffle width ", width, " is not a power of two <= 32 (", file, ":",
              line, ")");
  if (w.pending) {
    LATHE_CHECK(w.mask == mask && w.op == op && w.file == file && w.line == line,
                "cuda simulator: lanes of warp ", warp,
                " meet in different warp collectives: ", w.file, ":", w.line, " (mask 0x", std::hex,
                w.mask, ") and ", file, ":", line, " (mask 0x", mask, std::dec, ") — ", here());
  } else {
    w.pending = true;
    w.op = op;
    w.mask = mask;
    w.file = file;
    w.line = line;
    w.width = width;
    w.bytes = bytes;
    w.compute = compute;
    w.context = context;
  }
  if (bytes) std::memcpy(w.in[lane], in, bytes);
  w.arg[lane] = arg;
  w.lane_out[lane] = out;
  w.lane_in[lane] = lane_input;
  w.arrived |= 1u << lane;
  t.state = State::Warp;
  t.file = file;
  t.line = line;
  // Every lane publishes its input; the last one first acquires them all, computes, and publishes
  // the outputs it wrote into the other lanes' records before they resume.
  LATHE_SIM_TSAN_RELEASE(&w);
  if (w.arrived == mask) {
    LATHE_SIM_TSAN_ACQUIRE(&w);
    complete_collective(b, warp, w);
    LATHE_SIM_TSAN_RELEASE(&w);
  }
  t.fiber.yield();
  LATHE_SIM_TSAN_ACQUIRE(&w);
}

}  // namespace

void warp_collective(WarpOp op, uint32_t mask, const void* in, size_t bytes, int arg, int width,
                     void* out, const char* file, int line) {
  LATHE_CHECK(bytes <= 16, "warp collective on a value of ", bytes, " bytes (at most 16)");
  join_collective(op, mask, in, bytes, arg, width, out, nullptr, nullptr, nullptr, file, line);
}

void warp_compute(uint32_t mask, void* lane_input, void* lane_output, WarpCompute compute,
                  void* context, const char* file, int line) {
  join_collective(WarpOp::Sync, mask, nullptr, 0, 0, 32, lane_output, compute, context, lane_input,
                  file, line);
}

void warpgroup_compute(void* thread_input, void* thread_output, WarpCompute compute, void* context,
                       const char* what, const char* file, int line) {
  LATHE_CHECK(g_block != nullptr, what, " called outside a kernel (", file, ":", line, ")");
  BlockState& b = *g_block;
  ThreadState& t = *g_thread;
  LATHE_CHECK(b.count % 128 == 0, "cuda simulator: ", what, " at ", file, ":", line, " in ",
              b.kernel, ": the block has ", b.count, " threads (", b.dim.x, "x", b.dim.y, "x",
              b.dim.z, "), not a whole number of 128-thread warpgroups");
  const unsigned rank = t.linear % 128;
  GroupState& g = b.groups[t.linear / 128];
  if (g.pending) {
    LATHE_CHECK(g.file == file && g.line == line, "cuda simulator: threads of warpgroup ",
                t.linear / 128, " meet at different warpgroup instructions: ", g.what, " (", g.file,
                ":", g.line, ") and ", what, " (", file, ":", line, ") — ", here());
  } else {
    g.pending = true;
    g.what = what;
    g.file = file;
    g.line = line;
    g.compute = compute;
    g.context = context;
  }
  g.in[rank] = thread_input;
  g.out[rank] = thread_output;
  g.has_arrived[rank] = true;
  ++g.arrived;
  t.state = State::Group;
  t.file = file;
  t.line = line;
  LATHE_SIM_TSAN_RELEASE(&g);
  if (g.arrived == 128) {
    LATHE_SIM_TSAN_ACQUIRE(&g);
    if (g.compute) g.compute(g.in, g.out, 0, g.context);
    const unsigned first = t.linear / 128 * 128;
    for (unsigned i = 0; i < 128; ++i) make_runnable(b, *b.threads[first + i]);
    g = GroupState{};
    LATHE_SIM_TSAN_RELEASE(&g);
  }
  t.fiber.yield();
  LATHE_SIM_TSAN_ACQUIRE(&g);
}

// ---- mbarrier ----

namespace {

// The 8 bytes of an initialized barrier in shared memory ("mbarrier" in ASCII): stale shared
// memory from an earlier block or an ordinary store over the barrier does not look like this.
constexpr uint64_t kMbarrierMarker = 0x7265697272616262ULL;
constexpr int64_t kMaxTxCount = (int64_t(1) << 20) - 1;  // the PTX ISA's tx-count range

std::string mbarrier_where(const void* bar, const char* op, const char* file, int line) {
  std::ostringstream out;
  out << "cuda simulator: " << op << " at " << file << ":" << line << " on mbarrier " << bar;
  return out.str();
}

MbarrierState& find_mbarrier(void* bar, const char* op, const char* file, int line) {
  LATHE_CHECK(g_block != nullptr, op, " called outside a kernel (", file, ":", line, ")");
  auto it = g_block->mbarriers.find(reinterpret_cast<uintptr_t>(bar));
  LATHE_CHECK(it != g_block->mbarriers.end(), mbarrier_where(bar, op, file, line),
              ": the barrier was not initialized with mbarrier.init in this block (or was "
              "invalidated) — ",
              here());
  uint64_t marker;
  std::memcpy(&marker, bar, sizeof(marker));
  LATHE_CHECK(marker == kMbarrierMarker, mbarrier_where(bar, op, file, line),
              ": its 8 bytes changed since mbarrier.init (", it->second.file, ":", it->second.line,
              "): an ordinary store overwrote the barrier — ", here());
  return it->second;
}

// Resumes the threads waiting on or polling `m` (entries of threads that were resumed otherwise
// since, or now wait elsewhere, are stale and skipped).
void wake_waiters(BlockState& b, MbarrierState& m, const void* bar) {
  b.idle_poll_rounds = 0;  // the barrier changed: a thread polling it may now get further
  for (ThreadState* t : m.waiters) {
    if ((t->state == State::Mbarrier || t->state == State::Poll) && t->mbarrier == bar) {
      make_runnable(b, *t);
    }
  }
  m.waiters.clear();
}

void check_tx(const MbarrierState& m, const void* bar, const char* op, const char* file, int line) {
  LATHE_CHECK(m.tx >= -kMaxTxCount && m.tx <= kMaxTxCount, mbarrier_where(bar, op, file, line),
              ": the transaction count of the current phase would be ", m.tx,
              ", outside the range the PTX ISA allows (|tx-count| < 2^20) — ", here());
}

void complete_phase_if_done(BlockState& b, MbarrierState& m, const void* bar, const char* op,
                            const char* file, int line) {
  if (m.pending != 0 || m.tx != 0) return;
  if (!m.copies.empty()) {
    const PendingCopy& c = m.copies.front();
    LATHE_FAIL(mbarrier_where(bar, op, file, line), ": phase ", m.phase,
               " completes (every arrival in, no transaction bytes expected) while ",
               m.copies.size(), " asynchronous cop", m.copies.size() == 1 ? "y" : "ies", " (",
               c.what, " at ", c.file, ":", c.line,
               ") that signal this barrier are still in flight: the expect_tx bytes are missing or "
               "fewer than the copies' bytes, so waiters would read the destination too early — ",
               here());
  }
  ++m.phase;
  m.pending = m.expected;
  m.tx = 0;
  wake_waiters(b, m, bar);
}

// Performs the copies pending on `m`, in issue order, each completing its bytes.
void perform_copies(BlockState& b, MbarrierState& m, const void* bar, const char* op,
                    const char* file, int line) {
  while (!m.copies.empty()) {
    PendingCopy copy = std::move(m.copies.front());
    m.copies.erase(m.copies.begin());
    copy.perform();
    m.tx -= copy.bytes;
    check_tx(m, bar, op, copy.file, copy.line);
    complete_phase_if_done(b, m, bar, op, file, line);
  }
}

}  // namespace

void mbarrier_init(void* bar, uint32_t count, const char* file, int line) {
  const char* op = "mbarrier.init.shared::cta.b64";
  LATHE_CHECK(g_block != nullptr, op, " called outside a kernel (", file, ":", line, ")");
  BlockState& b = *g_block;
  LATHE_CHECK(reinterpret_cast<uintptr_t>(bar) % 8 == 0 && is_shared_memory(bar, 8),
              mbarrier_where(bar, op, file, line),
              ": an mbarrier is an 8-byte aligned 64-bit object in shared memory — ", here());
  LATHE_CHECK(count >= 1 && count <= uint32_t(kMaxTxCount), mbarrier_where(bar, op, file, line),
              ": arrival count ", count, " is outside [1, 2^20 - 1] — ", here());
  const BookkeepingGuard bookkeeping;
  auto it = b.mbarriers.find(reinterpret_cast<uintptr_t>(bar));
  if (it != b.mbarriers.end()) {
    LATHE_CHECK(it->second.copies.empty() && it->second.waiters.empty(),
                mbarrier_where(bar, op, file, line),
                ": re-initialized while threads wait on it or copies signal it — ", here());
  }
  MbarrierState& m = b.mbarriers[reinterpret_cast<uintptr_t>(bar)];
  m = MbarrierState{};
  m.expected = m.pending = count;
  m.file = file;
  m.line = line;
  m.init_thread = g_thread;
  std::memcpy(bar, &kMbarrierMarker, sizeof(kMbarrierMarker));
}

void fence_mbarrier_init(const char* file, int line) {
  LATHE_CHECK(g_block != nullptr, "fence.mbarrier_init called outside a kernel (", file, ":", line,
              ")");
  const BookkeepingGuard bookkeeping;
  fence_inits_of_this_thread(*g_block);
}

void mbarrier_inval(void* bar, const char* file, int line) {
  const char* op = "mbarrier.inval.shared::cta.b64";
  const BookkeepingGuard bookkeeping;
  MbarrierState& m = find_mbarrier(bar, op, file, line);
  bool waiting = false;
  for (const ThreadState* t : m.waiters) {
    waiting |= (t->state == State::Mbarrier || t->state == State::Poll) && t->mbarrier == bar;
  }
  LATHE_CHECK(m.copies.empty() && !waiting, mbarrier_where(bar, op, file, line),
              ": invalidated while threads wait on it or copies signal it — ", here());
  g_block->mbarriers.erase(reinterpret_cast<uintptr_t>(bar));
  std::memset(bar, 0, 8);
}

uint64_t mbarrier_arrive(void* bar, uint32_t expect_tx_bytes, const char* file, int line) {
  const char* op = expect_tx_bytes ? "mbarrier.arrive.expect_tx.shared::cta.b64"
                                   : "mbarrier.arrive.shared::cta.b64";
  MbarrierState& m = find_mbarrier(bar, op, file, line);
  BlockState& b = *g_block;
  // A phase whose arrivals are all in has completed unless it waits for transaction bytes.
  LATHE_CHECK(m.pending > 0, mbarrier_where(bar, op, file, line),
              ": more arrivals than the barrier's count ", m.expected, " before phase ", m.phase,
              " completed (it still waits for ", m.tx, " transaction bytes) — ", here());
  m.tx += expect_tx_bytes;
  check_tx(m, bar, op, file, line);
  const uint64_t token = m.phase;
  --m.pending;
  LATHE_SIM_TSAN_RELEASE(bar);
  const BookkeepingGuard bookkeeping;
  wake_waiters(b, m, bar);
  complete_phase_if_done(b, m, bar, op, file, line);
  return token;
}

void mbarrier_expect_tx(void* bar, uint32_t bytes, const char* file, int line) {
  const char* op = "mbarrier.expect_tx.relaxed.cta.shared::cta.b64";
  MbarrierState& m = find_mbarrier(bar, op, file, line);
  m.tx += bytes;
  check_tx(m, bar, op, file, line);
  const BookkeepingGuard bookkeeping;
  wake_waiters(*g_block, m, bar);
}

void mbarrier_async_copy(void* bar, uint32_t bytes, std::function<void()> perform, const char* what,
                         const char* file, int line) {
  MbarrierState& m = find_mbarrier(bar, what, file, line);
  BlockState& b = *g_block;
  LATHE_CHECK(int64_t(bytes) <= kMaxTxCount, mbarrier_where(bar, what, file, line), ": ", bytes,
              " bytes exceed the transaction count range (2^20 - 1) — ", here());
  LATHE_CHECK(m.init_fenced, mbarrier_where(bar, what, file, line),
              ": the copy completes its bytes on a barrier whose mbarrier.init (", m.file, ":",
              m.line,
              ") no fence.mbarrier_init or fence.proxy.async of the initializing thread has "
              "followed: the init is a generic-proxy write that the TMA unit (the async proxy) may "
              "not see yet — ",
              here());
  const BookkeepingGuard bookkeeping;
  m.copies.push_back(PendingCopy{bytes, std::move(perform), what, file, line});
  // Under warp-random, half the copies land at once instead (with those issued before them on the
  // barrier), as a GPU's may: a stage refilled while a consumer's wgmma still reads it then shows
  // as an operand changed in flight. The lazy copies keep showing a consumer that skips its wait.
  if (b.schedule == Schedule::WarpRandom && (b.rng() & 1) != 0) {
    m.eager_unobserved = true;
    m.eager.what = what;
    m.eager.file = file;
    m.eager.line = line;
    perform_copies(b, m, bar, what, file, line);
  }
  wake_waiters(b, m, bar);
}

bool mbarrier_try_wait_parity(void* bar, uint32_t parity, const char* file, int line) {
  const char* op = "mbarrier.try_wait.parity.shared::cta.b64";
  MbarrierState& m = find_mbarrier(bar, op, file, line);
  BlockState& b = *g_block;
  ThreadState& t = *g_thread;
  LATHE_CHECK(parity <= 1, mbarrier_where(bar, op, file, line), ": phase parity ", parity,
              " is not 0 or 1 — ", here());
  {
    const BookkeepingGuard bookkeeping;
    perform_copies(b, m, bar, op, file, line);
  }
  if ((m.phase & 1) != parity) {
    LATHE_SIM_TSAN_ACQUIRE(bar);
    b.idle_poll_rounds = 0;
    m.eager_unobserved = false;
    return true;
  }
  t.state = State::Poll;
  t.mbarrier = bar;
  t.parity = parity;
  t.file = file;
  t.line = line;
  {
    const BookkeepingGuard bookkeeping;
    m.waiters.push_back(&t);
  }
  t.fiber.yield();
  return false;
}

void mbarrier_wait_parity(void* bar, uint32_t parity, const char* file, int line) {
  const char* op = "mbarrier.try_wait.parity.shared::cta.b64 (wait loop)";
  for (;;) {
    MbarrierState& m = find_mbarrier(bar, op, file, line);
    BlockState& b = *g_block;
    ThreadState& t = *g_thread;
    LATHE_CHECK(parity <= 1, mbarrier_where(bar, op, file, line), ": phase parity ", parity,
                " is not 0 or 1 — ", here());
    {
      const BookkeepingGuard bookkeeping;
      perform_copies(b, m, bar, op, file, line);
    }
    if ((m.phase & 1) != parity) {
      m.eager_unobserved = false;
      break;
    }
    t.state = State::Mbarrier;
    t.mbarrier = bar;
    t.parity = parity;
    t.file = file;
    t.line = line;
    {
      const BookkeepingGuard bookkeeping;
      m.waiters.push_back(&t);
    }
    t.fiber.yield();
  }
  LATHE_SIM_TSAN_ACQUIRE(bar);
}

// ---- named barriers ----

void named_barrier(unsigned id, unsigned nthreads, bool wait, const char* file, int line) {
  const char* op = wait ? "bar.sync" : "bar.arrive";
  LATHE_CHECK(g_block != nullptr, op, " called outside a kernel (", file, ":", line, ")");
  BlockState& b = *g_block;
  ThreadState& t = *g_thread;
  LATHE_CHECK(id >= 1 && id < kNamedBarriers, "cuda simulator: ", op, " ", id, ", ", nthreads,
              " at ", file, ":", line,
              ": barrier id must be 1..15 (0 is the barrier __syncthreads uses) — ", here());
  const unsigned block_threads = unsigned(b.warps.size()) * 32;
  LATHE_CHECK(nthreads > 0 && nthreads % 32 == 0 && nthreads <= block_threads,
              "cuda simulator: ", op, " ", id, ", ", nthreads, " at ", file, ":", line,
              ": the thread count must be a positive multiple of 32 (whole warps) and at most ",
              block_threads, " (the block's warps) — ", here());
  NamedBarrierState& n = b.named[id];
  if (n.arrived > 0) {
    LATHE_CHECK(n.expected == nthreads, "cuda simulator: threads meet at named barrier ", id,
                " with different thread counts: ", n.expected, " (", n.file, ":", n.line, ") and ",
                nthreads, " (", op, " at ", file, ":", line, ") — ", here());
  } else {
    n.expected = nthreads;
    n.file = file;
    n.line = line;
  }
  ++n.arrived;
  b.idle_poll_rounds = 0;
  LATHE_SIM_TSAN_RELEASE(&n);
  if (wait) {
    t.state = State::Named;
    t.named_id = id;
    t.file = file;
    t.line = line;
  }
  if (n.arrived == n.expected) {
    for (auto& other : b.threads) {
      if (other->state == State::Named && other->named_id == id) make_runnable(b, *other);
    }
    n.arrived = 0;
  }
  // bar.arrive does not wait, but switching here lets the schedule interleave as it would.
  if (!wait) make_runnable(b, t);
  t.fiber.yield();
  if (wait) LATHE_SIM_TSAN_ACQUIRE(&n);
}

unsigned linear_thread_id() {
  return g_thread ? g_thread->linear : 0;
}

namespace {
struct Segment {
  uintptr_t begin, end;
};
// The writable PT_LOAD segments of every loaded object (.data, .bss), refreshed when a lookup
// misses in case an object was loaded since.
std::vector<Segment> writable_segments() {
  std::vector<Segment> out;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* segments = static_cast<std::vector<Segment>*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_LOAD && (ph.p_flags & PF_W)) {
            const uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
            segments->push_back({begin, begin + ph.p_memsz});
          }
        }
        return 0;
      },
      &out);
  return out;
}
}  // namespace

bool is_shared_memory(const void* p, size_t bytes) {
  const auto begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  if (g_block && !g_block->shared.empty()) {
    const auto base = reinterpret_cast<uintptr_t>(g_block->shared.data());
    if (begin >= base && end <= base + g_block->shared.size()) return true;
  }
  static std::mutex mutex;
  static std::vector<Segment> segments;
  std::lock_guard<std::mutex> lock(mutex);
  for (int attempt = 0; attempt < 2; ++attempt) {
    for (const Segment& s : segments) {
      if (begin >= s.begin && end <= s.end) return true;
    }
    if (attempt == 0) segments = writable_segments();
  }
  return false;
}

}  // namespace lathe::sim
