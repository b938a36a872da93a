#!/usr/bin/env bash
# Regenerates docs/ops.md from the op table (core/op_table.def) and the kernels this build has.
# The ctest "docs: ops.md matches the op table" fails until the regenerated file is committed.
#
# Environment: LATHE_BUILD_DIR (default build), LATHE_JOBS (default nproc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/deps.sh

BUILD_DIR="${LATHE_BUILD_DIR:-build}"

lathe_configure_and_build "$BUILD_DIR" -DLATHE_BUILD_TESTS=ON -- lathe-ops-doc
"$BUILD_DIR/bin/lathe-ops-doc" docs/ops.md
lathe_log "wrote docs/ops.md ($(wc -l <docs/ops.md) lines)"
