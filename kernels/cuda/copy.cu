// copy (strided, with dtype conversion) and fill on cuda. Both are one generic elementwise launch
// (common.cuh); conversions follow the cpu backend bit for bit, so a cast gives the same tensor on
// both devices. Same-dtype contiguous copies are a device-to-device memcpy. Contiguous casts
// between 16-byte aligned buffers (autocast's f32 -> bf16 weight casts and the casts of their
// gradients back, ~500 launches per BERT-base bf16 training step, 10% of the step in the H200
// profile) take a vector kernel: each thread converts kUnroll packs of 16 bytes of the narrower
// type, all loads issued before the first store, where the generic kernel moves one element per
// thread at a time and leaves too few bytes in flight to cover DRAM latency.
#include <cstdint>
#include <cstring>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace lathe::kernels::cuda {

namespace {

template <class Src, class Dst>
struct CopyOp {
  const Src* src;
  Dst* dst;
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[2]) const {
    dst[off[0]] = convert<Dst>(src[off[1]]);
  }
};

template <class T>
struct FillOp {
  T* dst;
  T value;
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[1]) const { dst[off[0]] = value; }
};

constexpr int kUnroll = 4;

// dst[i] = convert(src[i]) for i < n; packs of V elements (16 bytes of the narrower type), then a
// scalar tail.
template <class Src, class Dst>
__global__ void cast_vec_kernel(const Src* src, Dst* dst, int64_t n) {
  constexpr int V = 16 / int(sizeof(Src) < sizeof(Dst) ? sizeof(Src) : sizeof(Dst));
  const int64_t packs = n / V;
  const int64_t step = grid_threads();
  for (int64_t p0 = global_thread(); p0 < packs; p0 += kUnroll * step) {
    Pack<Src, V> in[kUnroll] = {};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = p0 + u * step;
      if (p < packs) in[u] = load_pack<Src, V>(src, p);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = p0 + u * step;
      if (p >= packs) break;
      Pack<Dst, V> out;
      convert_pack<Dst>(in[u].v, out.v);
      store_pack<Dst, V>(dst, p, out);
    }
  }
  for (int64_t i = packs * V + global_thread(); i < n; i += step) dst[i] = convert<Dst>(src[i]);
}

void copy_kernel(const View& src, const View& dst) {
  LATHE_CHECK(src.ndim == dst.ndim, "copy: source and destination ranks differ (", src.ndim,
              " and ", dst.ndim, ")");
  if (dst.numel() == 0) return;
  if (src.dtype == dst.dtype && src.is_contiguous() && dst.is_contiguous()) {
    rt::memcpy_async(dst.data, src.data, size_t(dst.numel()) * element_size(dst.dtype),
                     rt::CopyKind::DeviceToDevice, stream());
    return;
  }
  const bool vector =
      src.is_contiguous() && dst.is_contiguous() && aligned16(src.data) && aligned16(dst.data);
  dispatch_device_all(src.dtype, "copy", [&]<class Src>() {
    dispatch_device_all(dst.dtype, "copy", [&]<class Dst>() {
      if (vector) {
        const int64_t n = dst.numel();
        constexpr int64_t V = 16 / int64_t(sizeof(Src) < sizeof(Dst) ? sizeof(Src) : sizeof(Dst));
        const int64_t packs = n / V;
        rt::launch(cast_vec_kernel<Src, Dst>, dim3(grid_for(packs > 0 ? packs : n, kThreads, 8)),
                   dim3(kThreads), 0, stream(), "copy", static_cast<const Src*>(src.data),
                   static_cast<Dst*>(dst.data), n);
        return;
      }
      launch_elementwise<2>(
          "copy", {&dst, &src},
          CopyOp<Src, Dst>{static_cast<const Src*>(src.data), static_cast<Dst*>(dst.data)});
    });
  });
}

void fill_kernel(const View& dst, double value) {
  if (dst.numel() == 0) return;
  dispatch_all(dst.dtype, "fill", [&]<class T>() {
    const T host_value = host_convert<T>(value);
    using D = device_t<T>;
    D device_value;
    static_assert(sizeof(D) == sizeof(T));
    std::memcpy(static_cast<void*>(&device_value), &host_value, sizeof(T));
    launch_elementwise<1>("fill", {&dst}, FillOp<D>{static_cast<D*>(dst.data), device_value});
  });
}

}  // namespace

extern const CopyFn copy = copy_kernel;
extern const FillFn fill = fill_kernel;

}  // namespace lathe::kernels::cuda
