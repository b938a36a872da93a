// Fused Adam/AdamW step over a list of tensors (multi-tensor apply): one pass reads param, grad and
// both moments and writes them back, instead of the ~10 elementwise kernels and temporaries of the
// composed update. The formula and its evaluation order are documented on AdamWArgs
// (kernels/kernel_api.h); kernels/cuda/adamw.cu evaluates the same expressions.
//
// Work is split into chunks of at most kChunk elements across all tensors, so a model with many
// small tensors (biases, LayerNorm weights) still spreads over the threads, and one huge tensor
// does too. Each chunk runs in L1-sized blocks of three branch-free passes (moments, sqrt,
// parameter) that vectorize; the decoupled/L2 choice is a template parameter rather than a
// per-element branch.
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "kernels/cpu/cpu_kernels.h"
#include "lathe/core/error.h"
#include "lathe/core/half.h"

namespace lathe::kernels::cpu {

namespace {

constexpr int64_t kChunk = 16384;
// Below this many elements in total the thread start-up costs more than the update.
constexpr int64_t kParallelGrain = 32768;

struct Scalars {
  float decay, l2, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
};

Scalars make_scalars(const AdamWArgs& a) {
  LATHE_CHECK(a.device_step_scalars == nullptr,
              "adamw: the cpu kernel reads its scalars from the launch (device_step_scalars is for "
              "cuda graphs)");
  const AdamWStepScalars step = adamw_step_scalars(a);
  Scalars s;
  s.decay = step.decay;
  s.l2 = step.l2;
  s.one_minus_beta1 = float(1.0 - a.beta1);
  s.beta2 = float(a.beta2);
  s.one_minus_beta2 = float(1.0 - a.beta2);
  s.step_size = step.step_size;
  s.bc2_sqrt = step.bc2_sqrt;
  s.eps = float(a.eps);
  return s;
}

// sqrt over a block. GCC will not vectorize std::sqrt without -fno-math-errno (the errno branch
// for negative inputs), which lathe does not build with, so the block is done with the SSE/AVX
// instruction, which is the same correctly rounded IEEE sqrt as the scalar call.
inline void sqrt_block(const float* __restrict in, float* __restrict out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_sqrt_ps(_mm256_loadu_ps(in + i)));
#elif defined(__SSE2__)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(out + i, _mm_sqrt_ps(_mm_loadu_ps(in + i)));
#endif
  for (; i < n; ++i) out[i] = std::sqrt(in[i]);
}

// Block size of the three passes (moments; sqrt; parameter), small enough to stay in L1.
constexpr int64_t kBlock = 512;

// One block of at most kBlock elements. w_in/w_out: the f32 weights (the param itself, or the
// master copy); the 16-bit param, when there is one, is written from w_out by the caller.
template <bool Decoupled>
inline void update_block(const float* w_in, float* w_out, const float* __restrict g_in,
                         float* __restrict m, float* __restrict v, int64_t n, const Scalars& s) {
  float root[kBlock];
  for (int64_t i = 0; i < n; ++i) {
    const float g = Decoupled ? g_in[i] : g_in[i] + s.l2 * w_in[i];
    m[i] = m[i] + s.one_minus_beta1 * (g - m[i]);
    v[i] = v[i] * s.beta2 + s.one_minus_beta2 * g * g;
  }
  sqrt_block(v, root, n);
  for (int64_t i = 0; i < n; ++i) {
    const float w = Decoupled ? w_in[i] * s.decay : w_in[i];
    w_out[i] = w - s.step_size * (m[i] / (root[i] / s.bc2_sqrt + s.eps));
  }
}

// f32 params: updated in place.
template <bool Decoupled>
void update_f32(float* p, const float* g, float* m, float* v, int64_t n, const Scalars& s) {
  for (int64_t b = 0; b < n; b += kBlock) {
    update_block<Decoupled>(p + b, p + b, g + b, m + b, v + b, std::min(kBlock, n - b), s);
  }
}

// 16-bit params with an f32 master copy: the update runs on the master, the param gets it rounded.
template <bool Decoupled, class T>
void update_master(T* p, const T* g, float* m, float* v, float* master, int64_t n,
                   const Scalars& s) {
  float g32[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t c = std::min(kBlock, n - b);
    for (int64_t i = 0; i < c; ++i) g32[i] = float(g[b + i]);
    update_block<Decoupled>(master + b, master + b, g32, m + b, v + b, c, s);
    for (int64_t i = 0; i < c; ++i) p[b + i] = T(master[b + i]);
  }
}

struct Chunk {
  int64_t tensor, begin, end;
};

template <bool Decoupled>
void run_chunk(const AdamWArgs& a, const Chunk& c, const Scalars& s) {
  const AdamWTensor& t = a.tensors[c.tensor];
  const int64_t b = c.begin, n = c.end - c.begin;
  switch (a.param_dtype) {
    case DType::F32:
      update_f32<Decoupled>(static_cast<float*>(t.param) + b, static_cast<const float*>(t.grad) + b,
                            t.exp_avg + b, t.exp_avg_sq + b, n, s);
      break;
    case DType::BF16:
      update_master<Decoupled>(static_cast<BFloat16*>(t.param) + b,
                               static_cast<const BFloat16*>(t.grad) + b, t.exp_avg + b,
                               t.exp_avg_sq + b, t.master + b, n, s);
      break;
    case DType::F16:
      update_master<Decoupled>(static_cast<Half*>(t.param) + b,
                               static_cast<const Half*>(t.grad) + b, t.exp_avg + b,
                               t.exp_avg_sq + b, t.master + b, n, s);
      break;
    default:
      break;  // rejected in adamw_kernel
  }
}

void adamw_kernel(const AdamWArgs& a) {
  LATHE_CHECK(
      a.param_dtype == DType::F32 || a.param_dtype == DType::BF16 || a.param_dtype == DType::F16,
      "adamw: params must be f32, bf16 or f16, got ", a.param_dtype);
  LATHE_CHECK(a.chunk >= 0, "adamw: chunk must be >= 0, got ", a.chunk);
  LATHE_CHECK(a.count == 0 || a.tensors != nullptr, "adamw: ", a.count, " tensors but no list");
  const int64_t chunk = a.chunk > 0 ? a.chunk : kChunk;
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int64_t k = 0; k < a.count; ++k) {
    const AdamWTensor& t = a.tensors[k];
    LATHE_CHECK(t.numel >= 0, "adamw: tensor ", k, " has a negative size ", t.numel);
    LATHE_CHECK(t.numel == 0 || (t.param && t.grad && t.exp_avg && t.exp_avg_sq), "adamw: tensor ",
                k, " is missing a param, grad or moment pointer");
    LATHE_CHECK(a.param_dtype == DType::F32 || t.numel == 0 || t.master, "adamw: tensor ", k,
                " has ", a.param_dtype, " params but no f32 master weights");
    for (int64_t b = 0; b < t.numel; b += chunk)
      chunks.push_back({k, b, std::min(t.numel, b + chunk)});
    total += t.numel;
  }
  const Scalars s = make_scalars(a);
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
  if (a.decoupled_weight_decay) {
#pragma omp parallel for schedule(static) if (total >= kParallelGrain)
    for (int64_t c = 0; c < nchunks; ++c) run_chunk<true>(a, chunks[size_t(c)], s);
  } else {
#pragma omp parallel for schedule(static) if (total >= kParallelGrain)
    for (int64_t c = 0; c < nchunks; ++c) run_chunk<false>(a, chunks[size_t(c)], s);
  }
}

}  // namespace

extern const AdamWFn adamw = adamw_kernel;

}  // namespace lathe::kernels::cpu
