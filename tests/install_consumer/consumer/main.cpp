// A program outside the dimx tree, built against the installed package.
#include <dimx/dimx.h>

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
  return m[0] == 2 && m[1] == 5 ? 0 : 1;
}
