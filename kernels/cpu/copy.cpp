// Strided copy with dtype conversion: the kernel behind contiguous(), clone(), to(dtype), copy_()
// and cat. Same-dtype unit-stride rows become memcpy.
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {

template <class Src, class Dst>
void copy_rows(const View& src, const View& dst) {
  for_each_row<2>({&dst, &src}, [](std::array<char*, 2> p, std::array<int64_t, 2> s, int64_t n) {
    if constexpr (std::is_same_v<Src, Dst>) {
      if (s[0] == sizeof(Dst) && s[1] == sizeof(Src)) {
        std::memcpy(p[0], p[1], size_t(n) * sizeof(Dst));
        return;
      }
    }
    if (s[0] == sizeof(Dst) && s[1] == sizeof(Src)) {
      Dst* d = reinterpret_cast<Dst*>(p[0]);
      const Src* x = reinterpret_cast<const Src*>(p[1]);
      for (int64_t i = 0; i < n; ++i) d[i] = convert<Dst>(x[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) at<Dst>(p[0], s[0], i) = convert<Dst>(at<Src>(p[1], s[1], i));
    }
  });
}

void copy_kernel(const View& src, const View& dst) {
  dispatch_all(src.dtype, "copy", [&]<class Src>() {
    dispatch_all(dst.dtype, "copy", [&]<class Dst>() { copy_rows<Src, Dst>(src, dst); });
  });
}

}  // namespace

extern const CopyFn copy = copy_kernel;

}  // namespace lathe::kernels::cpu
