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

PhiloxState philox_reserve(int64_t numel) {
  // A capture records the (seed, offset) as a kernel argument: every replay would draw the same
  // numbers (lathe/core/cuda_graph.h).
  LATHE_CHECK(!detail::capturing_graph(),
              "a random draw (dropout in training, rand, randn) inside CudaGraph::capture: every "
              "replay would repeat its numbers; capture in eval mode");
  PhiloxState state;
  if (!t_replays.empty()) {
    state = t_replays.back()->serve(numel);
  } else {
    std::lock_guard<std::mutex> lock(g_mutex);
    state = g_state;
    g_state.offset += uint64_t((numel + 3) / 4);
  }
  for (detail::PhiloxRecorder* r : t_recorders) r->add({state, numel});
  return state;
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
