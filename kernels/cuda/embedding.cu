// The gradient of an embedding lookup on cuda (EmbeddingBackwardArgs), deterministic and without
// float atomics, for f32, f64, f16 and bf16 (sums in f32, or f64 for f64, rounded once).
//
// Sort-and-segment, the scheme of PyTorch's embedding_dense_backward:
//  1. keys (index << 32 | position) for every position whose index is not padding_idx; padding and
//     the power-of-two fill sort last as UINT64_MAX. An index out of range is filed in the device
//     report (raised at the host's next wait, device_report.h) and its position skipped.
//  2. bitonic sort of the keys: whole 2048-key tiles in shared memory, then the global merge
//     stages, each finishing in shared memory once its stride fits in a tile. Keys are unique, so
//     the order is the same whatever the sort's internals: positions of one index come out in
//     increasing order.
//  3. each run of equal indices (a segment) is cut into groups of at most kGroup positions, counted
//     from the segment's start: a max-scan gives every key its segment's start, a sum-scan numbers
//     the groups. The group count stays on the device: the buffers are sized for one group per
//     position (the most there can be) and the later kernels read the count, so the host never
//     waits (a read-back here was a host wait per call).
//  4. a thread per (group, 16-byte column pack) adds the group's rows of grad_out in position order
//     into an f32 (f64) partial row; neighbouring threads read neighbouring columns.
//  5. a thread per (segment, column pack) adds its groups' partial rows in order and writes the
//     weight row's gradient; rows no index names stay zero from a memset.
// The work is spread evenly even when one index dominates (a frequent token), and each gradient
// element receives its terms in increasing position, grouped by kGroup: a segment of at most
// kGroup positions gives exactly the cpu kernel's (sequential) sum.
#include <climits>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_report.cuh"
#include "kernels/cuda/rows.cuh"

namespace lathe::kernels::cuda {

namespace {

using rows::acc_t;

constexpr int64_t kGroup = 32;   // positions summed by one thread before the partials combine
constexpr int kSortTile = 2048;  // keys sorted in shared memory by one block
constexpr uint64_t kNoKey = UINT64_MAX;

LATHE_DEVICE_INLINE int64_t key_index(uint64_t key) {
  return int64_t(key >> 32);
}
LATHE_DEVICE_INLINE int64_t key_position(uint64_t key) {
  return int64_t(key & 0xffffffffu);
}

__global__ void make_keys_kernel(const int64_t* indices, int64_t n, int64_t padded,
                                 int64_t num_embeddings, int64_t padding_idx, uint64_t* keys,
                                 DeviceReport* report) {
  for (int64_t i = global_thread(); i < padded; i += grid_threads()) {
    uint64_t key = kNoKey;
    if (i < n) {
      const int64_t v = indices[i];
      if (v < 0 || v >= num_embeddings) {
        file_report(report, "embedding backward", ReportKind::Embedding, v, num_embeddings, i);
      } else if (v != padding_idx) {
        key = (uint64_t(v) << 32) | uint64_t(i);
      }
    }
    keys[i] = key;
  }
}

// ---- bitonic sort (ascending) of a power-of-two number of keys ----

// Compare-exchange of the pair (i, i + j) for stage k: ascending where bit k of i is clear.
LATHE_DEVICE_INLINE void compare_exchange(uint64_t* keys, int64_t i, int64_t j, int64_t global_i,
                                          int64_t k) {
  const uint64_t a = keys[i], b = keys[i + j];
  const bool ascending = (global_i & k) == 0;
  if ((a > b) == ascending) {
    keys[i] = b;
    keys[i + j] = a;
  }
}

// The lower index of pair p at stride j (a power of two): p with a zero bit inserted at log2(j).
LATHE_DEVICE_INLINE int64_t pair_low(int64_t p, int64_t j) {
  return 2 * p - (p & (j - 1));
}

// One block per tile of `tile` keys (blockDim.x == tile / 2). With k == 0 it sorts the tile
// (stages 2 .. tile); otherwise it runs the strides tile / 2 .. 1 of stage k.
__global__ void bitonic_tile_kernel(uint64_t* keys, int64_t tile, int64_t k) {
  __shared__ uint64_t s[kSortTile];
  const int64_t base = int64_t(blockIdx.x) * tile;
  const int64_t t = threadIdx.x;
  s[t] = keys[base + t];
  s[t + tile / 2] = keys[base + t + tile / 2];
  __syncthreads();
  const int64_t k_first = k == 0 ? 2 : k, k_last = k == 0 ? tile : k;
  for (int64_t kk = k_first; kk <= k_last; kk *= 2) {
    for (int64_t j = (kk < tile ? kk : tile) / 2; j > 0; j /= 2) {
      const int64_t i = pair_low(t, j);
      compare_exchange(s, i, j, base + i, kk);
      __syncthreads();
    }
  }
  keys[base + t] = s[t];
  keys[base + t + tile / 2] = s[t + tile / 2];
}

__global__ void bitonic_global_kernel(uint64_t* keys, int64_t pairs, int64_t j, int64_t k) {
  for (int64_t p = global_thread(); p < pairs; p += grid_threads()) {
    const int64_t i = pair_low(p, j);
    compare_exchange(keys, i, j, i, k);
  }
}

void bitonic_sort(uint64_t* keys, int64_t n) {
  if (n < 2) return;
  const int64_t tile = n < kSortTile ? n : kSortTile;
  const dim3 tiles(unsigned(n / tile)), threads(unsigned(tile / 2));
  rt::launch(bitonic_tile_kernel, tiles, threads, 0, stream(), "bitonic_sort_tiles", keys, tile,
             int64_t(0));
  for (int64_t k = 2 * tile; k <= n; k *= 2) {
    for (int64_t j = k / 2; j >= tile; j /= 2) {
      rt::launch(bitonic_global_kernel, dim3(grid_for(n / 2)), dim3(kThreads), 0, stream(),
                 "bitonic_sort_global", keys, n / 2, j, k);
    }
    rt::launch(bitonic_tile_kernel, tiles, threads, 0, stream(), "bitonic_sort_merge", keys, tile,
               k);
  }
}

// ---- segments and groups ----

// seg_start[i] = i where a segment starts, 0 elsewhere (a max-scan then gives each key its
// segment's start).
__global__ void segment_starts_kernel(const uint64_t* keys, int64_t n, int64_t* seg_start) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const bool start =
        keys[i] != kNoKey && (i == 0 || key_index(keys[i]) != key_index(keys[i - 1]));
    seg_start[i] = start ? i : 0;
  }
}

// group_flag[i] = 1 where a group starts: every kGroup-th key of a segment, from its start.
__global__ void group_starts_kernel(const uint64_t* keys, int64_t n, const int64_t* seg_start,
                                    int64_t* group_flag) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    group_flag[i] = keys[i] != kNoKey && (i - seg_start[i]) % kGroup == 0 ? 1 : 0;
  }
}

// From the inclusive count of group starts: each group's [begin, end) among the sorted keys and
// its weight row.
__global__ void group_bounds_kernel(const uint64_t* keys, int64_t n, const int64_t* group_incl,
                                    int64_t* begin, int64_t* end, int64_t* row) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    if (keys[i] == kNoKey) continue;
    const int64_t g = group_incl[i] - 1;
    if (i == 0 || group_incl[i - 1] != group_incl[i]) {
      begin[g] = i;
      row[g] = key_index(keys[i]);
    }
    if (i + 1 == n || keys[i + 1] == kNoKey || group_incl[i + 1] != group_incl[i]) end[g] = i + 1;
  }
}

// partial[g, c .. c + W) = sum over the group's positions k, in order, of grad_out[k, c .. c + W).
template <class T, int W>
__global__ void group_sums_kernel(const uint64_t* keys, const int64_t* begin, const int64_t* end,
                                  const int64_t* group_count, const T* grad_out, int64_t s0,
                                  int64_t s1, int64_t dim, acc_t<T>* partial) {
  using C = acc_t<T>;
  const int64_t packs = dim / W, groups = *group_count;
  for (int64_t w = global_thread(); w < groups * packs; w += grid_threads()) {
    const int64_t g = w / packs, c = (w - g * packs) * W;
    C acc[W];
    for (int q = 0; q < W; ++q) acc[q] = C(0);
    for (int64_t i = begin[g]; i < end[g]; ++i) {
      const T* src = grad_out + key_position(keys[i]) * s0 + c * s1;
      C v[W];
      if constexpr (W == 1) {
        v[0] = convert<C>(src[0]);
      } else {
        rows::load<W>(src, v);  // s1 == 1 and 16-byte aligned rows
      }
      for (int q = 0; q < W; ++q) acc[q] += v[q];
    }
    for (int q = 0; q < W; ++q) partial[g * dim + c + q] = acc[q];
  }
}

// For the first group of each segment: its segment's partial rows added in order, written to the
// weight row.
template <class T, int W>
__global__ void segment_sums_kernel(const int64_t* row, const int64_t* group_count,
                                    const acc_t<T>* partial, int64_t dim, T* grad_weight) {
  using C = acc_t<T>;
  const int64_t packs = dim / W, groups = *group_count;
  for (int64_t w = global_thread(); w < groups * packs; w += grid_threads()) {
    const int64_t g = w / packs, c = (w - g * packs) * W;
    const int64_t v = row[g];
    if (g > 0 && row[g - 1] == v) continue;
    C acc[W];
    for (int q = 0; q < W; ++q) acc[q] = C(0);
    for (int64_t h = g; h < groups && row[h] == v; ++h) {
      for (int q = 0; q < W; ++q) acc[q] += partial[h * dim + c + q];
    }
    rows::store<W>(grad_weight + v * dim + c, acc);
  }
}

template <class T>
void embedding_backward_typed(const EmbeddingBackwardArgs& a) {
  using C = acc_t<T>;
  const int64_t n = a.n, dim = a.grad_out.size[1];
  T* grad_weight = static_cast<T*>(a.grad_weight);
  const size_t weight_bytes = size_t(a.num_embeddings * dim) * sizeof(T);

  // 1. keys, and the first index out of range.
  int64_t padded = 1;
  while (padded < n) padded *= 2;
  DeviceScratch keys(size_t(padded) * sizeof(uint64_t));
  rt::launch(make_keys_kernel, dim3(grid_for(padded)), dim3(kThreads), 0, stream(),
             "embedding_backward_keys", a.indices, n, padded, a.num_embeddings, a.padding_idx,
             keys.as<uint64_t>(), device_report());
  after_reporting_launch(stream());
  rt::memset_async(grad_weight, 0, weight_bytes, stream());

  // 2. sort; 3. segments and groups.
  bitonic_sort(keys.as<uint64_t>(), padded);
  DeviceScratch seg_start(size_t(padded) * sizeof(int64_t));
  DeviceScratch group_incl(size_t(padded) * sizeof(int64_t));
  const unsigned grid = grid_for(padded);
  rt::launch(segment_starts_kernel, dim3(grid), dim3(kThreads), 0, stream(),
             "embedding_backward_segments", static_cast<const uint64_t*>(keys.as<uint64_t>()),
             padded, seg_start.as<int64_t>());
  rows::inclusive_scan(seg_start.as<int64_t>(), padded, rows::Max{}, int64_t(0));
  rt::launch(group_starts_kernel, dim3(grid), dim3(kThreads), 0, stream(),
             "embedding_backward_groups", static_cast<const uint64_t*>(keys.as<uint64_t>()), padded,
             static_cast<const int64_t*>(seg_start.as<int64_t>()), group_incl.as<int64_t>());
  rows::inclusive_scan(group_incl.as<int64_t>(), padded, rows::Sum{}, int64_t(0));
  // At most one group per position; the count itself stays on the device.
  const int64_t groups = n;
  const int64_t* group_count = group_incl.as<int64_t>() + padded - 1;
  DeviceScratch bounds(size_t(3 * groups) * sizeof(int64_t));
  int64_t* begin = bounds.as<int64_t>();
  int64_t* end = begin + groups;
  int64_t* row = end + groups;
  rt::launch(group_bounds_kernel, dim3(grid), dim3(kThreads), 0, stream(),
             "embedding_backward_bounds", static_cast<const uint64_t*>(keys.as<uint64_t>()), padded,
             static_cast<const int64_t*>(group_incl.as<int64_t>()), begin, end, row);

  // 4. group sums; 5. segment sums.
  DeviceScratch partial(size_t(groups * dim) * sizeof(C));
  const T* src = static_cast<const T*>(a.grad_out.data);
  const int64_t s0 = a.grad_out.stride[0], s1 = a.grad_out.stride[1];
  constexpr int V = rows::kPack<T>;
  const bool vec = s1 == 1 && dim % V == 0 && (s0 * int64_t(sizeof(T))) % 16 == 0 &&
                   aligned16(src) && aligned16(grad_weight);
  auto run = [&]<int W>() {
    const unsigned g = grid_for(groups * (dim / W));
    rt::launch(group_sums_kernel<T, W>, dim3(g), dim3(kThreads), 0, stream(),
               "embedding_backward_group_sums", static_cast<const uint64_t*>(keys.as<uint64_t>()),
               static_cast<const int64_t*>(begin), static_cast<const int64_t*>(end), group_count,
               src, s0, s1, dim, partial.as<C>());
    rt::launch(segment_sums_kernel<T, W>, dim3(g), dim3(kThreads), 0, stream(),
               "embedding_backward_segment_sums", static_cast<const int64_t*>(row), group_count,
               static_cast<const C*>(partial.as<C>()), dim, grad_weight);
  };
  if (vec) {
    run.template operator()<V>();
  } else {
    run.template operator()<1>();
  }
}

void embedding_backward_impl(const EmbeddingBackwardArgs& a) {
  LATHE_CHECK(a.grad_out.ndim == 2 && a.grad_out.size[0] == a.n && a.n >= 0,
              "embedding backward: grad_out must be [", a.n, ", dim]");
  LATHE_CHECK(a.num_embeddings >= 0 && a.num_embeddings < (int64_t(1) << 31),
              "embedding backward: num_embeddings ", a.num_embeddings,
              " is outside [0, 2^31) on cuda");
  LATHE_CHECK(a.n < (int64_t(1) << 32) - 1, "embedding backward: ", a.n,
              " positions are more than the cuda kernel's 2^32 - 1");
  dispatch_device_float(a.grad_out.dtype, "embedding backward", [&]<class T>() {
    const int64_t dim = a.grad_out.size[1];
    if (a.n == 0 || dim == 0) {
      const size_t bytes = size_t(a.num_embeddings * dim) * sizeof(T);
      if (bytes > 0) rt::memset_async(a.grad_weight, 0, bytes, stream());
      return;
    }
    embedding_backward_typed<T>(a);
  });
}

}  // namespace

extern const EmbeddingBackwardFn embedding_backward = embedding_backward_impl;

}  // namespace lathe::kernels::cuda
