// In-place ops: values, broadcasting, version bumps, and refusal on tensors that require grad.
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

TEST_CASE("inplace: fill_, zero_, copy_, add_, mul_, masked_fill_ write through views",
          "[inplace]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = zeros({3, 4}, TensorOptions(DType::F64).device(device));
  uint64_t v0 = x.storage()->version();
  x.fill_(2.0);
  CHECK(x.storage()->version() == v0 + 1);
  check_close(x, std::vector<double>(12, 2.0), {3, 4});

  // Writes through a column view land in the base tensor.
  Tensor col = x.select(1, 2);
  col.copy_(from_vector<double>({7, 8, 9}, {3}, TensorOptions().device(device)));
  std::vector<double> expect(12, 2.0);
  expect[2] = 7;
  expect[6] = 8;
  expect[10] = 9;
  check_close(x, expect, {3, 4});

  // copy_ broadcasts and converts dtype (and device).
  Tensor row = from_vector<float>({1, 2, 3, 4}, {4});
  x.copy_(row);
  check_close(x, {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}, {3, 4});

  x.add_(from_vector<double>({10, 20, 30}, {3, 1}, TensorOptions().device(device)), 0.5);
  check_close(x, {6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19}, {3, 4});
  x.mul_(2.0);
  check_close(x, {12, 14, 16, 18, 22, 24, 26, 28, 32, 34, 36, 38}, {3, 4});
  x.masked_fill_(gt(x, scalar_tensor(30.0, DType::F64).to(device)), -1);
  check_close(x, {12, 14, 16, 18, 22, 24, 26, 28, -1, -1, -1, -1}, {3, 4});
  x.slice(1, 1, 3).zero_();
  check_close(x, {12, 0, 0, 18, 22, 0, 0, 28, -1, 0, 0, -1}, {3, 4});
  CHECK(x.storage()->version() > v0 + 5);
}

TEST_CASE("inplace: refused on tensors that require grad, allowed under NoGradGuard", "[inplace]") {
  Tensor w = ones({2}, TensorOptions(DType::F64).requires_grad());
  check_error([&] { w.add_(ones({2}, DType::F64)); }, {"add_", "requires grad", "NoGradGuard"});
  check_error([&] { w.fill_(0); }, {"fill_", "requires grad"});
  {
    NoGradGuard guard;
    w.mul_(3.0);
  }
  check_close(w, {3, 3}, {2});
  check_error(
      [&] {
        Tensor a = zeros({2, 3});
        a.add_(zeros({3, 3}));
      },
      {"add_", "[2, 3]"});
  check_error([&] { zeros({2}).masked_fill_(zeros({2}), 1); }, {"masked_fill_", "bool"});
}

TEST_CASE("autograd: a very long graph is released without deep recursion", "[autograd]") {
  Tensor x = ones({1}, TensorOptions(DType::F64).requires_grad());
  Tensor y = x;
  for (int i = 0; i < 1000000; ++i) y = y * 1.0;
  y = Tensor();  // dropping the last reference frees 10^6 nodes iteratively
  CHECK(x.requires_grad());
}
