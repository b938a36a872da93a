// where(cond, a, b): out = cond ? a : b, for every dtype. The op layer passes all operands already
// broadcast to out's shape (stride 0 on broadcast dims), so this is one strided elementwise loop.
// masked_fill (where with a broadcast scalar) and the where-based backward of maximum/max are its
// main users, so the rows with a stride-0 `a` or `b` get their own branch-free loops.
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {

template <class T>
void where_rows(const View& cond, const View& a, const View& b, const View& out) {
  for_each_row<4>(
      {&out, &cond, &a, &b}, [](std::array<char*, 4> p, std::array<int64_t, 4> s, int64_t n) {
        T* o = reinterpret_cast<T*>(p[0]);
        // Read the mask as bytes: a bool's object representation is 0 or 1, and byte loads
        // vectorize.
        const uint8_t* c = reinterpret_cast<const uint8_t*>(p[1]);
        const T* x = reinterpret_cast<const T*>(p[2]);
        const T* y = reinterpret_cast<const T*>(p[3]);
        const bool out_unit = s[0] == sizeof(T) && s[1] == 1;
        if (out_unit && s[2] == sizeof(T) && s[3] == sizeof(T)) {
          for (int64_t i = 0; i < n; ++i) o[i] = c[i] ? x[i] : y[i];
        } else if (out_unit && s[2] == 0 && s[3] == sizeof(T)) {
          const T xv = x[0];
          for (int64_t i = 0; i < n; ++i) o[i] = c[i] ? xv : y[i];
        } else if (out_unit && s[2] == sizeof(T) && s[3] == 0) {
          const T yv = y[0];
          for (int64_t i = 0; i < n; ++i) o[i] = c[i] ? x[i] : yv;
        } else {
          for (int64_t i = 0; i < n; ++i) {
            at<T>(p[0], s[0], i) =
                at<uint8_t>(p[1], s[1], i) ? at<T>(p[2], s[2], i) : at<T>(p[3], s[3], i);
          }
        }
      });
}

void where_kernel(const View& cond, const View& a, const View& b, const View& out) {
  LATHE_CHECK(cond.dtype == DType::Bool, "where: condition must be bool, got ", cond.dtype);
  LATHE_CHECK(a.dtype == out.dtype && b.dtype == out.dtype, "where: dtypes of a (", a.dtype,
              "), b (", b.dtype, ") and out (", out.dtype, ") must match");
  dispatch_all(out.dtype, "where", [&]<class T>() { where_rows<T>(cond, a, b, out); });
}

}  // namespace

extern const WhereFn where = where_kernel;

}  // namespace lathe::kernels::cpu
