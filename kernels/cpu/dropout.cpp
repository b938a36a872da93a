// Inverted dropout with a Philox mask that is a pure function of (seed, offset, element index).
//
// Element i (row-major over the view's logical shape) is kept when
//   philox::to_uniform(philox::block(offset + i / 4, seed)[i % 4]) >= float(p)
// and then scaled by 1 / (1 - p); dropped elements are set to exactly 0 (a select, not a multiply,
// so an inf in a dropped position does not become NaN). Because the mask depends only on the
// index, the backward pass calls this same kernel on the incoming gradient with the same seed and
// offset and gets the same mask without storing it. Any other device must use the same rule
// (including the comparison in f32) to produce the same masks.
//
// Contiguous operands take a fast path: 64 Philox blocks are generated together (a SIMD loop
// across counters), batches split across threads. Strided operands are processed in chunks
// gathered into a contiguous buffer.
//
// The float selects (clamps, masks, max) vectorize because liblathe is built with
// -fno-trapping-math (CMakeLists.txt).
#include <algorithm>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/philox_batch.h"
#include "kernels/cpu/strided_loop.h"
#include "lathe/core/half.h"
#include "lathe/core/random.h"

namespace lathe::kernels::cpu {

namespace {

// Philox is ~10 rounds of multiplies per 4 elements: worth threading sooner than a plain copy.
constexpr int64_t kDropoutGrain = 8192;
// Elements per strided work chunk (a multiple of 4 * kBatch, so chunks start at lane 0).
constexpr int64_t kChunk = 1024;

// Four consecutive elements from one Philox block (tails and reference path).
template <class T>
inline void dropout_block(uint64_t counter, uint64_t seed, const T* in, T* out, float p, T scale) {
  const std::array<uint32_t, 4> r = philox::block(counter, seed);
  for (int l = 0; l < 4; ++l) {
    out[l] = philox::to_uniform(r[size_t(l)]) >= p ? in[l] * scale : T(0);
  }
}

// kBatch consecutive Philox blocks (4 * kBatch elements) at once (kernels/cpu/philox_batch.h).
constexpr int kBatch = kPhiloxBatch;
static_assert(kChunk % (4 * kBatch) == 0);

template <class T>
inline void dropout_batch(uint64_t counter, uint64_t seed, const T* in, T* out, float p, T scale) {
  // Uniforms in element order first, so the final loop is a plain unit-stride select (loads are
  // unconditional, so it vectorizes).
  float u[4 * kBatch];
  philox_uniform_blocks(counter, seed, kBatch, u);
  for (int e = 0; e < 4 * kBatch; ++e) {
    const T v = in[e] * scale;
    out[e] = u[e] >= p ? v : T(0);
  }
}

template <class T>
void dropout_contiguous(const T* in, T* out, int64_t n, float p, T scale, uint64_t seed,
                        uint64_t offset) {
  constexpr int64_t kPerBatch = 4 * kBatch;
  const int64_t batches = n / kPerBatch;
#pragma omp parallel for schedule(static) if (n >= kDropoutGrain)
  for (int64_t b = 0; b < batches; ++b) {
    dropout_batch(offset + uint64_t(b * kBatch), seed, in + b * kPerBatch, out + b * kPerBatch, p,
                  scale);
  }
  // The remaining < 4 * kBatch elements, one block at a time.
  for (int64_t i = batches * kPerBatch; i < n; i += 4) {
    const int64_t count = std::min<int64_t>(4, n - i);
    T tail_in[4] = {}, tail_out[4];
    for (int64_t l = 0; l < count; ++l) tail_in[l] = in[i + l];
    dropout_block(offset + uint64_t(i / 4), seed, tail_in, tail_out, p, scale);
    for (int64_t l = 0; l < count; ++l) out[i + l] = tail_out[l];
  }
}

// Strided operands: per chunk, gather the chunk's inputs in logical order into a buffer, run the
// contiguous block loop on it, and scatter the results, walking the innermost dim as a plain
// strided loop.
template <class T>
void dropout_strided(const View& in, const View& out, float p, T scale, uint64_t seed,
                     uint64_t offset) {
  const int64_t n = out.numel();
  const int ndim = out.ndim;
  const int inner = ndim - 1;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const T* in_base = static_cast<const T*>(in.data);
  T* out_base = static_cast<T*>(out.data);
#pragma omp parallel for schedule(static) if (n >= kDropoutGrain)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    const int64_t count = std::min<int64_t>(kChunk, n - begin);
    T buf_in[kChunk], buf_out[kChunk];
    // Multi-index of `begin` (row-major).
    int64_t start[kMaxDims] = {};
    int64_t rest = begin;
    for (int d = ndim - 1; d >= 0; --d) {
      start[d] = rest % out.size[d];
      rest /= out.size[d];
    }
    // Walks [begin, begin + count) in runs along the innermost dim, calling fn(in_ptr, out_ptr,
    // run_length, position_in_chunk).
    auto walk = [&](auto&& fn) {
      int64_t index[kMaxDims];
      int64_t in_off = 0, out_off = 0;
      for (int d = 0; d < ndim; ++d) {
        index[d] = start[d];
        in_off += index[d] * in.stride[d];
        out_off += index[d] * out.stride[d];
      }
      int64_t done = 0;
      while (done < count) {
        const int64_t run = std::min(count - done, out.size[inner] - index[inner]);
        fn(in_base + in_off, out_base + out_off, run, done);
        done += run;
        in_off += run * in.stride[inner];
        out_off += run * out.stride[inner];
        index[inner] += run;
        for (int d = inner; d > 0 && index[d] == out.size[d]; --d) {
          in_off += in.stride[d - 1] - index[d] * in.stride[d];
          out_off += out.stride[d - 1] - index[d] * out.stride[d];
          index[d] = 0;
          ++index[d - 1];
        }
      }
    };
    const int64_t si = in.stride[inner], so = out.stride[inner];
    walk([&](const T* src, T*, int64_t run, int64_t at) {
      for (int64_t k = 0; k < run; ++k) buf_in[at + k] = src[k * si];
    });
    // Pad to whole batches (kChunk is a multiple of 4 * kBatch); padded results are not stored.
    const int64_t batches = (count + 4 * kBatch - 1) / (4 * kBatch);
    for (int64_t k = count; k < batches * 4 * kBatch; ++k) buf_in[k] = T(0);
    for (int64_t b = 0; b < batches; ++b) {
      dropout_batch(offset + uint64_t(begin / 4 + b * kBatch), seed, buf_in + b * 4 * kBatch,
                    buf_out + b * 4 * kBatch, p, scale);
    }
    walk([&](const T*, T* dst, int64_t run, int64_t at) {
      for (int64_t k = 0; k < run; ++k) dst[k * so] = buf_out[at + k];
    });
  }
}

// Contiguous bf16, computed in f32 batch by batch (the f32 kernel's multiply and select on the
// widened values, rounded once): the bits of the op widening the tensor, without the two copies.
void dropout_contiguous_bf16(const BFloat16* in, BFloat16* out, int64_t n, float p, float scale,
                             uint64_t seed, uint64_t offset) {
  constexpr int64_t kPerBatch = 4 * kBatch;
  const int64_t batches = (n + kPerBatch - 1) / kPerBatch;
#pragma omp parallel for schedule(static) if (n >= kDropoutGrain)
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t begin = b * kPerBatch, count = std::min(kPerBatch, n - begin);
    float wide_in[kPerBatch] = {}, wide_out[kPerBatch];
    for (int64_t e = 0; e < count; ++e) wide_in[e] = float(in[begin + e]);
    if (count == kPerBatch) {
      dropout_batch(offset + uint64_t(b * kBatch), seed, wide_in, wide_out, p, scale);
    } else {  // the tail, one Philox block at a time as the f32 kernel does
      for (int64_t i = 0; i < count; i += 4) {
        dropout_block(offset + uint64_t((begin + i) / 4), seed, wide_in + i, wide_out + i, p,
                      scale);
      }
    }
    for (int64_t e = 0; e < count; ++e) out[begin + e] = BFloat16(wide_out[e]);
  }
}

void dropout_kernel(const View& in, const View& out, double p, const PhiloxState& state) {
  LATHE_CHECK(state.device_state == nullptr, "dropout: a cpu draw takes its Philox state by value");
  const uint64_t seed = state.seed, offset = state.offset;
  LATHE_CHECK(in.dtype == out.dtype && in.ndim == out.ndim, "dropout: input ", in.dtype,
              " and output ", out.dtype, " must have the same dtype and rank");
  for (int d = 0; d < in.ndim; ++d) {
    LATHE_CHECK(in.size[d] == out.size[d], "dropout: input and output shapes differ at dim ", d);
  }
  LATHE_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got ", p);
  const int64_t n = out.numel();
  if (n == 0) return;
  if (in.dtype == DType::BF16) {
    LATHE_CHECK(in.is_contiguous() && out.is_contiguous(),
                "dropout: bf16 on the cpu takes contiguous tensors (the op widens others)");
    dropout_contiguous_bf16(static_cast<const BFloat16*>(in.data), static_cast<BFloat16*>(out.data),
                            n, float(p), p >= 1.0 ? 0.0f : float(1.0 / (1.0 - p)), seed, offset);
    return;
  }
  dispatch_float(in.dtype, "dropout", [&]<class T>() {
    // p == 1 drops everything: scale 0 instead of 1/0.
    const T scale = p >= 1.0 ? T(0) : T(1.0 / (1.0 - p));
    const float pf = float(p);
    if (in.is_contiguous() && out.is_contiguous()) {
      dropout_contiguous<T>(static_cast<const T*>(in.data), static_cast<T*>(out.data), n, pf, scale,
                            seed, offset);
    } else {
      dropout_strided<T>(in, out, pf, scale, seed, offset);
    }
  });
}

}  // namespace

extern const DropoutFn dropout = dropout_kernel;

}  // namespace lathe::kernels::cpu
