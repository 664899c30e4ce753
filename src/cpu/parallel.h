#pragma once
// A small persistent thread pool for the CPU backend. Workers sleep between calls (no
// spinning), so they never compete with OpenBLAS's own threads during a GEMM.
#include <cstdint>
#include <functional>

namespace dimx::cpu {

int num_threads();
// Runs fn(begin, end) over [0, n) split into contiguous chunks, in parallel when n >= grain.
// Nested calls and calls while the pool is busy run serially on the caller.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace dimx::cpu
