// Norms and in-place scaling of many tensors at once (gradient clipping): the cpu side of the
// multi_tensor_norm / multi_tensor_scale families (kernels/cuda/multi_tensor.cu is the cuda one).
// Work is cut into chunks of at most `chunk` elements across all tensors so that many small
// tensors and one huge one both spread over the threads; each chunk's partial is summed in f64
// (for the 1- and 2-norms in kLanes interleaved sums, added in lane order: one running sum is a
// chain of dependent f64 adds, which held the 2-norm of a MiniLM's 22.6M gradients to ~2 GB/s per
// thread), and a tensor's partials are added in chunk order, so the result does not depend on the
// thread count.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_math.h"
#include "lathe/core/error.h"
#include "lathe/core/half.h"

namespace lathe::kernels::cpu {

namespace {

constexpr int64_t kDefaultChunk = 65536;

enum class NormKind { Sum, SumSquares, Max, Power };

NormKind kind_of(double p) {
  if (std::isinf(p)) return NormKind::Max;
  if (p == 2.0) return NormKind::SumSquares;
  if (p == 1.0) return NormKind::Sum;
  return NormKind::Power;
}

template <class T>
double as_double(T v) {
  if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
    return double(float(v));
  } else {
    return double(v);
  }
}

// sum |x| or sum x^2 in kLanes independent f64 sums, so that the loop vectorizes.
template <class T, NormKind kKind>
double chunk_sum(const T* x, int64_t n) {
  return lane_sum_of<double>(n, [x](int64_t i) {
    const double a = as_double(x[i]);
    return kKind == NormKind::SumSquares ? a * a : std::fabs(a);
  });
}

template <class T>
double chunk_partial(const T* x, int64_t n, NormKind kind, double p) {
  if (kind == NormKind::SumSquares) return chunk_sum<T, NormKind::SumSquares>(x, n);
  if (kind == NormKind::Sum) return chunk_sum<T, NormKind::Sum>(x, n);
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = std::fabs(as_double(x[i]));
    switch (kind) {
      case NormKind::Sum:
        acc += a;
        break;
      case NormKind::SumSquares:
        acc += a * a;
        break;
      case NormKind::Power:
        acc += std::pow(a, p);
        break;
      case NormKind::Max:
        if (std::isnan(a) || std::isnan(acc)) {
          acc = std::numeric_limits<double>::quiet_NaN();
        } else if (a > acc) {
          acc = a;
        }
        break;
    }
  }
  return acc;
}

double merge(double a, double b, NormKind kind) {
  if (kind != NormKind::Max) return a + b;
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
  return a > b ? a : b;
}

void check_tensors(const MultiTensor* tensors, int64_t count, const char* op) {
  LATHE_CHECK(count >= 0 && (count == 0 || tensors), op, ": ", count, " tensors but no list");
  for (int64_t k = 0; k < count; ++k) {
    const MultiTensor& t = tensors[k];
    LATHE_CHECK(t.numel >= 0 && (t.numel == 0 || t.data), op, ": tensor ", k,
                " has no data or a negative size (", t.numel, ")");
    LATHE_CHECK(is_floating(t.dtype), op, ": tensor ", k, " is ", t.dtype,
                "; only f32, f64, f16 and bf16 are supported");
  }
}

struct ChunkRef {
  int64_t tensor, begin, size;
};

std::vector<ChunkRef> make_chunks(const MultiTensor* tensors, int64_t count, int64_t chunk) {
  std::vector<ChunkRef> chunks;
  for (int64_t k = 0; k < count; ++k) {
    for (int64_t b = 0; b < tensors[k].numel; b += chunk) {
      chunks.push_back({k, b, std::min(chunk, tensors[k].numel - b)});
    }
  }
  return chunks;
}

void multi_tensor_norm_kernel(const MultiTensorNormArgs& a) {
  check_tensors(a.tensors, a.count, "multi_tensor_norm");
  LATHE_CHECK(a.norm_type > 0 && !std::isnan(a.norm_type),
              "multi_tensor_norm: norm_type must be positive, got ", a.norm_type);
  LATHE_CHECK(a.chunk >= 0, "multi_tensor_norm: chunk must be >= 0, got ", a.chunk);
  LATHE_CHECK(a.count == 0 || a.norms, "multi_tensor_norm: no output array");
  const NormKind kind = kind_of(a.norm_type);
  const std::vector<ChunkRef> chunks =
      make_chunks(a.tensors, a.count, a.chunk > 0 ? a.chunk : kDefaultChunk);
  std::vector<double> partial(chunks.size());
  const int64_t n = int64_t(chunks.size());
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
  for (int64_t i = 0; i < n; ++i) {
    const ChunkRef& c = chunks[size_t(i)];
    const MultiTensor& t = a.tensors[c.tensor];
    dispatch_floating(t.dtype, "multi_tensor_norm", [&]<class T>() {
      partial[size_t(i)] =
          chunk_partial(static_cast<const T*>(t.data) + c.begin, c.size, kind, a.norm_type);
    });
  }
  for (int64_t k = 0; k < a.count; ++k) a.norms[k] = 0.0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    double& out = a.norms[chunks[i].tensor];
    out = chunks[i].begin == 0 ? partial[i] : merge(out, partial[i], kind);
  }
  if (a.total) {
    double total = 0.0;
    for (int64_t k = 0; k < a.count; ++k) total = merge(total, a.norms[k], kind);
    *a.total = total;
  }
}

void multi_tensor_scale_kernel(const MultiTensor* tensors, int64_t count, const double* coef) {
  check_tensors(tensors, count, "multi_tensor_scale");
  LATHE_CHECK(coef, "multi_tensor_scale: no coefficient");
  const double scale = *coef;
  if (scale >= 1.0) return;
  const std::vector<ChunkRef> chunks = make_chunks(tensors, count, kDefaultChunk);
  const int64_t n = int64_t(chunks.size());
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
  for (int64_t i = 0; i < n; ++i) {
    const ChunkRef& c = chunks[size_t(i)];
    const MultiTensor& t = tensors[c.tensor];
    dispatch_floating(t.dtype, "multi_tensor_scale", [&]<class T>() {
      T* x = static_cast<T*>(t.data) + c.begin;
      if constexpr (std::is_same_v<T, double>) {
        for (int64_t j = 0; j < c.size; ++j) x[j] *= scale;
      } else if constexpr (std::is_same_v<T, float>) {
        const float s = float(scale);
        for (int64_t j = 0; j < c.size; ++j) x[j] *= s;
      } else {
        const float s = float(scale);
        for (int64_t j = 0; j < c.size; ++j) x[j] = T(float(x[j]) * s);
      }
    });
  }
}

}  // namespace

extern const MultiTensorNormFn multi_tensor_norm = multi_tensor_norm_kernel;
extern const MultiTensorScaleFn multi_tensor_scale = multi_tensor_scale_kernel;

}  // namespace lathe::kernels::cpu
