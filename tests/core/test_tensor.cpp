#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

TEST_CASE("tensor: factories give the requested shape, dtype and values", "[tensor]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor z = zeros({2, 3}, TensorOptions(DType::F64).device(device));
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == DType::F64);
  CHECK(z.device() == device);
  check_close(z, std::vector<double>(6, 0.0), {2, 3});
  check_close(full({4}, 2.5, TensorOptions().device(device)), {2.5, 2.5, 2.5, 2.5}, {4});
  check_close(arange(5, TensorOptions().device(device)), {0, 1, 2, 3, 4}, {5});
  CHECK(arange(5).dtype() == DType::I64);
  check_close(arange(1.0, 2.0, 0.25, DType::F32), {1.0, 1.25, 1.5, 1.75}, {4});
}
