#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {
void fill_kernel(const View& dst, double value) {
  dispatch_all(dst.dtype, "fill", [&]<class scalar_t>() {
    const scalar_t v = convert<scalar_t>(value);
    for_each_row<1>({&dst}, [v](std::array<char*, 1> p, std::array<int64_t, 1> s, int64_t n) {
      if (s[0] == sizeof(scalar_t)) {
        scalar_t* d = reinterpret_cast<scalar_t*>(p[0]);
        for (int64_t i = 0; i < n; ++i) d[i] = v;
      } else {
        for (int64_t i = 0; i < n; ++i) at<scalar_t>(p[0], s[0], i) = v;
      }
    });
  });
}
}  // namespace

extern const FillFn fill = fill_kernel;

}  // namespace lathe::kernels::cpu
