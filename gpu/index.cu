// gather, its adjoint scatter_add, and Philox random numbers.
//
// scatter_add is deterministic: every destination element is one sum in a fixed order, the
// same on every run (no float atomics). The positions of the index tensor are sorted by their
// destination (a stable radix sort, so each destination's positions stay in index order);
// each destination's run is cut into chunks of kChunk positions, summed one chunk per thread
// (and per element of the Dims the index lacks), and the chunk sums of a run are added in order.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#include <dimx/error.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.cuh"
#include "philox.h"

namespace dimx::gpu {

namespace {

template <class T>
__global__ void gather_kernel(Meta<3> m, const T* x, int64_t axis_stride, int64_t extent, const int64_t* idx, bool clip,
                              T* y, int* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    int64_t j = idx[o[1]];
    if (j < 0 || j >= extent) {
      if (!clip && bad) *bad = 1;
      j = j < 0 ? 0 : extent - 1;
    }
    y[o[2]] = x[o[0] + j * axis_stride];
  }
}

constexpr int64_t kChunk = 32;  // positions summed by one thread (short: the sums are chains of loads)

// Sums in f32 for f32 (and f64, integers in their own type).
template <class T>
using Acc = std::conditional_t<std::is_same_v<T, float>, float, T>;

// key[p] = where position p of the index lands in y (its y offset along the index's Dims plus
// the index's value, clamped, times axis_stride); pos[p] = p.
__global__ void scatter_keys_kernel(Meta<3> seg, const int64_t* idx, int64_t axis_stride, int64_t extent,
                                    int64_t* key, int64_t* pos) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < seg.n; p += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(seg, p, o);
    int64_t j = idx[o[1]];
    j = j < 0 ? 0 : (j >= extent ? extent - 1 : j);
    key[p] = o[2] + j * axis_stride;
    pos[p] = p;
  }
}

// chunks[r] = the number of chunks of run r.
__global__ void scatter_chunk_counts_kernel(const int* runs, const int64_t* count, int64_t* chunks) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < *runs; r += int64_t(gridDim.x) * blockDim.x)
    chunks[r] = (count[r] + kChunk - 1) / kChunk;
}

// partial[c, e] = the sum over chunk c's positions of x at (position, rest element e), in
// sorted order. Chunk c belongs to run r, found by a binary search of the chunk starts.
template <class T>
__global__ void scatter_chunks_kernel(Meta<3> seg, Meta<2> rest, const T* x, const int* runs, const int64_t* run_start,
                                      const int64_t* count, const int64_t* chunk_start, int64_t nchunks,
                                      const int64_t* pos, Acc<T>* partial) {
  const int64_t total = nchunks * rest.n;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = t / rest.n, e = t % rest.n;
    int64_t lo = 0, hi = *runs - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (chunk_start[mid] <= c) lo = mid;
      else hi = mid - 1;
    }
    const int64_t first = run_start[lo] + (c - chunk_start[lo]) * kChunk;
    const int64_t last = min(first + kChunk, run_start[lo] + count[lo]);
    int64_t ro[2];
    offsets(rest, e, ro);
    Acc<T> sum = Acc<T>(0);
    for (int64_t k = first; k < last; ++k) {
      int64_t o[3];
      offsets(seg, pos[k], o);
      sum += Acc<T>(x[o[0] + ro[0]]);
    }
    partial[t] = sum;
  }
}

// y[key of run r + rest offset of e] += the sum of run r's chunk sums, in order.
template <class T>
__global__ void scatter_runs_kernel(Meta<2> rest, const int* runs, const int64_t* run_key, const int64_t* chunk_start,
                                    const int64_t* chunks, const Acc<T>* partial, T* y) {
  const int64_t total = int64_t(*runs) * rest.n;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / rest.n, e = t % rest.n;
    Acc<T> sum = Acc<T>(0);
    for (int64_t c = chunk_start[r]; c < chunk_start[r] + chunks[r]; ++c) sum += partial[c * rest.n + e];
    int64_t ro[2];
    offsets(rest, e, ro);
    T* dst = y + run_key[r] + ro[1];
    *dst = T(Acc<T>(*dst) + sum);
  }
}

template <class T>
__global__ void random_kernel(bool normal, int64_t n, uint64_t seed, uint64_t offset, double a, double b, T* y) {
  const int per = sizeof(T) == 8 ? 2 : 4;
  const int64_t counters = (n + per - 1) / per;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < counters; c += int64_t(gridDim.x) * blockDim.x) {
    double v[4];
    philox::values(normal, sizeof(T) == 8, seed, offset + uint64_t(c), v);
    for (int j = 0; j < per; ++j) {
      int64_t i = c * per + j;
      if (i < n) y[i] = T(normal ? a + b * v[j] : a + (b - a) * v[j]);
    }
  }
}

}  // namespace

void launch_gather(DType dt, const Meta<3>& m, const void* x, int64_t axis_stride, int64_t extent, const int64_t* idx,
                   bool clip, void* y, int* bad, cudaStream_t s) {
  if (dt == DType::bf16 || dt == DType::f16) {  // a gather moves bits: 2-byte words will do
    gather_kernel<uint16_t><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const uint16_t*>(x), axis_stride, extent,
                                                            idx, clip, static_cast<uint16_t*>(y), bad);
    return check_launch("gather");
  }
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    gather_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const T*>(x), axis_stride, extent, idx, clip,
                                                     static_cast<T*>(y), bad);
  });
  check_launch("gather");
}

namespace {

// Device scratch for one scatter_add, freed in stream order.
struct Scratch {
  cudaStream_t s;
  std::vector<void*> blocks;
  template <class U>
  U* get(int64_t n) {
    void* p = nullptr;
    const size_t bytes = size_t(std::max<int64_t>(n, 1)) * sizeof(U);
    if (cudaMallocAsync(&p, bytes, s) != cudaSuccess) {
      cudaGetLastError();
      throw Error("scatter_add: out of device memory for its scratch (" + std::to_string(bytes) + " bytes)");
    }
    blocks.push_back(p);
    return static_cast<U*>(p);
  }
  ~Scratch() {
    for (void* p : blocks) cudaFreeAsync(p, s);
  }
};

template <class T>
void scatter_add_sorted(const Meta<3>& m, const T* x, int64_t axis_stride, int64_t extent, const int64_t* idx, T* y,
                        cudaStream_t s) {
  // The index's Dims (idx stride != 0) and the rest.
  Meta<3> seg;
  Meta<2> rest;
  for (int d = 0; d < m.nd; ++d) {
    if (m.strides[1][d] != 0) {
      seg.shape[seg.nd] = m.shape[d];
      for (int k = 0; k < 3; ++k) seg.strides[k][seg.nd] = m.strides[k][d];
      seg.n *= m.shape[d];
      ++seg.nd;
    } else {
      rest.shape[rest.nd] = m.shape[d];
      rest.strides[0][rest.nd] = m.strides[0][d];
      rest.strides[1][rest.nd] = m.strides[2][d];
      rest.n *= m.shape[d];
      ++rest.nd;
    }
  }
  if (seg.n == 0 || rest.n == 0) return;
  Scratch sc{s, {}};
  const int64_t n = seg.n;
  int64_t* key = sc.get<int64_t>(n);
  int64_t* key_sorted = sc.get<int64_t>(n);
  int64_t* pos = sc.get<int64_t>(n);
  int64_t* pos_sorted = sc.get<int64_t>(n);
  int64_t* run_key = sc.get<int64_t>(n);
  int64_t* count = sc.get<int64_t>(n);
  int64_t* run_start = sc.get<int64_t>(n);
  int64_t* chunks = sc.get<int64_t>(n);
  int64_t* chunk_start = sc.get<int64_t>(n);
  int* runs = sc.get<int>(1);
  // Zeros past the last run, so that the scans read only defined values.
  cudaMemsetAsync(count, 0, size_t(n) * sizeof(int64_t), s);
  cudaMemsetAsync(chunks, 0, size_t(n) * sizeof(int64_t), s);
  // Bits the keys need: all of them where a stride is negative (signed keys), else up to the
  // largest destination.
  int end_bit = 64;
  {
    int64_t top = (extent - 1) * axis_stride;
    bool nonneg = axis_stride >= 0;
    for (int d = 0; d < seg.nd; ++d) {
      nonneg = nonneg && seg.strides[2][d] >= 0;
      top += (seg.shape[d] - 1) * seg.strides[2][d];
    }
    if (nonneg) {
      end_bit = 1;
      while (end_bit < 63 && (top >> end_bit) != 0) ++end_bit;
    }
  }
  scatter_keys_kernel<<<blocks_for(n), 256, 0, s>>>(seg, idx, axis_stride, extent, key, pos);
  check_launch("scatter_add (keys)");

  auto cub_call = [&](const char* what, auto&& f) {
    size_t bytes = 0;
    if (f(nullptr, bytes) != cudaSuccess) throw Error(std::string("scatter_add: ") + what + " failed");
    void* tmp = sc.get<unsigned char>(int64_t(bytes));
    if (f(tmp, bytes) != cudaSuccess) throw Error(std::string("scatter_add: ") + what + " failed");
  };
  cub_call("sort", [&](void* tmp, size_t& bytes) {
    return cub::DeviceRadixSort::SortPairs(tmp, bytes, key, key_sorted, pos, pos_sorted, n, 0, end_bit, s);
  });
  cub_call("run-length encode", [&](void* tmp, size_t& bytes) {
    return cub::DeviceRunLengthEncode::Encode(tmp, bytes, key_sorted, run_key, count, runs, n, s);
  });
  cub_call("scan", [&](void* tmp, size_t& bytes) { return cub::DeviceScan::ExclusiveSum(tmp, bytes, count, run_start, n, s); });
  scatter_chunk_counts_kernel<<<blocks_for(n), 256, 0, s>>>(runs, count, chunks);
  check_launch("scatter_add (chunks)");
  cub_call("scan", [&](void* tmp, size_t& bytes) { return cub::DeviceScan::ExclusiveSum(tmp, bytes, chunks, chunk_start, n, s); });
  // The number of chunks sizes the partial sums: read back (the last run's start plus its chunks).
  int nruns = 0;
  if (cudaMemcpyAsync(&nruns, runs, sizeof(int), cudaMemcpyDeviceToHost, s) != cudaSuccess ||
      cudaStreamSynchronize(s) != cudaSuccess)
    throw Error("scatter_add: reading the number of destinations failed");
  int64_t last[2] = {0, 0};
  if (cudaMemcpyAsync(&last[0], chunk_start + nruns - 1, sizeof(int64_t), cudaMemcpyDeviceToHost, s) != cudaSuccess ||
      cudaMemcpyAsync(&last[1], chunks + nruns - 1, sizeof(int64_t), cudaMemcpyDeviceToHost, s) != cudaSuccess ||
      cudaStreamSynchronize(s) != cudaSuccess)
    throw Error("scatter_add: reading the number of chunks failed");
  const int64_t nchunks = last[0] + last[1];
  Acc<T>* partial = sc.get<Acc<T>>(nchunks * rest.n);
  scatter_chunks_kernel<T><<<blocks_for(nchunks * rest.n), 256, 0, s>>>(seg, rest, x, runs, run_start, count,
                                                                         chunk_start, nchunks, pos_sorted, partial);
  check_launch("scatter_add (chunk sums)");
  scatter_runs_kernel<T><<<blocks_for(int64_t(nruns) * rest.n), 256, 0, s>>>(rest, runs, run_key, chunk_start, chunks,
                                                                              partial, y);
  check_launch("scatter_add (run sums)");
}

}  // namespace

void launch_scatter_add(DType dt, const Meta<3>& m, const void* x, int64_t axis_stride, int64_t extent,
                        const int64_t* idx, void* y, cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool>) {
      throw Error("scatter_add: bool dtype not supported");
    } else {
      scatter_add_sorted<T>(m, static_cast<const T*>(x), axis_stride, extent, idx, static_cast<T*>(y), s);
    }
  });
}

void launch_random(bool normal, DType dt, int64_t n, uint64_t seed, uint64_t offset, double a, double b, void* y,
                   cudaStream_t s) {
  if (n == 0) return;
  if (dt == DType::f32)
    random_kernel<float><<<blocks_for((n + 3) / 4), 256, 0, s>>>(normal, n, seed, offset, a, b, static_cast<float*>(y));
  else if (dt == DType::f64)
    random_kernel<double><<<blocks_for((n + 1) / 2), 256, 0, s>>>(normal, n, seed, offset, a, b, static_cast<double*>(y));
  else
    throw Error(std::string("random: dtype ") + dtype_name(dt) + " not supported (f32, f64)");
  check_launch("random");
}

}  // namespace dimx::gpu
