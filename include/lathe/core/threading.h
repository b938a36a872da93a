// CPU parallelism. Kernels use OpenMP; the thread count comes from LATHE_NUM_THREADS when set,
// else OpenMP's default.
#pragma once

namespace lathe {

void set_num_threads(int threads);
int get_num_threads();

}  // namespace lathe
