#include "lathe/core/random.h"

#include <mutex>

#include "core/graph_internal.h"
#include "core/random_replay.h"
#include "lathe/core/error.h"

namespace lathe {

namespace {
std::mutex g_mutex;
PhiloxState g_state{0x5eed5eed5eedULL, 0};

// This thread's active recorders and replays, innermost last.
thread_local std::vector<detail::PhiloxRecorder*> t_recorders;
thread_local std::vector<detail::PhiloxReplay*> t_replays;
}  // namespace

void manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_state = PhiloxState{seed, 0};
}

namespace {

// `numel` values from the global generator.
PhiloxState reserve_global(int64_t numel) {
  std::lock_guard<std::mutex> lock(g_mutex);
  PhiloxState state = g_state;
  g_state.offset += uint64_t((numel + 3) / 4);
  return state;
}

// What the calling thread draws outside a capture: served by its innermost checkpoint re-run if
// there is one, else by the global generator; seen by its recorders either way.
PhiloxState reserve_eager(int64_t numel) {
  const PhiloxState state =
      t_replays.empty() ? reserve_global(numel) : t_replays.back()->serve(numel);
  for (detail::PhiloxRecorder* r : t_recorders) r->add({state, numel});
  return state;
}

// Shared by both overloads: `device` is null for a draw that names none.
PhiloxState reserve(int64_t numel, const Device* device) {
  if (!t_replays.empty() || !detail::capturing_graph()) return reserve_eager(numel);
  // A capture records kernel arguments: a (seed, offset) passed by value would make every replay
  // repeat the capture's numbers. The kernels read a slot the replay fills instead.
  LATHE_CHECK(device != nullptr,
              "a random draw that names no device (philox_reserve(numel)) inside "
              "CudaGraph::capture: every replay would repeat its numbers; pass the device");
  // The fill runs in replay(), on the replaying thread: a graph replayed inside a checkpointed
  // block has its draws recorded there, and the backward's re-run replays them.
  uint64_t* slot = detail::replay_slot(*device, 2, [numel](uint64_t* words) {
    const PhiloxState drawn = reserve_eager(numel);
    words[0] = drawn.seed;
    words[1] = drawn.offset;
  });
  if (slot == nullptr) return reserve_eager(numel);  // another device's work runs as issued
  PhiloxState state;
  state.device_state = slot;
  for (detail::PhiloxRecorder* r : t_recorders) r->add({state, numel});
  return state;
}

}  // namespace

PhiloxState philox_reserve(int64_t numel) {
  return reserve(numel, nullptr);
}

PhiloxState philox_reserve(int64_t numel, Device device) {
  return reserve(numel, &device);
}

PhiloxState philox_current() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_state;
}

void philox_set(PhiloxState state) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_state = state;
}

namespace detail {

PhiloxRecorder::PhiloxRecorder() {
  t_recorders.push_back(this);
}
PhiloxRecorder::~PhiloxRecorder() {
  t_recorders.pop_back();
}

PhiloxReplay::PhiloxReplay(const std::vector<PhiloxDraw>& draws, std::string what)
    : draws_(draws), what_(std::move(what)) {
  t_replays.push_back(this);
}
PhiloxReplay::~PhiloxReplay() {
  t_replays.pop_back();
}
namespace {
constexpr const char* kChangedState =
    " (does the block depend on state that changed since, such as train/eval mode?)";
}  // namespace

PhiloxState PhiloxReplay::serve(int64_t numel) {
  const size_t k = next_;
  LATHE_CHECK(k < draws_.size(), what_, ": the re-run drew random numbers ", draws_.size() + 1,
              " times where the first run drew ", draws_.size(), " times", kChangedState);
  const PhiloxDraw& d = draws_[k];
  LATHE_CHECK(d.numel == numel, what_, ": draw ", k + 1, " of the re-run asked for ", numel,
              " random numbers where the first run drew ", d.numel, kChangedState);
  ++next_;
  return d.state;
}

void PhiloxReplay::check_all_served() const {
  LATHE_CHECK(next_ == draws_.size(), what_, ": the re-run drew random numbers ", next_,
              " times where the first run drew ", draws_.size(), " times", kChangedState);
}

}  // namespace detail

}  // namespace lathe
