// Whether ops must give bit-reproducible results. A few fast kernels sum with float atomics,
// whose order, and so whose last bits, varies from run to run; with deterministic algorithms on
// (the default) those ops use their fixed-order kernels instead. Today this chooses the dQ pass of
// the cuda flash attention backward (docs/kernels.md, "flash attention"); every other kernel is
// deterministic either way.
//
// The initial value comes from the environment: LATHE_DETERMINISTIC=0 (or false / off) turns it
// off, anything else or unset leaves it on. The setting is process-wide and read when an op runs
// (for attention's backward: when the backward runs).
#pragma once

namespace lathe {

void set_deterministic_algorithms(bool enabled);
bool deterministic_algorithms();

}  // namespace lathe
