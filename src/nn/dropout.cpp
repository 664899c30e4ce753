#include <dimx/nn/dropout.h>

#include <sstream>

namespace dimx::nn {

Dropout::Dropout(double p_, Dims broadcast) : p(p_), broadcast_over(std::move(broadcast)) {
  if (!(p >= 0 && p <= 1)) throw Error("Dropout: p must be in [0, 1], got " + std::to_string(p));
}

Tensor Dropout::operator()(const Tensor& x, Generator& gen) const {
  if (!training || p == 0) return x;
  return dropout(x, p, gen, training, broadcast_over);
}

std::string Dropout::extra_repr() const {
  std::ostringstream os;
  os << "p=" << p;
  if (!broadcast_over.empty()) os << ", broadcast_over=" << dims_str(broadcast_over);
  return os.str();
}

}  // namespace dimx::nn
