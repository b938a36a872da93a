// Streams and events over the device's StreamApi (kernels/device_api.h); a device without one
// (the cpu) runs its work as it is issued, so its streams are the default stream and its events
// hold the host's clock.
#include "lathe/core/stream.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <sstream>

#include "core/graph_internal.h"
#include "kernels/device_api.h"
#include "lathe/core/error.h"
#include "lathe/core/tensor.h"

namespace lathe {

namespace {

// The device's StreamApi, or null for a device whose work is synchronous. Throws for a device this
// build has no backend for, or one that does not exist.
const kernels::StreamApi* stream_api(Device device, const char* what) {
  const kernels::DeviceApi* api = kernels::device_api(device.type);
  LATHE_CHECK(api != nullptr, what, ": this build has no backend for ", device.str());
  if (device.is_cuda()) {
    const int count = api->device_count ? api->device_count() : 0;
    LATHE_CHECK(device.index >= 0 && device.index < count, what, ": ", device.str(),
                " does not exist (", count, " cuda devices)");
  }
  return api->streams;
}

double host_clock_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

}  // namespace

Stream Stream::default_stream(Device device) {
  stream_api(device, "Stream::default_stream");
  return Stream(device, nullptr, true);
}

Stream Stream::create(Device device, StreamOptions options) {
  const kernels::StreamApi* api = stream_api(device, "Stream::create");
  if (api == nullptr) return Stream(device, nullptr, true);
  return Stream(device, api->pooled_stream(device.index, options.blocking), options.blocking);
}

void Stream::synchronize() const {
  if (const kernels::StreamApi* api = stream_api(device_, "Stream::synchronize")) {
    api->stream_synchronize(handle_, device_.index);
  }
}

bool Stream::query() const {
  const kernels::StreamApi* api = stream_api(device_, "Stream::query");
  return api == nullptr || api->stream_query(handle_, device_.index);
}

void Stream::wait(const Stream& other) const {
  if (other == *this) return;
  const kernels::StreamApi* api = stream_api(device_, "Stream::wait");
  if (api == nullptr && other.device_.is_cpu()) return;
  // The marker event is destroyed right after the wait is queued, which CUDA allows.
  Event marker(other.device_);
  marker.record(other);
  wait(marker);
}

std::string Stream::str() const {
  std::ostringstream out;
  out << device_.str();
  if (handle_ == nullptr) {
    out << " default stream";
  } else {
    out << " stream " << handle_ << (blocking_ ? "" : " (non-blocking)");
  }
  return out.str();
}

Stream current_stream(Device device) {
  const kernels::StreamApi* api = stream_api(device, "current_stream");
  if (api == nullptr) return Stream::default_stream(device);
  void* handle = api->current_stream(device.index);
  return Stream(device, handle, handle == nullptr || api->stream_blocking(handle, device.index));
}

StreamGuard::StreamGuard(const Stream& stream) : previous_(current_stream(stream.device())) {
  if (const kernels::StreamApi* api = stream_api(stream.device(), "StreamGuard")) {
    api->set_current_stream(stream.native_handle(), stream.device().index);
  }
}

StreamGuard::~StreamGuard() {
  const kernels::DeviceApi* api = kernels::device_api(previous_.device().type);
  if (api && api->streams) {
    api->streams->set_current_stream(previous_.native_handle(), previous_.device().index);
  }
}

// ---- Event ----

struct Event::State {
  const kernels::StreamApi* api = nullptr;  // null on the cpu
  void* handle = nullptr;
  bool timing = false;
  // Copies of an Event may be recorded and read from several threads.
  std::atomic<bool> recorded{false};
  std::atomic<double> host_ms{0};  // the cpu's record time
  // Set when the last record was on a stream of a graph capture (graph_internal.h): the event then
  // marks a point of the capture, which only streams may wait for.
  std::mutex capture_mutex;
  std::weak_ptr<detail::CaptureRecord> captured_in;
  bool captured = false;
  ~State() {
    if (api && handle) {
      try {
        api->event_destroy(handle);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "lathe: %s\n", e.what());
      }
    }
  }
};

Event::Event(Device device, EventOptions options)
    : device_(device), state_(std::make_shared<State>()) {
  state_->api = stream_api(device, "Event");
  state_->timing = options.timing;
  if (state_->api) state_->handle = state_->api->event_create(device.index, options.timing);
}

void Event::record(const Stream& stream) {
  LATHE_CHECK(stream.device() == device_, "Event::record: an event of ", device_.str(),
              " cannot mark work of ", stream.str());
  if (state_->api) {
    std::weak_ptr<detail::CaptureRecord> capture =
        detail::capture_recording_on(device_, stream.native_handle());
    state_->api->event_record(state_->handle, stream.native_handle(), device_.index);
    std::lock_guard<std::mutex> lock(state_->capture_mutex);
    state_->captured = !capture.expired();
    state_->captured_in = std::move(capture);
  } else {
    state_->host_ms = host_clock_ms();
  }
  state_->recorded = true;
}

namespace {
void refuse_captured(const Event& event, bool captured, const char* what) {
  LATHE_CHECK(!captured, what, ": the event (", event.device().str(),
              ") was last recorded inside a graph capture, where it only orders the capture's "
              "streams (Stream::wait); record it again outside the capture to wait for it here");
}
}  // namespace

bool Event::captured() const {
  std::lock_guard<std::mutex> lock(state_->capture_mutex);
  return state_->captured;
}

void Event::record() {
  record(current_stream(device_));
}

bool Event::recorded() const {
  return state_->recorded;
}

bool Event::query() const {
  refuse_captured(*this, captured(), "Event::query");
  return state_->api == nullptr || state_->api->event_query(state_->handle);
}

void Event::synchronize() const {
  refuse_captured(*this, captured(), "Event::synchronize");
  if (state_->api) state_->api->event_synchronize(state_->handle, device_.index);
}

float Event::elapsed_ms(const Event& end) const {
  LATHE_CHECK(state_->timing && end.state_->timing,
              "Event::elapsed_ms: both events need EventOptions{.timing = true}");
  LATHE_CHECK(state_->recorded && end.state_->recorded,
              "Event::elapsed_ms: both events must have been recorded");
  LATHE_CHECK(device_ == end.device_, "Event::elapsed_ms: events of ", device_.str(), " and ",
              end.device_.str());
  refuse_captured(*this, captured(), "Event::elapsed_ms");
  refuse_captured(end, end.captured(), "Event::elapsed_ms");
  if (state_->api == nullptr) return float(end.state_->host_ms - state_->host_ms);
  LATHE_CHECK(query() && end.query(),
              "Event::elapsed_ms: the events' work has not completed yet (synchronize the end "
              "event first)");
  return state_->api->event_elapsed_ms(state_->handle, end.state_->handle);
}

void Stream::wait(const Event& event) const {
  const kernels::StreamApi* api = stream_api(device_, "Stream::wait");
  if (!event.recorded() || event.device().is_cpu()) return;  // complete already
  if (api == nullptr) {
    // The cpu's work is issued by the host: waiting for a device event means waiting here.
    event.synchronize();
    return;
  }
  std::weak_ptr<detail::CaptureRecord> capture;
  bool captured = false;
  {
    std::lock_guard<std::mutex> lock(event.state_->capture_mutex);
    captured = event.state_->captured;
    capture = event.state_->captured_in;
  }
  // A point of a capture: this stream joins the capture first (its work is recorded from now on).
  if (captured) detail::join_capture_before_wait(capture, device_, handle_);
  api->stream_wait_event(handle_, event.state_->handle, device_.index);
}

void record_stream(const Tensor& tensor, const Stream& stream) {
  LATHE_CHECK(tensor.defined(), "record_stream: undefined tensor");
  LATHE_CHECK(tensor.device() == stream.device(), "record_stream: a tensor on ",
              tensor.device().str(), " cannot be used by ", stream.str());
  const kernels::StreamApi* api = stream_api(stream.device(), "record_stream");
  if (api == nullptr) return;
  api->record_stream(tensor.storage()->data(), stream.native_handle(), stream.device().index);
}

}  // namespace lathe
