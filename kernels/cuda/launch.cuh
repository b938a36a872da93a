// The one way lathe launches a kernel: `<<<...>>>` cannot be parsed by g++, so every launch goes
// through cuda::launch. Under nvcc it is the real launch plus an error check naming the kernel;
// in the simulated build it runs the grid on the CPU simulator, in stream order.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

#ifdef __CUDACC__
#include <cuda_runtime.h>

#include "lathe/core/error.h"
#else
#include <driver_types.h>  // cudaStream_t, host-side type only

#include "kernels/cuda/runtime.h"
#include "kernels/sim/sim.h"
#endif

namespace lathe::cuda {

#ifndef __CUDACC__
// A kernel argument as the simulated build's launch check sees it: the address of a pointer
// argument, null for anything else.
template <class T>
const void* pointer_argument(const T& arg) {
  if constexpr (std::is_pointer_v<T> && !std::is_function_v<std::remove_pointer_t<T>>) {
    return const_cast<const void*>(static_cast<const volatile void*>(arg));
  } else {
    return nullptr;
  }
}
#endif

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared_bytes,
            cudaStream_t stream, const char* name, Args&&... args) {
#ifdef __CUDACC__
  kernel<<<grid, block, dynamic_shared_bytes, stream>>>(std::forward<Args>(args)...);
  cudaError_t status = cudaGetLastError();
  LATHE_CHECK(status == cudaSuccess, "launch of ", name, " (grid ", grid.x, "x", grid.y, "x",
              grid.z, ", block ", block.x, "x", block.y, "x", block.z, ", ", dynamic_shared_bytes,
              " bytes shared) failed: ", cudaGetErrorString(status));
#else
  check_simulated_launch(name, stream, {pointer_argument(args)...});
  // The arguments are copied now, as a GPU launch copies them: on a created stream the grid runs
  // later (runtime.h, simulated_submit).
  simulated_submit(stream, [=, ... params = Params(std::forward<Args>(args))] {
    ::lathe::sim::launch(
        grid, block, dynamic_shared_bytes, [&] { kernel(params...); }, name);
  });
#endif
}

}  // namespace lathe::cuda
