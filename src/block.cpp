#include "block.h"

#include <algorithm>

namespace dimx {

Dims Block::outer() const {
  Dims o = before;
  o.insert(o.end(), after.begin(), after.end());
  return o;
}

Block as_block(const Tensor& x, const Dims& mid) {
  const Dims& xd = x.dims();
  boost::container::small_vector<size_t, 6> pos;
  for (const Dim& d : mid) pos.push_back(x.axis_of(d));
  std::sort(pos.begin(), pos.end());
  bool consecutive = pos.empty() || pos.back() - pos.front() + 1 == pos.size();
  Block b;
  if (consecutive && x.is_contiguous() && !pos.empty()) {
    b.x = x;
    b.before.assign(xd.begin(), xd.begin() + long(pos.front()));
    b.mid.assign(xd.begin() + long(pos.front()), xd.begin() + long(pos.back()) + 1);
    b.after.assign(xd.begin() + long(pos.back()) + 1, xd.end());
  } else {
    b.before = minus_dims(xd, mid);
    b.mid = mid;
    Dims order = b.before;
    order.insert(order.end(), mid.begin(), mid.end());
    b.x = x.transpose_to(order);
  }
  const Shape shape = extents(b.x.dims());
  const size_t nb = b.before.size(), nm = b.mid.size();
  b.A = numel_of(Shape(shape.begin(), shape.begin() + long(nb)));
  b.N = numel_of(Shape(shape.begin() + long(nb), shape.begin() + long(nb + nm)));
  b.B = numel_of(Shape(shape.begin() + long(nb + nm), shape.end()));
  return b;
}

Tensor block_lengths(const Block& b, const Dim& d) {
  Dims out = b.outer();
  Tensor l = broadcast_to_include(d.lengths(b.x.device()), out);
  return l.transpose_to(out).astype(DType::i64).contiguous();
}

}  // namespace dimx
