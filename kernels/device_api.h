// The memory side of a backend: allocation and host<->device copies. Kept apart from the kernel
// families so that a device is "an allocator + a KernelTable", nothing more.
#pragma once

#include <cstddef>

#include "lathe/core/device.h"
#include "lathe/core/memory.h"

namespace lathe::kernels {

// Streams and events of a device with queues (lathe/core/stream.h). Handles are the backend's own
// (cudaStream_t, cudaEvent_t); a null stream is the device's default stream.
struct StreamApi {
  // A stream from the device's pool (created on first use, never destroyed).
  void* (*pooled_stream)(int index, bool blocking) = nullptr;
  // Whether a stream waits for the default stream's work (cudaStreamDefault); streams made outside
  // the pool count as non-blocking.
  bool (*stream_blocking)(void* stream, int index) = nullptr;
  void* (*current_stream)(int index) = nullptr;
  void (*set_current_stream)(void* stream, int index) = nullptr;
  void (*stream_synchronize)(void* stream, int index) = nullptr;
  bool (*stream_query)(void* stream, int index) = nullptr;
  void* (*event_create)(int index, bool timing) = nullptr;
  void (*event_destroy)(void* event) = nullptr;
  void (*event_record)(void* event, void* stream, int index) = nullptr;
  bool (*event_query)(void* event) = nullptr;
  void (*event_synchronize)(void* event, int index) = nullptr;
  void (*stream_wait_event)(void* stream, void* event, int index) = nullptr;
  float (*event_elapsed_ms)(void* start, void* end) = nullptr;
  // Declares that the allocation starting at `ptr` is used by work on `stream`: the allocator does
  // not hand it out again before that work has completed. False when `ptr` is not the start of a
  // block of the device's allocator (memory owned elsewhere).
  bool (*record_stream)(void* ptr, void* stream, int index) = nullptr;

  // Graphs (lathe/core/cuda_graph.h). capture_begin returns a stream of the device that now
  // captures, with the allocator serving it from the private pool *pool (a new one, stored there,
  // when *pool is null); capture_end ends the
  // capture and returns the executable graph, or discards it and returns null when !keep (it
  // throws when the capture was invalidated; the stream is handed back either way).
  void* (*capture_begin)(int index, void** pool) = nullptr;
  void* (*capture_end)(void* stream, int index, bool keep) = nullptr;
  void (*graph_launch)(void* graph, void* stream, int index) = nullptr;
  void (*graph_destroy)(void* graph, int index) = nullptr;
  // Hands the private pool's memory back (after graph_destroy).
  void (*release_pool)(void* pool, int index) = nullptr;
  // A created stream joins a capture whose private pool is `pool` (before it waits for an event
  // recorded in the capture): the allocator serves it from that pool until capture_leave, which
  // also drops what the stream cached for the graph (its cuBLASLt workspace), after the capture.
  void (*capture_join)(void* stream, void* pool, int index) = nullptr;
  void (*capture_leave)(void* stream, int index) = nullptr;
};

struct DeviceApi {
  void* (*allocate)(size_t nbytes, int index) = nullptr;
  void (*deallocate)(void* ptr, size_t nbytes, int index) = nullptr;
  void (*copy_from_host)(void* dst, const void* src, size_t nbytes, int index) = nullptr;
  void (*copy_to_host)(void* dst, const void* src, size_t nbytes, int index) = nullptr;
  void (*synchronize)(int index) = nullptr;
  int (*device_count)() = nullptr;
  // The allocator's bookkeeping (lathe/core/memory.h).
  MemoryStats (*memory_stats)(int index) = nullptr;
  void (*empty_cache)(int index) = nullptr;
  void (*reset_peak_memory_stats)(int index) = nullptr;
  // The device this thread's kernels run on (cudaSetDevice / cudaGetDevice); null on the cpu,
  // which has one device.
  void (*set_current)(int index) = nullptr;
  int (*current)() = nullptr;
  // Null on the cpu, whose work runs on the calling thread as it is issued.
  const StreamApi* streams = nullptr;
};

// Null when this build has no backend for `type`.
const DeviceApi* device_api(DeviceType type);
const DeviceApi& cpu_device_api();

}  // namespace lathe::kernels
