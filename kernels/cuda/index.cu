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
// - Indices are checked where they are read. A bad one is skipped (a copy writes 0 there, an
//   accumulation adds nothing) and filed in the device report, which the host raises at its next
//   wait with the same message as the cpu's (device_report.h). Checking before the launch cost a
//   synchronizing read-back per call.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_report.cuh"

namespace lathe::kernels::cuda {

namespace {

// What a kernel needs to check an index against `limit` and report it: as an index of dim `dim`
// of `op`, or, under kernels::ReportAs (embedding's forward), as an embedding index at its
// position (offset / index_stride: the op passes the flattened indices).
struct IndexCheck {
  DeviceReport* report;
  const char* op;
  ReportKind kind;
  int64_t limit, index_stride;
  int dim;
  // True when v (read at element offset `at` of the index) is in range; otherwise files the report.
  LATHE_DEVICE_INLINE bool ok(int64_t v, int64_t at) const {
    if (v >= 0 && v < limit) return true;
    file_report(report, op, kind, v, limit, index_stride != 0 ? at / index_stride : at, dim);
    return false;
  }
};

IndexCheck index_check(const View& index, int64_t limit, const char* op, int dim,
                       int64_t index_stride) {
  LATHE_CHECK(index.dtype == DType::I64, op, ": index must be i64 here, got ", index.dtype);
  if (const char* as = ReportAs::current()) {
    return IndexCheck{device_report(), as, ReportKind::Embedding, limit, index_stride, dim};
  }
  return IndexCheck{device_report(), op, ReportKind::Index, limit, index_stride, dim};
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
  IndexCheck check;
  // off: output, index, input with the indexed dim's stride zeroed
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[3]) const {
    const int64_t v = index[off[1]];
    out[off[0]] = check.ok(v, off[1]) ? in[off[2] + v * in_dim] : convert<T>(0.0f);
  }
};

void index_select_kernel(const View& in, int dim, const View& index, const View& out) {
  check_dims(in, out, dim, "index_select");
  LATHE_CHECK(index.ndim == 1 && index.size[0] == out.size[dim],
              "index_select: index must be 1-d with ", out.size[dim], " elements");
  const IndexCheck check = index_check(index, in.size[dim], "index_select", dim, index.stride[0]);
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
                       static_cast<const T*>(in.data), in.stride[dim], check});
  });
  after_reporting_launch(stream());
}

void gather_kernel(const View& in, int dim, const View& index, const View& out) {
  check_dims(in, out, dim, "gather");
  LATHE_CHECK(index.ndim == out.ndim, "gather: index and output differ in rank");
  for (int d = 0; d < out.ndim; ++d) {
    LATHE_CHECK(index.size[d] == out.size[d] && (d == dim || out.size[d] <= in.size[d]),
                "gather: index, input and output shapes disagree at dim ", d);
  }
  const IndexCheck check = index_check(index, in.size[dim], "gather", dim, 0);
  if (out.numel() == 0) return;
  View in_rest = in;
  for (int d = 0; d < out.ndim; ++d) in_rest.size[d] = out.size[d];
  in_rest.stride[dim] = 0;
  dispatch_device_all(in.dtype, "gather", [&]<class T>() {
    launch_elementwise<3>(
        "gather", {&out, &index, &in_rest},
        IndexedCopy<T>{static_cast<T*>(out.data), static_cast<const int64_t*>(index.data),
                       static_cast<const T*>(in.data), in.stride[dim], check});
  });
  after_reporting_launch(stream());
}

// ---- index_add: out.select(dim, index[k]) += src.select(dim, k), k in order ----

template <class T>
struct IndexAddRow {
  T* out;
  const T* src;
  const int64_t* index;
  int64_t index_stride, count, out_dim, src_dim;
  IndexCheck check;
  // off: output rest, source rest
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[2]) const {
    using C = compute_t<T>;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t v = index[k * index_stride];
      if (!check.ok(v, k * index_stride)) continue;
      T& o = out[off[0] + v * out_dim];
      o = convert<T>(C(convert<C>(o) + convert<C>(src[off[1] + k * src_dim])));
    }
  }
};

void index_add_kernel(const View& out, int dim, const View& index, const View& src) {
  check_dims(out, src, dim, "index_add");
  LATHE_CHECK(index.ndim == 1 && index.size[0] == src.size[dim],
              "index_add: index must be 1-d with ", src.size[dim], " elements");
  const IndexCheck check = index_check(index, out.size[dim], "index_add", dim, index.stride[0]);
  const View out_rest = drop_dim(out, dim, &src), src_rest = drop_dim(src, dim);
  dispatch_device_arith(out.dtype, "index_add", [&]<class T>() {
    launch_elementwise<2>("index_add", {&out_rest, &src_rest},
                          IndexAddRow<T>{static_cast<T*>(out.data), static_cast<const T*>(src.data),
                                         static_cast<const int64_t*>(index.data), index.stride[0],
                                         index.size[0], out.stride[dim], src.stride[dim], check});
  });
  after_reporting_launch(stream());
}

// ---- scatter_add: out[..index[..k..]..] += src[..k..] along dim, k in order ----

template <class T>
struct ScatterAddRow {
  T* out;
  const T* src;
  const int64_t* index;
  int64_t count, index_dim, src_dim, out_dim;
  IndexCheck check;
  // off: index rest, source rest, output rest
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[3]) const {
    using C = compute_t<T>;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t v = index[off[0] + k * index_dim];
      if (!check.ok(v, off[0] + k * index_dim)) continue;
      T& o = out[off[2] + v * out_dim];
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
  const IndexCheck check = index_check(index, out.size[dim], "scatter_add", dim, 0);
  const View idx_rest = drop_dim(index, dim), src_rest = drop_dim(src, dim, &index),
             out_rest = drop_dim(out, dim, &index);
  dispatch_device_arith(out.dtype, "scatter_add", [&]<class T>() {
    launch_elementwise<3>(
        "scatter_add", {&idx_rest, &src_rest, &out_rest},
        ScatterAddRow<T>{static_cast<T*>(out.data), static_cast<const T*>(src.data),
                         static_cast<const int64_t*>(index.data), index.size[dim],
                         index.stride[dim], src.stride[dim], out.stride[dim], check});
  });
  after_reporting_launch(stream());
}

}  // namespace

extern const IndexSelectFn index_select = index_select_kernel;
extern const IndexAddFn index_add = index_add_kernel;
extern const GatherFn gather = gather_kernel;
extern const ScatterAddFn scatter_add = scatter_add_kernel;

}  // namespace lathe::kernels::cuda
