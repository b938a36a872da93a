// Which lanes-per-row rule rows::row_launch (rows.cuh) applies to rows of up to a warp, chosen at
// run time so that one GPU run of lathe-bench (BM_CudaRowShapes) times the two rules side by side.
// Balanced (the default since 2026-11-27): the lanes whose packs per lane leave the fewest empty
// slots (384 bf16 columns: 16 lanes x 3 packs). PowerOfTwo: the rule before it, a warp for rows of
// 32 packs or more and the smallest power of two holding the row below (384 bf16: 32 lanes, a
// third of their second pack slots empty). The loser goes once a GPU has measured both.
// Internal (not under include/lathe), process-wide and unsynchronized: set it between launches.
#pragma once

namespace lathe::kernels::cuda {

enum class RowShapes { Balanced, PowerOfTwo };

void set_row_shapes(RowShapes rule);
RowShapes row_shapes();

}  // namespace lathe::kernels::cuda
