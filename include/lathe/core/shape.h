// Shapes and strides are vectors of int64 (strides counted in elements, not bytes).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <vector>

namespace lathe {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;

// Row-major strides for a shape.
Strides contiguous_strides(const Shape& shape);
int64_t shape_numel(const Shape& shape);
// "[2, 3, 4]"
std::string shape_str(const Shape& shape);
// Wraps a possibly negative dim into [0, ndim); `op` names the caller in the error.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);
// The numpy broadcast of two shapes; throws naming `op` and both shapes when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace lathe
