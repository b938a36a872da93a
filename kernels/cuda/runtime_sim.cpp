// The runtime of the simulated cuda devices (LATHE_CUDA_SIM): devices whose memory is host memory.
//
// Streams. Work on the legacy default stream (nullptr) runs at once, inside the call that issues
// it. Work on a created stream is queued and runs as late as CUDA's ordering allows: when the host
// waits for that stream (stream_synchronize, a memcpy_sync on it, device_synchronize, the
// synchronize of one of its events), when a stream that waits for one of its events runs, or,
// for a blocking stream, before the next legacy-stream operation of its device. So a consumer that
// forgot to wait for a producer on another stream reads the memory before the producer wrote it,
// and the tests see what a GPU would do only sometimes. Events complete when the queue reaches
// them, so the caching allocator's cross-stream bookkeeping (record_stream) is exercised too.
// LATHE_SIM_STREAMS=eager runs created streams' work at once instead (to tell a missing wait from
// another bug). Queued work runs on whichever host thread reaches the wait, with the stream's
// device current; one queued item runs at a time in the process.
//
// Several devices (two by default, LATHE_SIM_DEVICE_COUNT=1..8), so that code for cuda:N runs in
// CI: every device's memory is host memory, which a kernel could read from any device, so the
// runtime remembers which device each allocation belongs to and refuses what a GPU would not do
// or would do unordered: a kernel launched on one device with a pointer argument into another
// device's memory (pointers inside argument structs are not seen), a launch on another device's
// stream, and a copy or memset queued on a stream of another device than its memory's (on a GPU
// it would not wait for that device's kernels).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "kernels/cuda/tensor_map.h"
#include "kernels/sim/ptx_emulation.h"
#include "lathe/core/error.h"

namespace lathe::cuda::sim_streams {

struct Queue;

// How far a stream of a capture has seen each stream of it: for each queue, the number of graph
// nodes (a position in `nodes`) up to which that queue's work is ordered before this stream's next
// work, through the captured events it waited for (directly or through other streams).
using Seen = std::map<const Queue*, size_t>;

// A capture in progress (stream_begin_capture): the work submitted to its streams is kept as the
// graph's nodes instead of queued. Other streams join it by waiting for an event recorded in it
// (CUDA's fork), and must be joined back into the origin stream before the capture ends. The nodes
// of all its streams are kept in submission order: an order that respects every dependency the
// streams' waits declare, so a launch may run them one after another.
struct Capture {
  std::vector<std::function<void()>> nodes;
  std::string invalidated;  // why, once an operation not allowed in a capture was attempted
  const Queue* origin = nullptr;
  // The streams that joined, each with the node count after its last node (or at its joining).
  std::map<std::shared_ptr<Queue>, size_t> joined;
  std::map<const Queue*, Seen> seen;  // per stream of the capture, the origin's included
  bool ended = false;
};

// One created stream's queue. Shared (shared_ptr) by the stream handle, by the events recorded
// on it and by the waits of other streams, so a destroyed stream's handle can go while they live.
struct Queue {
  int device = 0;
  bool blocking = false;
  struct Item {
    uint64_t ticket = 0;
    std::function<void()> run;
  };
  std::deque<Item> items;            // guarded by g_state
  uint64_t submitted = 0;            // tickets handed out
  uint64_t completed = 0;            // tickets whose item has run
  std::shared_ptr<Capture> capture;  // guarded by g_state; null unless capturing
};

// Where an event's last record stands: done, or waiting for `ticket` of `queue`; or, for a record
// on a capturing stream, a point of that capture (never done: it orders the capture's streams).
struct Mark {
  std::shared_ptr<Queue> queue;  // null once done
  uint64_t ticket = 0;
  bool done = false;
  double time_ms = 0;
  std::shared_ptr<Capture> capture;  // set for a record inside a capture
  Seen seen;                         // what the recording stream had seen, itself included
};

}  // namespace lathe::cuda::sim_streams

// driver_types.h only declares these; the simulated build owns their definitions.
struct CUstream_st {
  int device = 0;
  std::shared_ptr<lathe::cuda::sim_streams::Queue> queue;
};
struct CUgraphExec_st {
  int device = 0;
  std::vector<std::function<void()>> nodes;  // each run again by every launch
};
struct CUevent_st {
  int device = 0;
  bool timing = false;
  std::shared_ptr<lathe::cuda::sim_streams::Mark> mark;  // null until recorded
};

namespace lathe::cuda {

namespace {

constexpr size_t kAlignment = 256;  // cudaMalloc's guarantee

double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

constexpr int kMaxDevices = 8;
thread_local int t_current_device = 0;
thread_local cudaStream_t t_current_stream[kMaxDevices] = {};

// Which simulated device each raw allocation belongs to: start -> (end, device).
struct Region {
  uintptr_t end;
  int device;
};
std::mutex g_regions_mutex;
std::map<uintptr_t, Region> g_regions;

// The device whose memory holds `p`, or -1 for host memory.
int device_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_regions_mutex);
  auto it = g_regions.upper_bound(address);
  if (it == g_regions.begin()) return -1;
  --it;
  return address < it->second.end ? it->second.device : -1;
}

// The device a stream belongs to; the legacy default stream (nullptr) is the current device's.
int device_of(cudaStream_t stream) {
  return stream ? stream->device : t_current_device;
}

// A copy or memset on `stream` touching `p`: both must be one device's.
void check_stream_memory(const char* what, cudaStream_t stream, const void* p) {
  const int memory = device_of(p), queue = device_of(stream);
  LATHE_CHECK(memory < 0 || memory == queue, what, " of memory on cuda:", memory,
              " was queued on a stream of cuda:", queue,
              ": it would not be ordered after cuda:", memory,
              "'s kernels (make the memory's device current first)");
}
std::atomic<uint64_t> g_host_waits{0};

// ---- stream order (see the top of the file) ----

using sim_streams::Capture;
using sim_streams::Mark;
using sim_streams::Queue;
using sim_streams::Seen;

bool streams_deferred() {
  static const bool deferred = [] {
    const char* env = std::getenv("LATHE_SIM_STREAMS");
    const std::string text = env ? env : "";
    LATHE_CHECK(text.empty() || text == "deferred" || text == "eager",
                "LATHE_SIM_STREAMS must be 'deferred' (the default) or 'eager', got '", text, "'");
    return text != "eager";
  }();
  return deferred;
}

std::mutex g_state;  // every Queue's items / counters, every Mark, g_queues
// Held while queued work runs: one item at a time in the process, and re-entered when an item
// (a wait) runs another stream's items.
std::recursive_mutex g_run;
std::vector<std::weak_ptr<Queue>> g_queues;  // live created streams, for the legacy stream's waits
// Items queued on any stream and not yet run: a legacy-stream operation looks at the queues only
// when there are some (most programs never create a stream).
std::atomic<int64_t> g_queued{0};

// Runs `queue`'s items until the one with `ticket` has run (or the queue is empty).
void run_queue(const std::shared_ptr<Queue>& queue, uint64_t ticket = UINT64_MAX) {
  std::lock_guard<std::recursive_mutex> running(g_run);
  for (;;) {
    Queue::Item item;
    {
      std::lock_guard<std::mutex> lock(g_state);
      if (queue->completed >= ticket || queue->items.empty()) return;
      item = std::move(queue->items.front());
      queue->items.pop_front();
    }
    struct Complete {  // an item that threw has still been consumed, as a failed launch is
      Queue& q;
      uint64_t ticket;
      ~Complete() {
        std::lock_guard<std::mutex> lock(g_state);
        q.completed = ticket;
        g_queued.fetch_sub(1, std::memory_order_relaxed);
      }
    } complete{*queue, item.ticket};
    const int previous = t_current_device;
    struct Restore {
      int device;
      ~Restore() { t_current_device = device; }
    } restore{previous};
    t_current_device = queue->device;
    item.run();
  }
}

// The live created streams of `device` (blocking ones only, if asked) that hold queued work.
std::vector<std::shared_ptr<Queue>> busy_queues(int device, bool blocking_only) {
  std::vector<std::shared_ptr<Queue>> out;
  if (g_queued.load(std::memory_order_relaxed) == 0) return out;
  std::lock_guard<std::mutex> lock(g_state);
  for (const std::weak_ptr<Queue>& w : g_queues) {
    std::shared_ptr<Queue> q = w.lock();
    // Work taken off the queue and still running counts: run_queue then waits for it.
    if (q && q->device == device && (q->blocking || !blocking_only) &&
        q->completed < q->submitted) {
      out.push_back(std::move(q));
    }
  }
  return out;
}

// Blocking streams that joined a capture (the capture streams themselves are non-blocking).
std::atomic<int> g_capturing_blocking{0};

// CUDA refuses a legacy-stream operation that would wait for a capturing blocking stream
// (cudaErrorStreamCaptureImplicit) and invalidates that capture.
void refuse_implicit_capture_dependency(int device) {
  if (g_capturing_blocking.load(std::memory_order_relaxed) == 0) return;
  std::string message;
  {
    std::lock_guard<std::mutex> lock(g_state);
    for (const std::weak_ptr<Queue>& w : g_queues) {
      std::shared_ptr<Queue> q = w.lock();
      if (!q || q->device != device || !q->blocking || !q->capture) continue;
      message = std::string("an operation on the default stream of cuda:") +
                std::to_string(device) +
                " while a blocking stream of it captures a graph would make the default stream "
                "wait for the capture (" +
                error_string(cudaErrorStreamCaptureImplicit) +
                "); fork non-blocking streams into a capture (StreamOptions{.blocking = false})";
      if (q->capture->invalidated.empty()) q->capture->invalidated = message;
      break;
    }
  }
  if (!message.empty()) LATHE_FAIL(message, "; the capture is invalidated");
}

// A legacy-stream operation on `device` first waits for the device's blocking streams.
void before_legacy_operation(int device) {
  refuse_implicit_capture_dependency(device);
  for (const std::shared_ptr<Queue>& q : busy_queues(device, true)) run_queue(q);
}

// Queues `work` on a created stream, or runs it now on the legacy stream (or in eager mode).
void submit(cudaStream_t stream, std::function<void()> work) {
  if (stream == nullptr) {
    before_legacy_operation(t_current_device);
    work();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(g_state);
    if (const std::shared_ptr<Capture>& capture = stream->queue->capture) {
      capture->nodes.push_back(std::move(work));
      if (auto joined = capture->joined.find(stream->queue); joined != capture->joined.end()) {
        joined->second = capture->nodes.size();
      }
      return;
    }
  }
  if (!streams_deferred()) {
    std::lock_guard<std::recursive_mutex> running(g_run);
    work();
    return;
  }
  std::lock_guard<std::mutex> lock(g_state);
  Queue& q = *stream->queue;
  q.items.push_back(Queue::Item{++q.submitted, std::move(work)});
  g_queued.fetch_add(1, std::memory_order_relaxed);
}

// What CUDA refuses on a capturing stream (a host wait, a query, an event record or a wait for an
// event recorded outside the capture): the call fails and the capture is invalidated, so that
// stream_end_capture fails too.
void refuse_if_capturing(cudaStream_t stream, const char* what, cudaError_t status) {
  if (stream == nullptr) return;
  std::string message;
  {
    std::lock_guard<std::mutex> lock(g_state);
    const std::shared_ptr<Capture>& capture = stream->queue->capture;
    if (!capture) return;
    message =
        std::string(what) + " on a stream that is capturing a graph (" + error_string(status) + ")";
    if (capture->invalidated.empty()) capture->invalidated = message;
  }
  LATHE_FAIL(message, "; the capture is invalidated");
}

// A captured event cannot be waited for by the host or timed: it marks a point of a graph.
void refuse_captured_mark(const std::shared_ptr<Mark>& mark, const char* what) {
  bool captured = false;
  {
    std::lock_guard<std::mutex> lock(g_state);
    captured = mark && mark->capture;
  }
  LATHE_CHECK(!captured, what, " of an event recorded inside a graph capture (",
              error_string(cudaErrorStreamCaptureUnsupported),
              "): such an event orders the capture's streams only; record it again outside a "
              "capture to wait for it from the host");
}

// Whether one of `device`'s streams is capturing.
bool device_capturing(int device) {
  std::lock_guard<std::mutex> lock(g_state);
  for (const std::weak_ptr<Queue>& w : g_queues) {
    std::shared_ptr<Queue> q = w.lock();
    if (q && q->device == device && q->capture) return true;
  }
  return false;
}

// Runs what `mark` waits for.
void complete_mark(const std::shared_ptr<Mark>& mark) {
  std::shared_ptr<Queue> queue;
  uint64_t ticket = 0;
  {
    std::lock_guard<std::mutex> lock(g_state);
    if (!mark || mark->done) return;
    queue = mark->queue;
    ticket = mark->ticket;
  }
  run_queue(queue, ticket);
}

// The error codes the simulated runtime can produce, with cudart's strings.
const char* sim_error_string(cudaError_t status) {
  switch (status) {
    case cudaSuccess:
      return "cudaSuccess: no error";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue: invalid argument";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation: out of memory";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice: invalid device ordinal";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice: no CUDA-capable device is detected";
    case cudaErrorNotReady:
      return "cudaErrorNotReady: device not ready";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle: invalid resource handle";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure: unspecified launch failure";
    case cudaErrorIllegalState:
      return "cudaErrorIllegalState: the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated: operation failed due to a previous error during "
             "capture";
    case cudaErrorStreamCaptureIsolation:
      return "cudaErrorStreamCaptureIsolation: operation would have resulted in a merge of a "
             "capture sequence with an unrelated stream";
    case cudaErrorStreamCaptureUnmatched:
      return "cudaErrorStreamCaptureUnmatched: the capture was not initiated in this stream";
    case cudaErrorStreamCaptureUnjoined:
      return "cudaErrorStreamCaptureUnjoined: the capture sequence contains a fork that was not "
             "joined to the primary stream";
    case cudaErrorStreamCaptureImplicit:
      return "cudaErrorStreamCaptureImplicit: operation would have resulted in a disallowed "
             "implicit dependency on a current capture sequence from cudaStreamLegacy";
    default:
      return nullptr;
  }
}

}  // namespace

std::string error_string(cudaError_t status) {
  const char* s = sim_error_string(status);
  return s ? s : "cuda error " + std::to_string(int(status));
}

void throw_error(cudaError_t status, const char* expr, const char* file, int line) {
  LATHE_FAIL(file, ":", line, ": ", expr, " failed: ", error_string(status));
}

int device_count() {
  static const int count = [] {
    const char* env = std::getenv("LATHE_SIM_DEVICE_COUNT");
    if (env == nullptr || *env == '\0') return 2;
    const std::string text(env);
    const bool ok = text.size() == 1 && text[0] >= '1' && text[0] <= '0' + kMaxDevices;
    LATHE_CHECK(ok, "LATHE_SIM_DEVICE_COUNT must be a number of simulated cuda devices from 1 to ",
                kMaxDevices, ", got '", text, "'");
    return text[0] - '0';
  }();
  return count;
}

const DeviceProperties& device_properties(int device) {
  check_device(device, "device_properties");
  // An H100's limits, but few SMs: grids sized from the SM count stay small, and the simulator
  // pays ~10 us per block.
  static const DeviceProperties props = [] {
    DeviceProperties p;
    p.name = "simulated";
    p.simulated = true;
    p.compute_major = 9;
    p.compute_minor = 0;
    p.multiprocessor_count = 4;
    p.max_threads_per_block = 1024;
    p.warp_size = 32;
    p.total_memory = size_t(16) << 30;
    p.max_shared_memory_per_block = 227 * 1024;
    p.l2_cache_bytes = size_t(50) << 20;
    return p;
  }();
  return props;
}

std::string describe_device(int device) {
  check_device(device, "describe_device");
  return "cuda:" + std::to_string(device) + " (simulated)";
}

int current_device() {
  return t_current_device;
}

void check_device(int device, const char* what) {
  LATHE_CHECK(device >= 0 && device < device_count(), what, ": device cuda:", device,
              " does not exist (", device_count(), " cuda devices in this build)");
}

void set_device(int device) {
  check_device(device, "set_device");
  t_current_device = device;
}

DeviceGuard::DeviceGuard(int device) : previous_(current_device()) {
  set_device(device);
}

DeviceGuard::~DeviceGuard() {
  t_current_device = previous_;
}

void device_synchronize(int device) {
  check_device(device, "device_synchronize");
  if (device_capturing(device)) {
    LATHE_FAIL("device_synchronize of cuda:", device,
               " while one of its streams is capturing a graph (",
               error_string(cudaErrorStreamCaptureUnsupported), ")");
  }
  g_host_waits.fetch_add(1, std::memory_order_relaxed);
  for (const std::shared_ptr<Queue>& q : busy_queues(device, false)) run_queue(q);
}

void* raw_malloc(size_t bytes, int device) {
  check_device(device, "raw_malloc");
  size_t rounded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (p != nullptr) {
    const auto start = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(g_regions_mutex);
    g_regions[start] = Region{start + rounded, device};
  }
  return p;
}

void raw_free(void* ptr, int device) {
  check_device(device, "raw_free");
  // cudaFree waits for the device first: queued work may still use the memory.
  for (const std::shared_ptr<Queue>& q : busy_queues(device, false)) run_queue(q);
  if (ptr != nullptr) {
    std::lock_guard<std::mutex> lock(g_regions_mutex);
    const auto it = g_regions.find(reinterpret_cast<uintptr_t>(ptr));
    LATHE_CHECK(it != g_regions.end() && it->second.device == device, "raw_free: ", ptr,
                " is not an allocation of cuda:", device);
    g_regions.erase(it);
  }
  std::free(ptr);
}

void memory_info(int device, size_t* free_bytes, size_t* total_bytes) {
  const DeviceProperties& p = device_properties(device);
  if (free_bytes) *free_bytes = p.total_memory;
  if (total_bytes) *total_bytes = p.total_memory;
}

cudaStream_t stream_create(int device, bool blocking) {
  check_device(device, "stream_create");
  (void)streams_deferred();  // a bad LATHE_SIM_STREAMS is reported at the first stream
  auto* s = new CUstream_st;
  s->device = device;
  s->queue = std::make_shared<Queue>();
  s->queue->device = device;
  s->queue->blocking = blocking;
  std::lock_guard<std::mutex> lock(g_state);
  std::erase_if(g_queues, [](const std::weak_ptr<Queue>& w) { return w.expired(); });
  g_queues.push_back(s->queue);
  return s;
}

void stream_destroy(cudaStream_t stream) {
  if (stream == nullptr) return;
  refuse_if_capturing(stream, "stream_destroy", cudaErrorStreamCaptureUnsupported);
  // A GPU finishes a destroyed stream's work in the background; here it runs now, so that nothing
  // queued outlives the handle unseen.
  run_queue(stream->queue);
  delete stream;
}

void stream_synchronize(cudaStream_t stream) {
  refuse_if_capturing(stream, "stream_synchronize (a host wait)",
                      cudaErrorStreamCaptureUnsupported);
  g_host_waits.fetch_add(1, std::memory_order_relaxed);
  if (stream == nullptr) {
    before_legacy_operation(t_current_device);
  } else {
    run_queue(stream->queue);
  }
}

bool stream_query(cudaStream_t stream) {
  if (stream == nullptr) return busy_queues(t_current_device, true).empty();
  refuse_if_capturing(stream, "stream_query", cudaErrorStreamCaptureUnsupported);
  std::lock_guard<std::mutex> lock(g_state);
  return stream->queue->completed == stream->queue->submitted;
}

cudaStream_t current_stream(int device) {
  if (device < 0) device = current_device();
  check_device(device, "current_stream");
  return t_current_stream[device];
}

void set_current_stream(cudaStream_t stream, int device) {
  if (device < 0) device = current_device();
  check_device(device, "set_current_stream");
  LATHE_CHECK(stream == nullptr || stream->device == device,
              "set_current_stream: a stream of cuda:", stream ? stream->device : -1,
              " cannot be the current stream of cuda:", device);
  t_current_stream[device] = stream;
}

StreamGuard::StreamGuard(cudaStream_t stream, int device)
    : device_(device < 0 ? current_device() : device), previous_(current_stream(device_)) {
  set_current_stream(stream, device_);
}

StreamGuard::~StreamGuard() {
  set_current_stream(previous_, device_);
}

cudaEvent_t event_create(int device, bool timing) {
  check_device(device, "event_create");
  auto* e = new CUevent_st;
  e->device = device;
  e->timing = timing;
  return e;
}

void event_destroy(cudaEvent_t event) {
  delete event;  // a pending record still completes: its Mark is shared with the queued item
}

void event_record(cudaEvent_t event, cudaStream_t stream) {
  LATHE_CHECK(event != nullptr, "event_record: null event");
  const int device = stream ? stream->device : t_current_device;
  LATHE_CHECK(device == event->device, "event_record: an event of cuda:", event->device,
              " recorded on a stream of cuda:", device, " (cudaErrorInvalidResourceHandle)");
  auto mark = std::make_shared<Mark>();
  if (stream != nullptr) {
    // A record on a capturing stream marks a point of the capture, which other streams may wait
    // for (a fork) and the origin stream must wait for at the end (a join).
    std::lock_guard<std::mutex> lock(g_state);
    if (const std::shared_ptr<Capture>& capture = stream->queue->capture) {
      mark->capture = capture;
      mark->seen = capture->seen[stream->queue.get()];
      mark->seen[stream->queue.get()] = capture->nodes.size();
      event->mark = std::move(mark);
      return;
    }
  }
  if (stream == nullptr || !streams_deferred()) {
    if (stream == nullptr) before_legacy_operation(device);
    mark->done = true;
    mark->time_ms = now_ms();
  } else {
    std::lock_guard<std::mutex> lock(g_state);
    Queue& q = *stream->queue;
    mark->queue = stream->queue;
    mark->ticket = ++q.submitted;
    g_queued.fetch_add(1, std::memory_order_relaxed);
    q.items.push_back(Queue::Item{mark->ticket, [mark] {
                                    std::lock_guard<std::mutex> inner(g_state);
                                    mark->done = true;
                                    mark->time_ms = now_ms();
                                    mark->queue.reset();
                                  }});
  }
  std::lock_guard<std::mutex> lock(g_state);
  event->mark = std::move(mark);
}

bool event_query(cudaEvent_t event) {
  LATHE_CHECK(event != nullptr, "event_query: null event");
  std::shared_ptr<Mark> mark;
  {
    std::lock_guard<std::mutex> lock(g_state);
    mark = event->mark;
  }
  refuse_captured_mark(mark, "event_query");
  std::lock_guard<std::mutex> lock(g_state);
  return !mark || mark->done;  // never recorded: complete, as in CUDA
}

void event_synchronize(cudaEvent_t event) {
  LATHE_CHECK(event != nullptr, "event_synchronize: null event");
  g_host_waits.fetch_add(1, std::memory_order_relaxed);
  std::shared_ptr<Mark> mark;
  {
    std::lock_guard<std::mutex> lock(g_state);
    mark = event->mark;
  }
  refuse_captured_mark(mark, "event_synchronize");
  complete_mark(mark);
}

namespace {

// A wait for an event recorded inside a capture: `stream` joins that capture if it is not one of
// its streams yet, and from now on has seen what the recording stream had. The capture keeps its
// nodes in submission order, so the wait itself needs no node.
void join_capture(cudaStream_t stream, const std::shared_ptr<Mark>& mark) {
  std::string refusal;
  cudaError_t status = cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(g_state);
    const std::shared_ptr<Capture>& capture = mark->capture;
    if (capture->ended) {
      refusal = "stream_wait_event for an event recorded in a capture that has ended";
      status = cudaErrorStreamCaptureInvalidated;
    } else if (stream == nullptr) {
      refusal =
          "stream_wait_event of the default stream for an event recorded inside a capture "
          "(the default stream cannot join a capture)";
      status = cudaErrorStreamCaptureImplicit;
      if (capture->invalidated.empty()) capture->invalidated = refusal;
    } else if (stream->queue->capture && stream->queue->capture != capture) {
      refusal =
          "stream_wait_event for an event recorded in another capture than the one the "
          "stream is capturing";
      status = cudaErrorStreamCaptureIsolation;
      if (capture->invalidated.empty()) capture->invalidated = refusal;
    } else {
      if (!stream->queue->capture) {
        stream->queue->capture = capture;
        capture->joined[stream->queue] = capture->nodes.size();
        if (stream->queue->blocking) g_capturing_blocking.fetch_add(1);
      }
      Seen& seen = capture->seen[stream->queue.get()];
      for (const auto& [queue, position] : mark->seen) {
        seen[queue] = std::max(seen[queue], position);
      }
    }
  }
  if (!refusal.empty()) LATHE_FAIL(refusal, " (", error_string(status), ")");
}

}  // namespace

void stream_wait_event(cudaStream_t stream, cudaEvent_t event) {
  LATHE_CHECK(event != nullptr, "stream_wait_event: null event");
  std::shared_ptr<Mark> mark;
  {
    std::lock_guard<std::mutex> lock(g_state);
    mark = event->mark;  // the record as of now: a later re-record is not waited for
  }
  if (!mark) return;  // never recorded: nothing to wait for
  if (mark->capture) {
    join_capture(stream, mark);
    return;
  }
  refuse_if_capturing(stream, "stream_wait_event for an event recorded outside the capture",
                      cudaErrorStreamCaptureIsolation);
  submit(stream, [mark] { complete_mark(mark); });
}

float event_elapsed_ms(cudaEvent_t start, cudaEvent_t end) {
  LATHE_CHECK(start && end && start->timing && end->timing,
              "event_elapsed_ms: both events must be created with timing enabled");
  std::shared_ptr<Mark> start_mark, end_mark;
  {
    std::lock_guard<std::mutex> lock(g_state);
    start_mark = start->mark;
    end_mark = end->mark;
  }
  refuse_captured_mark(start_mark, "event_elapsed_ms");
  refuse_captured_mark(end_mark, "event_elapsed_ms");
  std::lock_guard<std::mutex> lock(g_state);
  if (!start->mark || !end->mark) {
    LATHE_CUDA_CHECK(cudaErrorInvalidResourceHandle);
  }
  if (!start->mark->done || !end->mark->done) {
    LATHE_CUDA_CHECK(cudaErrorNotReady);
  }
  return float(end->mark->time_ms - start->mark->time_ms);
}

void stream_begin_capture(cudaStream_t stream) {
  LATHE_CHECK(stream != nullptr, "stream_begin_capture: the legacy default stream cannot capture");
  std::lock_guard<std::mutex> lock(g_state);
  LATHE_CHECK(!stream->queue->capture, "stream_begin_capture: the stream is capturing already (",
              error_string(cudaErrorIllegalState), ")");
  stream->queue->capture = std::make_shared<sim_streams::Capture>();
  stream->queue->capture->origin = stream->queue.get();
}

cudaGraphExec_t stream_end_capture(cudaStream_t stream) {
  LATHE_CHECK(stream != nullptr, "stream_end_capture: the legacy default stream never captures");
  std::shared_ptr<sim_streams::Capture> capture;
  std::string unjoined;
  {
    std::lock_guard<std::mutex> lock(g_state);
    capture = stream->queue->capture;
    LATHE_CHECK(capture == nullptr || capture->origin == stream->queue.get(),
                "stream_end_capture: the stream joined a capture that another stream began (",
                error_string(cudaErrorStreamCaptureUnmatched), ")");
    if (capture != nullptr) {
      // Every stream that joined must have been joined back: the origin has seen its last node.
      const Seen& origin = capture->seen[stream->queue.get()];
      for (const auto& [queue, last] : capture->joined) {
        auto seen = origin.find(queue.get());
        if (unjoined.empty() && (seen == origin.end() || seen->second < last)) {
          std::ostringstream what;
          what << "stream " << queue.get() << " joined the capture and was not joined back (make "
               << "the capturing stream wait for it after its last work)";
          unjoined = what.str();
        }
        queue->capture.reset();
        if (queue->blocking) g_capturing_blocking.fetch_sub(1);
      }
      capture->ended = true;
      stream->queue->capture.reset();  // the stream is not capturing any more
    }
  }
  LATHE_CHECK(capture != nullptr, "stream_end_capture: the stream is not capturing (",
              error_string(cudaErrorIllegalState), ")");
  LATHE_CHECK(capture->invalidated.empty(),
              "stream_end_capture: ", error_string(cudaErrorStreamCaptureInvalidated), " (",
              capture->invalidated, ")");
  LATHE_CHECK(unjoined.empty(),
              "stream_end_capture: ", error_string(cudaErrorStreamCaptureUnjoined), " (", unjoined,
              ")");
  auto* graph = new CUgraphExec_st;
  graph->device = stream->device;
  graph->nodes = std::move(capture->nodes);
  return graph;
}

bool stream_is_capturing(cudaStream_t stream) {
  if (stream == nullptr) return false;
  std::lock_guard<std::mutex> lock(g_state);
  return stream->queue->capture != nullptr;
}

void graph_launch(cudaGraphExec_t graph, cudaStream_t stream) {
  LATHE_CHECK(graph != nullptr, "graph_launch: null graph");
  LATHE_CHECK(device_of(stream) == graph->device, "graph_launch: a graph of cuda:", graph->device,
              " launched on a stream of cuda:", device_of(stream),
              " (cudaErrorInvalidResourceHandle)");
  for (const std::function<void()>& node : graph->nodes) submit(stream, node);
}

void graph_destroy(cudaGraphExec_t graph) {
  delete graph;  // launches already queued hold copies of the nodes
}

void memcpy_async(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t stream) {
  if (bytes == 0) return;
  LATHE_CHECK(dst != nullptr && src != nullptr, "memcpy_async: null pointer (dst ", dst, ", src ",
              src, ", ", bytes, " bytes)");
  if (kind != CopyKind::DeviceToHost) check_stream_memory("memcpy_async: a copy", stream, dst);
  if (kind != CopyKind::HostToDevice) check_stream_memory("memcpy_async: a copy", stream, src);
  submit(stream, [dst, src, bytes] { std::memmove(dst, src, bytes); });
}

void memcpy_sync(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t stream) {
  memcpy_async(dst, src, bytes, kind, stream);
  stream_synchronize(stream);
}

void memset_async(void* dst, int byte_value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  LATHE_CHECK(dst != nullptr, "memset_async: null pointer");
  check_stream_memory("memset_async: a memset", stream, dst);
  submit(stream, [dst, byte_value, bytes] { std::memset(dst, byte_value, bytes); });
}

void simulated_submit(cudaStream_t stream, std::function<void()> work) {
  submit(stream, std::move(work));
}

void check_simulated_launch(const char* name, cudaStream_t stream,
                            std::initializer_list<const void*> pointers) {
  const int device = t_current_device;
  LATHE_CHECK(stream == nullptr || stream->device == device, "launch of ", name,
              " on cuda:", device, " was given a stream of cuda:", stream ? stream->device : -1,
              " (cudaErrorInvalidResourceHandle on a GPU)");
  int index = 0;
  for (const void* p : pointers) {
    const int owner = p ? device_of(p) : -1;
    LATHE_CHECK(owner < 0 || owner == device, "launch of ", name, " on cuda:", device,
                ": argument ", index, " points into memory of cuda:", owner,
                " (an illegal address on a GPU; the op must make its tensors' device current)");
    ++index;
  }
}

uint64_t host_waits() {
  return g_host_waits.load(std::memory_order_relaxed);
}

void* host_alloc_mapped(size_t bytes) {
  void* p = std::calloc(1, std::max<size_t>(bytes, 1));
  LATHE_CHECK(p != nullptr, "host_alloc_mapped: out of host memory (", bytes, " bytes)");
  return p;
}

void host_free_mapped(void* host) {
  std::free(host);
}

namespace detail {

// The simulator's own encoding (sim::TmaFields), read back by the TMA emulation.
TensorMap encode_tensor_map(const TensorMapArgs& a) {
  const uint32_t element = uint32_t(element_size(a.dtype));
  // Where the hardware puts the rows of a narrower box under the 128-byte swizzle is not
  // documented, so the emulation refuses to guess.
  LATHE_CHECK(
      a.swizzle != TensorMapSwizzle::B128 || a.box[0] * element == 128,
      a.rank == 2 ? "make_tensor_map_2d" : "make_tensor_map_3d", ": box[0] = ", a.box[0],
      " elements of ", dtype_name(a.dtype), " is ", a.box[0] * element,
      " bytes; the simulator emulates the 128-byte swizzle only for box rows of exactly 128 "
      "bytes (the layout wgmma's 128-byte swizzled operands use)");
  sim::TmaFields f{};
  f.marker = sim::kTmaMarker;
  f.base = reinterpret_cast<uintptr_t>(a.base);
  for (int d = 0; d < 3; ++d) {
    f.sizes[d] = a.sizes[d];
    f.strides[d] = a.strides[d];
    f.box[d] = a.box[d];
  }
  f.rank = uint32_t(a.rank);
  f.element_bytes = element;
  f.swizzle128 = a.swizzle == TensorMapSwizzle::B128;
  TensorMap map{};
  std::memcpy(&map, &f, sizeof(f));
  return map;
}

}  // namespace detail

}  // namespace lathe::cuda
