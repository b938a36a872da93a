// cat, stack, index_select, gather, where and masked_fill against float64 naive loops, their
// gradients against finite differences (with repeated indices, non-contiguous inputs and
// broadcasting), the determinism of the accumulating backward kernels, and the error messages.
#include <cmath>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// Deterministic indices in [0, limit).
std::vector<int64_t> random_indices(int64_t n, int64_t limit, uint64_t seed) {
  std::vector<int64_t> out;
  for (double v : random_values(n, seed, 0.0, double(limit))) {
    out.push_back(std::min<int64_t>(int64_t(v), limit - 1));
  }
  return out;
}

Tensor index_tensor(const std::vector<int64_t>& values, const Shape& shape, Device device,
                    DType dtype = DType::I64) {
  return from_vector(values, shape, TensorOptions(dtype).device(device));
}

// Naive cat of row-major value vectors along `dim`.
std::vector<double> naive_cat(const std::vector<std::vector<double>>& values,
                              const std::vector<Shape>& shapes, int64_t dim, Shape& out_shape) {
  out_shape = shapes[0];
  out_shape[size_t(dim)] = 0;
  for (const Shape& s : shapes) out_shape[size_t(dim)] += s[size_t(dim)];
  std::vector<double> out(size_t(shape_numel(out_shape)));
  for (int64_t flat = 0; flat < int64_t(out.size()); ++flat) {
    std::vector<int64_t> idx = unravel(flat, out_shape);
    int64_t pos = idx[size_t(dim)];
    size_t which = 0;
    while (pos >= shapes[which][size_t(dim)]) pos -= shapes[which++][size_t(dim)];
    idx[size_t(dim)] = pos;
    out[size_t(flat)] = values[which][size_t(ravel(idx, shapes[which]))];
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// cat / stack
// ---------------------------------------------------------------------------------------------

TEST_CASE("cat: matches a naive concatenation along every dim", "[indexing][cat]") {
  auto device = GENERATE(from_range(test_devices()));
  const std::vector<Shape> base{{3, 5, 4}, {3, 1, 4}, {3, 7, 4}};
  for (int64_t dim : {0, 1, 2, -1}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    std::vector<Shape> shapes;
    std::vector<Tensor> tensors;
    std::vector<std::vector<double>> values;
    for (size_t i = 0; i < base.size(); ++i) {
      Shape s{3, 5, 4};
      s[size_t(d)] = base[i][1];
      shapes.push_back(s);
      Tensor t = random_tensor(s, 10 + i, DType::F64, device);
      if (i == 1) t = non_contiguous(t);
      tensors.push_back(t);
      values.push_back(t.to_vector<double>());
    }
    Shape out_shape;
    std::vector<double> expected = naive_cat(values, shapes, d, out_shape);
    INFO("dim " << dim);
    check_close(cat(tensors, dim), expected, out_shape, 0.0, 0.0);
  }
}

TEST_CASE("cat: other dtypes, a single input and empty inputs", "[indexing][cat]") {
  auto device = GENERATE(from_range(test_devices()));
  for (DType dtype : {DType::F32, DType::I64, DType::I32, DType::Bool, DType::F16}) {
    Tensor a = from_vector<double>({1, 0, 3, 4}, {2, 2}, TensorOptions(dtype).device(device));
    Tensor b = from_vector<double>({0, 6}, {2, 1}, TensorOptions(dtype).device(device));
    Tensor c = cat({a, b}, 1);
    CHECK(c.dtype() == dtype);
    std::vector<double> expected{1, 0, 0, 3, 4, 6};
    if (dtype == DType::Bool) expected = {1, 0, 0, 1, 1, 1};
    check_close(c, expected, {2, 3}, 0.0, 0.0);
  }
  Tensor x = random_tensor({4, 3}, 1, DType::F64, device);
  Tensor single = cat({x}, 0);
  CHECK_FALSE(single.storage() == x.storage());  // always a fresh tensor
  check_close(single, x, 0.0, 0.0);
  Tensor empty_rows = zeros({0, 3}, TensorOptions(DType::F64).device(device));
  check_close(cat({empty_rows, x, empty_rows}, 0), x, 0.0, 0.0);
  CHECK(cat({empty_rows, empty_rows}, 0).shape() == Shape{0, 3});
}

TEST_CASE("cat: a large concatenation (threaded copy) is exact", "[indexing][cat]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor a = random_tensor({37, 1000}, 3, DType::F32, device);
  Tensor b = random_tensor({37, 127}, 4, DType::F32, device).t().contiguous().t();
  Tensor c = cat({a, b}, 1);
  Shape out_shape;
  std::vector<double> expected = naive_cat({a.to_vector<double>(), b.to_vector<double>()},
                                           {a.shape(), b.shape()}, 1, out_shape);
  check_close(c, expected, out_shape, 0.0, 0.0);
}

TEST_CASE("cat: gradients are slices of the output gradient", "[indexing][cat][grad]") {
  Tensor a = random_tensor({2, 3}, 1), b = random_tensor({2, 1}, 2), c = random_tensor({2, 4}, 3);
  gradcheck([](const std::vector<Tensor>& in) { return cat({in[0], in[1], in[2]}, 1); }, {a, b, c});
  gradcheck(
      [](const std::vector<Tensor>& in) {
        return cat({non_contiguous(in[0]), in[1].t(), in[0]}, 0);  // a used twice
      },
      {random_tensor({3, 4}, 4), random_tensor({4, 2}, 5)});
  // Only some inputs require grad: the others get none.
  Tensor x = random_tensor({2, 2}, 6).requires_grad_();
  Tensor y = random_tensor({2, 2}, 7);
  (cat({x, y}, 0) * random_tensor({4, 2}, 8)).sum().backward();
  CHECK(x.grad().defined());
  CHECK_FALSE(y.grad().defined());
}

TEST_CASE("stack: matches a naive stack and has gradients", "[indexing][stack]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor a = random_tensor({3, 4}, 1, DType::F64, device);
  Tensor b = non_contiguous(random_tensor({3, 4}, 2, DType::F64, device));
  auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  for (int64_t dim : {0, 1, 2, -1, -3}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    Tensor s = stack({a, b}, dim);
    Shape expected_shape{3, 4};
    expected_shape.insert(expected_shape.begin() + d, 2);
    std::vector<double> expected(24);
    for (int64_t flat = 0; flat < 24; ++flat) {
      auto idx = unravel(flat, expected_shape);
      int64_t which = idx[size_t(d)];
      idx.erase(idx.begin() + d);
      expected[size_t(flat)] = (which == 0 ? av : bv)[size_t(ravel(idx, {3, 4}))];
    }
    INFO("dim " << dim);
    check_close(s, expected, expected_shape, 0.0, 0.0);
  }
  gradcheck(
      [](const std::vector<Tensor>& in) {
        return stack({in[0], in[1], in[0]}, 1);
      },
      {random_tensor({2, 3}, 3), random_tensor({2, 3}, 4)});
  // 0-d tensors stack into a vector.
  check_close(stack({scalar_tensor(1.0, DType::F64), scalar_tensor(2.0, DType::F64)}), {1, 2}, {2});
}

TEST_CASE("cat/stack: errors name the op, shapes and dtypes", "[indexing][cat][errors]") {
  Tensor a = zeros({2, 3}), b = zeros({3, 3}), c = zeros({2, 3}, DType::F64);
  check_error([&] { cat({a, b}, 1); }, {"cat", "[2, 3]", "[3, 3]", "dim 1"});
  check_error([&] { cat({a, c}, 0); }, {"cat", "same dtype", "f32", "f64"});
  check_error([&] { cat({a, zeros({2, 3, 1})}, 0); }, {"cat", "[2, 3, 1]"});
  check_error([&] { cat({}, 0); }, {"cat", "non-empty"});
  check_error([&] { cat({a, a}, 2); }, {"cat", "dim 2", "out of range"});
  check_error([&] { cat({scalar_tensor(1.0), scalar_tensor(2.0)}, 0); }, {"cat", "stack"});
  check_error([&] { stack({a, b}); }, {"stack", "same shape", "[2, 3]", "[3, 3]"});
  check_error([&] { stack({a, a}, 3); }, {"stack", "dim 3"});
}

// ---------------------------------------------------------------------------------------------
// index_select
// ---------------------------------------------------------------------------------------------

namespace {
std::vector<double> naive_index_select(const std::vector<double>& x, const Shape& shape,
                                       int64_t dim, const std::vector<int64_t>& index,
                                       Shape& out_shape) {
  out_shape = shape;
  out_shape[size_t(dim)] = int64_t(index.size());
  std::vector<double> out(size_t(shape_numel(out_shape)));
  for (int64_t flat = 0; flat < int64_t(out.size()); ++flat) {
    auto idx = unravel(flat, out_shape);
    idx[size_t(dim)] = index[size_t(idx[size_t(dim)])];
    out[size_t(flat)] = x[size_t(ravel(idx, shape))];
  }
  return out;
}
}  // namespace

TEST_CASE("index_select: matches a naive loop on every dim, odd sizes and layouts",
          "[indexing][index_select]") {
  auto device = GENERATE(from_range(test_devices()));
  struct Case {
    Shape shape;
    int64_t dim;
    int64_t count;
  };
  const std::vector<Case> cases{{{7, 37}, 0, 5},    {{7, 37}, 1, 11},    {{3, 5, 4}, 1, 9},
                                {{3, 5, 4}, 2, 1},  {{1, 1000}, 1, 3},   {{37, 3}, -2, 37},
                                {{5}, 0, 12},       {{1, 1}, 0, 4},      {{4, 127}, 0, 300},
                                {{300, 127}, 0, 7}, {{2, 3000, 7}, 1, 2}};
  for (const auto& c : cases) {
    const int64_t d = c.dim < 0 ? c.dim + int64_t(c.shape.size()) : c.dim;
    for (bool strided : {false, true}) {
      Tensor x = random_tensor(c.shape, 7, DType::F64, device);
      if (strided) x = non_contiguous(x);
      auto index = random_indices(c.count, c.shape[size_t(d)], 11);
      Shape out_shape;
      auto expected = naive_index_select(x.to_vector<double>(), c.shape, d, index, out_shape);
      INFO("shape " << shape_str(c.shape) << " dim " << c.dim << " strided " << strided);
      check_close(index_select(x, c.dim, index_tensor(index, {c.count}, device)), expected,
                  out_shape, 0.0, 0.0);
      // i32 indices and a strided index view give the same result.
      check_close(index_select(x, c.dim, index_tensor(index, {c.count}, device, DType::I32)),
                  expected, out_shape, 0.0, 0.0);
      std::vector<int64_t> doubled;
      for (int64_t v : index) doubled.insert(doubled.end(), {v, 0});
      Tensor strided_index = index_tensor(doubled, {c.count, 2}, device).select(1, 0);
      check_close(index_select(x, c.dim, strided_index), expected, out_shape, 0.0, 0.0);
    }
  }
}

TEST_CASE("index_select: every dtype, 0-d and empty indices", "[indexing][index_select]") {
  auto device = GENERATE(from_range(test_devices()));
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::Bool}) {
    Tensor x = from_vector<double>({1, 0, 3, 4, 0, 6}, {3, 2}, TensorOptions(dtype).device(device));
    Tensor out = index_select(x, 0, index_tensor({2, 0, 2}, {3}, device));
    CHECK(out.dtype() == dtype);
    std::vector<double> expected{0, 6, 1, 0, 0, 6};
    if (dtype == DType::Bool) expected = {0, 1, 1, 0, 0, 1};
    check_close(out, expected, {3, 2}, 0.0, 0.0);
  }
  Tensor x = random_tensor({3, 4}, 1, DType::F64, device);
  Tensor one = index_select(x, 1, index_tensor({2}, {}, device));
  CHECK(one.shape() == Shape{3, 1});
  check_close(one.squeeze(1), x.select(1, 2), 0.0, 0.0);
  CHECK(index_select(x, 0, index_tensor({}, {0}, device)).shape() == Shape{0, 4});
}

TEST_CASE("index_select: gradient accumulates repeated indices", "[indexing][index_select][grad]") {
  std::vector<int64_t> index{2, 0, 2, 2, 1};
  Tensor idx = from_vector(index);
  gradcheck([&](const std::vector<Tensor>& in) { return index_select(in[0], 0, idx); },
            {random_tensor({4, 3}, 1)});
  gradcheck(
      [&](const std::vector<Tensor>& in) { return index_select(non_contiguous(in[0]), 1, idx); },
      {random_tensor({2, 3, 4}, 2)});
  gradcheck([&](const std::vector<Tensor>& in) { return index_select(in[0].t(), 0, idx); },
            {random_tensor({5, 3}, 3)});

  // Naive reference of the backward on a larger f32 case (threaded index_add).
  const int64_t rows = 50, cols = 1000, picks = 400;
  auto picks_idx = random_indices(picks, rows, 5);
  Tensor x = random_tensor({rows, cols}, 6, DType::F32).requires_grad_();
  Tensor g = random_tensor({picks, cols}, 7, DType::F32);
  index_select(x, 0, from_vector(picks_idx)).backward(g);
  std::vector<double> expected(size_t(rows * cols), 0.0);
  auto gv = g.to_vector<double>();
  for (int64_t k = 0; k < picks; ++k) {
    for (int64_t j = 0; j < cols; ++j) {
      expected[size_t(picks_idx[size_t(k)] * cols + j)] += gv[size_t(k * cols + j)];
    }
  }
  check_close(x.grad(), expected, {rows, cols}, 1e-4, 1e-5);
  // Deterministic: the same bits on a second run.
  Tensor first = x.grad().clone();
  x.zero_grad();
  index_select(x, 0, from_vector(picks_idx)).backward(g);
  CHECK(x.grad().to_vector<float>() == first.to_vector<float>());
}

TEST_CASE("index_select: errors name the bad index and the dim size", "[indexing][errors]") {
  Tensor x = zeros({3, 4});
  check_error(
      [&] {
        index_select(x, 0, from_vector<int64_t>({0, 3}));
      },
      {"index_select", "index 3", "dim 0", "size 3"});
  check_error([&] { index_select(x, 1, from_vector<int64_t>({-1})); },
              {"index_select", "index -1", "size 4"});
  check_error([&] { index_select(x, 0, from_vector<float>({0.f})); },
              {"index_select", "integer", "f32 [1]"});
  check_error(
      [&] {
        index_select(x, 0, zeros({2, 2}, DType::I64));
      },
      {"index_select", "1-d", "[2, 2]"});
  check_error([&] { index_select(x, 2, from_vector<int64_t>({0})); }, {"index_select", "dim 2"});
  check_error([&] { index_select(scalar_tensor(1.0), 0, from_vector<int64_t>({0})); },
              {"index_select", "0-dim"});
}

// ---------------------------------------------------------------------------------------------
// gather
// ---------------------------------------------------------------------------------------------

namespace {
std::vector<double> naive_gather(const std::vector<double>& x, const Shape& x_shape, int64_t dim,
                                 const std::vector<int64_t>& index, const Shape& index_shape) {
  std::vector<double> out(index.size());
  for (int64_t flat = 0; flat < int64_t(out.size()); ++flat) {
    auto idx = unravel(flat, index_shape);
    idx[size_t(dim)] = index[size_t(flat)];
    out[size_t(flat)] = x[size_t(ravel(idx, x_shape))];
  }
  return out;
}
}  // namespace

TEST_CASE("gather: matches a naive loop on every dim, odd sizes and layouts",
          "[indexing][gather]") {
  auto device = GENERATE(from_range(test_devices()));
  struct Case {
    Shape x_shape, index_shape;
    int64_t dim;
  };
  const std::vector<Case> cases{{{3, 5, 4}, {3, 5, 4}, 0}, {{3, 5, 4}, {2, 7, 3}, 1},
                                {{3, 5, 4}, {3, 5, 9}, 2}, {{3, 5, 4}, {1, 1, 1}, -1},
                                {{37, 1000}, {37, 1}, 1},  {{7, 127}, {20, 127}, 0},
                                {{13}, {40}, 0},           {{100, 500}, {100, 400}, 1}};
  for (const auto& c : cases) {
    const int64_t d = c.dim < 0 ? c.dim + int64_t(c.x_shape.size()) : c.dim;
    for (bool strided : {false, true}) {
      Tensor x = random_tensor(c.x_shape, 3, DType::F64, device);
      auto index = random_indices(shape_numel(c.index_shape), c.x_shape[size_t(d)], 4);
      Tensor idx = index_tensor(index, c.index_shape, device);
      if (strided) {
        x = non_contiguous(x);
        idx = non_contiguous(idx);
      }
      INFO("x " << shape_str(c.x_shape) << " index " << shape_str(c.index_shape) << " dim " << c.dim
                << " strided " << strided);
      auto expected = naive_gather(x.to_vector<double>(), c.x_shape, d, index, c.index_shape);
      check_close(gather(x, c.dim, idx), expected, c.index_shape, 0.0, 0.0);
      check_close(gather(x, c.dim, idx.to(DType::I32)), expected, c.index_shape, 0.0, 0.0);
    }
  }
  // Other dtypes.
  Tensor b = from_vector<bool>({true, false, false, true}, {2, 2}).to(device);
  check_close(gather(b, 1, index_tensor({1, 1, 0, 1}, {2, 2}, device)), {0, 0, 0, 1}, {2, 2});
  Tensor h = from_vector<double>({0.5, 1.5, 2.5}, {3}, TensorOptions(DType::F16).device(device));
  check_close(gather(h, 0, index_tensor({2, 0}, {2}, device)), {2.5, 0.5}, {2});
}

TEST_CASE("gather: gradient scatters back and accumulates", "[indexing][gather][grad]") {
  Tensor idx = from_vector<int64_t>({0, 0, 2, 1, 1, 1, 3, 0}, {2, 4});
  gradcheck([&](const std::vector<Tensor>& in) { return gather(in[0], 1, idx); },
            {random_tensor({2, 5}, 1)});
  Tensor idx0 = from_vector<int64_t>({2, 2, 0, 1, 2, 2}, {3, 2});
  gradcheck([&](const std::vector<Tensor>& in) { return gather(non_contiguous(in[0]), 0, idx0); },
            {random_tensor({3, 4}, 2)});
  gradcheck([&](const std::vector<Tensor>& in) { return gather(in[0].t(), 0, idx0); },
            {random_tensor({2, 3}, 3)});

  // A larger f32 case against a naive scatter, checked for run-to-run determinism.
  const int64_t rows = 64, cols = 700, picks = 900;
  auto index = random_indices(rows * picks, cols, 9);
  Tensor x = random_tensor({rows, cols}, 10, DType::F32).requires_grad_();
  Tensor g = random_tensor({rows, picks}, 11, DType::F32);
  gather(x, 1, from_vector(index, {rows, picks})).backward(g);
  std::vector<double> expected(size_t(rows * cols), 0.0);
  auto gv = g.to_vector<double>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < picks; ++k) {
      expected[size_t(r * cols + index[size_t(r * picks + k)])] += gv[size_t(r * picks + k)];
    }
  }
  check_close(x.grad(), expected, {rows, cols}, 1e-4, 1e-5);
  Tensor first = x.grad().clone();
  x.zero_grad();
  gather(x, 1, from_vector(index, {rows, picks})).backward(g);
  CHECK(x.grad().to_vector<float>() == first.to_vector<float>());
}

TEST_CASE("gather: errors name the op, shapes and the bad index", "[indexing][errors]") {
  Tensor x = zeros({3, 4});
  check_error(
      [&] {
        gather(x, 1, from_vector<int64_t>({0, 4, 1}, {3, 1}));
      },
      {"gather", "index 4", "dim 1", "size 4"});
  check_error([&] { gather(x, 0, from_vector<int64_t>({-2}, {1, 1})); }, {"gather", "index -2"});
  check_error(
      [&] {
        gather(x, 1, from_vector<int64_t>({0, 1, 2}));
      },
      {"gather", "as many dims", "[3, 4]", "[3]"});
  check_error([&] { gather(x, 1, zeros({4, 1}, DType::I64)); }, {"gather", "larger", "dim 0"});
  check_error([&] { gather(x, 1, zeros({3, 1}, DType::Bool)); }, {"gather", "integer", "bool"});
}

// ---------------------------------------------------------------------------------------------
// where / masked_fill
// ---------------------------------------------------------------------------------------------

namespace {
// Element `flat` of out_shape read from a tensor of `shape` broadcast to it.
double broadcast_at(const std::vector<double>& v, const Shape& shape, const Shape& out_shape,
                    int64_t flat) {
  auto idx = unravel(flat, out_shape);
  std::vector<int64_t> src(shape.size());
  size_t lead = out_shape.size() - shape.size();
  for (size_t i = 0; i < shape.size(); ++i) src[i] = shape[i] == 1 ? 0 : idx[i + lead];
  return v[size_t(ravel(src, shape))];
}

Tensor random_mask(const Shape& shape, uint64_t seed, Device device = Device::cpu()) {
  std::vector<bool> bits;
  for (double v : random_values(shape_numel(shape), seed)) bits.push_back(v > 0);
  return from_vector(bits, shape).to(device);
}
}  // namespace

TEST_CASE("where: matches a naive select with broadcasting", "[indexing][where]") {
  auto device = GENERATE(from_range(test_devices()));
  struct Case {
    Shape c, a, b;
  };
  const std::vector<Case> cases{{{7, 37}, {7, 37}, {7, 37}},
                                {{3, 1}, {1, 4}, {3, 4}},
                                {{5}, {2, 3, 5}, {}},
                                {{2, 1, 3}, {}, {4, 1}},
                                {{37, 1000}, {37, 1000}, {1}},
                                {{1, 1000}, {}, {37, 1000}},
                                {{1}, {1}, {1}}};
  for (const auto& c : cases) {
    for (DType dtype : {DType::F64, DType::F32, DType::I32}) {
      Tensor cond = random_mask(c.c, 1, device);
      Tensor a = random_tensor(c.a, 2, dtype, device, -50, 50);
      Tensor b = random_tensor(c.b, 3, dtype, device, -50, 50);
      if (a.dim() >= 2) a = non_contiguous(a);
      Shape out_shape = broadcast_shapes(broadcast_shapes(c.c, c.a, "t"), c.b, "t");
      auto cv = cond.to_vector<double>(), av = a.to_vector<double>(), bv = b.to_vector<double>();
      std::vector<double> expected(size_t(shape_numel(out_shape)));
      for (int64_t i = 0; i < int64_t(expected.size()); ++i) {
        expected[size_t(i)] = broadcast_at(cv, c.c, out_shape, i) != 0
                                  ? broadcast_at(av, c.a, out_shape, i)
                                  : broadcast_at(bv, c.b, out_shape, i);
      }
      INFO("cond " << shape_str(c.c) << " a " << shape_str(c.a) << " b " << shape_str(c.b)
                   << " dtype " << dtype);
      Tensor out = where(cond, a, b);
      CHECK(out.dtype() == dtype);
      check_close(out, expected, out_shape, 0.0, 0.0);
    }
  }
  // 16-bit and bool payloads.
  Tensor cond = from_vector<bool>({true, false, true}).to(device);
  Tensor h = from_vector<double>({1, 2, 3}, {3}, TensorOptions(DType::BF16).device(device));
  check_close(where(cond, h, zeros({3}, TensorOptions(DType::BF16).device(device))), {1, 0, 3},
              {3});
  Tensor t = ones({3}, TensorOptions(DType::Bool).device(device));
  check_close(where(cond, zeros_like(t), t), {0, 1, 0}, {3});
}

TEST_CASE("where: gradients with broadcasting and non-contiguous inputs",
          "[indexing][where][grad]") {
  Tensor cond = random_mask({3, 4}, 5);
  gradcheck([&](const std::vector<Tensor>& in) { return where(cond, in[0], in[1]); },
            {random_tensor({3, 4}, 1), random_tensor({3, 4}, 2)});
  Tensor col = random_mask({3, 1}, 6);
  gradcheck([&](const std::vector<Tensor>& in) { return where(col, in[0], in[1]); },
            {random_tensor({1, 4}, 3), random_tensor({2, 3, 4}, 4)});
  gradcheck(
      [&](const std::vector<Tensor>& in) { return where(cond, non_contiguous(in[0]), in[1]); },
      {random_tensor({3, 4}, 5), random_tensor({}, 6)});
  Tensor square = random_mask({4, 4}, 7);
  gradcheck([&](const std::vector<Tensor>& in) { return where(square.t(), in[0].t(), in[0]); },
            {random_tensor({4, 4}, 7)});
  // Only b requires grad: a gets none.
  Tensor a = random_tensor({3, 4}, 8);
  Tensor b = random_tensor({3, 4}, 9).requires_grad_();
  where(cond, a, b).sum().backward();
  CHECK_FALSE(a.grad().defined());
  auto cv = cond.to_vector<double>();
  std::vector<double> expected;
  for (double c : cv) expected.push_back(c != 0 ? 0.0 : 1.0);
  check_close(b.grad(), expected, {3, 4});
}

TEST_CASE("masked_fill: matches a naive fill, gradient is zero where masked",
          "[indexing][masked_fill]") {
  auto device = GENERATE(from_range(test_devices()));
  for (Shape mask_shape : {Shape{7, 37}, Shape{1, 37}, Shape{7, 1}, Shape{37}, Shape{}}) {
    Tensor x = non_contiguous(random_tensor({7, 37}, 1, DType::F64, device));
    Tensor mask = random_mask(mask_shape, 2, device);
    auto xv = x.to_vector<double>(), mv = mask.to_vector<double>();
    std::vector<double> expected(xv.size());
    for (int64_t i = 0; i < int64_t(xv.size()); ++i) {
      expected[size_t(i)] = broadcast_at(mv, mask_shape, {7, 37}, i) != 0 ? -1e9 : xv[size_t(i)];
    }
    INFO("mask " << shape_str(mask_shape));
    check_close(masked_fill(x, mask, -1e9), expected, {7, 37}, 0.0, 0.0);
  }
  Tensor ints = from_vector<int64_t>({1, 2, 3}).to(device);
  check_close(masked_fill(ints, from_vector<bool>({false, true, false}).to(device), 7), {1, 7, 3},
              {3});
  Tensor mask = random_mask({3, 1}, 3);
  gradcheck([&](const std::vector<Tensor>& in) { return masked_fill(in[0], mask, 2.5); },
            {random_tensor({3, 5}, 4)});
  gradcheck(
      [&](const std::vector<Tensor>& in) { return masked_fill(non_contiguous(in[0]), mask, 0); },
      {random_tensor({3, 5}, 5)});
}

TEST_CASE("where/masked_fill: errors name the op, shapes and dtypes", "[indexing][errors]") {
  Tensor a = zeros({2, 3}), b = zeros({2, 3});
  Tensor mask = zeros({2, 3}, DType::Bool);
  check_error(
      [&] {
        where(zeros({2, 3}), a, b);
      },
      {"where", "condition must be bool", "f32 [2, 3]"});
  check_error([&] { where(mask, a, zeros({2, 3}, DType::F64)); }, {"where", "f32", "f64"});
  check_error([&] { where(mask, a, zeros({4, 3})); }, {"where", "[2, 3]", "[4, 3]"});
  check_error(
      [&] {
        masked_fill(a, zeros({2, 3}, DType::I64), 1.0);
      },
      {"masked_fill", "mask must be bool", "i64 [2, 3]"});
  check_error(
      [&] {
        masked_fill(a, zeros({4, 2, 3}, DType::Bool), 1.0);
      },
      {"masked_fill", "[4, 2, 3]", "[2, 3]"});
  check_error([&] { masked_fill(a, zeros({3, 3}, DType::Bool), 1.0); }, {"masked_fill", "[3, 3]"});
}
