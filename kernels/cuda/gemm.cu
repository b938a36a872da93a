// The cuda gemm family (design and semantics in gemm.h).
//
// Real build: cuBLASLt is column-major, so a row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: the B buffer is cuBLASLt's first operand, A the second, and
// a row-major matrix with leading dimension ld is the column-major transpose with the same ld (no
// copies). The bias of the row-major [m, n] result is then indexed by the rows of the column-major
// D, which is what cuBLASLt's bias epilogue broadcasts. Descriptors, layouts and the heuristic's
// algorithm are cached per problem (shapes, strides, dtypes, epilogue, pointer alignment), and
// each (device, stream) keeps one 32 MiB workspace from the caching allocator.
//
// Simulated build: the cpu backend's GEMM (OpenBLAS) on the host memory that simulated device
// memory is. f32/f64 problems without extras go straight to it; the others are packed into f32
// (f64) buffers, with f16/bf16 inputs widened exactly and TF32 inputs rounded to TF32's 10-bit
// mantissa, multiplied, then alpha/beta, bias and GELU applied and the result rounded once to
// C's dtype, as cuBLASLt does with f32 accumulation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/math.cuh"
#include "kernels/kernel_table.h"
#include "lathe/core/threading.h"

#if defined(__CUDACC__)
#include <cublasLt.h>

#include <mutex>
#include <unordered_map>
#endif

namespace lathe::kernels::cuda {

// D = beta * C (+ bias, GELU) for a product with k == 0, computed in the accumulation type.
template <class T, class Acc>
struct EmptyProduct {
  T* c;
  const T* bias;
  Acc beta;
  ::lathe::cuda::GemmEpilogue epilogue;
  // off: C, bias (broadcast over batch and rows)
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[2]) const {
    Acc v = beta == Acc(0) ? Acc(0) : beta * convert<Acc>(c[off[0]]);
    if (epilogue != ::lathe::cuda::GemmEpilogue::None) v += convert<Acc>(bias[off[1]]);
    if (epilogue == ::lathe::cuda::GemmEpilogue::BiasGelu) {
      const Acc inner = Acc(0.79788456080286535588) * (v + Acc(0.044715) * v * v * v);
      v = Acc(0.5) * v * (Acc(1) + dmath::tanh(inner));
    }
    c[off[0]] = convert<T>(v);
  }
};

[[maybe_unused]] void empty_product(const ::lathe::cuda::GemmExArgs& x, cudaStream_t s) {
  const GemmArgs& g = x.gemm;
  View c, bias;
  c.data = g.c;
  c.dtype = x.c_dtype;
  c.ndim = bias.ndim = 3;
  c.size[0] = g.batch;
  c.size[1] = g.m;
  c.size[2] = g.n;
  c.stride[0] = g.batch_stride_c;
  c.stride[1] = g.ldc;
  c.stride[2] = 1;
  bias.stride[2] = 1;
  ::lathe::cuda::StreamGuard guard(s);
  dispatch_device_float(x.c_dtype, "gemm", [&]<class T>() {
    using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
    launch_elementwise<2>("gemm_empty_product", {&c, &bias},
                          EmptyProduct<T, Acc>{static_cast<T*>(g.c), static_cast<const T*>(x.bias),
                                               Acc(g.beta), x.epilogue});
  });
}

}  // namespace lathe::kernels::cuda

namespace lathe::cuda {

namespace {

bool floating_for_gemm(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::F16 || t == DType::BF16;
}

std::string describe(const GemmExArgs& x) {
  const kernels::GemmArgs& g = x.gemm;
  return detail::concat("m ", g.m, ", n ", g.n, ", k ", g.k, ", batch ", g.batch, ", A/B ", g.dtype,
                        ", C ", x.c_dtype, g.trans_a ? ", A transposed" : "",
                        g.trans_b ? ", B transposed" : "");
}

void validate(const GemmExArgs& x) {
  const kernels::GemmArgs& g = x.gemm;
  LATHE_CHECK(g.m >= 0 && g.n >= 0 && g.k >= 0 && g.batch >= 0, "gemm: negative size (m ", g.m,
              ", n ", g.n, ", k ", g.k, ", batch ", g.batch, ")");
  const int64_t a_cols = g.trans_a ? g.m : g.k, b_cols = g.trans_b ? g.k : g.n;
  LATHE_CHECK(g.lda >= std::max<int64_t>(1, a_cols) && g.ldb >= std::max<int64_t>(1, b_cols) &&
                  g.ldc >= std::max<int64_t>(1, g.n),
              "gemm: leading dimensions (", g.lda, ", ", g.ldb, ", ", g.ldc,
              ") are smaller than the rows they describe (", a_cols, ", ", b_cols, ", ", g.n, ")");
  LATHE_CHECK(floating_for_gemm(g.dtype), "gemm: dtype ", g.dtype,
              " is not supported on cuda (expected f32, f64, f16 or bf16)");
  const bool c_ok = x.c_dtype == g.dtype ||
                    ((g.dtype == DType::F16 || g.dtype == DType::BF16) && x.c_dtype == DType::F32);
  LATHE_CHECK(c_ok, "gemm: inputs of ", g.dtype, " cannot write C of ", x.c_dtype, " (",
              describe(x), ")");
  LATHE_CHECK(x.epilogue == GemmEpilogue::None || x.bias != nullptr,
              "gemm: the bias epilogues need a bias pointer (", describe(x), ")");
  LATHE_CHECK(!x.allow_tf32 || g.dtype == DType::F32, "gemm: TF32 applies to f32 inputs only (",
              describe(x), ")");
  LATHE_CHECK(std::max({g.m, g.n, g.k}) <= int64_t(INT32_MAX), "gemm: a size exceeds 2^31 - 1 (",
              describe(x), ")");
}

}  // namespace

#if !defined(__CUDACC__)
// ---------------------------------------------------------------- simulated build: the cpu GEMM

namespace {

template <class T>
double load(const void* p, int64_t i, DType t) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::F64:
      return static_cast<const double*>(p)[i];
    case DType::F16:
      return float(static_cast<const Half*>(p)[i]);
    case DType::BF16:
      return float(static_cast<const BFloat16*>(p)[i]);
    default:
      return 0;
  }
}

void store(void* p, int64_t i, DType t, double v) {
  switch (t) {
    case DType::F32:
      static_cast<float*>(p)[i] = float(v);
      return;
    case DType::F64:
      static_cast<double*>(p)[i] = v;
      return;
    case DType::F16:
      static_cast<Half*>(p)[i] = Half(float(v));
      return;
    case DType::BF16:
      static_cast<BFloat16*>(p)[i] = BFloat16(float(v));
      return;
    default:
      return;
  }
}

// f32 rounded to TF32 (10 explicit mantissa bits), round to nearest, ties away from zero, as
// cvt.rna.tf32.f32 does.
float round_tf32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// The stored matrices of one operand, packed densely: batch x rows x cols.
template <class Acc>
std::vector<Acc> pack(const void* p, DType t, int64_t batch, int64_t rows, int64_t cols, int64_t ld,
                      int64_t batch_stride, bool tf32) {
  std::vector<Acc> out(size_t(batch * rows * cols));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        double v = load<Acc>(p, b * batch_stride + r * ld + c, t);
        Acc x = Acc(v);
        if constexpr (std::is_same_v<Acc, float>) {
          if (tf32) x = round_tf32(x);
        }
        out[size_t((b * rows + r) * cols + c)] = x;
      }
    }
  }
  return out;
}

template <class Acc>
void gemm_packed(const GemmExArgs& x) {
  const kernels::GemmArgs& g = x.gemm;
  const int64_t a_rows = g.trans_a ? g.k : g.m, a_cols = g.trans_a ? g.m : g.k;
  const int64_t b_rows = g.trans_b ? g.n : g.k, b_cols = g.trans_b ? g.k : g.n;
  std::vector<Acc> a =
      pack<Acc>(g.a, g.dtype, g.batch, a_rows, a_cols, g.lda, g.batch_stride_a, x.allow_tf32);
  std::vector<Acc> b =
      pack<Acc>(g.b, g.dtype, g.batch, b_rows, b_cols, g.ldb, g.batch_stride_b, x.allow_tf32);
  std::vector<Acc> d(size_t(g.batch * g.m * g.n), Acc(0));
  kernels::GemmArgs cpu;
  cpu.dtype = dtype_v<Acc>;
  cpu.trans_a = g.trans_a;
  cpu.trans_b = g.trans_b;
  cpu.m = g.m;
  cpu.n = g.n;
  cpu.k = g.k;
  cpu.batch = g.batch;
  cpu.a = a.data();
  cpu.lda = std::max<int64_t>(1, a_cols);
  cpu.batch_stride_a = a_rows * a_cols;
  cpu.b = b.data();
  cpu.ldb = std::max<int64_t>(1, b_cols);
  cpu.batch_stride_b = b_rows * b_cols;
  cpu.c = d.data();
  cpu.ldc = std::max<int64_t>(1, g.n);
  cpu.batch_stride_c = g.m * g.n;
  cpu.alpha = Acc(g.alpha);
  cpu.beta = 0.0;
  kernels::cpu_kernel_table().gemm(cpu);

  constexpr double kSqrt2OverPi = 0.79788456080286535588;
  const Acc beta = Acc(g.beta);
  for (int64_t bi = 0; bi < g.batch; ++bi) {
    for (int64_t i = 0; i < g.m; ++i) {
      for (int64_t j = 0; j < g.n; ++j) {
        const int64_t c_index = bi * g.batch_stride_c + i * g.ldc + j;
        Acc v = d[size_t((bi * g.m + i) * g.n + j)];
        if (beta != Acc(0)) v += beta * Acc(load<Acc>(g.c, c_index, x.c_dtype));
        if (x.epilogue != GemmEpilogue::None) v += Acc(load<Acc>(x.bias, j, x.c_dtype));
        if (x.epilogue == GemmEpilogue::BiasGelu) {
          const Acc inner = Acc(kSqrt2OverPi) * (v + Acc(0.044715) * v * v * v);
          v = Acc(0.5) * v * (Acc(1) + std::tanh(inner));
        }
        store(g.c, c_index, x.c_dtype, double(v));
      }
    }
  }
}

}  // namespace

void gemm_ex(const GemmExArgs& x, cudaStream_t stream) {
  validate(x);
  const kernels::GemmArgs& g = x.gemm;
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  // In stream order, like the cuBLASLt call it stands for (GemmExArgs holds only pointers and
  // sizes: copied by value).
  simulated_submit(stream, [x] {
    const DType dtype = x.gemm.dtype;
    const bool plain = x.c_dtype == dtype && !x.allow_tf32 && x.epilogue == GemmEpilogue::None;
    if (plain && (dtype == DType::F32 || dtype == DType::F64)) {
      // Deferred work runs on whichever thread waits: give it lathe's team size, as a cpu op gets
      // (kernels::kernel_table(Device)); not the profiled table, which would count it as a cpu op.
      ::lathe::detail::sync_num_threads();
      kernels::cpu_kernel_table().gemm(x.gemm);
    } else if (dtype == DType::F64) {
      gemm_packed<double>(x);
    } else {
      gemm_packed<float>(x);
    }
  });
}

void forget_workspace(int, cudaStream_t) {}  // the host GEMM needs no workspace

#else
// ---------------------------------------------------------------- real build: cuBLASLt

namespace {

#define LATHE_CUBLAS_CHECK(expr)                                                              \
  do {                                                                                        \
    const cublasStatus_t lathe_cublas_status_ = (expr);                                       \
    LATHE_CHECK(lathe_cublas_status_ == CUBLAS_STATUS_SUCCESS, __FILE__, ":", __LINE__, ": ", \
                #expr, " failed: ", cublasLtGetStatusString(lathe_cublas_status_));           \
  } while (0)

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F64:
      return CUDA_R_64F;
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      break;
  }
  LATHE_FAIL("gemm: no cuBLASLt type for ", t);
}

int alignment_of(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  for (int a : {256, 128, 64, 32, 16, 8, 4, 2}) {
    if (v % uintptr_t(a) == 0) return a;
  }
  return 1;
}

struct Key {
  int device;
  DType dtype, c_dtype;
  bool trans_a, trans_b, tf32;
  GemmEpilogue epilogue;
  int64_t m, n, k, batch, lda, ldb, ldc, sa, sb, sc;
  int align_a, align_b, align_c, align_bias;
  bool operator==(const Key& o) const { return std::memcmp(this, &o, sizeof(Key)) == 0; }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(&k);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(Key); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return size_t(h);
  }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool compute64 = false;
};

struct State {
  std::mutex mutex;
  std::unordered_map<int, cublasLtHandle_t> handles;
  std::unordered_map<Key, Plan, KeyHash> plans;
  std::unordered_map<cudaStream_t, void*> workspaces;  // per (device, stream): see workspace()
};
State& state() {
  static State* s = new State;  // never destroyed: cuBLASLt may be unloaded at exit
  return *s;
}

cublasLtHandle_t handle(State& s, int device) {
  auto it = s.handles.find(device);
  if (it != s.handles.end()) return it->second;
  cublasLtHandle_t h = nullptr;
  LATHE_CUBLAS_CHECK(cublasLtCreate(&h));
  s.handles.emplace(device, h);
  return h;
}

void* workspace(State& s, int device, cudaStream_t stream) {
  // Streams are per device, so the stream alone identifies the pair except for the default
  // stream, which is keyed per device.
  cudaStream_t key = stream ? stream : reinterpret_cast<cudaStream_t>(uintptr_t(device) + 1);
  auto it = s.workspaces.find(key);
  if (it != s.workspaces.end()) return it->second;
  void* w = device_allocator(device).allocate(kWorkspaceBytes, stream);
  s.workspaces.emplace(key, w);
  return w;
}

cublasLtMatrixLayout_t layout(DType t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                              int64_t batch_stride) {
  cublasLtMatrixLayout_t l = nullptr;
  LATHE_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&l, cuda_type(t), uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    int32_t count = int32_t(batch);
    LATHE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                        &count, sizeof count));
    LATHE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride, sizeof batch_stride));
  }
  return l;
}

Plan make_plan(cublasLtHandle_t h, const Key& key, const GemmExArgs& x) {
  const kernels::GemmArgs& g = x.gemm;
  Plan p;
  p.compute64 = g.dtype == DType::F64;
  cublasComputeType_t compute = p.compute64    ? CUBLAS_COMPUTE_64F
                                : x.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                               : CUBLAS_COMPUTE_32F;
  LATHE_CUBLAS_CHECK(
      cublasLtMatmulDescCreate(&p.op, compute, p.compute64 ? CUDA_R_64F : CUDA_R_32F));
  // Column-major view: D^T[n, m] = op(B)^T[n, k] * op(A)^T[k, m].
  cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  LATHE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                    sizeof op_first));
  LATHE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                                    sizeof op_second));
  if (x.epilogue != GemmEpilogue::None) {
    cublasLtEpilogue_t epi =
        x.epilogue == GemmEpilogue::Bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
    LATHE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    cudaDataType_t bias_type = cuda_type(x.c_dtype);
    LATHE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                      &bias_type, sizeof bias_type));
    int64_t bias_stride = 0;  // one bias for every batch
    LATHE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE,
                                                      &bias_stride, sizeof bias_stride));
  }
  p.a = layout(g.dtype, g.trans_b ? g.k : g.n, g.trans_b ? g.n : g.k, g.ldb, g.batch,
               g.batch_stride_b);
  p.b = layout(g.dtype, g.trans_a ? g.m : g.k, g.trans_a ? g.k : g.m, g.lda, g.batch,
               g.batch_stride_a);
  p.c = layout(x.c_dtype, g.n, g.m, g.ldc, g.batch, g.batch_stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  LATHE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWorkspaceBytes;
  LATHE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(h, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  LATHE_CHECK(status == CUBLAS_STATUS_SUCCESS && found > 0,
              "gemm: cuBLASLt has no algorithm for this problem (", describe(x),
              "): ", cublasLtGetStatusString(status));
  p.algo = result.algo;
  (void)key;
  return p;
}

}  // namespace

void gemm_ex(const GemmExArgs& x, cudaStream_t stream) {
  validate(x);
  const kernels::GemmArgs& g = x.gemm;
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  const int device = current_device();
  if (g.k == 0) {  // cuBLASLt rejects k == 0: D = beta * C (+ epilogue) by a plain kernel
    kernels::cuda::empty_product(x, stream);
    return;
  }
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  cublasLtHandle_t h = handle(s, device);
  Key key{};
  std::memset(&key, 0, sizeof key);
  key.device = device;
  key.dtype = g.dtype;
  key.c_dtype = x.c_dtype;
  key.trans_a = g.trans_a;
  key.trans_b = g.trans_b;
  key.tf32 = x.allow_tf32;
  key.epilogue = x.epilogue;
  key.m = g.m;
  key.n = g.n;
  key.k = g.k;
  key.batch = g.batch;
  key.lda = g.lda;
  key.ldb = g.ldb;
  key.ldc = g.ldc;
  key.sa = g.batch > 1 ? g.batch_stride_a : 0;
  key.sb = g.batch > 1 ? g.batch_stride_b : 0;
  key.sc = g.batch > 1 ? g.batch_stride_c : 0;
  key.align_a = alignment_of(g.a);
  key.align_b = alignment_of(g.b);
  key.align_c = alignment_of(g.c);
  key.align_bias = x.bias ? alignment_of(x.bias) : 0;
  auto it = s.plans.find(key);
  if (it == s.plans.end()) it = s.plans.emplace(key, make_plan(h, key, x)).first;
  Plan& p = it->second;
  if (x.epilogue != GemmEpilogue::None) {
    LATHE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &x.bias, sizeof x.bias));
  }
  void* ws = workspace(s, device, stream);
  const float alpha32 = float(g.alpha), beta32 = float(g.beta);
  const double alpha64 = g.alpha, beta64 = g.beta;
  const void* alpha = p.compute64 ? static_cast<const void*>(&alpha64) : &alpha32;
  const void* beta = p.compute64 ? static_cast<const void*>(&beta64) : &beta32;
  LATHE_CUBLAS_CHECK(cublasLtMatmul(h, p.op, alpha, g.b, p.a, g.a, p.b, beta, g.c, p.c, g.c, p.c,
                                    &p.algo, ws, kWorkspaceBytes, stream));
}

void forget_workspace(int device, cudaStream_t stream) {
  State& s = state();
  void* w = nullptr;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    cudaStream_t key = stream ? stream : reinterpret_cast<cudaStream_t>(uintptr_t(device) + 1);
    auto it = s.workspaces.find(key);
    if (it == s.workspaces.end()) return;
    w = it->second;
    s.workspaces.erase(it);
  }
  device_allocator(device).deallocate(w);
}

#endif

}  // namespace lathe::cuda

namespace lathe::kernels::cuda {

namespace {
void gemm_kernel(const GemmArgs& args) {
  ::lathe::cuda::GemmExArgs x;
  x.gemm = args;
  x.c_dtype = args.dtype;
  x.allow_tf32 = args.allow_tf32 && args.dtype == DType::F32;
  ::lathe::cuda::gemm_ex(x, stream());
}
}  // namespace

extern const GemmFn gemm = gemm_kernel;

}  // namespace lathe::kernels::cuda
