// Quickstart: Dims, dynamic lengths, broadcasting by identity, masked reductions, matmul and
// softmax by Dim, and the errors you get when Dims do not fit. docs/tutorials/01 walks through it.
#include <dimx/dimx.h>

#include <cmath>
#include <iostream>

using namespace dimx;

int main() {
  std::cout << std::boolalpha;
  bool ok = true;
  auto check = [&ok](const char* what, bool good) {
    if (!good) std::cout << "WRONG: " << what << "\n";
    ok = ok && good;
  };
  auto near = [](float a, float b) { return std::abs(a - b) < 1e-4f; };

  // 1. Dims are identities. Two Dims of the same size and name are still different axes.
  Dim batch(3, "batch");
  Dim feature(4, "feature");
  Dim other_feature(4, "feature");
  std::cout << "feature == other_feature? " << (feature == other_feature) << "\n";
  check("distinct Dims", feature != other_feature);

  // 2. A dynamic Dim: each sequence of the batch has its own length; tensors store it padded.
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{5, 2, 3}), "time");
  Generator gen(0);
  Tensor x = random_normal({batch, time, feature}, gen);
  std::cout << "x: " << x << "\n";
  std::vector<float> xv = x.to_vector<float>({batch, time, feature});  // [b][t][f], 3x5x4

  // 3. Broadcasting goes by Dim identity, whatever the layout: `scale` has only {feature}.
  Tensor scale = Tensor::from_vector<float>({feature}, std::vector<float>{1, 2, 3, 4});
  Tensor y = x.transpose_to({feature, time, batch}) * scale;
  std::cout << "y: " << y << "\n";
  std::vector<float> yv = y.to_vector<float>({batch, time, feature});
  check("y = x * scale", near(yv[(2 * 5 + 1) * 4 + 3], xv[(2 * 5 + 1) * 4 + 3] * 4));

  // ...but if no operand has all the output Dims, dimx refuses the accidental outer product.
  Tensor per_sequence = Tensor::from_vector<float>({batch}, std::vector<float>{1, 10, 100});
  bool refused = false;
  try {
    per_sequence * scale;
  } catch (const Error& e) {
    std::cout << "error: " << e.what() << "\n";
    refused = true;
  }
  check("outer product refused", refused);
  Tensor outer = mul(per_sequence, scale, /*allow_broadcast_all=*/true);  // asked for explicitly
  std::cout << "outer: " << outer << "\n";

  // 4. Reductions mask the padding: the mean over time divides by each sequence's length.
  Tensor frames = reduce_sum(Tensor::ones({batch, time}), {time});
  std::cout << "valid frames per sequence: " << frames.to_string() << "\n";
  check("frames", frames.to_vector<float>() == std::vector<float>{5, 2, 3});
  Tensor mean = reduce_mean(y, {time});
  std::cout << "mean over time: " << mean.to_string() << "\n";
  std::vector<float> mv = mean.to_vector<float>({batch, feature});
  check("masked mean", near(mv[1 * 4 + 0], (yv[(1 * 5 + 0) * 4] + yv[(1 * 5 + 1) * 4]) / 2));

  // 5. matmul contracts the Dims you name; Dims in both operands and not reduced are batch Dims.
  Dim hidden(2, "hidden");
  Tensor w = random_normal({feature, hidden}, gen);
  Tensor h = matmul(x, w, {feature});
  std::cout << "h: " << h << "\n";
  std::vector<float> wv = w.to_vector<float>({feature, hidden}), hv = h.to_vector<float>({batch, time, hidden});
  float h000 = 0;
  for (int f = 0; f < 4; ++f) h000 += xv[f] * wv[f * 2];
  check("matmul", near(hv[0], h000));
  // matmul_add: the product plus a bias over the result's Dims, the bias added inside the GEMM.
  Tensor bias = random_normal({hidden}, gen);
  Tensor hb = matmul_add(x, w, {feature}, bias);
  check("matmul_add", near(hb.to_vector<float>({batch, time, hidden})[0], h000 + bias.to_vector<float>()[0]));
  // Summing over batch and time (a weight gradient's shape) skips each sequence's padded
  // frames inside the product, whatever they hold.
  Dim feature2(4, "feature2");
  Tensor gram = matmul(x, replace_dim(x, feature, feature2).first, {batch, time});  // {feature, feature2}
  const int lens[3] = {5, 2, 3};
  float g00 = 0;
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < lens[b]; ++t) g00 += xv[(b * 5 + t) * 4] * xv[(b * 5 + t) * 4];
  check("matmul over padded (batch, time)", near(gram.to_vector<float>({feature, feature2})[0], g00));

  // 6. softmax over a padded axis gives exactly 0 on the padding.
  Tensor att = softmax(reduce_sum(h, {hidden}), time);
  std::vector<float> a = att.to_vector<float>({batch, time});
  std::cout << "attention weights of sequence 1 (length 2): " << a[5] << " " << a[6] << " " << a[7] << "\n";
  check("softmax", a[7] == 0.0f && a[8] == 0.0f && a[9] == 0.0f && near(a[5] + a[6], 1.0f));

  // 7. Misuse is an error that names the op and the Dims of each operand.
  bool caught = false;
  try {
    matmul(x, w, {other_feature});
  } catch (const Error& e) {
    std::cout << "error: " << e.what() << "\n";
    caught = true;
  }
  check("matmul over a foreign Dim throws", caught);

  // The example checks itself, so the test suite catches a regression.
  std::cout << (ok ? "quickstart: ok" : "quickstart: WRONG RESULT") << "\n";
  return ok ? 0 : 1;
}
