// The device side of device_report.h: a kernel thread that finds bad data files it here. The
// first filer wins; the others see the record claimed and return (one error is enough to stop).
#pragma once

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_report.h"

namespace lathe::kernels::cuda {

LATHE_DEVICE_INLINE void file_report(DeviceReport* r, const char* op, ReportKind kind,
                                     int64_t value, int64_t limit, int64_t position = -1,
                                     int dim = -1, int64_t extra = 0) {
  if (atomicCAS(&r->claimed, 0u, 1u) != 0u) return;
  r->op = op;
  r->kind = int32_t(kind);
  r->dim = dim;
  r->value = value;
  r->limit = limit;
  r->position = position;
  r->extra = extra;
  __threadfence_system();  // the fields reach host memory before `ready` does
  atomicExch(&r->ready, 1u);
}

}  // namespace lathe::kernels::cuda
