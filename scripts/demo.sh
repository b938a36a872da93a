#!/usr/bin/env bash
# Sets up and runs lathe's showcase program: installs missing Debian packages, builds Release and
# runs the best example there is. Today that is lathe-example-mlp, a two-layer MLP trained with
# lathe's autograd on a synthetic 3-class spiral; arguments are passed on to it (try --help).
#
# Environment: LATHE_BUILD_DIR (default build), LATHE_JOBS (default nproc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/deps.sh

BUILD_DIR="${LATHE_BUILD_DIR:-build}"

lathe_ensure_packages "${LATHE_PACKAGES[@]}"
lathe_ccache_setup
scripts/fetch-assets.sh
lathe_configure_and_build "$BUILD_DIR" -DLATHE_BUILD_EXAMPLES=ON -- lathe-example-mlp
lathe_ccache_report
lathe_log "run ${BUILD_DIR}/bin/lathe-example-mlp $*"
exec "$BUILD_DIR/bin/lathe-example-mlp" "$@"
