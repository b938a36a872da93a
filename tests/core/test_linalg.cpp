// matmul / linear against float64 triple loops written here (numpy semantics for 1-D operands and
// broadcast batch dims), plus the gemm kernel's contract (alpha, beta, NaN in C, k == 0) called
// directly, since the ops only use a corner of it.
#include <cmath>
#include <limits>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/kernel_table.h"
#include "lathe/core/matmul_precision.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

struct Expected {
  std::vector<double> values;
  Shape shape;
};

// numpy.matmul in float64 from the row-major values of a and b.
Expected naive_matmul(const Tensor& a, const Tensor& b) {
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  Shape sa = a.shape(), sb = b.shape();
  const bool a_vec = sa.size() == 1, b_vec = sb.size() == 1;
  if (a_vec) sa.insert(sa.begin(), 1);
  if (b_vec) sb.push_back(1);
  const int64_t m = sa[sa.size() - 2], k = sa.back(), n = sb.back();
  Shape ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  const size_t nb = std::max(ba.size(), bb.size());
  while (ba.size() < nb) ba.insert(ba.begin(), 1);
  while (bb.size() < nb) bb.insert(bb.begin(), 1);
  Shape batch(nb);
  for (size_t i = 0; i < nb; ++i) batch[i] = std::max(ba[i], bb[i]);
  const int64_t batches = shape_numel(batch);
  Expected out;
  out.values.assign(size_t(batches * m * n), 0.0);
  for (int64_t bi = 0; bi < batches; ++bi) {
    std::vector<int64_t> idx = unravel(bi, batch), ia(nb), ib(nb);
    for (size_t d = 0; d < nb; ++d) {
      ia[d] = ba[d] == 1 ? 0 : idx[d];
      ib[d] = bb[d] == 1 ? 0 : idx[d];
    }
    const int64_t oa = (nb ? ravel(ia, ba) : 0) * m * k, ob = (nb ? ravel(ib, bb) : 0) * k * n;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p)
          acc += va[size_t(oa + i * k + p)] * vb[size_t(ob + p * n + j)];
        out.values[size_t((bi * m + i) * n + j)] = acc;
      }
    }
  }
  out.shape = batch;
  if (!a_vec) out.shape.push_back(m);
  if (!b_vec) out.shape.push_back(n);
  return out;
}

// y = x @ w^T + bias over the last dim of x.
Expected naive_linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  std::vector<double> vx = x.to_vector<double>(), vw = w.to_vector<double>();
  std::vector<double> vb = bias.defined() ? bias.to_vector<double>() : std::vector<double>();
  const int64_t in = w.shape()[1], out_f = w.shape()[0];
  const int64_t rows =
      in == 0 ? shape_numel(Shape(x.shape().begin(), x.shape().end() - 1)) : x.numel() / in;
  Expected out;
  out.shape = Shape(x.shape().begin(), x.shape().end() - 1);
  out.shape.push_back(out_f);
  out.values.assign(size_t(rows * out_f), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out_f; ++o) {
      double acc = vb.empty() ? 0.0 : vb[size_t(o)];
      for (int64_t i = 0; i < in; ++i) acc += vx[size_t(r * in + i)] * vw[size_t(o * in + i)];
      out.values[size_t(r * out_f + o)] = acc;
    }
  }
  return out;
}

// f32 sums of k products of values in [-1, 1]: the error grows with k.
double atol_for(DType dtype, int64_t k) {
  return dtype == DType::F32 ? 2e-6 * double(k + 1) : 1e-13 * double(k + 1);
}

void check_matmul(const Tensor& a, const Tensor& b) {
  Expected e = naive_matmul(a, b);
  INFO("matmul " << shape_str(a.shape()) << " @ " << shape_str(b.shape()) << " " << a.dtype());
  check_close(matmul(a, b), e.values, e.shape, atol_for(a.dtype(), a.shape().back()), 1e-5);
}

}  // namespace

TEST_CASE("matmul: 2-D products at odd sizes match a float64 loop", "[matmul]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const std::vector<std::array<int64_t, 3>> sizes = {
      {1, 1, 1}, {65, 33, 129}, {7, 1, 37}, {1, 127, 3}, {37, 1000, 7}, {300, 200, 100}, {3, 5, 1}};
  uint64_t seed = 1;
  for (auto [m, k, n] : sizes) {
    Tensor a = random_tensor({m, k}, seed++, dtype, device);
    Tensor b = random_tensor({k, n}, seed++, dtype, device);
    check_matmul(a, b);
  }
}

TEST_CASE("matmul: 1-D operands follow numpy (dot, row, column)", "[matmul]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  Tensor v = random_tensor({37}, 1, dtype, device);
  Tensor w = random_tensor({37}, 2, dtype, device);
  Tensor dot = matmul(v, w);
  CHECK(dot.dim() == 0);
  check_matmul(v, w);
  check_matmul(v, random_tensor({37, 5}, 3, dtype, device));
  check_matmul(random_tensor({4, 37}, 4, dtype, device), v);
  check_matmul(v, random_tensor({2, 3, 37, 5}, 5, dtype, device));
  check_matmul(random_tensor({2, 4, 37}, 6, dtype, device), v);
  CHECK(matmul(random_tensor({2, 4, 37}, 6, dtype, device), v).shape() == Shape{2, 4});
  CHECK(matmul(v, random_tensor({3, 37, 5}, 6, dtype, device)).shape() == Shape{3, 5});
}

TEST_CASE("matmul: batched with broadcast batch dims", "[matmul]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 1, 3, 4}, {5, 4, 2}},  // non-uniform batch strides: looped outer dim
      {{2, 3, 4}, {4, 5}},        // shared right operand: folded into the rows
      {{3, 4}, {2, 4, 5}},        // shared left operand
      {{1, 3, 4}, {2, 4, 5}},        {{6, 7, 9}, {6, 9, 1}},
      {{2, 3, 1, 7}, {1, 1, 7, 3}},  {{5, 64, 64}, {5, 64, 64}},  // batch-parallel path
      {{3, 128, 128}, {3, 128, 128}}  // one matrix per thread plus a split leftover
  };
  uint64_t seed = 10;
  for (const auto& [sa, sb] : cases) {
    check_matmul(random_tensor(sa, seed, dtype, device),
                 random_tensor(sb, seed + 1, dtype, device));
    seed += 2;
  }
}

TEST_CASE("matmul: transposed, sliced, permuted and expanded inputs", "[matmul]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  Tensor a = random_tensor({33, 65}, 1, dtype, device);  // used as a.t(): [65, 33]
  Tensor b = random_tensor({17, 33}, 2, dtype, device);  // used as b.t(): [33, 17]
  check_matmul(a.t(), b.t());
  check_matmul(a.t(), non_contiguous(random_tensor({33, 17}, 3, dtype, device)));
  // Every other column: no BLAS layout, copied first.
  Tensor wide = random_tensor({9, 66}, 4, dtype, device);
  check_matmul(wide.slice(1, 0, 66, 2), random_tensor({33, 5}, 5, dtype, device));
  // A column slice keeps a leading dimension larger than the row.
  check_matmul(wide.slice(1, 3, 40), random_tensor({37, 4}, 6, dtype, device));
  // Batched transposes and permuted batch dims.
  Tensor q = random_tensor({2, 3, 7, 8}, 7, dtype, device);
  Tensor k = random_tensor({2, 3, 9, 8}, 8, dtype, device);
  check_matmul(q, k.transpose(-1, -2));
  check_matmul(q.permute({1, 0, 2, 3}), k.permute({1, 0, 3, 2}));
  check_matmul(q.transpose(-1, -2), random_tensor({3, 7, 2}, 9, dtype, device));
  // Attention's heads: [B, T, H, d] projections viewed as [B, H, T, d] (two batch dims that no
  // single stride describes; the cuda device copies them to one strided batch).
  Tensor proj_q = random_tensor({2, 7, 3, 8}, 13, dtype, device).permute({0, 2, 1, 3});
  Tensor proj_k = random_tensor({2, 9, 3, 8}, 14, dtype, device).permute({0, 2, 3, 1});
  check_matmul(proj_q, proj_k);
  // Expanded (stride 0) batch given directly, and a wide product split by columns.
  Tensor shared = random_tensor({1, 8, 6}, 10, dtype, device);
  check_matmul(q, shared.expand({2, 3, 8, 6}));
  check_matmul(random_tensor({300, 20}, 11, dtype, device).t(),
               random_tensor({500, 300}, 12, dtype, device).t());
}

TEST_CASE("matmul: empty dims give empty or zero results", "[matmul]") {
  auto device = GENERATE(from_range(test_devices()));
  auto opts = TensorOptions(DType::F32).device(device);
  Tensor z = matmul(empty({3, 0}, opts), empty({0, 4}, opts));
  check_close(z, std::vector<double>(12, 0.0), {3, 4});
  CHECK(matmul(empty({0, 3}, opts), ones({3, 4}, opts)).shape() == Shape{0, 4});
  CHECK(matmul(empty({2, 0, 3}, opts), ones({3, 4}, opts)).shape() == Shape{2, 0, 4});
  check_close(matmul(empty({0}, opts), empty({0}, opts)), {0.0}, {});
}

TEST_CASE("matmul: more threads than cores split the work unevenly and stay correct", "[matmul]") {
  const int previous = get_num_threads();
  set_num_threads(3);
  check_matmul(random_tensor({301, 203}, 1, DType::F32), random_tensor({203, 99}, 2, DType::F32));
  check_matmul(random_tensor({20, 203}, 3, DType::F64), random_tensor({203, 517}, 4, DType::F64));
  check_matmul(random_tensor({4, 130, 128}, 5, DType::F32),
               random_tensor({4, 128, 129}, 6, DType::F32));
  set_num_threads(previous);
}

TEST_CASE("gemm kernel: alpha, beta, NaN in C and k == 0", "[gemm]") {
  const auto& table = kernels::kernel_table(DeviceType::CPU);
  REQUIRE(table.gemm != nullptr);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t k : {int64_t(0), int64_t(5), int64_t(70)}) {
    const int64_t m = 40, n = 50, batch = 3;
    std::vector<double> a = random_values(batch * m * std::max<int64_t>(k, 1), 1);
    std::vector<double> b = random_values(batch * k * n + 1, 2);
    for (double beta : {0.0, 1.0, -0.5}) {
      std::vector<double> c0 = random_values(batch * m * n, 3);
      std::vector<double> c = c0;
      if (beta == 0.0) std::fill(c.begin(), c.end(), nan);
      kernels::GemmArgs args;
      args.dtype = DType::F64;
      args.m = m;
      args.n = n;
      args.k = k;
      args.batch = batch;
      args.a = a.data();
      args.lda = std::max<int64_t>(k, 1);
      args.batch_stride_a = m * std::max<int64_t>(k, 1);
      args.b = b.data();
      args.ldb = n;
      args.batch_stride_b = k * n;
      args.c = c.data();
      args.ldc = n;
      args.batch_stride_c = m * n;
      args.alpha = 2.0;
      args.beta = beta;
      table.gemm(args);
      for (int64_t bi = 0; bi < batch; ++bi) {
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double acc = 0;
            for (int64_t p = 0; p < k; ++p) {
              acc += a[size_t(bi * args.batch_stride_a + i * args.lda + p)] *
                     b[size_t(bi * k * n + p * n + j)];
            }
            const size_t at = size_t((bi * m + i) * n + j);
            const double expected = 2.0 * acc + (beta == 0.0 ? 0.0 : beta * c0[at]);
            if (!(std::abs(c[at] - expected) <= 1e-12)) {
              FAIL("k " << k << " beta " << beta << " at " << at << ": " << c[at] << " vs "
                        << expected);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("linear: matches x @ w^T + b for 1-D, 2-D and 3-D inputs", "[linear]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const std::vector<Shape> x_shapes = {{37}, {7, 37}, {2, 3, 37}, {1, 37}};
  for (bool with_bias : {true, false}) {
    for (const Shape& xs : x_shapes) {
      Tensor x = random_tensor(xs, 1, dtype, device);
      Tensor w = random_tensor({127, 37}, 2, dtype, device);
      Tensor bias = with_bias ? random_tensor({127}, 3, dtype, device) : Tensor();
      Expected e = naive_linear(x, w, bias);
      INFO("x " << shape_str(xs) << " bias " << with_bias);
      check_close(linear(x, w, bias), e.values, e.shape, atol_for(dtype, 37), 1e-5);
    }
  }
  // A weight stored transposed (as after w.t().contiguous().t()) and a non-contiguous input.
  Tensor w_t = random_tensor({37, 127}, 4, dtype, device);
  Tensor x = non_contiguous(random_tensor({9, 37}, 5, dtype, device));
  Tensor bias = random_tensor({127}, 6, dtype, device);
  Expected e = naive_linear(x, w_t.t(), bias);
  check_close(linear(x, w_t.t(), bias), e.values, e.shape, atol_for(dtype, 37), 1e-5);
  // No input features: the output is the bias.
  auto opts = TensorOptions(dtype).device(device);
  check_close(linear(empty({3, 0}, opts), empty({4, 0}, opts), full({4}, 2.0, opts)),
              std::vector<double>(12, 2.0), {3, 4});
}

TEST_CASE("matmul: gradients for every rank combination", "[matmul][autograd]") {
  const std::vector<std::pair<Shape, Shape>> cases = {{{4}, {4}},
                                                      {{4}, {4, 3}},
                                                      {{3, 4}, {4}},
                                                      {{3, 4}, {4, 2}},
                                                      {{4}, {2, 4, 3}},
                                                      {{2, 3, 4}, {4}},
                                                      {{2, 3, 4}, {4, 2}},
                                                      {{3, 4}, {2, 4, 2}},
                                                      {{2, 3, 4}, {2, 4, 2}},
                                                      {{2, 1, 3, 4}, {5, 4, 2}},
                                                      {{1, 3, 4}, {2, 4, 2}}};
  uint64_t seed = 100;
  for (const auto& [sa, sb] : cases) {
    INFO(shape_str(sa) << " @ " << shape_str(sb));
    gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); },
              {random_tensor(sa, seed), random_tensor(sb, seed + 1)});
    seed += 2;
  }
}

TEST_CASE("matmul: gradients through transposed and non-contiguous inputs", "[matmul][autograd]") {
  gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0].t(), in[1].t()); },
            {random_tensor({4, 3}, 1), random_tensor({5, 4}, 2)});
  gradcheck(
      [](const std::vector<Tensor>& in) {
        return matmul(non_contiguous(in[0]), in[1].transpose(-1, -2));
      },
      {random_tensor({2, 3, 4}, 3), random_tensor({2, 5, 4}, 4)});
  gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0].slice(1, 0, 6, 2), in[1]); },
            {random_tensor({3, 6}, 5), random_tensor({3, 2}, 6)});
  // The same tensor on both sides accumulates both gradients.
  gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[0]); },
            {random_tensor({3, 3}, 7)});
}

TEST_CASE("linear: gradients with and without bias", "[linear][autograd]") {
  auto with_bias = [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); };
  auto no_bias = [](const std::vector<Tensor>& in) { return linear(in[0], in[1]); };
  gradcheck(with_bias, {random_tensor({4, 3}, 1), random_tensor({5, 3}, 2), random_tensor({5}, 3)});
  gradcheck(with_bias,
            {random_tensor({2, 3, 4}, 4), random_tensor({2, 4}, 5), random_tensor({2}, 6)});
  gradcheck(no_bias, {random_tensor({2, 3, 4}, 7), random_tensor({3, 4}, 8)});
  gradcheck(no_bias, {random_tensor({4}, 9), random_tensor({3, 4}, 10)});
  gradcheck(
      [](const std::vector<Tensor>& in) { return linear(non_contiguous(in[0]), in[1].t(), in[2]); },
      {random_tensor({3, 4}, 11), random_tensor({4, 2}, 12), random_tensor({2}, 13)});
}

TEST_CASE("linear: a frozen weight gets no gradient", "[linear][autograd]") {
  Tensor x = random_tensor({3, 4}, 1).requires_grad_(true);
  Tensor w = random_tensor({2, 4}, 2);
  Tensor b = random_tensor({2}, 3).requires_grad_(true);
  linear(x, w, b).sum().backward();
  CHECK_FALSE(w.grad().defined());
  REQUIRE(x.grad().defined());
  REQUIRE(b.grad().defined());
  check_close(b.grad(), {3.0, 3.0}, {2});
}

TEST_CASE("matmul / linear: invalid arguments name the op and shapes", "[matmul][linear]") {
  auto device = GENERATE(from_range(test_devices()));
  auto opts = TensorOptions(DType::F32).device(device);
  check_error(
      [&] {
        matmul(ones({2, 3}, opts), ones({4, 5}, opts));
      },
      {"matmul: shapes [2, 3] and [4, 5] are not aligned (3 vs 4)"});
  check_error([&] { matmul(ones({3}, opts), ones({4}, opts)); }, {"matmul", "[3]", "[4]"});
  check_error(
      [&] {
        matmul(ones({2, 3, 4}, opts), ones({5, 4, 2}, opts));
      },
      {"matmul", "batch", "[2, 3, 4]", "[5, 4, 2]"});
  check_error([&] { matmul(scalar_tensor(1.0, opts), ones({2}, opts)); },
              {"matmul", "at least 1 dim"});
  check_error(
      [&] {
        matmul(ones({2, 2}, opts), ones({2, 2}, TensorOptions(DType::F64).device(device)));
      },
      {"matmul", "dtype", "f32", "f64"});
  check_error(
      [&] {
        matmul(ones({2, 2}, TensorOptions(DType::I64).device(device)),
               ones({2, 2}, TensorOptions(DType::I64).device(device)));
      },
      {"matmul", "i64"});
  check_error(
      [&] {
        linear(ones({2, 3}, opts), ones({4, 5}, opts));
      },
      {"linear", "[2, 3]", "[4, 5]"});
  check_error(
      [&] {
        linear(ones({2, 5}, opts), ones({4, 5}, opts), ones({3}, opts));
      },
      {"linear", "bias", "[3]"});
  check_error([&] { linear(ones({2, 5}, opts), ones({5}, opts)); }, {"linear", "weight", "2-D"});
  check_error([&] { linear(ones({2, 5}, opts), Tensor()); }, {"linear", "undefined"});
}

namespace {

// Puts the process-wide f32 matmul precision back when a test ends, pass or fail.
struct PrecisionScope {
  MatmulPrecision saved = float32_matmul_precision();
  explicit PrecisionScope(MatmulPrecision p) { set_float32_matmul_precision(p); }
  ~PrecisionScope() { set_float32_matmul_precision(saved); }
};

}  // namespace

TEST_CASE("matmul: f32 precision 'high' is TF32 on cuda, full f32 on the cpu", "[linalg]") {
  auto device = GENERATE(from_range(test_devices()));
  auto precision = GENERATE(MatmulPrecision::Highest, MatmulPrecision::High);
  INFO("device " << device << ", precision " << matmul_precision_name(precision));
  // Every input is q / 64 (q in 1..64: exact in TF32's 10 mantissa bits) times 1 + 2^-12, which
  // TF32 drops whether it rounds to nearest or truncates. All positive, so nothing cancels: the
  // full-f32 and the TF32 products differ by about 2^-11 relative, 80x the f32 accumulation error.
  const int64_t m = 48, k = 96, n = 40;
  auto operand = [](int64_t rows, int64_t cols, uint64_t seed, std::vector<double>& base) {
    std::vector<double> v = random_values(rows * cols, seed, 1.0, 65.0);
    base.resize(v.size());
    std::vector<float> f(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      base[i] = std::floor(v[i]) / 64.0;
      f[i] = float(base[i] * (1.0 + std::ldexp(1.0, -12)));
    }
    return from_vector<float>(f, {rows, cols});
  };
  std::vector<double> base_a, base_b;
  const Tensor a_host = operand(m, k, 1, base_a), b_host = operand(k, n, 2, base_b);
  auto product = [&](bool tf32) {
    std::vector<double> out(size_t(m * n), 0.0);
    const std::vector<double> va = a_host.to_vector<double>(), vb = b_host.to_vector<double>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t p = 0; p < k; ++p)
          out[size_t(i * n + j)] += tf32 ? base_a[size_t(i * k + p)] * base_b[size_t(p * n + j)]
                                         : va[size_t(i * k + p)] * vb[size_t(p * n + j)];
    return out;
  };
  const bool tf32 = device.is_cuda() && precision == MatmulPrecision::High;
  const std::vector<double> expected = product(tf32), other = product(!tf32);

  PrecisionScope scope(precision);
  Tensor a = a_host.to(device).requires_grad_(true);
  const Tensor b = b_host.to(device);
  Tensor c = matmul(a, b);
  check_close(c, expected, {m, n}, 0.0, 2e-5);
  // The other product is far outside that tolerance, so the check above tells them apart.
  CHECK(std::abs(c.to_vector<double>()[0] - other[0]) > 1e-4 * std::abs(other[0]));
  check_close(linear(a.detach(), b.t()), expected, {m, n}, 0.0, 2e-5);

  // Backward GEMMs follow the same setting: dA = ones @ B^T sums B's rows (TF32-rounded or not).
  c.sum().backward();
  std::vector<double> grad(size_t(m * k));
  const std::vector<double> vb = b_host.to_vector<double>();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j)
        grad[size_t(i * k + p)] += tf32 ? base_b[size_t(p * n + j)] : vb[size_t(p * n + j)];
  check_close(a.grad(), grad, {m, k}, 0.0, 2e-6);
}

TEST_CASE("matmul: f32 precision settings and their errors", "[linalg]") {
  PrecisionScope scope(MatmulPrecision::Highest);
  set_float32_matmul_precision("high");
  CHECK(float32_matmul_precision() == MatmulPrecision::High);
  set_float32_matmul_precision("highest");
  CHECK(float32_matmul_precision() == MatmulPrecision::Highest);
  check_error([] { set_float32_matmul_precision("medium"); },
              {"unknown f32 matmul precision 'medium'", "'highest'", "'high'"});
  CHECK(float32_matmul_precision() == MatmulPrecision::Highest);
}

TEST_CASE("gemm kernel: bf16 on the cpu, on every path the processor has", "[gemm][cpu-only]") {
  // The cpu gemm takes bf16 itself: AMX tiles or AVX512-BF16 dot products where the processor has
  // them, else widening to f32. Each path against an f64 loop over the same bf16 values: products
  // are exact in f32, so the difference is f32 accumulation plus the final rounding to bf16. Sizes
  // cut every tile (16 rows, 32-deep k steps, 32 x 32 blocks, 8-row groups) and leave tails in m, n
  // and k; leading dims larger than the rows; a batch; alpha and beta; NaN in C where beta is 0.
  using kernels::cpu::Bf16Gemm;
  const auto& table = kernels::kernel_table(DeviceType::CPU);
  const Bf16Gemm default_path = kernels::cpu::bf16_gemm_path();
  for (Bf16Gemm path : {Bf16Gemm::Amx, Bf16Gemm::Avx512Bf16}) {
    if (!kernels::cpu::bf16_gemm_supported(path)) {
      WARN("this processor has no " << kernels::cpu::bf16_gemm_name(path)
                                    << ": that bf16 gemm path is not checked");
    }
  }
  struct Shape3 {
    int64_t m, n, k;
  };
  for (Bf16Gemm path : {Bf16Gemm::Amx, Bf16Gemm::Avx512Bf16, Bf16Gemm::Widen}) {
    if (!kernels::cpu::bf16_gemm_supported(path)) continue;
    kernels::cpu::set_bf16_gemm_path(path);
    for (const Shape3 s : {Shape3{1, 1, 1}, Shape3{17, 15, 31}, Shape3{33, 40, 33},
                           Shape3{70, 33, 100}, Shape3{64, 96, 64}, Shape3{45, 64, 96}}) {
      for (int trans = 0; trans < 4; ++trans) {
        const bool ta = trans & 1, tb = trans & 2;
        const double alpha = trans == 3 ? 0.5 : 1.0, beta = trans == 1 ? 1.0 : 0.0;
        INFO(kernels::cpu::bf16_gemm_name(path)
             << ": m " << s.m << ", n " << s.n << ", k " << s.k << (ta ? ", A transposed" : "")
             << (tb ? ", B transposed" : "") << ", alpha " << alpha << ", beta " << beta);
        const int64_t batch = 2;
        const int64_t a_rows = ta ? s.k : s.m, a_cols = ta ? s.m : s.k;
        const int64_t b_rows = tb ? s.n : s.k, b_cols = tb ? s.k : s.n;
        const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = s.n + 2;
        auto bf16_values = [](int64_t count, uint64_t seed) {
          std::vector<BFloat16> out(static_cast<size_t>(count));
          std::vector<double> v = random_values(count, seed, -2.0, 2.0);
          for (size_t i = 0; i < out.size(); ++i) out[i] = BFloat16(float(v[i]));
          return out;
        };
        const std::vector<BFloat16> a = bf16_values(batch * a_rows * lda, 11);
        const std::vector<BFloat16> b = bf16_values(batch * b_rows * ldb, 12);
        const std::vector<BFloat16> c0 = bf16_values(batch * s.m * ldc, 13);
        std::vector<BFloat16> c = c0;
        if (beta == 0.0) std::fill(c.begin(), c.end(), BFloat16(std::nanf("")));
        kernels::GemmArgs args;
        args.dtype = DType::BF16;
        args.trans_a = ta;
        args.trans_b = tb;
        args.m = s.m;
        args.n = s.n;
        args.k = s.k;
        args.batch = batch;
        args.a = a.data();
        args.lda = lda;
        args.batch_stride_a = a_rows * lda;
        args.b = b.data();
        args.ldb = ldb;
        args.batch_stride_b = b_rows * ldb;
        args.c = c.data();
        args.ldc = ldc;
        args.batch_stride_c = s.m * ldc;
        args.alpha = alpha;
        args.beta = beta;
        table.gemm(args);
        int64_t bad = 0;
        for (int64_t bi = 0; bi < batch; ++bi) {
          for (int64_t i = 0; i < s.m; ++i) {
            for (int64_t j = 0; j < s.n; ++j) {
              double acc = 0, magnitude = 0;
              for (int64_t p = 0; p < s.k; ++p) {
                const double x =
                    float(a[size_t(bi * args.batch_stride_a + (ta ? p * lda + i : i * lda + p))]);
                const double y =
                    float(b[size_t(bi * args.batch_stride_b + (tb ? j * ldb + p : p * ldb + j))]);
                acc += x * y;
                magnitude += std::abs(x * y);
              }
              const size_t at = size_t(bi * args.batch_stride_c + i * ldc + j);
              const double expected = alpha * acc + beta * double(float(c0[at]));
              const double got = float(c[at]);
              // bf16 output: half an ulp is 2^-9 relative; f32 sums: k ulps of the magnitude.
              const double tol = std::ldexp(std::abs(expected), -8) + 1e-6 * magnitude;
              if (!(std::abs(got - expected) <= tol) && ++bad <= 3) {
                FAIL_CHECK("batch " << bi << ", C[" << i << "][" << j << "] = " << got
                                    << ", expected " << expected);
              }
            }
          }
          // Elements past n in each row of C (ldc > n) are not written.
          for (int64_t i = 0; i < s.m; ++i) {
            for (int64_t j = s.n; j < ldc; ++j) {
              const size_t at = size_t(bi * args.batch_stride_c + i * ldc + j);
              if (beta != 0.0) CHECK(c[at].bits == c0[at].bits);
            }
          }
        }
        CHECK(bad == 0);
      }
    }
  }
  kernels::cpu::set_bf16_gemm_path(default_path);
  for (Bf16Gemm path : {Bf16Gemm::Amx, Bf16Gemm::Avx512Bf16}) {
    if (kernels::cpu::bf16_gemm_supported(path)) continue;
    check_error([&] { kernels::cpu::set_bf16_gemm_path(path); },
                {"bf16 gemm", kernels::cpu::bf16_gemm_name(path)});
    CHECK(kernels::cpu::bf16_gemm_path() == default_path);
  }
}
