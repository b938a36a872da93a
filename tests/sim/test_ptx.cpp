// The PTX wrappers (kernels/cuda/ptx.cuh) against references written here: mma fragments loaded by
// ldmatrix vs an f64 matrix product, ldmatrix registers lane by lane vs the layout the PTX ISA
// documents, cp.async zero fill, and a small tiled tensor-core GEMM vs a naive product. In the
// simulated build they test the emulation (under several schedules, which must agree bit for bit);
// built with nvcc and run on a GPU, the same tests check the emulation's layouts against hardware.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "lathe/core/error.h"
#include "lathe/core/half.h"
#include "tests/sim/ptx_test_kernels.h"
#ifdef LATHE_CUDA_SIM_BUILD
#include "kernels/sim/sim_runtime.h"
#endif

using namespace lathe;
using ptx_tests::Elem;

namespace {

uint16_t to_bits(Elem e, float v) {
  return e == Elem::F16 ? Half::from_float(v) : BFloat16::from_float(v);
}
double value(Elem e, uint16_t bits) {
  return e == Elem::F16 ? double(Half::to_float(bits))
                        : double(detail::bits_float(uint32_t(bits) << 16));
}
const char* name(Elem e) {
  return e == Elem::F16 ? "f16" : "bf16";
}

// Uniform values in [-1, 1) rounded to the element type, or small integers (exact products and
// sums, so any misplaced element shows up as an exact mismatch).
std::vector<uint16_t> matrix(Elem e, size_t n, uint32_t seed, bool integers = false) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  std::uniform_int_distribution<int> small(-4, 4);
  std::vector<uint16_t> m(n);
  for (auto& v : m) v = to_bits(e, integers ? float(small(rng)) : uniform(rng));
  return m;
}

// D = A*B + C in f64 with A [M][K], B [K][N] (or [N][K] when n_major), C [M][N] (optional), and
// the per-element scale sum_k |a_ik b_kj| + |c_ij| that bounds the f32 summation error.
void reference(Elem e, bool n_major, int M, int N, int K, const std::vector<uint16_t>& a,
               const std::vector<uint16_t>& b, const std::vector<float>& c,
               std::vector<double>& out, std::vector<double>& scale) {
  out.assign(size_t(M) * N, 0.0);
  scale.assign(size_t(M) * N, 0.0);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      double sum = c.empty() ? 0.0 : c[size_t(i) * N + j], s = std::abs(sum);
      for (int k = 0; k < K; ++k) {
        double p = value(e, a[size_t(i) * K + k]) *
                   value(e, n_major ? b[size_t(j) * K + k] : b[size_t(k) * N + j]);
        sum += p;
        s += std::abs(p);
      }
      out[size_t(i) * N + j] = sum;
      scale[size_t(i) * N + j] = s;
    }
  }
}

double max_relative_error(const std::vector<float>& got, const std::vector<double>& want,
                          const std::vector<double>& scale) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double err = std::abs(double(got[i]) - want[i]) / (scale[i] + 1e-30);
    if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
  }
  return worst;
}

// The schedules a result must not depend on (only the simulator has schedules; on a GPU the
// list is one run).
struct Schedule {
  const char* name;
  int kind;  // 0 forward, 1 warp-random
  uint64_t seed;
};
const Schedule kSchedules[] = {{"forward", 0, 0}, {"warp-random", 1, 1}, {"warp-random", 1, 7}};

template <class F>
void under(const Schedule& s, F fn) {
#ifdef LATHE_CUDA_SIM_BUILD
  const sim::Schedule old = sim::current_schedule();
  const uint64_t old_seed = sim::current_seed();
  sim::set_schedule(s.kind == 0 ? sim::Schedule::Forward : sim::Schedule::WarpRandom, s.seed);
  try {
    fn();
  } catch (...) {
    sim::set_schedule(old, old_seed);
    throw;
  }
  sim::set_schedule(old, old_seed);
#else
  (void)s;
  fn();
#endif
}

bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

#ifdef LATHE_CUDA_SIM_BUILD
std::string error_of(void (*fn)()) {
  try {
    fn();
  } catch (const lathe::Error& e) {
    return e.what();
  }
  return "";
}
#endif

}  // namespace

TEST_CASE("ptx: mma.m16n8k16 on ldmatrix fragments matches an f64 product", "[ptx]") {
  for (Elem e : {Elem::F16, Elem::BF16}) {
    for (bool n_major : {false, true}) {
      for (bool integers : {true, false}) {
        INFO(name(e) << (n_major ? ", n-major B" : ", k-major B")
                     << (integers ? ", integer inputs" : ", uniform inputs"));
        auto a = matrix(e, 256, 1, integers), b = matrix(e, 128, 2, integers);
        std::vector<float> c(128);
        std::mt19937 rng(3);
        for (auto& v : c)
          v = integers ? float(int(rng() % 9) - 4) : float(rng() % 2001) / 1000.f - 1.f;
        std::vector<double> want, scale;
        reference(e, n_major, 16, 8, 16, a, b, c, want, scale);

        std::vector<float> first;
        for (const Schedule& s : kSchedules) {
          INFO("schedule " << s.name << " seed " << s.seed);
          std::vector<float> d(128, -12345.f);
          under(s,
                [&] { ptx_tests::mma_tile(e, n_major, a.data(), b.data(), c.data(), d.data()); });
          if (integers) {
            // Every product and partial sum is an exact small integer.
            std::vector<float> exact(want.begin(), want.end());
            CHECK(same_bits(d, exact));
          } else {
            CHECK(max_relative_error(d, want, scale) <= 1e-5);
          }
          if (first.empty()) first = d;
          CHECK(same_bits(d, first));
        }
      }
    }
  }
}

TEST_CASE("ptx: ldmatrix x1/x2/x4 and .trans registers lane by lane", "[ptx]") {
  // matrices[m][row][col], every element distinct.
  std::vector<uint16_t> matrices(256);
  for (int i = 0; i < 256; ++i) matrices[size_t(i)] = uint16_t(0x3c00 + 37 * i);
  std::vector<uint32_t> out(ptx_tests::kLdmatrixVariants * 32 * 4, 0xFFFFFFFFu);
  ptx_tests::ldmatrix_fragments(matrices.data(), out.data());
  auto element = [&](int m, int row, int col) {
    return uint32_t(matrices[size_t(m * 64 + row * 8 + col)]);
  };
  const int counts[] = {1, 2, 4, 1, 2, 4};
  for (int v = 0; v < ptx_tests::kLdmatrixVariants; ++v) {
    const bool trans = v >= 3;
    for (int lane = 0; lane < 32; ++lane) {
      for (int reg = 0; reg < 4; ++reg) {
        INFO("x" << counts[v] << (trans ? ".trans" : "") << " lane " << lane << " register "
                 << reg);
        uint32_t want = 0;
        if (reg < counts[v]) {
          // Documented: thread `lane` holds row lane/4, columns 2*(lane%4) and +1 of matrix `reg`
          // (lower column in the low half); .trans delivers the transposed matrix the same way.
          const int r = lane / 4, c = 2 * (lane % 4);
          want = trans ? element(reg, c, r) | element(reg, c + 1, r) << 16
                       : element(reg, r, c) | element(reg, r, c + 1) << 16;
        }
        CHECK(out[size_t((v * 32 + lane) * 4 + reg)] == want);
      }
    }
  }
}

TEST_CASE("ptx: cp.async copies src-size bytes and zero-fills the rest", "[ptx]") {
  std::vector<uint8_t> src(512), dst(512, 0x55);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(3 + i * 7 % 250);
  ptx_tests::cp_async_zero_fill(src.data(), dst.data());
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 16; ++i) {
      INFO("lane " << lane << " byte " << i);
      size_t at = size_t(lane * 16 + i);
      CHECK(int(dst[at]) == (i < lane % 17 ? int(src[at]) : 0));
    }
  }
}

TEST_CASE("ptx: tiled tensor-core GEMM with cp.async staging matches a naive product", "[ptx]") {
  struct Shape {
    int M, N, K;
  };
  for (Shape sh : {Shape{70, 40, 72}, Shape{1, 8, 8}, Shape{37, 24, 40}}) {
    for (Elem e : {Elem::F16, Elem::BF16}) {
      for (bool n_major : {false, true}) {
        INFO(sh.M << "x" << sh.N << "x" << sh.K << " " << name(e)
                  << (n_major ? ", n-major B" : ", k-major B"));
        auto a = matrix(e, size_t(sh.M) * sh.K, 10 + sh.M);
        auto b = matrix(e, size_t(sh.K) * sh.N, 20 + sh.N);
        std::vector<double> want, scale;
        reference(e, n_major, sh.M, sh.N, sh.K, a, b, {}, want, scale);
        std::vector<float> first;
        for (const Schedule& s : kSchedules) {
          INFO("schedule " << s.name << " seed " << s.seed);
          std::vector<float> c(size_t(sh.M) * sh.N, -12345.f);
          under(s, [&] {
            ptx_tests::hgemm(e, n_major, sh.M, sh.N, sh.K, a.data(), b.data(), c.data());
          });
          CHECK(max_relative_error(c, want, scale) <= 1e-5);
          if (first.empty()) first = c;
          CHECK(same_bits(c, first));
        }
      }
    }
  }
  std::vector<uint16_t> a(8 * 12), b(12 * 8);
  std::vector<float> c(64);
  CHECK_THROWS_WITH(ptx_tests::hgemm(Elem::F16, false, 8, 8, 12, a.data(), b.data(), c.data()),
                    Catch::Contains("multiples of 8"));
}

TEST_CASE("ptx: self-check entry for a real GPU passes", "[ptx]") {
  std::string report;
  int failures = ptx_tests::self_check(&report);
  INFO(report);
  CHECK(failures == 0);
  CHECK(report.find("hgemm 70x40x72 bf16") != std::string::npos);
}

#ifdef LATHE_CUDA_SIM_BUILD
TEST_CASE("ptx: the simulator reports misaligned ldmatrix rows and partial-warp mma", "[ptx]") {
  std::string e = error_of(ptx_tests::ldmatrix_misaligned);
  INFO(e);
  CHECK(e.find("ldmatrix.sync.aligned.m8n8.x1.shared.b16") != std::string::npos);
  CHECK(e.find("not 16-byte aligned") != std::string::npos);
  CHECK(e.find("ptx_test_kernels.cu") != std::string::npos);
  CHECK(e.find("of block (0,0,0)") != std::string::npos);
  e = error_of(ptx_tests::mma_partial_warp);
  INFO(e);
  // Depending on the schedule the other lanes have exited before or after the first arrives.
  CHECK((e.find("exited while its warp waits") != std::string::npos ||
         e.find("deadlock") != std::string::npos));
  CHECK(e.find("mma_partial_warp") != std::string::npos);
}
#endif
