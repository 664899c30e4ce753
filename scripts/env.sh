# shellcheck shell=bash
# Shared settings for scripts/demo, scripts/test and scripts/sanitize (sourced, not run).
#   DIMX_BUILD_DIR  build folder (default: build/ in the repository)
#   DIMX_JOBS       parallel compile and test jobs (default: the cores, capped by memory)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="${DIMX_BUILD_DIR:-$root/build}"

# nvcc lives in /usr/local/cuda/bin; CMake finds it (and builds gpu/) when it is on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

# Parallel but memory-safe: the heaviest translation units need about 1.5 GiB each, so allow
# one job per 2 GiB of available memory, at most one per core and at most 16.
if [ -n "${DIMX_JOBS:-}" ]; then
  [[ "$DIMX_JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "DIMX_JOBS must be a positive integer" >&2; exit 1; }
  jobs="$DIMX_JOBS"
else
  jobs=$(nproc)
  mem_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null || true)
  if [ -n "$mem_kib" ]; then
    by_mem=$(( mem_kib / (2 * 1024 * 1024) ))
    [ "$by_mem" -lt 1 ] && by_mem=1
    [ "$jobs" -gt "$by_mem" ] && jobs=$by_mem
  fi
  [ "$jobs" -gt 16 ] && jobs=16
fi

# configure ARGS...: Ninja, Release, into $build; the log is shown only when it fails.
configure() {
  mkdir -p "$build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >"$build/configure.log" 2>&1 \
    || { cat "$build/configure.log"; exit 1; }
}
