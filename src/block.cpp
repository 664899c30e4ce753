#include "block.h"

#include <algorithm>

namespace dimx {

Dims Block::outer() const {
  const Dims& xd = x.dims();
  Dims o(xd.begin(), xd.begin() + long(before));
  o.insert(o.end(), xd.begin() + long(before + mid), xd.end());
  return o;
}

namespace {

// A, N and B of b from its x's extents.
void set_extents(Block& b) {
  const Dims& xd = b.x.dims();
  int64_t* out[3] = {&b.A, &b.N, &b.B};
  const size_t ends[3] = {b.before, b.before + b.mid, xd.size()};
  size_t i = 0;
  for (int part = 0; part < 3; ++part) {
    int64_t n = 1;
    for (; i < ends[part]; ++i) n *= xd[i].extent();
    *out[part] = n;
  }
}

}  // namespace

Block as_block(const Tensor& x, const Dims& mid) {
  if (mid.size() == 1) return as_block(x, mid[0]);
  const Dims& xd = x.dims();
  boost::container::small_vector<size_t, 6> pos;
  for (const Dim& d : mid) pos.push_back(x.axis_of(d));
  std::sort(pos.begin(), pos.end());
  const bool consecutive = pos.empty() || pos.back() - pos.front() + 1 == pos.size();
  Block b;
  b.mid = mid.size();
  if (consecutive && x.is_contiguous() && !pos.empty()) {
    b.x = x;
    b.before = pos.front();
  } else {
    Dims order = minus_dims(xd, mid);
    b.before = order.size();
    order.insert(order.end(), mid.begin(), mid.end());
    b.x = x.transpose_to(order);
  }
  set_extents(b);
  return b;
}

Block as_block(const Tensor& x, const Dim& axis) {
  Block b;
  b.mid = 1;
  b.before = x.axis_of(axis);
  if (x.is_contiguous()) {
    b.x = x;
  } else {
    Dims order = minus_dims(x.dims(), {axis});
    b.before = order.size();
    order.push_back(axis);
    b.x = x.transpose_to(order);
  }
  set_extents(b);
  return b;
}

Tensor block_lengths(const Block& b, const Dim& d) {
  Dims out = b.outer();
  Tensor l = broadcast_to_include(d.lengths(b.x.device()), out);
  return l.transpose_to(out).astype(DType::i64).contiguous();
}

}  // namespace dimx
