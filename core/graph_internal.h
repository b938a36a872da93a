// What CudaGraph::capture (core/cuda_graph.cpp) shares with the rest of core/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "lathe/core/device.h"

namespace lathe::detail {

// Whether this thread is inside CudaGraph::capture's body (random.cpp refuses draws that name no
// device then).
bool capturing_graph();
// Whether this thread is capturing `device` (work for it is recorded, not run).
bool capturing_device(Device device);

// What a replay must change from one run to the next (a random draw's Philox state, an optimizer
// step's count and lr) cannot be a kernel argument: the capture would bake in the value it saw.
// Such work reads it from device memory instead. Inside a capture of `device` on this thread,
// replay_slot returns `words` 64-bit words of the graph's device memory (8-byte aligned) and keeps
// `fill`: each replay calls the fills on the host, in the order the slots were taken, and copies
// what they wrote into the slots, ordered before the graph's work on the replay stream. Null when
// this thread is not capturing `device`. A fill may throw: the replay then queues nothing.
using ReplayFill = std::function<void(uint64_t* words)>;
uint64_t* replay_slot(Device device, int words, ReplayFill fill);

// Drops this thread's autocast casts made on `stream` (autocast.cpp). A capture calls it when it
// ends, however it ends: a cast made inside it is written only when the graph replays and belongs
// to the graph's memory, so the next capture on the same capture stream must cast again.
void forget_autocast_casts(const void* stream);

// Several streams in one capture (core/stream.cpp): an event recorded on a stream the capture
// records (its capture stream, or a stream that joined it) marks a point of the capture; a created
// stream that waits for such an event joins the capture (CUDA's fork), and the capture stream must
// wait for each joined stream's work before the body returns (the join).
struct CaptureRecord;
// The capture running on this thread that `stream` (a native handle of `device`) records into, or
// an empty pointer.
std::weak_ptr<CaptureRecord> capture_recording_on(Device device, const void* stream);
// Called before `stream` of `device` waits for an event recorded in `capture`: makes it one of the
// capture's streams if it is not yet (its allocations then come from the graph's pool). Throws for
// a capture that has ended, one of another thread or device, and the default stream.
void join_capture_before_wait(const std::weak_ptr<CaptureRecord>& capture, Device device,
                              void* stream);

}  // namespace lathe::detail
