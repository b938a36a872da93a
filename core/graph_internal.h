// What CudaGraph::capture (core/cuda_graph.cpp) shares with the rest of core/.
#pragma once

namespace lathe::detail {

// Whether this thread is inside CudaGraph::capture's body: random draws refuse then (random.cpp).
bool capturing_graph();

// Drops this thread's autocast casts made on `stream` (autocast.cpp). A capture calls it when it
// ends, however it ends: a cast made inside it is written only when the graph replays and belongs
// to the graph's memory, so the next capture on the same capture stream must cast again.
void forget_autocast_casts(const void* stream);

}  // namespace lathe::detail
