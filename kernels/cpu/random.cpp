// Philox draws on the cpu. Element i uses counter block offset + i / 4 and lane i % 4, exactly as
// the cuda kernel will, so both devices produce the same tensor for the same (seed, offset).
// Normals: Box-Muller on lane pairs (0, 1) and (2, 3) of a block.
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "lathe/core/random.h"

namespace lathe::kernels::cpu {

namespace {

template <class T>
void fill_block(RandomDist dist, const std::array<uint32_t, 4>& r, T out[4]) {
  if (dist == RandomDist::Uniform) {
    for (int j = 0; j < 4; ++j) {
      if constexpr (std::is_same_v<T, double>) {
        out[j] = philox::to_uniform_double(r[size_t(j)]);
      } else {
        out[j] = philox::to_uniform(r[size_t(j)]);
      }
    }
    return;
  }
  for (int j = 0; j < 4; j += 2) {
    // u1 in (0, 1] so log(u1) is finite.
    double u1 = (double(r[size_t(j)]) + 1.0) * (1.0 / 4294967296.0);
    double u2 = double(r[size_t(j + 1)]) * (1.0 / 4294967296.0);
    double radius = std::sqrt(-2.0 * std::log(u1));
    double angle = 6.283185307179586 * u2;
    out[j] = T(radius * std::cos(angle));
    out[j + 1] = T(radius * std::sin(angle));
  }
}

void random_kernel(RandomDist dist, const View& out, const PhiloxState& state) {
  LATHE_CHECK(out.is_contiguous(), "random: output must be contiguous");
  LATHE_CHECK(state.device_state == nullptr, "random: a cpu draw takes its Philox state by value");
  const uint64_t seed = state.seed, offset = state.offset;
  const int64_t n = out.numel();
  const int64_t blocks = (n + 3) / 4;
  dispatch_float(out.dtype, "random", [&]<class scalar_t>() {
    scalar_t* data = static_cast<scalar_t*>(out.data);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t b = 0; b < blocks; ++b) {
      scalar_t values[4];
      fill_block(dist, philox::block(offset + uint64_t(b), seed), values);
      int64_t count = std::min<int64_t>(4, n - b * 4);
      for (int64_t j = 0; j < count; ++j) data[b * 4 + j] = values[j];
    }
  });
}

}  // namespace

extern const RandomFn random = random_kernel;

}  // namespace lathe::kernels::cpu
