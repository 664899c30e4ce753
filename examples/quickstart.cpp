// Quickstart: Dims, dynamic lengths, broadcasting by identity, masked reductions, matmul and
// softmax by Dim, and the error you get when Dims do not fit. docs/tutorials/01 walks through it.
#include <dimx/dimx.h>

#include <cmath>
#include <iostream>

using namespace dimx;

int main() {
  // 1. Dims are identities. Two Dims of the same size and name are still different axes.
  Dim batch(3, "batch");
  Dim feature(4, "feature");
  Dim other_feature(4, "feature");
  std::cout << "same Dim? " << (feature == other_feature) << "\n";

  // 2. A dynamic Dim: each sequence of the batch has its own length; tensors store it padded.
  Tensor lengths = Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{5, 2, 3});
  Dim time(lengths, "time");
  Generator gen(0);
  Tensor x = random_normal({batch, time, feature}, gen);
  std::cout << "x: " << x << "\n";

  // 3. Broadcasting goes by Dim identity, whatever the layout: `scale` has only {feature}.
  Tensor scale = Tensor::from_vector<float>({feature}, std::vector<float>{1, 2, 3, 4});
  Tensor y = x.transpose_to({feature, time, batch}) * scale;
  std::cout << "y: " << y << "\n";

  // 4. Reductions mask the padding: the mean over time divides by each sequence's length.
  Tensor ones = Tensor::ones({batch, time});
  Tensor frames = reduce_sum(ones, {time});
  std::cout << "valid frames per sequence: " << frames.to_string() << "\n";
  Tensor mean = reduce_mean(y, {time});
  std::cout << "mean over time: " << mean << "\n";

  // 5. matmul contracts the Dims you name; Dims in both operands and not reduced are batch Dims.
  Dim hidden(2, "hidden");
  Tensor w = random_normal({feature, hidden}, gen);
  Tensor h = matmul(x, w, feature);
  std::cout << "h: " << h << "\n";

  // 6. softmax over a padded axis gives exactly 0 on the padding.
  Tensor att = softmax(reduce_sum(h, {hidden}), time);
  std::vector<float> a = att.to_vector<float>({batch, time});
  std::cout << "attention weights of sequence 1 (length 2): " << a[5] << " " << a[6] << " " << a[7] << "\n";

  // 7. Misuse is an error that names the op and the Dims.
  try {
    matmul(x, w, other_feature);
  } catch (const Error& e) {
    std::cout << "error: " << e.what() << "\n";
  }

  // The example checks itself, so the test suite catches a regression.
  bool ok = feature != other_feature && frames.to_vector<float>() == std::vector<float>{5, 2, 3} &&
            a[7] == 0.0f && std::abs(a[5] + a[6] - 1.0f) < 1e-6f;
  std::cout << (ok ? "quickstart: ok" : "quickstart: WRONG RESULT") << "\n";
  return ok ? 0 : 1;
}
