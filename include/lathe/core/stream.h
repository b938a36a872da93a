// Streams and events: the order in which a device runs the work it is given.
//
// Every op queues its kernels on the calling thread's *current stream* of the tensors' device. A
// thread starts on the device's default stream, so a program that never names a stream runs all
// its device work in one order (and a multi-threaded server's requests one after another on the
// GPU). With streams, work from several threads, or a copy beside a computation, can overlap:
//
//   lathe::Stream stream = lathe::Stream::create(lathe::Device::cuda(0));
//   {
//     lathe::StreamGuard guard(stream);   // this thread's cuda:0 work goes to `stream`
//     logits = model.forward(ids, mask);
//   }
//   stream.synchronize();                 // or: an Event recorded here and waited for elsewhere
//
// What stays the caller's to order (as with CUDA and PyTorch streams): memory written on one
// stream and read on another needs `reader.wait(writer)` or an Event in between. Two defaults
// keep the common cases safe without it:
//  - Streams are *blocking* unless StreamOptions says otherwise: their work and the default
//    stream's wait for each other (CUDA's legacy default stream), so weights loaded and batches
//    uploaded on the default stream are complete before a created stream reads them, and a read
//    back to the host on the default stream waits for them. Two created streams never wait for
//    each other. A non-blocking stream is ordered with nothing but its own work and its waits.
//  - Memory freed while a created stream other than its own is current is not reused by its own
//    stream before that stream's work so far has completed. Memory used on further streams (or,
//    for a non-blocking stream's memory, on the default stream) needs record_stream (below), or it
//    may be handed out again while they still read it.
// Copies to the host (Tensor::to(cpu), item()) wait for the current stream only.
//
// Streams come from a pool of 32 per device and kind, handed out in turn and never destroyed (as
// in PyTorch): creating a 33rd stream shares a queue with the first, which orders more than
// needed but is never wrong. On the cpu, work runs on the calling thread as it is issued: its one
// stream is the default stream, its waits return at once and its events are complete when
// recorded (their times are the host's clock, so timing code runs on either device).
//
// In the simulated cuda build a created stream's work runs as late as the ordering allows (at a
// wait, or before a default-stream operation for a blocking stream), so a missing wait reads stale
// memory there too and tests catch it (docs/cuda.md, "Streams").
#pragma once

#include <memory>
#include <string>

#include "lathe/core/device.h"

namespace lathe {

class Tensor;
class Event;

struct StreamOptions {
  // Ordered with the device's default stream both ways (cudaStreamDefault), or not at all
  // (cudaStreamNonBlocking).
  bool blocking = true;
};

class Stream {
 public:
  // The default stream of `device`; on a cuda device the legacy stream that every thread starts
  // on.
  static Stream default_stream(Device device);
  // A stream from `device`'s pool. On the cpu, the default stream.
  static Stream create(Device device, StreamOptions options = {});

  Device device() const { return device_; }
  bool is_default() const { return handle_ == nullptr; }
  bool blocking() const { return blocking_; }
  // Waits until the work queued on this stream so far has finished, then raises the errors that
  // kernels found in their data (as lathe::synchronize does).
  void synchronize() const;
  // True when the work queued on this stream so far has finished.
  bool query() const;
  // Work queued on this stream from now on starts after `event` (as recorded when this is called)
  // has completed. An event never recorded is complete. The event may be of another device.
  void wait(const Event& event) const;
  // Work queued on this stream from now on starts after the work queued on `other` so far. In a
  // CudaGraph::capture body, waiting for a stream of the capture (or an event recorded on one)
  // forks this stream into the capture (lathe/core/cuda_graph.h).
  void wait(const Stream& other) const;
  // The backend's handle (a cudaStream_t; null for the default stream), for interop with code that
  // launches its own kernels.
  void* native_handle() const { return handle_; }
  // "cuda:0 default stream", "cuda:1 stream 0x5581... (non-blocking)".
  std::string str() const;

  friend bool operator==(const Stream& a, const Stream& b) {
    return a.device_ == b.device_ && a.handle_ == b.handle_;
  }

 private:
  friend Stream current_stream(Device device);
  Stream(Device device, void* handle, bool blocking)
      : device_(device), handle_(handle), blocking_(blocking) {}
  Device device_;
  void* handle_ = nullptr;
  bool blocking_ = true;
};

// The stream that this thread's work on `device` goes to.
Stream current_stream(Device device);

// Makes `stream` the calling thread's current stream of its device for the guard's scope, and
// restores the previous one at its end. Other devices and other threads are not affected.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream previous_;
};

struct EventOptions {
  bool timing = false;  // needed for elapsed_ms
};

// A point in a stream's work. Copies of an Event refer to the same event.
class Event {
 public:
  explicit Event(Device device, EventOptions options = {});

  Device device() const { return device_; }
  // Marks the work queued on `stream` (a stream of this event's device) so far; a later record
  // replaces the mark.
  void record(const Stream& stream);
  // The same on this thread's current stream of the event's device.
  void record();
  bool recorded() const;
  // Whether the last record was inside CudaGraph::capture, on a stream of the capture: the event
  // then marks a point of the graph, which streams of the capture may wait for (forking a created
  // stream into the capture, or joining it back: lathe/core/cuda_graph.h), and the calls below
  // refuse it.
  bool captured() const;
  // True when the marked work has finished (an event never recorded counts as finished).
  bool query() const;
  // Waits until the marked work has finished, then raises the errors kernels found meanwhile.
  void synchronize() const;
  // Milliseconds from this event to `end`; both need EventOptions::timing, both must have been
  // recorded and have completed.
  float elapsed_ms(const Event& end) const;

 private:
  friend class Stream;  // Stream::wait reads the handle
  struct State;
  Device device_;
  std::shared_ptr<State> state_;
};

// Declares that `tensor`'s memory is used by work queued on `stream` (not the stream it was
// allocated on): when the last tensor using the memory is dropped, the allocator does not hand it
// out again before the work queued on `stream` by then has completed. A no-op on the cpu and for
// memory lathe did not allocate (Tensor::from_blob and the like). The stream must be of the
// tensor's device.
void record_stream(const Tensor& tensor, const Stream& stream);

}  // namespace lathe
