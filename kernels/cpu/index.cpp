// Indexing kernels: index_select, index_add, gather, scatter_add.
//
// All four view their operands as "the indexed dim" x "every other dim" (the rest). The rest dims
// of all operands are coalesced together (strided_loop.h) into rows, and each row function loops
// over the indexed dim itself. This makes the two accumulating kernels deterministic without
// atomics: an output element is only ever touched by the thread that owns its rest position, and
// that thread adds the contributions in increasing index order, whatever the thread count. The
// copying kernels (index_select, gather) may additionally split the indexed dim across threads,
// since their writes never collide.
//
// Indices are validated in a separate pass before anything is written, because an exception must
// not escape an OpenMP region and an accumulating kernel must not leave a half-updated output.
#include <algorithm>
#include <atomic>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {

int64_t byte_stride(const View& v, int dim) {
  return v.stride[dim] * int64_t(element_size(v.dtype));
}

// Throws naming the first index outside [0, limit). Runs a parallel scan first so that the happy
// path costs one read of the index; the slow serial scan only runs to build the message.
void check_indices(const View& index, int64_t limit, const char* op, int dim) {
  LATHE_CHECK(index.dtype == DType::I64, op, ": index must be i64 here, got ", index.dtype);
  if (index.numel() == 0) return;
  std::atomic<bool> bad{false};
  for_each_row<1>({&index}, [&](std::array<char*, 1> p, std::array<int64_t, 1> s, int64_t n) {
    bool row_bad = false;
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = at<int64_t>(p[0], s[0], i);
      row_bad |= (v < 0) | (v >= limit);
    }
    if (row_bad) bad.store(true, std::memory_order_relaxed);
  });
  if (!bad.load()) return;
  const int64_t total = index.numel();
  for (int64_t flat = 0; flat < total; ++flat) {
    int64_t rest = flat, offset = 0;
    for (int d = index.ndim - 1; d >= 0; --d) {
      offset += (rest % index.size[d]) * index.stride[d];
      rest /= index.size[d];
    }
    int64_t v = static_cast<const int64_t*>(index.data)[offset];
    LATHE_CHECK(v >= 0 && v < limit, op, ": index ", v, " is out of range for dim ", dim,
                " of size ", limit);
  }
}

// Like for_each_row, but every element of the rest also carries `k_count` iterations of the
// indexed dim, which count towards the threading decision. row(ptrs, strides, n, k_begin, k_end)
// handles n rest elements for indices [k_begin, k_end). The indexed dim is only split across
// threads when `split_k` (the kernel's writes for different k never collide).
template <int N, class RowFn>
void for_each_indexed_row(const std::array<const View*, N>& views, int64_t k_count, bool split_k,
                          RowFn&& row) {
  StridedLayout<N> L = coalesce<N>(views);
  int64_t inner_size = 1, rows = 1;
  std::array<int64_t, N> inner_strides{};
  if (L.ndim > 0) {
    const int inner = L.ndim - 1;
    inner_size = L.size[inner];
    for (int d = 0; d < inner; ++d) rows *= L.size[d];
    for (int k = 0; k < N; ++k) inner_strides[k] = L.byte_stride[k][inner];
  }
  const int64_t total = rows * inner_size * k_count;
  if (total == 0) return;

  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  const bool parallel = threads > 1 && total >= kParallelGrain;
  int64_t chunk = inner_size;
  if (parallel && rows < 4 * threads) {
    chunk = std::max<int64_t>(1024, (inner_size + 4 * threads - 1) / (4 * threads));
  }
  const int64_t chunks_per_row = (inner_size + chunk - 1) / chunk;
  int64_t k_chunks = 1;
  if (parallel && split_k && rows * chunks_per_row < 4 * threads) {
    k_chunks = std::min<int64_t>(
        k_count, (4 * threads + rows * chunks_per_row - 1) / (rows * chunks_per_row));
  }
  const int64_t work = rows * chunks_per_row * k_chunks;

  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      int64_t kc = w % k_chunks;
      int64_t rc = w / k_chunks;
      int64_t r = rc / chunks_per_row;
      int64_t c = rc % chunks_per_row;
      std::array<char*, N> ptrs;
      for (int k = 0; k < N; ++k) ptrs[k] = L.base[k];
      for (int d = L.ndim - 2; d >= 0; --d) {
        int64_t i = r % L.size[d];
        r /= L.size[d];
        for (int k = 0; k < N; ++k) ptrs[k] += i * L.byte_stride[k][d];
      }
      int64_t start = c * chunk;
      for (int k = 0; k < N; ++k) ptrs[k] += start * inner_strides[k];
      int64_t k_begin = k_count * kc / k_chunks, k_end = k_count * (kc + 1) / k_chunks;
      row(ptrs, inner_strides, std::min(chunk, inner_size - start), k_begin, k_end);
    }
  };
  if (parallel && work > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < threads; ++t) run(work * t / threads, work * (t + 1) / threads);
  } else {
    run(0, work);
  }
}

void check_dims(const View& a, const View& b, int dim, const char* op) {
  LATHE_CHECK(a.ndim == b.ndim && dim >= 0 && dim < a.ndim, op, ": operands with ", a.ndim, " and ",
              b.ndim, " dims cannot be indexed along dim ", dim);
  LATHE_CHECK(a.dtype == b.dtype, op, ": dtype mismatch (", a.dtype, " and ", b.dtype, ")");
}

// ---- index_select: out.select(dim, k) = in.select(dim, index[k]) ----

template <class T>
void index_select_impl(const View& in, int dim, const View& index, const View& out) {
  const View out_rest = drop_dim(out, dim), in_rest = drop_dim(in, dim, &out);
  const int64_t out_dim = byte_stride(out, dim), in_dim = byte_stride(in, dim);
  const int64_t* idx = static_cast<const int64_t*>(index.data);
  const int64_t idx_stride = index.stride[0];
  for_each_indexed_row<2>(
      {&out_rest, &in_rest}, index.size[0], true,
      [&](std::array<char*, 2> p, std::array<int64_t, 2> s, int64_t n, int64_t kb, int64_t ke) {
        if (s[0] == sizeof(T) && s[1] == sizeof(T)) {
          for (int64_t k = kb; k < ke; ++k) {
            T* o = reinterpret_cast<T*>(p[0] + k * out_dim);
            const T* x = reinterpret_cast<const T*>(p[1] + idx[k * idx_stride] * in_dim);
            if (n >= 16) {
              std::memcpy(static_cast<void*>(o), x, size_t(n) * sizeof(T));
            } else {
              for (int64_t j = 0; j < n; ++j) o[j] = x[j];
            }
          }
        } else {
          // Strided rest (e.g. selecting along the last dim): walk each rest element's run of k
          // so that the output is written sequentially.
          for (int64_t j = 0; j < n; ++j) {
            char* o = p[0] + j * s[0];
            const char* x = p[1] + j * s[1];
            for (int64_t k = kb; k < ke; ++k) {
              *reinterpret_cast<T*>(o + k * out_dim) =
                  *reinterpret_cast<const T*>(x + idx[k * idx_stride] * in_dim);
            }
          }
        }
      });
}

void index_select_kernel(const View& in, int dim, const View& index, const View& out) {
  check_dims(in, out, dim, "index_select");
  LATHE_CHECK(index.ndim == 1 && index.size[0] == out.size[dim],
              "index_select: index must be 1-d with ", out.size[dim], " elements");
  check_indices(index, in.size[dim], "index_select", dim);
  dispatch_all(in.dtype, "index_select",
               [&]<class T>() { index_select_impl<T>(in, dim, index, out); });
}

// ---- index_add: out.select(dim, index[k]) += src.select(dim, k) ----

template <class T>
void index_add_impl(const View& out, int dim, const View& index, const View& src) {
  const View out_rest = drop_dim(out, dim, &src), src_rest = drop_dim(src, dim);
  const int64_t out_dim = byte_stride(out, dim), src_dim = byte_stride(src, dim);
  const int64_t* idx = static_cast<const int64_t*>(index.data);
  const int64_t idx_stride = index.stride[0];
  for_each_indexed_row<2>(
      {&src_rest, &out_rest}, index.size[0], false,
      [&](std::array<char*, 2> p, std::array<int64_t, 2> s, int64_t n, int64_t kb, int64_t ke) {
        if (s[0] == sizeof(T) && s[1] == sizeof(T)) {
          for (int64_t k = kb; k < ke; ++k) {
            const T* x = reinterpret_cast<const T*>(p[0] + k * src_dim);
            T* o = reinterpret_cast<T*>(p[1] + idx[k * idx_stride] * out_dim);
            for (int64_t j = 0; j < n; ++j) o[j] += x[j];
          }
        } else {
          for (int64_t j = 0; j < n; ++j) {
            const char* x = p[0] + j * s[0];
            char* o = p[1] + j * s[1];
            for (int64_t k = kb; k < ke; ++k) {
              *reinterpret_cast<T*>(o + idx[k * idx_stride] * out_dim) +=
                  *reinterpret_cast<const T*>(x + k * src_dim);
            }
          }
        }
      });
}

void index_add_kernel(const View& out, int dim, const View& index, const View& src) {
  check_dims(out, src, dim, "index_add");
  LATHE_CHECK(index.ndim == 1 && index.size[0] == src.size[dim],
              "index_add: index must be 1-d with ", src.size[dim], " elements");
  check_indices(index, out.size[dim], "index_add", dim);
  dispatch_numeric(out.dtype, "index_add",
                   [&]<class T>() { index_add_impl<T>(out, dim, index, src); });
}

// ---- gather: out[..k..] = in[..index[..k..]..] along dim ----

template <class T>
void gather_impl(const View& in, int dim, const View& index, const View& out) {
  const View out_rest = drop_dim(out, dim), idx_rest = drop_dim(index, dim),
             in_rest = drop_dim(in, dim, &out);
  const int64_t out_dim = byte_stride(out, dim), idx_dim = byte_stride(index, dim),
                in_dim = byte_stride(in, dim);
  for_each_indexed_row<3>(
      {&out_rest, &idx_rest, &in_rest}, out.size[dim], true,
      [&](std::array<char*, 3> p, std::array<int64_t, 3> s, int64_t n, int64_t kb, int64_t ke) {
        for (int64_t k = kb; k < ke; ++k) {
          char* o = p[0] + k * out_dim;
          const char* ix = p[1] + k * idx_dim;
          for (int64_t j = 0; j < n; ++j) {
            int64_t i = *reinterpret_cast<const int64_t*>(ix + j * s[1]);
            *reinterpret_cast<T*>(o + j * s[0]) =
                *reinterpret_cast<const T*>(p[2] + j * s[2] + i * in_dim);
          }
        }
      });
}

void gather_kernel(const View& in, int dim, const View& index, const View& out) {
  check_dims(in, out, dim, "gather");
  LATHE_CHECK(index.ndim == out.ndim, "gather: index and output differ in rank");
  for (int d = 0; d < out.ndim; ++d) {
    LATHE_CHECK(index.size[d] == out.size[d] && (d == dim || out.size[d] <= in.size[d]),
                "gather: index, input and output shapes disagree at dim ", d);
  }
  check_indices(index, in.size[dim], "gather", dim);
  dispatch_all(in.dtype, "gather", [&]<class T>() { gather_impl<T>(in, dim, index, out); });
}

// ---- scatter_add: out[..index[..k..]..] += src[..k..] along dim ----

template <class T>
void scatter_add_impl(const View& out, int dim, const View& index, const View& src) {
  const View idx_rest = drop_dim(index, dim), src_rest = drop_dim(src, dim, &index),
             out_rest = drop_dim(out, dim, &index);
  const int64_t idx_dim = byte_stride(index, dim), src_dim = byte_stride(src, dim),
                out_dim = byte_stride(out, dim);
  for_each_indexed_row<3>(
      {&idx_rest, &src_rest, &out_rest}, index.size[dim], false,
      [&](std::array<char*, 3> p, std::array<int64_t, 3> s, int64_t n, int64_t kb, int64_t ke) {
        for (int64_t k = kb; k < ke; ++k) {
          const char* ix = p[0] + k * idx_dim;
          const char* x = p[1] + k * src_dim;
          for (int64_t j = 0; j < n; ++j) {
            int64_t i = *reinterpret_cast<const int64_t*>(ix + j * s[0]);
            *reinterpret_cast<T*>(p[2] + j * s[2] + i * out_dim) +=
                *reinterpret_cast<const T*>(x + j * s[1]);
          }
        }
      });
}

void scatter_add_kernel(const View& out, int dim, const View& index, const View& src) {
  check_dims(out, src, dim, "scatter_add");
  LATHE_CHECK(index.ndim == src.ndim, "scatter_add: index and source differ in rank");
  for (int d = 0; d < index.ndim; ++d) {
    LATHE_CHECK(index.size[d] <= src.size[d] && (d == dim || index.size[d] <= out.size[d]),
                "scatter_add: index, source and output shapes disagree at dim ", d);
  }
  check_indices(index, out.size[dim], "scatter_add", dim);
  dispatch_numeric(out.dtype, "scatter_add",
                   [&]<class T>() { scatter_add_impl<T>(out, dim, index, src); });
}

}  // namespace

extern const IndexSelectFn index_select = index_select_kernel;
extern const IndexAddFn index_add = index_add_kernel;
extern const GatherFn gather = gather_kernel;
extern const ScatterAddFn scatter_add = scatter_add_kernel;

}  // namespace lathe::kernels::cpu
