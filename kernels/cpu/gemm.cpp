// Row-major batched GEMM on OpenBLAS's single-threaded kernels, parallelized by lathe's own
// OpenMP team.
//
// Why this shape (measured on the 2-core dev machine, numbers in docs/benchmarks.md):
// - OpenBLAS beat Eigen by ~1.35x on SGEMM 512-2048 (its Cooperlake AVX-512 kernels), so the
//   micro-kernels come from cblas_sgemm/cblas_dgemm.
// - OpenBLAS's own pthread pool and libgomp's team spin on the same two cores: a GEMM followed by
//   an OpenMP elementwise kernel ran up to 4x slower than the two alone. So OpenBLAS is kept at one
//   thread and the work is split here instead: over the batch when it has at least one matrix per
//   thread, otherwise over the rows (or columns) of C. Every thread count then comes from
//   omp_get_max_threads(), i.e. LATHE_NUM_THREADS / lathe::set_num_threads, and a call made
//   inside an OpenMP region runs on the calling thread only.
// - Side effect: the process-wide OpenBLAS thread count is forced to 1 on each call.
#include <cblas.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/gemm_bf16.h"
#include "lathe/core/half.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lathe::kernels::cpu {

namespace {

// Below this many multiply-adds (about 2 us on one core) a fork/join costs more than it saves.
constexpr int64_t kParallelMacs = int64_t(1) << 17;
// A leftover matrix this large is worth splitting across the team.
constexpr int64_t kSplitLeftoverMacs = int64_t(1) << 21;
// Chunks of C rows/columns are multiples of this so threads do not share cache lines of C.
constexpr int64_t kChunkAlign = 16;

int team_size() {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

void keep_openblas_single_threaded() {
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

inline CBLAS_TRANSPOSE cblas_trans(bool t) {
  return t ? CblasTrans : CblasNoTrans;
}

template <class T>
void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, cblas_trans(ta), cblas_trans(tb), blasint(m), blasint(n), blasint(k),
                alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, cblas_trans(ta), cblas_trans(tb), blasint(m), blasint(n), blasint(k),
                alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
  }
}

// C = beta * C for the degenerate products (k == 0 or alpha == 0). beta == 0 writes zeros so
// garbage or NaN already in C never leaks into the result.
template <class T>
void scale_c(int64_t m, int64_t n, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    if (beta == T(0)) {
      std::fill(row, row + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

template <class T>
struct Matrices {
  const GemmArgs& args;
  const T* a(int64_t i) const { return static_cast<const T*>(args.a) + i * args.batch_stride_a; }
  const T* b(int64_t i) const { return static_cast<const T*>(args.b) + i * args.batch_stride_b; }
  T* c(int64_t i) const { return static_cast<T*>(args.c) + i * args.batch_stride_c; }

  void one(int64_t i, T alpha, T beta) const {
    blas_gemm<T>(args.trans_a, args.trans_b, args.m, args.n, args.k, alpha, a(i), args.lda, b(i),
                 args.ldb, beta, c(i), args.ldc);
  }

  // Thread `t` of `threads` computes its slab of C's rows (or columns when C is wide).
  void slab(int64_t i, int t, int threads, T alpha, T beta) const {
    const bool by_rows = args.m >= args.n;
    const int64_t extent = by_rows ? args.m : args.n;
    int64_t chunk = (extent + threads - 1) / threads;
    if (extent >= kChunkAlign * threads)
      chunk = (chunk + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
    const int64_t lo = std::min(extent, t * chunk), hi = std::min(extent, lo + chunk);
    if (hi <= lo) return;
    if (by_rows) {
      // Rows lo..hi of op(A): A + lo * lda untransposed, column offset lo when transposed.
      const T* a_part = a(i) + (args.trans_a ? lo : lo * args.lda);
      blas_gemm<T>(args.trans_a, args.trans_b, hi - lo, args.n, args.k, alpha, a_part, args.lda,
                   b(i), args.ldb, beta, c(i) + lo * args.ldc, args.ldc);
    } else {
      const T* b_part = b(i) + (args.trans_b ? lo * args.ldb : lo);
      blas_gemm<T>(args.trans_a, args.trans_b, args.m, hi - lo, args.k, alpha, a(i), args.lda,
                   b_part, args.ldb, beta, c(i) + lo, args.ldc);
    }
  }
};

template <class T>
void gemm_typed(const GemmArgs& args) {
  const T alpha = T(args.alpha), beta = T(args.beta);
  Matrices<T> mats{args};
  if (args.k == 0 || alpha == T(0)) {
    for (int64_t i = 0; i < args.batch; ++i) scale_c<T>(args.m, args.n, beta, mats.c(i), args.ldc);
    return;
  }
  keep_openblas_single_threaded();
  const int64_t macs = args.m * args.n * args.k;
  const int threads = team_size();
  if (threads == 1 || macs * args.batch < kParallelMacs) {
    for (int64_t i = 0; i < args.batch; ++i) mats.one(i, alpha, beta);
    return;
  }
  // One matrix per thread while every thread has one; large leftovers (batch % threads) are split
  // across the team so one thread does not finish a big matrix alone.
  int64_t first_split = 0;
  if (args.batch >= threads) {
    const int64_t rest = macs >= kSplitLeftoverMacs ? args.batch % threads : 0;
    first_split = args.batch - rest;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < first_split; ++i) mats.one(i, alpha, beta);
  }
  for (int64_t i = first_split; i < args.batch; ++i) {
    if (macs < kParallelMacs) {
      mats.one(i, alpha, beta);
      continue;
    }
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
      mats.slab(i, omp_get_thread_num(), omp_get_num_threads(), alpha, beta);
#endif
    }
  }
}

// bf16 A, B and C: on the processor's bf16 instructions when it has them (AMX tiles or AVX512-BF16
// dot products, gemm_bf16.h), else widened to f32 (exact), multiplied by SGEMM with f32
// accumulation and rounded once, which is what the op layer did before this kernel took bf16.
void gemm_bf16(const GemmArgs& args) {
  const int64_t a_rows = args.trans_a ? args.k : args.m, a_cols = args.trans_a ? args.m : args.k;
  const int64_t b_rows = args.trans_b ? args.n : args.k, b_cols = args.trans_b ? args.k : args.n;
  auto a_of = [&](int64_t i) {
    return static_cast<const BFloat16*>(args.a) + i * args.batch_stride_a;
  };
  auto b_of = [&](int64_t i) {
    return static_cast<const BFloat16*>(args.b) + i * args.batch_stride_b;
  };
  auto c_of = [&](int64_t i) { return static_cast<BFloat16*>(args.c) + i * args.batch_stride_c; };
  if (args.k == 0 || args.alpha == 0.0) {
    for (int64_t i = 0; i < args.batch; ++i) {
      for (int64_t r = 0; r < args.m; ++r) {
        BFloat16* row = c_of(i) + r * args.ldc;
        for (int64_t q = 0; q < args.n; ++q) {
          row[q] = BFloat16(args.beta == 0.0 ? 0.0f : float(args.beta) * float(row[q]));
        }
      }
    }
    return;
  }
  const int threads = team_size();
  if (const Bf16Gemm path = bf16_gemm_path(); path != Bf16Gemm::Widen) {
    for (int64_t i = 0; i < args.batch; ++i) {
      gemm_bf16_native(path, args, a_of(i), b_of(i), c_of(i), threads);
    }
    return;
  }
  auto widen = [](const BFloat16* src, int64_t rows, int64_t cols, int64_t ld) {
    std::vector<float> out(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t q = 0; q < cols; ++q) out[size_t(r * cols + q)] = float(src[r * ld + q]);
    }
    return out;
  };
  for (int64_t i = 0; i < args.batch; ++i) {
    const std::vector<float> a32 = widen(a_of(i), a_rows, a_cols, args.lda);
    const std::vector<float> b32 = widen(b_of(i), b_rows, b_cols, args.ldb);
    std::vector<float> c32 = args.beta != 0.0 ? widen(c_of(i), args.m, args.n, args.ldc)
                                              : std::vector<float>(size_t(args.m * args.n));
    GemmArgs f = args;
    f.dtype = DType::F32;
    f.batch = 1;
    f.a = a32.data();
    f.lda = std::max<int64_t>(1, a_cols);
    f.b = b32.data();
    f.ldb = std::max<int64_t>(1, b_cols);
    f.c = c32.data();
    f.ldc = std::max<int64_t>(1, args.n);
    gemm_typed<float>(f);
    for (int64_t r = 0; r < args.m; ++r) {
      for (int64_t q = 0; q < args.n; ++q) {
        c_of(i)[r * args.ldc + q] = BFloat16(c32[size_t(r * args.n + q)]);
      }
    }
  }
}

void gemm_kernel(const GemmArgs& args) {
  LATHE_CHECK(args.m >= 0 && args.n >= 0 && args.k >= 0 && args.batch >= 0,
              "gemm: negative size (m ", args.m, ", n ", args.n, ", k ", args.k, ", batch ",
              args.batch, ")");
  if (args.m == 0 || args.n == 0 || args.batch == 0) return;
  // BLAS requires each leading dimension to cover a stored row.
  const int64_t a_cols = args.trans_a ? args.m : args.k, b_cols = args.trans_b ? args.k : args.n;
  LATHE_CHECK(
      args.lda >= std::max<int64_t>(1, a_cols) && args.ldb >= std::max<int64_t>(1, b_cols) &&
          args.ldc >= std::max<int64_t>(1, args.n),
      "gemm: leading dimensions (", args.lda, ", ", args.ldb, ", ", args.ldc,
      ") are smaller than the rows they describe (", a_cols, ", ", b_cols, ", ", args.n, ")");
  constexpr int64_t kBlasMax = std::numeric_limits<blasint>::max();
  LATHE_CHECK(std::max({args.m, args.n, args.k, args.lda, args.ldb, args.ldc}) <= kBlasMax,
              "gemm: a size or leading dimension exceeds the BLAS integer range (m ", args.m,
              ", n ", args.n, ", k ", args.k, ")");
  if (args.dtype == DType::BF16) {
    gemm_bf16(args);
    return;
  }
  dispatch_float(args.dtype, "gemm", [&]<class T>() { gemm_typed<T>(args); });
}

}  // namespace

extern const GemmFn gemm = gemm_kernel;

}  // namespace lathe::kernels::cpu
