// A program outside the dimx tree, built against the installed package with dimx::dimx alone:
// the CPU, and the GPU where the package carries the CUDA layer and the machine has a device.
#include <dimx/dimx.h>
#include <dimx/gpu/runtime.h>

#include <cmath>
#include <iostream>
#include <vector>

int main() {
  using namespace dimx;
  Dim batch(2, "batch");
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{3, 1}), "time");
  // Sequence 0 has 3 frames, sequence 1 has 1; the padded frames (99) must not count.
  Tensor x = Tensor::from_vector<float>({batch, time}, std::vector<float>{1, 2, 3, 5, 99, 99});
  std::vector<float> m = reduce_mean(x, {time}).to_vector<float>({batch});
  std::cout << "masked mean over time: " << m[0] << " " << m[1] << "\n";
  bool ok = m[0] == 2 && m[1] == 5;

  std::string why;
  std::cout << "cuda layer: " << (gpu::cuda_layer_available(&why) ? "yes" : "no (" + why + ")") << "\n";
  if (gpu::device_count() > 0) {
    // The same on the GPU, and a matmul against the CPU.
    const Device cuda = Device::cuda(0);
    std::vector<float> g = reduce_mean(x.to(cuda), {time}).to_vector<float>({batch});
    Dim k(64, "k"), n(32, "n");
    Generator gen(1);
    Tensor a = random_normal({batch, k}, gen), b = random_normal({k, n}, gen);
    std::vector<float> c = matmul(a, b, k).to_vector<float>({batch, n});
    std::vector<float> cg = matmul(a.to(cuda), b.to(cuda), k).to_vector<float>({batch, n});
    double d = 0;
    for (size_t i = 0; i < c.size(); ++i) d = std::max(d, double(std::abs(c[i] - cg[i])));
    std::cout << "gpu " << gpu::device_name(0) << ": masked mean " << g[0] << " " << g[1] << ", matmul vs cpu " << d
              << "\n";
    ok = ok && g[0] == 2 && g[1] == 5 && d < 1e-4;
  } else {
    std::cout << "no CUDA device: the GPU part is skipped\n";
  }
  return ok ? 0 : 1;
}
