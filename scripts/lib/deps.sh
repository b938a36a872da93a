# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this
# Shared set-up for scripts/test.sh and scripts/demo.sh (sourced, not run).
#
# The package list lives here once so that the two scripts and CI can never disagree about what a
# build needs. apt-get runs only when something is actually missing: a machine that already has
# everything (a developer box, a warm CI image) needs neither root nor network.

# Debian 12 packages a full build needs (library, tests, benchmarks, examples, formatting).
LATHE_PACKAGES=(
  cmake g++ ccache
  libeigen3-dev libopenblas-dev
  catch2 libbenchmark-dev
  nlohmann-json3-dev libutf8proc-dev libcli11-dev
  clang-format
)

lathe_log() { printf '==> %s\n' "$*"; }

# Installs whichever of the given Debian packages are missing; a no-op when none is.
lathe_ensure_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    lathe_log "packages: not a Debian system, assuming the dependencies are installed"
    return 0
  fi
  local missing=() pkg
  for pkg in "$@"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    lathe_log "packages: all ${#} present"
    return 0
  fi
  lathe_log "packages: installing ${missing[*]}"
  local sudo=()
  if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "error: missing packages (${missing[*]}) and not root; install them or run as root" >&2
      return 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ccache: a persistent cache directory (CI caches ~/.cache), a size cap, and counters to report the
# hit rate of this run only (the cache is shared with other builds, so its totals mean little).
lathe_ccache_setup() {
  command -v ccache >/dev/null 2>&1 || return 0
  export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
  export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
  # Paths under the checkout become relative in ccache's hash, so a clone in another folder (CI's
  # fresh clone) hits the cache filled by earlier builds.
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
  export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
  mkdir -p "$CCACHE_DIR"
  # CMake picks ccache up by itself (cmake/LatheOptions.cmake); side builds such as
  # tests/consumer get it passed explicitly.
  LATHE_CCACHE_LAUNCHER="$(command -v ccache)"
  LATHE_CCACHE_BEFORE="$(lathe_ccache_counts)"
}

# "<hits> <misses>" from ccache's machine-readable statistics.
lathe_ccache_counts() {
  ccache --print-stats 2>/dev/null | awk '
    $1 == "direct_cache_hit" || $1 == "preprocessed_cache_hit" { hits += $2 }
    $1 == "cache_miss" { misses += $2 }
    END { printf "%d %d\n", hits, misses }'
}

# One line: hits and misses since lathe_ccache_setup.
lathe_ccache_report() {
  command -v ccache >/dev/null 2>&1 || return 0
  [[ -n "${LATHE_CCACHE_BEFORE:-}" ]] || return 0
  local h0 m0 h1 m1
  read -r h0 m0 <<<"$LATHE_CCACHE_BEFORE"
  read -r h1 m1 <<<"$(lathe_ccache_counts)"
  local hits=$((h1 - h0)) misses=$((m1 - m0))
  local total=$((hits + misses))
  local rate=0
  ((total > 0)) && rate=$((100 * hits / total))
  lathe_log "ccache: ${hits} hits, ${misses} misses (${rate}% hit rate) in ${CCACHE_DIR}"
}

# The number of parallel jobs: LATHE_JOBS when set, else every core.
lathe_jobs() { echo "${LATHE_JOBS:-$(nproc)}"; }

# Configures and builds `dir` (Release unless the arguments say otherwise); extra arguments go to
# cmake's configure step. Targets to build may follow a `--` argument (default: all).
lathe_configure_and_build() {
  local dir="$1"
  shift
  local cmake_args=() targets=()
  while (($#)); do
    if [[ "$1" == "--" ]]; then
      shift
      targets=("$@")
      break
    fi
    cmake_args+=("$1")
    shift
  done
  lathe_log "configure ${dir}${cmake_args[*]:+ ${cmake_args[*]}}"
  mkdir -p "$dir"
  # The configure output is only interesting when it fails.
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "${cmake_args[@]}" >"$dir/lathe-configure.log" 2>&1 ||
    { cat "$dir/lathe-configure.log" >&2; return 1; }
  local target_args=()
  ((${#targets[@]})) && target_args=(--target "${targets[@]}")
  lathe_log "build ${dir} (-j$(lathe_jobs))"
  cmake --build "$dir" -j "$(lathe_jobs)" "${target_args[@]}"
}
