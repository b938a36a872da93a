// The one strided-iteration engine of the cpu backend. Elementwise kernels (copy, unary, binary,
// where) describe their operands as Views of the same shape; this header coalesces dims that are
// laid out contiguously, then calls a row function on runs of the innermost dim, so the row body is
// a plain (vectorizable) loop whenever the innermost strides are unit. Work is split across OpenMP
// threads by rows, or by chunks of one long row.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

#include "kernels/kernel_api.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lathe::kernels::cpu {

// Below this many elements a loop runs on one thread: forking costs more than it saves.
inline constexpr int64_t kParallelGrain = 32768;

template <int N>
struct StridedLayout {
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t byte_stride[N][kMaxDims] = {};
  char* base[N] = {};
};

// Builds a coalesced layout of N same-shaped views (the first view's shape is the iteration shape).
template <int N>
StridedLayout<N> coalesce(const std::array<const View*, N>& views) {
  StridedLayout<N> out;
  const View& ref = *views[0];
  for (int k = 0; k < N; ++k) out.base[k] = static_cast<char*>(views[k]->data);
  // Copy dims, dropping those of size 1.
  for (int d = 0; d < ref.ndim; ++d) {
    if (ref.size[d] == 1) continue;
    out.size[out.ndim] = ref.size[d];
    for (int k = 0; k < N; ++k) {
      out.byte_stride[k][out.ndim] = views[k]->stride[d] * int64_t(element_size(views[k]->dtype));
    }
    ++out.ndim;
  }
  // Merge dim d into d+1 when every operand steps through them as one run.
  int write = 0;
  for (int d = 1; d < out.ndim; ++d) {
    bool mergeable = true;
    for (int k = 0; k < N; ++k) {
      mergeable = mergeable && out.byte_stride[k][write] == out.byte_stride[k][d] * out.size[d];
    }
    if (mergeable) {
      out.size[write] *= out.size[d];
      for (int k = 0; k < N; ++k) out.byte_stride[k][write] = out.byte_stride[k][d];
    } else {
      ++write;
      out.size[write] = out.size[d];
      for (int k = 0; k < N; ++k) out.byte_stride[k][write] = out.byte_stride[k][d];
    }
  }
  out.ndim = out.ndim == 0 ? 0 : write + 1;
  return out;
}

// Calls row(ptrs, inner_byte_strides, count) over the whole iteration space.
template <int N, class RowFn>
void for_each_row(const std::array<const View*, N>& views, RowFn&& row) {
  StridedLayout<N> L = coalesce<N>(views);
  if (L.ndim == 0) {  // a single element
    std::array<char*, N> ptrs;
    std::array<int64_t, N> strides{};
    for (int k = 0; k < N; ++k) ptrs[k] = L.base[k];
    row(ptrs, strides, int64_t(1));
    return;
  }
  const int inner = L.ndim - 1;
  const int64_t inner_size = L.size[inner];
  int64_t rows = 1;
  for (int d = 0; d < inner; ++d) rows *= L.size[d];
  std::array<int64_t, N> inner_strides;
  for (int k = 0; k < N; ++k) inner_strides[k] = L.byte_stride[k][inner];

  // Split long rows into chunks so that a single contiguous run still uses every thread.
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  const int64_t total = rows * inner_size;
  int64_t chunk = inner_size;
  if (threads > 1 && rows < 4 * threads && total >= kParallelGrain) {
    chunk = std::max<int64_t>(4096, (inner_size + 4 * threads - 1) / (4 * threads));
  }
  const int64_t chunks_per_row = (inner_size + chunk - 1) / chunk;
  const int64_t work = rows * chunks_per_row;

  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      int64_t r = w / chunks_per_row;
      int64_t c = w % chunks_per_row;
      std::array<char*, N> ptrs;
      for (int k = 0; k < N; ++k) ptrs[k] = L.base[k];
      for (int d = inner - 1; d >= 0; --d) {
        int64_t i = r % L.size[d];
        r /= L.size[d];
        for (int k = 0; k < N; ++k) ptrs[k] += i * L.byte_stride[k][d];
      }
      int64_t start = c * chunk;
      for (int k = 0; k < N; ++k) ptrs[k] += start * inner_strides[k];
      row(ptrs, inner_strides, std::min(chunk, inner_size - start));
    }
  };
  if (threads > 1 && total >= kParallelGrain && work > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < threads; ++t) {
      int64_t begin = work * t / threads, end = work * (t + 1) / threads;
      run(begin, end);
    }
  } else {
    run(0, work);
  }
}

// Element `i` of a row: ptr + i * stride, typed.
template <class T>
inline T& at(char* base, int64_t byte_stride, int64_t i) {
  return *reinterpret_cast<T*>(base + i * byte_stride);
}

// Converts between element types, going through float for the 16-bit ones.
template <class To, class From>
inline To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, Half> || std::is_same_v<From, BFloat16>) {
    return convert<To>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>) {
    return To(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else {
    return static_cast<To>(v);
  }
}

}  // namespace lathe::kernels::cpu
