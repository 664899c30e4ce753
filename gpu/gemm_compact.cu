// The valid K indices of a GEMM operand packed densely (see launch_compact_k), so that a
// product over a padded Dim is one GEMM over the valid frames only.
#include "common.cuh"

namespace dimx::gpu {

namespace {

// Group o of the packed index space starts at g.start[o]; returns the source K index of k.
__device__ __forceinline__ int64_t source_k(const KGroups& g, int64_t k) {
  int lo = 0, hi = g.n;  // the last group whose start is <= k
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (g.start[mid] <= k) lo = mid;
    else hi = mid;
  }
  return lo * g.group + (k - g.start[lo]);
}

// K selects rows of `cols` contiguous units: one block per (batch, packed row), the row
// copied in units U (16, 8, 4 or 2 bytes as alignment allows).
template <class U>
__global__ void compact_rows(const U* x, int64_t ld, int64_t cols, int64_t batch, int64_t batch_stride,
                             int64_t packed_stride, KGroups g, U* y) {
  const int64_t k = blockIdx.x, sk = source_k(g, k);
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const U* src = x + b * batch_stride + sk * ld;
    U* dst = y + b * packed_stride + k * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
  }
}

// K runs along each of `rows` rows (stride ld): one block per (batch, row), threads over the
// packed K indices.
template <class T>
__global__ void compact_cols(const T* x, int64_t ld, int64_t total, int64_t batch, int64_t batch_stride,
                             int64_t packed_stride, KGroups g, T* y) {
  const int64_t r = blockIdx.x;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* src = x + b * batch_stride + r * ld;
    T* dst = y + b * packed_stride + r * total;
    for (int64_t k = threadIdx.x; k < total; k += blockDim.x) dst[k] = src[source_k(g, k)];
  }
}

template <class U>
void rows_as(int64_t es, const void* x, int64_t ld, int64_t cols, int64_t batch, int64_t bs, int64_t total,
             const KGroups& g, void* y, cudaStream_t s) {
  const int64_t w = int64_t(sizeof(U)) / es;  // elements per unit
  const int64_t units = cols / w;
  const unsigned threads = unsigned(std::min<int64_t>(256, std::max<int64_t>(32, (units + 31) / 32 * 32)));
  compact_rows<U><<<dim3(unsigned(total), unsigned(std::min<int64_t>(batch, 65535))), threads, 0, s>>>(
      static_cast<const U*>(x), ld / w, units, batch, bs / w, total * units, g, static_cast<U*>(y));
}

}  // namespace

void launch_compact_k(int64_t es, const void* x, int64_t ld, int64_t other, bool k_major, int64_t batch,
                      int64_t batch_stride, int64_t total, const KGroups& g, void* y, cudaStream_t s) {
  if (total == 0 || other == 0 || batch == 0) return;
  if (k_major) {
    // The widest unit that divides the row, the leading dimension, the batch stride and both
    // base addresses.
    auto fits = [&](int64_t bytes) {
      return (other * es) % bytes == 0 && (ld * es) % bytes == 0 && (batch_stride * es) % bytes == 0 &&
             reinterpret_cast<uintptr_t>(x) % bytes == 0 && reinterpret_cast<uintptr_t>(y) % bytes == 0;
    };
    if (fits(16)) rows_as<uint4>(es, x, ld, other, batch, batch_stride, total, g, y, s);
    else if (fits(8)) rows_as<uint2>(es, x, ld, other, batch, batch_stride, total, g, y, s);
    else if (fits(4)) rows_as<uint32_t>(es, x, ld, other, batch, batch_stride, total, g, y, s);
    else rows_as<uint16_t>(es, x, ld, other, batch, batch_stride, total, g, y, s);
  } else {
    const dim3 grid{unsigned(other), unsigned(std::min<int64_t>(batch, 65535))};
    const unsigned threads = unsigned(std::min<int64_t>(256, (total + 31) / 32 * 32));
    if (es == 2)
      compact_cols<uint16_t><<<grid, threads, 0, s>>>(static_cast<const uint16_t*>(x), ld, total, batch, batch_stride,
                                                      other * total, g, static_cast<uint16_t*>(y));
    else if (es == 4)
      compact_cols<uint32_t><<<grid, threads, 0, s>>>(static_cast<const uint32_t*>(x), ld, total, batch, batch_stride,
                                                      other * total, g, static_cast<uint32_t*>(y));
    else
      compact_cols<uint64_t><<<grid, threads, 0, s>>>(static_cast<const uint64_t*>(x), ld, total, batch, batch_stride,
                                                      other * total, g, static_cast<uint64_t*>(y));
  }
  check_launch("compact_k");
}

}  // namespace dimx::gpu
