// upload_async inside a CUDA graph capture (upload.h). A graph replays the copies it recorded long
// after the capture: a copy from a staging block would read whatever the block holds by then (the
// pool reuses it), and the event that guards the block cannot be recorded in a capture. The bytes
// travel as the parameters of small kernels instead, which a capture copies into the graph like
// any launch's arguments, so every replay writes the same table before the kernels that read it.
#include <algorithm>
#include <cstring>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/upload.h"

namespace lathe::kernels::cuda {

namespace {

// Bytes per launch: under the 4 KiB kernel-parameter limit with the other arguments.
constexpr size_t kPieceBytes = 3840;

struct Piece {
  uint64_t words[kPieceBytes / 8];  // 8-byte members: the struct copies as whole words
};

__global__ void write_piece_kernel(Piece piece, unsigned char* dst, uint32_t bytes) {
  const unsigned char* src = reinterpret_cast<const unsigned char*>(piece.words);
  for (uint32_t i = threadIdx.x; i < bytes; i += blockDim.x) dst[i] = src[i];
}

}  // namespace

}  // namespace lathe::kernels::cuda

namespace lathe::cuda {

void upload_by_launch(void* device_dst, const void* host_src, size_t bytes, cudaStream_t stream) {
  for (size_t at = 0; at < bytes; at += kernels::cuda::kPieceBytes) {
    const size_t n = std::min(kernels::cuda::kPieceBytes, bytes - at);
    kernels::cuda::Piece piece{};
    std::memcpy(piece.words, static_cast<const char*>(host_src) + at, n);
    launch(kernels::cuda::write_piece_kernel, dim3(1), dim3(256), 0, stream, "upload (graph)",
           piece, static_cast<unsigned char*>(device_dst) + at, uint32_t(n));
  }
}

}  // namespace lathe::cuda
