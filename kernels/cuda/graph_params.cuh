// The parameters of an attention launch inside a CUDA graph capture. The dropout mask's
// (seed, offset) is not a launch value there (each replay must draw a new mask): the kernels read
// it from philox.device_state, which every replay refills (lathe/core/cuda_graph.h). The kernels
// that draw are templates over their parameter type and are instantiated for both Params and
// InGraph<Params>, so an eager launch runs the code it ran before graphs existed: the two device
// loads cost registers that the tuned kernels do not have to spare (docs/cuda.md "Training steps
// in a graph"). Used by flash_attention.cuh and attention_simt.cu, each with its own Params.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace lathe::kernels::cuda {

template <class Params>
struct InGraph : Params {
  InGraph() = default;
  explicit InGraph(const Params& p) : Params(p) {}
};

// The mask's Philox key and first block: the launch's values, or a graph's device memory (the
// more specialized overloads below win for InGraph<Params>).
template <class Params>
LATHE_DEVICE_INLINE uint64_t mask_seed(const Params& p) {
  return p.philox.seed;
}
template <class Params>
LATHE_DEVICE_INLINE uint64_t mask_offset(const Params& p) {
  return p.philox.offset;
}
template <class Params>
LATHE_DEVICE_INLINE uint64_t mask_seed(const InGraph<Params>& p) {
  return p.philox.device_state[0];
}
template <class Params>
LATHE_DEVICE_INLINE uint64_t mask_offset(const InGraph<Params>& p) {
  return p.philox.device_state[1];
}

}  // namespace lathe::kernels::cuda
