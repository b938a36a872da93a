// The row-shape knob of row_shapes.h.
#include "kernels/cuda/row_shapes.h"

namespace lathe::kernels::cuda {

namespace {
RowShapes g_rule = RowShapes::Balanced;
}  // namespace

void set_row_shapes(RowShapes rule) {
  g_rule = rule;
}
RowShapes row_shapes() {
  return g_rule;
}

}  // namespace lathe::kernels::cuda
