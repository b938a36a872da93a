// View ops (core/views.cpp): values against naive index math, storage sharing (a write through one
// alias is seen through the other), gradients through every view op, and the error messages.
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// Values of `base` (row-major, shape `shape`) read through an arbitrary index map: out[i] =
// base[src(unravel(i, out_shape))].
template <class F>
std::vector<double> remap(const std::vector<double>& base, const Shape& shape,
                          const Shape& out_shape, F src) {
  std::vector<double> out(size_t(shape_numel(out_shape)));
  for (int64_t flat = 0; flat < shape_numel(out_shape); ++flat) {
    out[size_t(flat)] = base[size_t(ravel(src(unravel(flat, out_shape)), shape))];
  }
  return out;
}

std::vector<double> iota_values(int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = double(i);
  return v;
}

}  // namespace

TEST_CASE("views: reshape and view keep row-major order, infer -1", "[views]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = from_vector(iota_values(24), {2, 3, 4}, TensorOptions(DType::F64).device(device));
  for (Shape s : {Shape{6, 4}, Shape{24}, Shape{4, -1}, Shape{-1}, Shape{2, 1, 12, 1},
                  Shape{1, 2, 3, 4}, Shape{3, 8}}) {
    INFO("shape " << shape_str(s));
    Tensor v = x.view(s);
    Tensor r = x.reshape(s);
    CHECK(v.storage() == x.storage());
    CHECK(r.storage() == x.storage());
    CHECK(v.numel() == 24);
    check_close(v.flatten(), iota_values(24), {24}, 0.0, 0.0);
  }
  CHECK(x.view({4, -1}).shape() == Shape{4, 6});
  CHECK(x.reshape({-1, 2, 2}).shape() == Shape{6, 2, 2});
  // Viewing a non-contiguous tensor works when the strides allow it...
  Tensor sliced = x.slice(2, 0, 4, 2);  // [2, 3, 2], stride 2 in the last dim
  Tensor merged = sliced.view({6, 2});
  CHECK(merged.storage() == x.storage());
  check_close(merged,
              remap(iota_values(24), {2, 3, 4}, {6, 2},
                    [](std::vector<int64_t> i) {
                      return std::vector<int64_t>{i[0] / 3, i[0] % 3, 2 * i[1]};
                    }),
              {6, 2}, 0.0, 0.0);
  // ...and reshape copies when they do not.
  Tensor xt = x.transpose(0, 2);  // [4, 3, 2]
  Tensor flat = xt.reshape({-1});
  CHECK_FALSE(flat.storage() == x.storage());
  check_close(flat,
              remap(iota_values(24), {2, 3, 4}, {24},
                    [](std::vector<int64_t> i) {
                      int64_t a = i[0] / 6, b = (i[0] / 2) % 3, c = i[0] % 2;
                      return std::vector<int64_t>{c, b, a};
                    }),
              {24}, 0.0, 0.0);
  // Reshaping an expanded tensor keeps the broadcast when it can.
  Tensor e = from_vector<double>({1, 2, 3}).expand({4, 3});
  Tensor e3 = e.reshape({2, 2, 3});
  CHECK(e3.storage() == e.storage());
  check_close(e3, {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3}, {2, 2, 3}, 0.0, 0.0);
  check_close(e.reshape({12}), {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3}, {12}, 0.0, 0.0);
  // 0-d and empty tensors.
  Tensor s = scalar_tensor(5.0, DType::F64);
  check_close(s.reshape({1, 1}), {5.0}, {1, 1});
  check_close(s.reshape({1}).reshape({}), {5.0}, {});
  CHECK(zeros({0, 3}).reshape({3, 0, 5}).shape() == Shape{3, 0, 5});
}

TEST_CASE("views: reshape/view errors", "[views][errors]") {
  Tensor x = zeros({2, 3, 4});
  check_error([&] { x.transpose(0, 1).view({24}); }, {"view", "[3, 2, 4]", "[24]", "reshape"});
  check_error([&] { x.view({5, -1}); }, {"view", "[5, -1]", "[2, 3, 4]"});
  check_error([&] { x.reshape({-1, -1}); }, {"reshape", "only one dim can be -1"});
  check_error([&] { x.reshape({7, 2}); }, {"reshape", "[7, 2]", "[2, 3, 4]", "24"});
  check_error([&] { x.view({-2, 12}); }, {"view", "invalid size"});
  check_error([&] { zeros({0, 3}).reshape({-1, 0}); }, {"reshape", "[-1, 0]"});
}

TEST_CASE("views: flatten, permute, transpose, t against index math", "[views]") {
  auto device = GENERATE(from_range(test_devices()));
  const Shape shape{2, 3, 4, 5};
  auto base = iota_values(120);
  Tensor x = from_vector(base, shape, TensorOptions(DType::F64).device(device));

  check_close(x.flatten(), base, {120}, 0.0, 0.0);
  check_close(x.flatten(1, 2), base, {2, 12, 5}, 0.0, 0.0);
  check_close(x.flatten(-2), base, {2, 3, 20}, 0.0, 0.0);
  check_close(x.flatten(2, 2), base, shape, 0.0, 0.0);
  check_close(scalar_tensor(3.0).flatten(), {3.0}, {1});

  for (std::vector<int64_t> perm :
       {std::vector<int64_t>{3, 1, 0, 2}, {0, 1, 2, 3}, {-1, -2, -3, -4}, {1, 0, 3, 2}}) {
    Tensor p = x.permute(perm);
    std::vector<int64_t> wrapped;
    Shape out_shape;
    for (int64_t d : perm) {
      wrapped.push_back(d < 0 ? d + 4 : d);
      out_shape.push_back(shape[size_t(wrapped.back())]);
    }
    INFO("perm " << shape_str(perm));
    CHECK(p.storage() == x.storage());
    check_close(p,
                remap(base, shape, out_shape,
                      [&](std::vector<int64_t> i) {
                        std::vector<int64_t> src(4);
                        for (size_t k = 0; k < 4; ++k) src[size_t(wrapped[k])] = i[k];
                        return src;
                      }),
                out_shape, 0.0, 0.0);
  }

  Tensor tr = x.transpose(1, -1);
  check_close(tr,
              remap(base, shape, {2, 5, 4, 3},
                    [](std::vector<int64_t> i) {
                      return std::vector<int64_t>{i[0], i[3], i[2], i[1]};
                    }),
              {2, 5, 4, 3}, 0.0, 0.0);
  Tensor m = from_vector(iota_values(6), {2, 3}, TensorOptions(DType::F64).device(device));
  check_close(m.t(), {0, 3, 1, 4, 2, 5}, {3, 2}, 0.0, 0.0);
  CHECK_FALSE(m.t().is_contiguous());
  CHECK(m.t().t().is_contiguous());
  check_close(from_vector<double>({1, 2}).t(), {1, 2}, {2});  // 1-d: unchanged

  check_error([&] { x.permute({0, 1, 2}); }, {"permute", "[0, 1, 2]", "[2, 3, 4, 5]"});
  check_error([&] { x.permute({0, 1, 1, 2}); }, {"permute", "repeated"});
  check_error([&] { x.permute({0, 1, 2, 4}); }, {"permute", "dim 4", "out of range"});
  check_error([&] { x.transpose(0, 4); }, {"transpose", "dim 4"});
  check_error([&] { x.t(); }, {"t", "at most 2 dims", "[2, 3, 4, 5]"});
  check_error([&] { x.flatten(2, 1); }, {"flatten", "start_dim 2", "end_dim 1"});
}

TEST_CASE("views: slice (negative bounds, steps), narrow and select", "[views]") {
  auto device = GENERATE(from_range(test_devices()));
  const Shape shape{7, 37};
  auto base = iota_values(7 * 37);
  Tensor x = from_vector(base, shape, TensorOptions(DType::F64).device(device));

  struct Case {
    int64_t dim, start, end, step;
    int64_t first, count;  // expected first index and length
  };
  const std::vector<Case> cases{
      {0, 1, 5, 1, 1, 4},      {1, 3, 30, 4, 3, 7},  {1, -5, -1, 1, 32, 4}, {-1, 0, 37, 36, 0, 2},
      {0, -100, 100, 2, 0, 4}, {1, 10, 5, 1, 10, 0}, {0, 6, 7, 3, 6, 1},    {1, 36, 37, 1, 36, 1}};
  for (const auto& c : cases) {
    Tensor s = x.slice(c.dim, c.start, c.end, c.step);
    const int64_t d = c.dim < 0 ? c.dim + 2 : c.dim;
    Shape out_shape = shape;
    out_shape[size_t(d)] = c.count;
    INFO("slice(" << c.dim << ", " << c.start << ", " << c.end << ", " << c.step << ")");
    CHECK(s.storage() == x.storage());
    check_close(s,
                remap(base, shape, out_shape,
                      [&](std::vector<int64_t> i) {
                        i[size_t(d)] = c.first + i[size_t(d)] * c.step;
                        return i;
                      }),
                out_shape, 0.0, 0.0);
  }
  // Slices of slices compose.
  Tensor ss = x.slice(1, 1, 37, 2).slice(1, 2, 10, 3);  // columns 5, 11, 17
  check_close(ss.select(0, 4), {4 * 37 + 5, 4 * 37 + 11, 4 * 37 + 17}, {3}, 0.0, 0.0);

  check_close(x.narrow(1, 30, 7),
              remap(base, shape, {7, 7},
                    [](std::vector<int64_t> i) {
                      return std::vector<int64_t>{i[0], 30 + i[1]};
                    }),
              {7, 7}, 0.0, 0.0);
  check_close(x.narrow(0, -2, 2),
              remap(base, shape, {2, 37},
                    [](std::vector<int64_t> i) {
                      return std::vector<int64_t>{5 + i[0], i[1]};
                    }),
              {2, 37}, 0.0, 0.0);
  for (int64_t index : {0, 3, 36, -1, -37}) {
    Tensor col = x.select(1, index);
    const int64_t j = index < 0 ? index + 37 : index;
    std::vector<double> expected;
    for (int64_t i = 0; i < 7; ++i) expected.push_back(double(i * 37 + j));
    check_close(col, expected, {7}, 0.0, 0.0);
  }
  check_close(x.select(0, -1).select(0, 2), {6 * 37 + 2}, {}, 0.0, 0.0);

  check_error([&] { x.slice(1, 0, 5, 0); }, {"slice", "step", "0"});
  check_error([&] { x.slice(2, 0, 1); }, {"slice", "dim 2"});
  check_error([&] { x.narrow(1, 30, 8); }, {"narrow", "[30, 38)", "size 37"});
  check_error([&] { x.select(0, 7); }, {"select", "index 7", "size 7", "[7, 37]"});
  check_error([&] { x.select(1, -38); }, {"select", "index -38"});
}

TEST_CASE("views: expand/broadcast_to, squeeze/unsqueeze", "[views]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = from_vector<double>({1, 2, 3}, {3, 1}, TensorOptions(DType::F64).device(device));
  Tensor e = x.expand({2, 3, 4});
  CHECK(e.storage() == x.storage());
  CHECK(e.strides()[0] == 0);
  CHECK(e.strides()[2] == 0);
  check_close(e,
              remap({1, 2, 3}, {3}, {2, 3, 4},
                    [](std::vector<int64_t> i) { return std::vector<int64_t>{i[1]}; }),
              {2, 3, 4}, 0.0, 0.0);
  check_close(x.expand({-1, 5}),
              remap({1, 2, 3}, {3}, {3, 5},
                    [](std::vector<int64_t> i) { return std::vector<int64_t>{i[0]}; }),
              {3, 5}, 0.0, 0.0);
  check_close(x.broadcast_to({3, 2}), {1, 1, 2, 2, 3, 3}, {3, 2}, 0.0, 0.0);
  check_close(scalar_tensor(4.0, DType::F64).expand({2, 2}), {4, 4, 4, 4}, {2, 2});
  // An expanded tensor copied to contiguous memory materializes the repeats.
  Tensor c = e.contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.storage() == x.storage());
  check_close(c, e, 0.0, 0.0);

  check_error([&] { x.expand({3, 2, 1}); }, {"expand", "[3, 1]", "[3, 2, 1]"});
  check_error([&] { x.expand({4, 1}); }, {"expand", "[3, 1]", "[4, 1]", "3 -> 4"});
  check_error([&] { x.expand({1}); }, {"expand", "fewer dims"});
  check_error([&] { x.expand({-1, 3, 1}); }, {"expand", "-1"});

  Tensor y = zeros({1, 3, 1, 2}, TensorOptions(DType::F64).device(device));
  CHECK(y.squeeze().shape() == Shape{3, 2});
  CHECK(y.squeeze(0).shape() == Shape{3, 1, 2});
  CHECK(y.squeeze(-2).shape() == Shape{1, 3, 2});
  CHECK(y.squeeze(1).shape() == Shape{1, 3, 1, 2});  // not size 1: unchanged
  CHECK(y.squeeze().storage() == y.storage());
  CHECK(y.unsqueeze(0).shape() == Shape{1, 1, 3, 1, 2});
  CHECK(y.unsqueeze(4).shape() == Shape{1, 3, 1, 2, 1});
  CHECK(y.unsqueeze(-1).shape() == Shape{1, 3, 1, 2, 1});
  CHECK(y.unsqueeze(2).shape() == Shape{1, 3, 1, 1, 2});
  CHECK(scalar_tensor(1.0).unsqueeze(0).shape() == Shape{1});
  CHECK(scalar_tensor(1.0).squeeze().shape() == Shape{});
  CHECK(zeros({1, 1}).squeeze().shape() == Shape{});
  // Unsqueezing a non-contiguous tensor stays a view.
  Tensor nt = from_vector(iota_values(6), {2, 3}, DType::F64).t();
  Tensor u = nt.unsqueeze(1);
  CHECK(u.storage() == nt.storage());
  check_close(u, {0, 3, 1, 4, 2, 5}, {3, 1, 2}, 0.0, 0.0);
  check_error([&] { y.unsqueeze(6); }, {"unsqueeze", "dim 6"});
  check_error([&] { y.squeeze(4); }, {"squeeze", "dim 4"});
}

TEST_CASE("views: writes through a view are seen through every alias", "[views]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = zeros({4, 6}, TensorOptions(DType::F64).device(device));
  x.slice(1, 1, 6, 2).fill_(1.0);  // columns 1, 3, 5
  x.t().select(0, 0).fill_(2.0);   // column 0
  x.select(0, 3).narrow(0, 2, 2).copy_(from_vector<double>({7, 8}).to(device));
  x.view({2, 12}).select(0, 0).slice(0, 0, 12, 12).fill_(9.0);  // element [0, 0]
  std::vector<double> expected(24, 0.0);
  for (int64_t r = 0; r < 4; ++r) {
    for (int64_t cidx = 1; cidx < 6; cidx += 2) expected[size_t(r * 6 + cidx)] = 1.0;
    expected[size_t(r * 6)] = 2.0;
  }
  expected[3 * 6 + 2] = 7;
  expected[3 * 6 + 3] = 8;
  expected[0] = 9;
  check_close(x, expected, {4, 6}, 0.0, 0.0);

  // The other direction: a write to the base shows up in existing views, and a detached alias
  // shares the storage too.
  Tensor v = x.permute({1, 0}).slice(0, 2, 4);  // columns 2..3 as rows
  Tensor alias = x.detach();
  x.fill_(0.0);
  x.select(1, 2).fill_(5.0);
  x.select(1, 3).fill_(6.0);
  check_close(v, {5, 5, 5, 5, 6, 6, 6, 6}, {2, 4}, 0.0, 0.0);
  check_close(alias.select(1, 2), {5, 5, 5, 5}, {4}, 0.0, 0.0);
  // Writing through an alias bumps the version seen by every view of the storage.
  uint64_t before = x.storage()->version();
  v.fill_(1.0);
  CHECK(x.storage()->version() > before);
  // An expanded view reads the same element everywhere.
  Tensor base = zeros({3}, TensorOptions(DType::F64).device(device));
  Tensor wide = base.expand({4, 3});
  base.select(0, 1).fill_(3.0);
  check_close(wide.select(1, 1), {3, 3, 3, 3}, {4}, 0.0, 0.0);
}

TEST_CASE("views: contiguous and clone", "[views]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({5, 7}, 1, DType::F64, device);
  CHECK(x.contiguous().is_same(x));  // already contiguous: the same tensor
  Tensor nt = x.t();
  Tensor c = nt.contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.storage() == x.storage());
  check_close(c, nt, 0.0, 0.0);
  Tensor k = x.clone();
  CHECK_FALSE(k.storage() == x.storage());
  check_close(k, x, 0.0, 0.0);
  k.fill_(0.0);  // a clone is independent
  CHECK(x.to_vector<double>() != k.to_vector<double>());
  Tensor sliced = x.slice(1, 1, 7, 3).clone();
  CHECK(sliced.is_contiguous());
  CHECK(sliced.offset() == 0);
  check_close(sliced, x.slice(1, 1, 7, 3), 0.0, 0.0);
  for (DType dtype : {DType::F32, DType::F16, DType::I32, DType::Bool}) {
    Tensor t = from_vector<double>({1, 0, 2, 3}, {2, 2}, TensorOptions(dtype).device(device));
    Tensor tc = t.t().contiguous();
    CHECK(tc.dtype() == dtype);
    CHECK(tc.to_vector<double>() == t.t().to_vector<double>());
  }
}

TEST_CASE("views: gradients through every view op", "[views][grad]") {
  auto g = [](std::function<Tensor(const Tensor&)> f, const Shape& shape, uint64_t seed) {
    gradcheck([&](const std::vector<Tensor>& in) { return f(in[0]); },
              {random_tensor(shape, seed)});
  };
  g([](const Tensor& x) { return x.reshape({6, -1}); }, {2, 3, 4}, 1);
  g([](const Tensor& x) { return x.t().reshape({-1}); }, {3, 4}, 2);  // copying reshape
  g([](const Tensor& x) { return x.view({4, 6}); }, {2, 3, 4}, 3);
  g([](const Tensor& x) { return x.flatten(1); }, {2, 3, 4}, 4);
  g([](const Tensor& x) { return x.permute({2, 0, 1}); }, {2, 3, 4}, 5);
  g([](const Tensor& x) { return x.transpose(0, 2); }, {2, 3, 4}, 6);
  g([](const Tensor& x) { return x.t(); }, {3, 5}, 7);
  g([](const Tensor& x) { return x.slice(1, -4, -1, 2); }, {3, 7}, 8);
  g([](const Tensor& x) { return x.slice(0, 1, 3).slice(1, 0, 7, 3); }, {4, 7}, 9);
  g([](const Tensor& x) { return x.narrow(0, 1, 2); }, {4, 3}, 10);
  g([](const Tensor& x) { return x.select(1, -1); }, {3, 4}, 11);
  g([](const Tensor& x) { return x.expand({2, 3, 4}); }, {3, 1}, 12);
  g([](const Tensor& x) { return x.broadcast_to({5, 3}); }, {3}, 13);
  g([](const Tensor& x) { return x.squeeze(); }, {1, 3, 1}, 14);
  g([](const Tensor& x) { return x.squeeze(0); }, {1, 3}, 15);
  g([](const Tensor& x) { return x.unsqueeze(1); }, {3, 2}, 16);
  g([](const Tensor& x) { return x.t().contiguous(); }, {3, 4}, 17);
  g([](const Tensor& x) { return x.clone(); }, {3, 4}, 18);
  // A chain of views of a non-contiguous input, each element used more than once.
  g(
      [](const Tensor& x) {
        Tensor v = non_contiguous(x).permute({1, 0}).slice(0, 0, 4, 2).unsqueeze(0);
        return cat({v.expand({2, 2, 3}), x.select(0, 1).reshape({1, 1, 4}).expand({2, 2, 4})}, 2);
      },
      {3, 4}, 19);
}

TEST_CASE("views: a view of a leaf accumulates into the leaf's gradient", "[views][grad]") {
  Tensor x = zeros({2, 3}, DType::F64).requires_grad_();
  Tensor v = x.t().select(0, 1);  // column 1
  CHECK_FALSE(v.is_leaf());
  CHECK(v.requires_grad());
  (v * from_vector<double>({2, 3})).sum().backward();
  check_close(x.grad(), {0, 2, 0, 0, 3, 0}, {2, 3});
}
