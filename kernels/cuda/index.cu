// Indexing kernels on cuda: index_select, gather (copies) and index_add, scatter_add
// (accumulations), with the cpu kernels' semantics and error messages.
//
// - The copies are one elementwise launch over the output: the input is addressed through its
//   strides with the indexed dim's stride zeroed, plus index[k] times that stride.
// - The accumulations are deterministic without atomics: one thread owns each position of the
//   non-indexed dims ("rest") of the output and adds the contributions to it in increasing k, the
//   order the cpu kernels use, so results are bit-identical to the cpu's. Parallelism is the size
//   of the rest (the embedding dim for an embedding backward), which suits wide rows; a sort-based
//   kernel for very narrow ones can come later.
// - Indices are validated on the device before anything is written (one small reduction and a
//   synchronizing read of its result), so a bad index throws the same lathe::Error as on the cpu
//   instead of reading or writing out of bounds.
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace lathe::kernels::cuda {

namespace {

// ---- index validation ----

__global__ void find_bad_index_kernel(const int64_t* index, OffsetCalc<1> calc, int64_t n,
                                      int64_t limit, unsigned long long* first_bad) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[1];
    calc.get(i, off);
    const int64_t v = index[off[0]];
    if (v < 0 || v >= limit) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

void check_indices(const View& index, int64_t limit, const char* op, int dim) {
  LATHE_CHECK(index.dtype == DType::I64, op, ": index must be i64 here, got ", index.dtype);
  const int64_t n = index.numel();
  if (n == 0) return;
  DeviceScratch flag(sizeof(unsigned long long));
  rt::memset_async(flag.as<void>(), 0xff, sizeof(unsigned long long), stream());
  rt::launch(find_bad_index_kernel, dim3(grid_for(n)), dim3(kThreads), 0, stream(), "check_indices",
             static_cast<const int64_t*>(index.data), make_offset_calc<1>({&index}), n, limit,
             flag.as<unsigned long long>());
  unsigned long long first = 0;
  rt::memcpy_sync(&first, flag.as<void>(), sizeof first, rt::CopyKind::DeviceToHost, stream());
  if (first == ULLONG_MAX) return;
  int64_t rest = int64_t(first), offset = 0;
  for (int d = index.ndim - 1; d >= 0; --d) {
    offset += (rest % index.size[d]) * index.stride[d];
    rest /= index.size[d];
  }
  int64_t value = 0;
  rt::memcpy_sync(&value, static_cast<const int64_t*>(index.data) + offset, sizeof value,
                  rt::CopyKind::DeviceToHost, stream());
  LATHE_FAIL(op, ": index ", value, " is out of range for dim ", dim, " of size ", limit);
}

void check_dims(const View& a, const View& b, int dim, const char* op) {
  LATHE_CHECK(a.ndim == b.ndim && dim >= 0 && dim < a.ndim, op, ": operands with ", a.ndim, " and ",
              b.ndim, " dims cannot be indexed along dim ", dim);
  LATHE_CHECK(a.dtype == b.dtype, op, ": dtype mismatch (", a.dtype, " and ", b.dtype, ")");
}

// ---- index_select / gather: out[o] = in[in_rest + index[i] * in_dim] ----

template <class T>
struct IndexedCopy {
  T* out;
  const int64_t* index;
  const T* in;
  int64_t in_dim;
  // off: output, index, input with the indexed dim's stride zeroed
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[3]) const {
    out[off[0]] = in[off[2] + index[off[1]] * in_dim];
  }
};

void index_select_kernel(const View& in, int dim, const View& index, const View& out) {
  check_dims(in, out, dim, "index_select");
  LATHE_CHECK(index.ndim == 1 && index.size[0] == out.size[dim],
              "index_select: index must be 1-d with ", out.size[dim], " elements");
  check_indices(index, in.size[dim], "index_select", dim);
  if (out.numel() == 0) return;
  // The index walks dim `dim` of the output and is broadcast over the rest.
  View idx = out;
  idx.data = index.data;
  View in_rest = in;
  for (int d = 0; d < out.ndim; ++d) {
    idx.stride[d] = d == dim ? index.stride[0] : 0;
    in_rest.size[d] = out.size[d];
  }
  in_rest.stride[dim] = 0;
  dispatch_device_all(in.dtype, "index_select", [&]<class T>() {
    launch_elementwise<3>(
        "index_select", {&out, &idx, &in_rest},
        IndexedCopy<T>{static_cast<T*>(out.data), static_cast<const int64_t*>(index.data),
                       static_cast<const T*>(in.data), in.stride[dim]});
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
  if (out.numel() == 0) return;
  View in_rest = in;
  for (int d = 0; d < out.ndim; ++d) in_rest.size[d] = out.size[d];
  in_rest.stride[dim] = 0;
  dispatch_device_all(in.dtype, "gather", [&]<class T>() {
    launch_elementwise<3>(
        "gather", {&out, &index, &in_rest},
        IndexedCopy<T>{static_cast<T*>(out.data), static_cast<const int64_t*>(index.data),
                       static_cast<const T*>(in.data), in.stride[dim]});
  });
}

// ---- index_add: out.select(dim, index[k]) += src.select(dim, k), k in order ----

template <class T>
struct IndexAddRow {
  T* out;
  const T* src;
  const int64_t* index;
  int64_t index_stride, count, out_dim, src_dim;
  // off: output rest, source rest
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[2]) const {
    using C = compute_t<T>;
    for (int64_t k = 0; k < count; ++k) {
      T& o = out[off[0] + index[k * index_stride] * out_dim];
      o = convert<T>(C(convert<C>(o) + convert<C>(src[off[1] + k * src_dim])));
    }
  }
};

void index_add_kernel(const View& out, int dim, const View& index, const View& src) {
  check_dims(out, src, dim, "index_add");
  LATHE_CHECK(index.ndim == 1 && index.size[0] == src.size[dim],
              "index_add: index must be 1-d with ", src.size[dim], " elements");
  check_indices(index, out.size[dim], "index_add", dim);
  const View out_rest = drop_dim(out, dim, &src), src_rest = drop_dim(src, dim);
  dispatch_device_arith(out.dtype, "index_add", [&]<class T>() {
    launch_elementwise<2>("index_add", {&out_rest, &src_rest},
                          IndexAddRow<T>{static_cast<T*>(out.data), static_cast<const T*>(src.data),
                                         static_cast<const int64_t*>(index.data), index.stride[0],
                                         index.size[0], out.stride[dim], src.stride[dim]});
  });
}

// ---- scatter_add: out[..index[..k..]..] += src[..k..] along dim, k in order ----

template <class T>
struct ScatterAddRow {
  T* out;
  const T* src;
  const int64_t* index;
  int64_t count, index_dim, src_dim, out_dim;
  // off: index rest, source rest, output rest
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[3]) const {
    using C = compute_t<T>;
    for (int64_t k = 0; k < count; ++k) {
      T& o = out[off[2] + index[off[0] + k * index_dim] * out_dim];
      o = convert<T>(C(convert<C>(o) + convert<C>(src[off[1] + k * src_dim])));
    }
  }
};

void scatter_add_kernel(const View& out, int dim, const View& index, const View& src) {
  check_dims(out, src, dim, "scatter_add");
  LATHE_CHECK(index.ndim == src.ndim, "scatter_add: index and source differ in rank");
  for (int d = 0; d < index.ndim; ++d) {
    LATHE_CHECK(index.size[d] <= src.size[d] && (d == dim || index.size[d] <= out.size[d]),
                "scatter_add: index, source and output shapes disagree at dim ", d);
  }
  check_indices(index, out.size[dim], "scatter_add", dim);
  const View idx_rest = drop_dim(index, dim), src_rest = drop_dim(src, dim, &index),
             out_rest = drop_dim(out, dim, &index);
  dispatch_device_arith(out.dtype, "scatter_add", [&]<class T>() {
    launch_elementwise<3>(
        "scatter_add", {&idx_rest, &src_rest, &out_rest},
        ScatterAddRow<T>{static_cast<T*>(out.data), static_cast<const T*>(src.data),
                         static_cast<const int64_t*>(index.data), index.size[dim],
                         index.stride[dim], src.stride[dim], out.stride[dim]});
  });
}

}  // namespace

extern const IndexSelectFn index_select = index_select_kernel;
extern const IndexAddFn index_add = index_add_kernel;
extern const GatherFn gather = gather_kernel;
extern const ScatterAddFn scatter_add = scatter_add_kernel;

}  // namespace lathe::kernels::cuda
