// The gradient of an embedding lookup (EmbeddingBackwardArgs): grad_weight = 0, then
// grad_weight[indices[k]] += grad_out[k] for k in increasing order, skipping padding_idx.
//
// Deterministic without atomics: the columns are split across threads and each thread walks every
// position for its own columns, so each element receives its terms in increasing k whatever the
// thread count — the order of index_add, which this replaces for embeddings. Indices are validated
// before anything is written.
#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {

template <class T>
void embedding_backward_impl(const EmbeddingBackwardArgs& a) {
  const int64_t n = a.n, dim = a.grad_out.size[1];
  const int64_t s0 = a.grad_out.stride[0], s1 = a.grad_out.stride[1];
  const int64_t* idx = a.indices;
  const T* src = static_cast<const T*>(a.grad_out.data);
  T* out = static_cast<T*>(a.grad_weight);
  std::memset(static_cast<void*>(out), 0, size_t(a.num_embeddings * dim) * sizeof(T));
  if (n == 0 || dim == 0) return;
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  const bool parallel = threads > 1 && n * dim >= kParallelGrain && dim >= 2;
  const int64_t chunks = parallel ? std::min<int64_t>(threads, dim) : 1;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t c0 = dim * c / chunks, c1 = dim * (c + 1) / chunks;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t v = idx[k];
      if (v == a.padding_idx) continue;
      T* o = out + v * dim;
      const T* g = src + k * s0;
      if (s1 == 1) {
        for (int64_t j = c0; j < c1; ++j) o[j] += g[j];
      } else {
        for (int64_t j = c0; j < c1; ++j) o[j] += g[j * s1];
      }
    }
  }
}

void embedding_backward_kernel(const EmbeddingBackwardArgs& a) {
  LATHE_CHECK(a.grad_out.ndim == 2 && a.grad_out.size[0] == a.n && a.n >= 0,
              "embedding backward: grad_out must be [", a.n, ", dim]");
  LATHE_CHECK(a.num_embeddings >= 0, "embedding backward: invalid num_embeddings ",
              a.num_embeddings);
  for (int64_t k = 0; k < a.n; ++k) {
    const int64_t v = a.indices[k];
    LATHE_CHECK(v >= 0 && v < a.num_embeddings, "embedding backward: index ", v, " (at position ",
                k, ") is out of range for ", a.num_embeddings, " embeddings");
  }
  dispatch_float(a.grad_out.dtype, "embedding backward",
                 [&]<class T>() { embedding_backward_impl<T>(a); });
}

}  // namespace

extern const EmbeddingBackwardFn embedding_backward = embedding_backward_kernel;

}  // namespace lathe::kernels::cpu
