// Fused Adam/AdamW step on cuda with multi-tensor apply (the scheme of apex / PyTorch's
// _foreach kernels): the tensors are cut into chunks of 65536 elements and each CUDA block
// updates one chunk. The table of tensor pointers and the block -> (tensor, chunk) map travel in
// the kernel's parameter struct (under the 4 KiB parameter limit), so a step costs one launch per
// kMaxBlocks chunks or kMaxTensors tensors, no host -> device copy and no synchronization. A
// tensor whose chunks do not fit in one launch is carried over into the next table. Aligned
// tensors move in 16-byte packs, two per thread in flight: one element per thread at a time
// reached only half of the copy bandwidth on the H200 (BM_CudaAdamW, docs/benchmarks.md), too few
// bytes in flight for five streams.
//
// The per-element expressions are those of kernels/cpu/adamw.cpp (documented on AdamWArgs), in
// f32 with the scalars rounded from the host's f64 once; the simulated build therefore agrees
// with the cpu up to floating-point contraction, and a GPU up to its sqrt/div rounding.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/math.cuh"

namespace lathe::kernels::cuda {

namespace {

constexpr int64_t kDefaultChunk = 65536;
constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;

struct AdamWScalars {
  int64_t chunk;
  float decay, l2, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
  // Inside a CUDA graph: where each replay puts decay, l2, step_size and bc2_sqrt (else null).
  const AdamWStepScalars* device_step;
};

// The launch's scalars, with those of a graph's replay read from device memory.
LATHE_DEVICE_INLINE AdamWScalars resolve(const AdamWScalars& launch) {
  AdamWScalars s = launch;
  if (launch.device_step != nullptr) {
    const AdamWStepScalars step = *launch.device_step;
    s.decay = step.decay;
    s.l2 = step.l2;
    s.step_size = step.step_size;
    s.bc2_sqrt = step.bc2_sqrt;
  }
  return s;
}

// 36 x 49 + 320 x 5 bytes + scalars: ~3.4 KiB, within the 4 KiB kernel-parameter limit.
struct AdamWTable {
  void* param[kMaxTensors];
  const void* grad[kMaxTensors];
  float* exp_avg[kMaxTensors];
  float* exp_avg_sq[kMaxTensors];
  float* master[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t block_chunk[kMaxBlocks];
  uint8_t block_tensor[kMaxBlocks];
  bool vector[kMaxTensors];  // every pointer of the tensor 16-byte aligned: the pack path
};
static_assert(sizeof(AdamWTable) + sizeof(AdamWScalars) < 4000, "kernel parameters exceed 4 KiB");

// One element's update (the expressions of kernels/cpu/adamw.cpp): w is the f32 weight (the
// param itself, or its master copy), g the gradient, m and v the moments, all updated in place.
template <bool Decoupled>
LATHE_DEVICE_INLINE void adamw_update(float& w, float g, float& m, float& v,
                                      const AdamWScalars& s) {
  if constexpr (Decoupled) {
    w = w * s.decay;
  } else {
    g = g + s.l2 * w;
  }
  m = m + s.one_minus_beta1 * (g - m);
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  w = w - s.step_size * (m / (dmath::sqrt(v) / s.bc2_sqrt + s.eps));
}

// Element i of tensor slot t.
template <class T, bool Decoupled>
LATHE_DEVICE_INLINE void adamw_element(const AdamWTable& table, int t, int64_t i,
                                       const AdamWScalars& s) {
  float w;
  if constexpr (std::is_same_v<T, float>) {
    w = static_cast<T*>(table.param[t])[i];
  } else {
    w = table.master[t][i];
  }
  float m = table.exp_avg[t][i], v = table.exp_avg_sq[t][i];
  adamw_update<Decoupled>(w, convert<float>(static_cast<const T*>(table.grad[t])[i]), m, v, s);
  table.exp_avg[t][i] = m;
  table.exp_avg_sq[t][i] = v;
  if constexpr (!std::is_same_v<T, float>) table.master[t][i] = w;
  static_cast<T*>(table.param[t])[i] = convert<T>(w);
}

// Block b updates chunk table.block_chunk[b] of tensor table.block_tensor[b]. Tensors whose
// pointers are all 16-byte aligned (table.vector) go in packs of 16 bytes of T, kUnroll packs per
// thread with every load issued before the first store (the buffers could alias as far as the
// compiler knows, so it would not hoist the loads itself); the rest, and a tensor's last partial
// pack, element by element. Both paths run adamw_update on the same values, so they give the
// same bits.
template <class T, bool Decoupled>
__global__ void adamw_kernel_impl(AdamWTable table, AdamWScalars launch) {
  const AdamWScalars s = resolve(launch);
  constexpr int V = 16 / int(sizeof(T));
  constexpr int kUnroll = 2;
  const int t = table.block_tensor[blockIdx.x];
  const int64_t begin = int64_t(table.block_chunk[blockIdx.x]) * s.chunk;
  const int64_t n = table.numel[t];
  const int64_t end = begin + s.chunk < n ? begin + s.chunk : n;
  int64_t scalar_begin = begin;
  if (table.vector[t]) {
    // chunk % V == 0 (checked on the host), so a chunk starts on a pack.
    T* param = static_cast<T*>(table.param[t]);
    const T* grad = static_cast<const T*>(table.grad[t]);
    float* m = table.exp_avg[t];
    float* v = table.exp_avg_sq[t];
    float* master = table.master[t];
    const int64_t first = begin / V, last = end / V;  // whole packs [first, last)
    const int64_t step = blockDim.x;
    for (int64_t p0 = first + threadIdx.x; p0 < last; p0 += kUnroll * step) {
      Pack<T, V> pw[kUnroll] = {}, pg[kUnroll] = {};
      Pack<float, V> pm[kUnroll] = {}, pv[kUnroll] = {}, pmaster[kUnroll] = {};
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t p = p0 + u * step;
        if (p >= last) continue;
        if constexpr (std::is_same_v<T, float>) {
          pw[u] = load_pack<T, V>(param, p);
        } else {
          pmaster[u] = load_pack<float, V>(master, p);
        }
        pg[u] = load_pack<T, V>(grad, p);
        pm[u] = load_pack<float, V>(m, p);
        pv[u] = load_pack<float, V>(v, p);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t p = p0 + u * step;
        if (p >= last) break;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          float w = std::is_same_v<T, float> ? convert<float>(pw[u].v[k]) : pmaster[u].v[k];
          adamw_update<Decoupled>(w, convert<float>(pg[u].v[k]), pm[u].v[k], pv[u].v[k], s);
          pmaster[u].v[k] = w;
          pw[u].v[k] = convert<T>(w);
        }
        store_pack<float, V>(m, p, pm[u]);
        store_pack<float, V>(v, p, pv[u]);
        if constexpr (!std::is_same_v<T, float>) store_pack<float, V>(master, p, pmaster[u]);
        store_pack<T, V>(param, p, pw[u]);
      }
    }
    scalar_begin = last * V;
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x) {
    adamw_element<T, Decoupled>(table, t, i, s);
  }
}

template <class T>
void launch_table(const AdamWTable& table, int blocks, const AdamWScalars& s, bool decoupled) {
  if (decoupled) {
    rt::launch(adamw_kernel_impl<T, true>, dim3(unsigned(blocks)), dim3(kThreads), 0, stream(),
               "adamw", table, s);
  } else {
    rt::launch(adamw_kernel_impl<T, false>, dim3(unsigned(blocks)), dim3(kThreads), 0, stream(),
               "adamw", table, s);
  }
}

void adamw_kernel(const AdamWArgs& a) {
  LATHE_CHECK(a.chunk >= 0, "adamw: chunk must be >= 0, got ", a.chunk);
  LATHE_CHECK(a.count == 0 || a.tensors != nullptr, "adamw: ", a.count, " tensors but no list");
  const int64_t chunk_size = a.chunk > 0 ? a.chunk : kDefaultChunk;
  LATHE_CHECK(
      a.param_dtype == DType::F32 || a.param_dtype == DType::BF16 || a.param_dtype == DType::F16,
      "adamw: params must be f32, bf16 or f16, got ", a.param_dtype);
  for (int64_t k = 0; k < a.count; ++k) {
    const AdamWTensor& t = a.tensors[k];
    LATHE_CHECK(t.numel >= 0, "adamw: tensor ", k, " has a negative size ", t.numel);
    LATHE_CHECK(t.numel == 0 || (t.param && t.grad && t.exp_avg && t.exp_avg_sq), "adamw: tensor ",
                k, " is missing a param, grad or moment pointer");
    LATHE_CHECK(a.param_dtype == DType::F32 || t.numel == 0 || t.master, "adamw: tensor ", k,
                " has ", a.param_dtype, " params but no f32 master weights");
    LATHE_CHECK((t.numel + chunk_size - 1) / chunk_size <= int64_t(INT32_MAX), "adamw: tensor ", k,
                " has too many elements (", t.numel, ")");
  }
  AdamWScalars s;
  s.chunk = chunk_size;
  const AdamWStepScalars step = adamw_step_scalars(a);
  s.decay = step.decay;
  s.l2 = step.l2;
  s.one_minus_beta1 = float(1.0 - a.beta1);
  s.beta2 = float(a.beta2);
  s.one_minus_beta2 = float(1.0 - a.beta2);
  s.step_size = step.step_size;
  s.bc2_sqrt = step.bc2_sqrt;
  s.eps = float(a.eps);
  s.device_step = a.device_step_scalars;

  dispatch_device_float(a.param_dtype, "adamw", [&]<class T>() {
    if constexpr (std::is_same_v<T, double>) {
      return;  // rejected above; f64 params take the composed path
    } else {
      AdamWTable table;
      int slot = 0, blocks = 0;
      for (int64_t k = 0; k < a.count; ++k) {
        const AdamWTensor& t = a.tensors[k];
        if (t.numel == 0) continue;
        table.param[slot] = t.param;
        table.grad[slot] = t.grad;
        table.exp_avg[slot] = t.exp_avg;
        table.exp_avg_sq[slot] = t.exp_avg_sq;
        table.master[slot] = t.master;
        table.numel[slot] = t.numel;
        table.vector[slot] = chunk_size % (16 / int64_t(sizeof(T))) == 0 && aligned16(t.param) &&
                             aligned16(t.grad) && aligned16(t.exp_avg) && aligned16(t.exp_avg_sq) &&
                             (t.master == nullptr || aligned16(t.master));
        const int64_t chunks = (t.numel + chunk_size - 1) / chunk_size;
        for (int64_t c = 0; c < chunks; ++c) {
          table.block_tensor[blocks] = uint8_t(slot);
          table.block_chunk[blocks] = int32_t(c);
          ++blocks;
          const bool last_chunk = c == chunks - 1;
          const bool tensors_full = last_chunk && slot == kMaxTensors - 1;
          if (blocks == kMaxBlocks || tensors_full) {
            launch_table<T>(table, blocks, s, a.decoupled_weight_decay);
            blocks = 0;
            if (last_chunk) {
              slot = -1;  // the ++slot below starts the next table at 0
            } else {
              // The rest of this tensor goes on in the next table, as its slot 0.
              table.param[0] = table.param[slot];
              table.grad[0] = table.grad[slot];
              table.exp_avg[0] = table.exp_avg[slot];
              table.exp_avg_sq[0] = table.exp_avg_sq[slot];
              table.master[0] = table.master[slot];
              table.numel[0] = table.numel[slot];
              table.vector[0] = table.vector[slot];
              slot = 0;
            }
          }
        }
        ++slot;
      }
      if (blocks > 0) launch_table<T>(table, blocks, s, a.decoupled_weight_decay);
    }
  });
}

}  // namespace

extern const AdamWFn adamw = adamw_kernel;

}  // namespace lathe::kernels::cuda
