// CPU parallelism. Kernels use OpenMP; the thread count comes from LATHE_NUM_THREADS when set,
// else OpenMP's default (OMP_NUM_THREADS, or one per core). The count is process-wide: it applies
// to ops run on any thread, including threads started before the call. Each thread that runs ops
// runs its own team of that size, so a program running models on several threads at once may want
// a smaller count per thread.
#pragma once

namespace lathe {

void set_num_threads(int threads);
// The team size ops run with on the calling thread.
int get_num_threads();

namespace detail {
// Brings the calling thread's OpenMP team size up to date with set_num_threads (OpenMP keeps it
// per thread). kernels::kernel_table(Device) calls it for the cpu before every op; cheap when
// nothing changed.
void sync_num_threads();
}  // namespace detail

}  // namespace lathe
