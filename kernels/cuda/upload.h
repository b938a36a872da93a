// Host -> device copies that never make the host wait, for the small tables kernels read (chunk
// lists, pointer tables) that do not fit in the launch parameters. A copy from pageable host memory
// is staged by the driver and returns only once the source has been read, which is a host wait;
// upload_async instead copies the bytes into a pinned staging block of its own and queues an
// asynchronous copy from there, so the caller's buffer may be reused or freed on return.
#pragma once

#include <driver_types.h>

#include <cstddef>
#include <optional>

namespace lathe::cuda {

// Queues a copy of `bytes` bytes from host memory to device memory of the current device, ordered
// on `stream` (a stream of the current device); returns without waiting. The bytes are copied into
// a pinned staging block first, so `host_src` is free to change on return. Staging blocks come from
// a process-wide pool: a block is reused once the copy that last read it has completed (its event
// has fired), and the pool grows when every block of the device is still in flight. Thread-safe.
// On a capturing stream (a CUDA graph) the bytes go by upload_by_launch instead.
void upload_async(void* device_dst, const void* host_src, size_t bytes, cudaStream_t stream);

// The same copy as kernel launches carrying the bytes in their parameters (upload_launch.cu): what
// a graph capture can record, since the graph keeps launch parameters but not host memory.
void upload_by_launch(void* device_dst, const void* host_src, size_t bytes, cudaStream_t stream);

// How many staging blocks the pool holds for `device`, or over every device.
size_t upload_staging_blocks(std::optional<int> device = std::nullopt);

// Frees the staging blocks of `device` that no queued copy still reads (a block whose copy is in
// flight stays); returns the bytes freed. empty_cache(cuda:N) calls it.
size_t upload_release_idle(int device);

}  // namespace lathe::cuda
