// CudaGraph over the device's StreamApi graph functions (kernels/device_api.h): the cuda device
// captures on a stream of its own with a private allocator pool (kernels/cuda/cuda_device.cpp).
#include "lathe/core/cuda_graph.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <thread>

#include "core/graph_internal.h"
#include "kernels/device_api.h"
#include "lathe/core/autograd.h"
#include "lathe/core/error.h"
#include "lathe/core/functional.h"
#include "lathe/core/stream.h"

namespace lathe {

namespace {
// Words per block of replay slots: a block is allocated when the last one is full (slot addresses
// must stay fixed). A BERT training step takes a few words per dropout and per optimizer group.
constexpr int64_t kSlotBlockWords = 512;
}  // namespace

// Destructors must not throw: report instead (the process may be exiting).
template <class F>
void report_failure(const char* what, F f) {
  try {
    f();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lathe: %s: %s\n", what, e.what());
  }
}

// A private allocator pool, shared by the graphs captured into it: handed back when the last of
// them is destroyed.
struct CudaGraph::Pool {
  Device device;
  const kernels::StreamApi* api = nullptr;
  void* key = nullptr;
  ~Pool() {
    if (key) report_failure("~CudaGraph", [&] { api->release_pool(key, device.index); });
  }
};

namespace {

// A graph's replay slots (graph_internal.h): i64 blocks of device memory from the graph's pool.
struct ReplaySlots {
  struct Slot {
    size_t block;
    int64_t at;
    detail::ReplayFill fill;
  };
  Device device;
  std::vector<Tensor> blocks;
  int64_t block_used = kSlotBlockWords;
  std::vector<Slot> slots;

  uint64_t* take(int words, detail::ReplayFill fill) {
    LATHE_CHECK(words > 0 && words <= kSlotBlockWords, "replay_slot: ", words, " words (1 to ",
                kSlotBlockWords, ")");
    if (block_used + words > kSlotBlockWords) {
      blocks.push_back(empty({kSlotBlockWords}, TensorOptions(DType::I64).device(device)));
      block_used = 0;
    }
    const int64_t at = block_used;
    block_used += words;
    slots.push_back({blocks.size() - 1, at, std::move(fill)});
    return reinterpret_cast<uint64_t*>(blocks.back().data_ptr()) + at;
  }

  // Calls the fills, then queues the copies of their words on the current stream.
  void fill() {
    if (slots.empty()) return;
    std::vector<std::vector<int64_t>> host(blocks.size());
    for (size_t b = 0; b < blocks.size(); ++b) {
      host[b].resize(size_t(b + 1 == blocks.size() ? block_used : kSlotBlockWords));
    }
    for (Slot& slot : slots) {
      slot.fill(reinterpret_cast<uint64_t*>(host[slot.block].data() + slot.at));
    }
    for (size_t b = 0; b < blocks.size(); ++b) {
      // A small copy from the host: staged in pinned memory and queued without a host wait.
      blocks[b].narrow(0, 0, int64_t(host[b].size())).copy_(from_vector(host[b]));
    }
  }
};

// The captures running on this thread, innermost last.
thread_local std::vector<ReplaySlots*> t_captures;

}  // namespace

// A capture's streams, for the events and waits of core/stream.cpp (graph_internal.h). Owned by
// CudaGraph::capture for the time of the capture; events recorded in it keep weak pointers.
struct detail::CaptureRecord {
  Device device;
  const kernels::StreamApi* api = nullptr;
  void* stream = nullptr;  // the capture stream
  void* pool = nullptr;    // the graph's allocator pool
  std::vector<void*> joined;
  std::thread::id thread = std::this_thread::get_id();

  bool records_on(const void* s) const {
    return s == stream || std::find(joined.begin(), joined.end(), s) != joined.end();
  }
};

namespace {
// The captures running on this thread, with their streams (parallel to t_captures).
thread_local std::vector<std::shared_ptr<detail::CaptureRecord>> t_capture_records;
}  // namespace

namespace detail {
bool capturing_graph() {
  return !t_captures.empty();
}

bool capturing_device(Device device) {
  for (const ReplaySlots* c : t_captures) {
    if (c->device == device) return true;
  }
  return false;
}

uint64_t* replay_slot(Device device, int words, ReplayFill fill) {
  for (auto it = t_captures.rbegin(); it != t_captures.rend(); ++it) {
    if ((*it)->device == device) return (*it)->take(words, std::move(fill));
  }
  return nullptr;
}

std::weak_ptr<CaptureRecord> capture_recording_on(Device device, const void* stream) {
  for (auto it = t_capture_records.rbegin(); it != t_capture_records.rend(); ++it) {
    if ((*it)->device == device && (*it)->records_on(stream)) return *it;
  }
  return {};
}

void join_capture_before_wait(const std::weak_ptr<CaptureRecord>& capture, Device device,
                              void* stream) {
  const std::shared_ptr<CaptureRecord> record = capture.lock();
  LATHE_CHECK(record != nullptr,
              "Stream::wait: the event was recorded inside a graph capture that has ended; record "
              "it again outside the capture");
  LATHE_CHECK(record->thread == std::this_thread::get_id(),
              "Stream::wait: the event was recorded inside another thread's graph capture; fork "
              "streams into a capture from its body, on the capturing thread");
  LATHE_CHECK(record->device == device, "Stream::wait: the event was recorded inside a capture of ",
              record->device.str(), " and cannot order a stream of ", device.str());
  if (record->records_on(stream)) return;
  LATHE_CHECK(stream != nullptr, "Stream::wait: the default stream of ", device.str(),
              " cannot join a graph capture (CUDA refuses it); fork a created stream into the "
              "capture instead (Stream::create(device, {.blocking = false}))");
  record->api->capture_join(stream, record->pool, device.index);
  record->joined.push_back(stream);
}
}  // namespace detail

struct CudaGraph::State {
  Device device;
  const kernels::StreamApi* api = nullptr;
  void* graph = nullptr;
  std::shared_ptr<Pool> pool;  // released after the graph (members go in reverse order)
  ReplaySlots slots;           // its blocks go back to the pool before the pool is released

  ~State() {
    if (graph) report_failure("~CudaGraph", [&] { api->graph_destroy(graph, device.index); });
  }
};

CudaGraph::CudaGraph(std::unique_ptr<State> state) : state_(std::move(state)) {}
CudaGraph::CudaGraph(CudaGraph&&) noexcept = default;
CudaGraph& CudaGraph::operator=(CudaGraph&&) noexcept = default;
CudaGraph::~CudaGraph() = default;

CudaGraph CudaGraph::capture(Device device, const std::function<void()>& body,
                             CaptureOptions options) {
  const kernels::DeviceApi* api = kernels::device_api(device.type);
  LATHE_CHECK(api != nullptr, "CudaGraph::capture: this build has no backend for ", device.str());
  LATHE_CHECK(api->streams != nullptr && api->streams->capture_begin != nullptr,
              "CudaGraph::capture: ", device.str(),
              " has no graphs (its work runs as it is issued); capture on a cuda device");
  const int count = api->device_count ? api->device_count() : 0;
  LATHE_CHECK(device.index >= 0 && device.index < count, "CudaGraph::capture: ", device.str(),
              " does not exist (", count, " cuda devices)");

  auto state = std::make_unique<State>();
  state->device = device;
  state->api = api->streams;
  state->slots.device = device;
  if (const CudaGraph* other = options.share_memory_with) {
    LATHE_CHECK(other->state_ != nullptr,
                "CudaGraph::capture: share_memory_with names a graph that was moved from");
    LATHE_CHECK(other->state_->device == device,
                "CudaGraph::capture: share_memory_with names a graph of ",
                other->state_->device.str(), ", not of ", device.str());
    state->pool = other->state_->pool;
  } else {
    state->pool = std::make_shared<Pool>();
    state->pool->device = device;
    state->pool->api = api->streams;
  }
  void* stream = state->api->capture_begin(device.index, &state->pool->key);
  // From here on `state` holds the pool: a failure below releases it with `state` (unless it is
  // shared).
  auto record = std::make_shared<detail::CaptureRecord>();
  record->device = device;
  record->api = state->api;
  record->stream = stream;
  record->pool = state->pool->key;
  // Runs last, after the capture has ended however it ends: the streams that joined it leave it.
  // The capture's casts (on each of its streams) are the graph's (graph_internal.h).
  struct Forget {
    const detail::CaptureRecord& record;
    ~Forget() {
      detail::forget_autocast_casts(record.stream);
      for (void* joined : record.joined) {
        detail::forget_autocast_casts(joined);
        report_failure("CudaGraph::capture",
                       [&] { record.api->capture_leave(joined, record.device.index); });
      }
    }
  } forget{*record};
  {
    void* previous = state->api->current_stream(device.index);
    state->api->set_current_stream(stream, device.index);
    t_captures.push_back(&state->slots);
    t_capture_records.push_back(record);
    struct Restore {
      const kernels::StreamApi* api;
      void* previous;
      int index;
      ~Restore() {
        t_captures.pop_back();
        t_capture_records.pop_back();
        api->set_current_stream(previous, index);
      }
    } restore{state->api, previous, device.index};
    try {
      body();
    } catch (...) {
      try {
        state->api->capture_end(stream, device.index, false);
      } catch (...) {  // the body's error is the one to report
      }
      throw;
    }
  }
  // The body's temporaries are freed by now (into the pool); what it kept (the outputs) stays.
  state->graph = state->api->capture_end(stream, device.index, true);
  return CudaGraph(std::move(state));
}

void CudaGraph::replay() const {
  LATHE_CHECK(state_ != nullptr, "CudaGraph::replay: the graph was moved from");
  const int index = state_->device.index;
  state_->slots.fill();
  state_->api->graph_launch(state_->graph, state_->api->current_stream(index), index);
}

Device CudaGraph::device() const {
  LATHE_CHECK(state_ != nullptr, "CudaGraph::device: the graph was moved from");
  return state_->device;
}

GraphedFunction::GraphedFunction(Device device, Fn fn) : device_(device), fn_(std::move(fn)) {
  LATHE_CHECK(device.is_cuda(), "GraphedFunction: ", device.str(),
              " has no graphs; use a cuda device");
  LATHE_CHECK(fn_ != nullptr, "GraphedFunction: no function given");
}

std::vector<Tensor> GraphedFunction::operator()(const std::vector<Tensor>& inputs) {
  Signature signature;
  for (const Tensor& t : inputs) {
    LATHE_CHECK(t.defined(), "GraphedFunction: input ", signature.size(), " is undefined");
    signature.emplace_back(t.shape(), t.dtype());
  }
  auto found = graphs_.find(signature);
  if (found != graphs_.end()) {
    Captured& c = found->second;
    for (size_t i = 0; i < inputs.size(); ++i) c.inputs[i].copy_(inputs[i]);
    c.graph->replay();
    return c.outputs;
  }
  Captured c;
  for (const Tensor& t : inputs) {
    c.inputs.push_back(empty(t.shape(), TensorOptions(t.dtype()).device(device_)));
    c.inputs.back().copy_(t);
  }
  CaptureOptions options;
  options.share_memory_with = pool_owner_;
  c.graph = std::make_unique<CudaGraph>(CudaGraph::capture(
      device_,
      [&] {
        NoGradGuard no_grad;
        c.outputs = fn_(c.inputs);
      },
      options));
  c.graph->replay();
  Captured& kept = graphs_.emplace(std::move(signature), std::move(c)).first->second;
  if (pool_owner_ == nullptr) pool_owner_ = kept.graph.get();
  return kept.outputs;
}

}  // namespace lathe
