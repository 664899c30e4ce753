# Shared settings for scripts/demo and scripts/test (sourced, not run).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="${DIMX_BUILD_DIR:-$root/build}"
# nvcc lives in /usr/local/cuda/bin; CMake finds it there when it is on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
# Parallel but memory-safe: each compile job needs well under 2 GiB.
jobs="${DIMX_JOBS:-$(nproc)}"
[ "$jobs" -gt 8 ] && jobs=8
configure() {
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >"$build.configure.log" 2>&1 \
    || { cat "$build.configure.log"; exit 1; }
}
