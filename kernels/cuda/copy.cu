// copy (strided, with dtype conversion) and fill on cuda. Both are one generic elementwise launch
// (common.cuh); conversions follow the cpu backend bit for bit, so a cast gives the same tensor on
// both devices. Same-dtype contiguous copies are a device-to-device memcpy.
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

void copy_kernel(const View& src, const View& dst) {
  LATHE_CHECK(src.ndim == dst.ndim, "copy: source and destination ranks differ (", src.ndim,
              " and ", dst.ndim, ")");
  if (dst.numel() == 0) return;
  if (src.dtype == dst.dtype && src.is_contiguous() && dst.is_contiguous()) {
    rt::memcpy_async(dst.data, src.data, size_t(dst.numel()) * element_size(dst.dtype),
                     rt::CopyKind::DeviceToDevice, stream());
    return;
  }
  dispatch_device_all(src.dtype, "copy", [&]<class Src>() {
    dispatch_device_all(dst.dtype, "copy", [&]<class Dst>() {
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
