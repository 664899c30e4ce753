// libFuzzer harness: Dims, shapes and values through a random program of ops. The fuzz bytes
// choose a small world of Dims (static ones, some of extent 0, and dynamic ones whose lengths
// run over a batch Dim or over another static Dim, with padded frames), then a sequence of
// ops on a pool of tensors: creation (padded frames filled with NaN, inf, 1e30 or extreme
// integers), elementwise binary, scalar and unary ops, where, reductions, argmax/argmin,
// matmul, split_dims, merge_dims, concat, gather, pad, slice, transpose_to, expand_dim,
// squeeze, replace_dim, copy_masked and astype, over f64, f32, i64, i32 and bool.
//
// Every op runs on a reference as well: plain loops over the index space here, keeping for each
// element its value, a bound on the rounding dimx may add, and whether it is known (the padded
// frames of a result, and whatever depends on padding content, are not). The reference says
// whether the op must throw, must succeed or may do either (an integer division whose divisor
// holds unknown values, say), and gives the result's Dims and known values. A finding is any
// exception other than dimx::Error, an error where the documented rules allow the op, no
// error where they refuse it, other Dims or Dim order than documented, other lengths of a new
// dynamic Dim, or a known value off by more than the rounding bound (exact where no rounding
// can occur: integers, bools, selections, IEEE add/sub/mul/div of exact inputs).
#include <dimx/dimx.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_util.h"

using namespace dimx;
using dimx_fuzz::ByteReader;
using dimx_fuzz::finding;

namespace {

constexpr int64_t kMaxNumel = 256;    // a created tensor
constexpr int64_t kMaxSpace = 4096;   // the index space of one op's reference loops
constexpr int kMaxOps = 24;           // ops per input
constexpr size_t kPoolSize = 6;

using Index = std::vector<int64_t>;

// ---- index spaces

constexpr size_t kNone = size_t(-1);

size_t position(const Dims& dims, const Dim& d) {
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] == d) return i;
  return kNone;
}

bool has(const Dims& dims, const Dim& d) { return position(dims, d) != kNone; }

bool subset(const Dims& a, const Dims& b) {
  return std::all_of(a.begin(), a.end(), [&](const Dim& d) { return has(b, d); });
}

bool same_set(const Dims& a, const Dims& b) { return a.size() == b.size() && subset(a, b); }

// a's Dims that b lacks; a's Dims, then b's that a lacks.
Dims without(const Dims& a, const Dims& b) {
  Dims out;
  std::copy_if(a.begin(), a.end(), std::back_inserter(out), [&](const Dim& d) { return !has(b, d); });
  return out;
}

Dims joined(const Dims& a, const Dims& b) {
  Dims out = a;
  const Dims more = without(b, a);
  out.insert(out.end(), more.begin(), more.end());
  return out;
}

std::vector<int64_t> extents_of(const Dims& dims) {
  std::vector<int64_t> e;
  for (const Dim& d : dims) e.push_back(d.extent());
  return e;
}

// The element count of `dims`, or kMaxSpace + 1 when it is larger.
int64_t space_size(const Dims& dims) {
  int64_t n = 1;
  for (const Dim& d : dims) {
    if (d.extent() == 0) return 0;
    if (d.extent() > kMaxSpace || n * d.extent() > kMaxSpace) n = kMaxSpace + 1;
    else n *= d.extent();
  }
  return n;
}

// Visits every index of `dims` (once for no Dims; never for an empty one).
template <class F>
void for_each_index(const Dims& dims, F&& f) {
  const std::vector<int64_t> ext = extents_of(dims);
  for (int64_t e : ext)
    if (e == 0) return;
  Index idx(ext.size(), 0);
  while (true) {
    f(idx);
    size_t i = ext.size();
    while (i > 0 && ++idx[i - 1] == ext[i - 1]) idx[--i] = 0;
    if (i == 0) return;
  }
}

// Row-major strides of a tensor over `dims`, placed at the positions of those Dims in `space`
// (0 for Dims of `space` it lacks). Every Dim of `dims` must be in `space`.
std::vector<int64_t> strides_in(const Dims& dims, const Dims& space) {
  std::vector<int64_t> s(space.size(), 0);
  int64_t stride = 1;
  for (size_t i = dims.size(); i-- > 0;) {
    const size_t p = position(space, dims[i]);
    if (p == kNone) finding("internal: " + dims[i].str() + " not in the index space " + dims_str(space));
    s[p] = stride;
    stride *= dims[i].extent();
  }
  return s;
}

int64_t flat(const std::vector<int64_t>& strides, const Index& idx) {
  int64_t o = 0;
  for (size_t i = 0; i < idx.size(); ++i) o += strides[i] * idx[i];
  return o;
}

// ---- the Dims of one input, with the lengths the reference expects

struct DimInfo {
  Dim dim;
  bool dynamic = false;
  Dims over;                  // dynamic: the Dims its lengths run over
  std::vector<int64_t> lens;  // dynamic: row-major over `over`
};

class World {
 public:
  const DimInfo& at(const Dim& d) const {
    for (const DimInfo& i : all_)
      if (i.dim == d) return i;
    finding("a result has a Dim the harness never saw: " + d.str());
  }
  bool knows(const Dim& d) const {
    return std::any_of(all_.begin(), all_.end(), [&](const DimInfo& i) { return i.dim == d; });
  }
  void add_static(const Dim& d) {
    if (!knows(d)) all_.push_back(DimInfo{d, false, {}, {}});
  }
  void add_dynamic(const Dim& d, const Dims& over, std::vector<int64_t> lens) {
    if (!knows(d)) all_.push_back(DimInfo{d, true, over, std::move(lens)});
  }
  size_t size() const { return all_.size(); }
  const Dim& operator[](size_t i) const { return all_[i].dim; }

  // Valid frames of `d` at `idx` over `space`: its length there; where `space` lacks some Dims
  // its lengths run over, the longest length over those (a frame some sequence has is data).
  int64_t valid_len(const Dim& d, const Dims& space, const Index& idx) const {
    const DimInfo& info = at(d);
    if (!info.dynamic) return d.extent();
    Dims missing;
    for (const Dim& o : info.over)
      if (!has(space, o)) missing.push_back(o);
    const std::vector<int64_t> ls = strides_in(info.over, joined(space, missing));
    int64_t best = 0;
    Index full = idx;
    full.resize(space.size() + missing.size(), 0);
    for_each_index(missing, [&](const Index& m) {
      std::copy(m.begin(), m.end(), full.begin() + long(space.size()));
      best = std::max(best, info.lens[size_t(flat(ls, full))]);
    });
    return best;
  }

  // Whether element `idx` of a tensor over `dims` lies in a padded frame of one of its Dims.
  bool padding(const Dims& dims, const Index& idx) const {
    for (size_t i = 0; i < dims.size(); ++i)
      if (at(dims[i]).dynamic && idx[i] >= valid_len(dims[i], dims, idx)) return true;
    return false;
  }

  // The Dims a tensor over `dims` gains when dynamic `d` is masked: its lengths' Dims it lacks.
  Dims gained(const Dim& d, const Dims& dims) const { return without(at(d).over, dims); }

 private:
  std::vector<DimInfo> all_;
};

// ---- reference values

// One element: floats hold a value and a bound on how far dimx's may be from it; integers
// and bools an exact value. Unknown elements are never compared.
struct Val {
  double v = 0;
  double e = 0;
  int64_t i = 0;
  bool known = false;
};

struct Ref {
  Dims dims;  // the order of `vals` (row-major)
  DType dt = DType::f64;
  std::vector<Val> vals;
};

bool is_fp(DType dt) { return dt == DType::f32 || dt == DType::f64; }
bool is_int(DType dt) { return dt == DType::i32 || dt == DType::i64; }
double unit(DType dt) { return dt == DType::f32 ? 0x1p-24 : 0x1p-53; }

// v rounded to dt (IEEE round to nearest, +-inf beyond f32's range).
double in_dtype(DType dt, double v) {
  if (dt != DType::f32 || !std::isfinite(v)) return v;
  const double max = double(std::numeric_limits<float>::max());
  if (std::fabs(v) > max) return std::fabs(v) >= max + 0x1p103 ? std::copysign(INFINITY, v) : std::copysign(max, v);
  return double(float(v));
}

int64_t wrap(DType dt, uint64_t u) { return dt == DType::i32 ? int64_t(int32_t(uint32_t(u))) : int64_t(u); }

// Values out of the comfortable range of dt (or not finite) are not compared.
Val fin(Val x, DType dt) {
  const double limit = dt == DType::f32 ? 1e30 : 1e200;
  if (x.known && is_fp(dt) && (!std::isfinite(x.v) || std::fabs(x.v) + x.e > limit)) x.known = false;
  return x;
}

Val known_int(int64_t i) {
  Val r;
  r.i = i;
  r.known = true;
  return r;
}

// A float and its rounding bound; unknown where the bound itself is not a number.
Val known_float(double v, double e) {
  Val r;
  r.v = v;
  r.e = e;
  r.known = std::isfinite(e);
  return r;
}

// ---- the pool and the outcome of an op

struct Entry {
  Tensor t;
  Ref ref;
};

enum class Expect { pass, fail, either };

// The storage order of an operand's Dims (none for a scalar operand, which has no tensor).
Dims lay(const Entry& e) { return e.t.defined() ? e.t.dims() : Dims{}; }

const char* dt_name(DType dt) { return dtype_name(dt); }

class Harness {
 public:
  explicit Harness(ByteReader& r) : r_(r), trace_(std::getenv("DIMX_FUZZ_TRACE") != nullptr) {}
  void run();

 private:
  ByteReader& r_;
  World w_;
  std::vector<Entry> pool_;
  size_t next_slot_ = 0;
  std::string desc_;  // the op now running, for findings
  bool trace_;        // DIMX_FUZZ_TRACE set: each op is printed

  [[noreturn]] void fail(const std::string& what) const { finding(desc_ + ": " + what); }

  void make_world();
  void store(Tensor t, Ref ref);
  Entry& pick() { return pool_[r_.pick(pool_.size())]; }
  DType pick_dtype();
  Dims pick_dims(size_t max);
  Val random_val(DType dt);
  Val garbage(DType dt);
  void mark_padding(Ref& ref, bool keep = false) const;
  void check(const Tensor& y, const Ref& ref, const Dims* layout) const;
  template <class F>
  bool attempt(Expect ex, F&& f, Tensor& y);
  void finish(Expect ex, const std::function<Tensor()>& f, Ref ref, const Dims* layout);

  void op_create();
  void op_binary(bool with_scalar);
  void op_binary_tensors() { op_binary(false); }
  void op_binary_scalar() { op_binary(true); }
  void op_unary();
  void op_where();
  void op_reduce();
  void op_arg();
  void op_matmul();
  void op_split();
  void op_merge();
  void op_concat();
  void op_gather();
  void op_pad();
  void op_slice();
  void op_view();
  void op_astype();
};

// ---- values

Val Harness::random_val(DType dt) {
  const uint8_t b = r_.byte();
  switch (dt) {
    case DType::boolean: return known_int(b & 1);
    case DType::i32:
    case DType::i64: {
      if (b >= 250) {
        const int64_t lo = dt == DType::i32 ? std::numeric_limits<int32_t>::min() : std::numeric_limits<int64_t>::min();
        const int64_t hi = dt == DType::i32 ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int64_t>::max();
        return known_int(b & 1 ? lo : hi);
      }
      return known_int(int64_t(b % 17) - 8);
    }
    default: return known_float(double(int(b % 33) - 16) / 4, 0);  // exact in f32
  }
}

// What a padded frame holds: anything.
Val Harness::garbage(DType dt) {
  static const double floats[] = {NAN, INFINITY, -INFINITY, 1e30, -1e30, 0, 7};
  static const int64_t ints[] = {0, -1, 1000, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(), 3};
  const size_t k = r_.byte();
  Val x;
  if (is_fp(dt)) x.v = floats[k % std::size(floats)];
  else if (dt == DType::boolean) x.i = k & 1;
  else x.i = ints[k % std::size(ints)];
  return x;  // unknown
}

DType Harness::pick_dtype() {
  static const DType dts[] = {DType::f64, DType::f64, DType::f64, DType::f32, DType::f32,
                              DType::i64, DType::i64, DType::i32, DType::boolean, DType::boolean};
  return dts[r_.pick(std::size(dts))];
}

Dims Harness::pick_dims(size_t max) {
  Dims dims;
  const size_t n = r_.pick(max + 1);
  for (size_t i = 0; i < n; ++i) {
    const Dim& d = w_[r_.pick(w_.size())];
    if (!has(dims, d)) dims.push_back(d);
  }
  return dims;
}

// Elements in padded frames of ref's own Dims become unknown (what an op leaves there is
// unspecified).
void Harness::mark_padding(Ref& ref, bool keep) const {
  if (keep) return;
  const std::vector<int64_t> s = strides_in(ref.dims, ref.dims);
  for_each_index(ref.dims, [&](const Index& idx) {
    if (w_.padding(ref.dims, idx)) ref.vals[size_t(flat(s, idx))].known = false;
  });
}

void Harness::store(Tensor t, Ref ref) {
  for (Val& v : ref.vals) v = fin(v, ref.dt);
  if (pool_.size() < kPoolSize) {
    pool_.push_back({std::move(t), std::move(ref)});
  } else {
    pool_[next_slot_] = {std::move(t), std::move(ref)};
    next_slot_ = (next_slot_ + 1) % kPoolSize;
  }
}

// ---- comparing a result with its reference

// `layout`: the documented Dim order of the result, where the docs give one.
void Harness::check(const Tensor& y, const Ref& ref, const Dims* layout) const {
  if (!same_set(y.dims(), ref.dims)) fail("result Dims " + dims_str(y.dims()) + ", expected " + dims_str(ref.dims));
  if (layout && !(y.dims() == *layout)) fail("result layout " + dims_str(y.dims()) + ", expected " + dims_str(*layout));
  if (y.dtype() != ref.dt) fail(std::string("result dtype ") + dt_name(y.dtype()) + ", expected " + dt_name(ref.dt));
  for (const Dim& d : y.dims()) w_.at(d);
  const size_t n = ref.vals.size();
  if (size_t(y.numel()) != n) fail("result has " + std::to_string(y.numel()) + " elements, expected " + std::to_string(n));
  auto where = [&](size_t k) {
    std::string s = "element " + std::to_string(k) + " of " + dims_str(ref.dims);
    return s;
  };
  if (is_fp(ref.dt)) {
    const std::vector<double> got = y.to_vector<double>(ref.dims);
    for (size_t k = 0; k < n; ++k) {
      const Val& x = ref.vals[k];
      // Finite values near the dtype's overflow are not compared; infinities (the max of
      // nothing, IEEE overflow of exact inputs) are, exactly.
      if (!x.known || (std::isfinite(x.v) && !fin(x, ref.dt).known)) continue;
      // Inexact values may round to a subnormal: a bound relative to the value misses that step.
      const double step = x.e == 0 ? 0 : ref.dt == DType::f32 ? 0x1p-148 : 0x1p-1073;
      const bool ok = std::isfinite(x.v) ? std::fabs(got[k] - x.v) <= 2 * x.e + step
                                         : (std::isnan(x.v) ? std::isnan(got[k]) : got[k] == x.v);
      if (!ok) {
        char buf[160];
        std::snprintf(buf, sizeof buf, ": got %.17g, expected %.17g (rounding bound %.3g)", got[k], x.v, x.e);
        fail(where(k) + buf);
      }
    }
  } else if (is_int(ref.dt)) {
    const std::vector<int64_t> got = y.to_vector<int64_t>(ref.dims);
    for (size_t k = 0; k < n; ++k)
      if (ref.vals[k].known && got[k] != ref.vals[k].i)
        fail(where(k) + ": got " + std::to_string(got[k]) + ", expected " + std::to_string(ref.vals[k].i));
  } else {
    const std::vector<bool> got = y.to_vector<bool>(ref.dims);
    for (size_t k = 0; k < n; ++k)
      if (ref.vals[k].known && got[k] != (ref.vals[k].i != 0))
        fail(where(k) + ": got " + std::to_string(got[k]) + ", expected " + std::to_string(ref.vals[k].i));
  }
}

// Runs f; the outcome must agree with `ex`. True when f returned a tensor (put in y).
template <class F>
bool Harness::attempt(Expect ex, F&& f, Tensor& y) {
  std::string msg;
  const bool ok = dimx_fuzz::run_guarded(desc_.c_str(), [&] { y = f(); }, &msg);
  if (ok && ex == Expect::fail) fail("no error, but the documented rules refuse this");
  if (!ok && ex == Expect::pass) fail("unexpected dimx::Error: " + msg);
  return ok;
}

// The common tail of an op: run, compare with the reference when it succeeded, keep the result.
void Harness::finish(Expect ex, const std::function<Tensor()>& f, Ref ref, const Dims* layout) {
  Tensor y;
  if (!attempt(ex, f, y) || ex == Expect::fail) return;
  check(y, ref, layout);
  store(y, std::move(ref));
}

// ---- the world and tensor creation

void Harness::make_world() {
  const uint8_t b0 = r_.byte();
  Dim batch(b0 % 8 == 0 ? 0 : 1 + b0 % 3, "batch");
  Dim s(r_.range(0, 4), "s"), f(r_.range(1, 4), "f"), g(r_.range(1, 3), "g");
  for (const Dim& d : {batch, s, f, g}) w_.add_static(d);
  auto dynamic = [&](const Dim& over, int64_t max, const char* name) {
    std::vector<int64_t> lens(size_t(over.extent()));
    std::vector<int32_t> l32;
    for (int64_t& l : lens) {
      l = r_.range(0, max);
      l32.push_back(int32_t(l));
    }
    Dim d(Tensor::from_vector<int32_t>({over}, l32), name);
    w_.add_dynamic(d, {over}, lens);
  };
  dynamic(batch, 4, "time");
  dynamic(batch, 3, "frames");
  dynamic(s, 3, "keys");  // lengths over another static Dim (a causal key Dim over queries)
}

// A tensor holding ref's values (garbage included), row-major over ref.dims.
template <class T>
Tensor values_of(const Ref& ref) {
  std::vector<T> v;
  for (const Val& x : ref.vals) {
    if constexpr (std::is_floating_point_v<T>) v.push_back(T(in_dtype(dtype_of<T>(), x.v)));
    else v.push_back(T(x.i));
  }
  return Tensor::from_vector<T>(ref.dims, v);
}

Tensor tensor_of(const Ref& ref) {
  switch (ref.dt) {
    case DType::f64: return values_of<double>(ref);
    case DType::f32: return values_of<float>(ref);
    case DType::i64: return values_of<int64_t>(ref);
    case DType::i32: return values_of<int32_t>(ref);
    default: return values_of<bool>(ref);
  }
}

void Harness::op_create() {
  Ref ref;
  ref.dims = pick_dims(3);
  ref.dt = pick_dtype();
  if (space_size(ref.dims) > kMaxNumel) ref.dims.clear();
  desc_ = "create " + dims_str(ref.dims);
  ref.vals.resize(size_t(space_size(ref.dims)));
  size_t k = 0;
  for_each_index(ref.dims, [&](const Index& idx) {
    ref.vals[k++] = w_.padding(ref.dims, idx) ? garbage(ref.dt) : random_val(ref.dt);
  });
  Tensor t = tensor_of(ref);
  store(t, std::move(ref));
}

// ---- elementwise

bool is_comparison(BinaryOp op) { return op >= BinaryOp::equal; }
bool is_logical(BinaryOp op) { return op >= BinaryOp::logical_and; }

// Floats. Exact inputs take IEEE arithmetic in dt (what dimx must give bit for bit); inexact
// ones a bound that grows with the inputs' bounds.
Val float_binary(BinaryOp op, DType dt, const Val& a, const Val& b) {
  if (!a.known || !b.known) return {};
  const bool exact = a.e == 0 && b.e == 0;
  const double u = unit(dt);
  const double x = a.v, y = b.v;
  auto in_dt = [&](double v) { return in_dtype(dt, v); };
  auto ieee = [&](double p, double q) -> double {  // p op q rounded once in dt
    if (dt == DType::f32) {
      const float fp = float(p), fq = float(q);
      switch (op) {
        case BinaryOp::add: return fp + fq;
        case BinaryOp::sub: return fp - fq;
        case BinaryOp::mul: return fp * fq;
        default: return fp / fq;
      }
    }
    switch (op) {
      case BinaryOp::add: return p + q;
      case BinaryOp::sub: return p - q;
      case BinaryOp::mul: return p * q;
      default: return p / q;
    }
  };
  switch (op) {
    case BinaryOp::add:
    case BinaryOp::sub:
    case BinaryOp::mul:
    case BinaryOp::div: {
      if (op == BinaryOp::div && (y == 0 || std::fabs(y) <= 2 * b.e)) return {};
      if (exact) return known_float(ieee(x, y), 0);
      double v, e;
      switch (op) {
        case BinaryOp::add: v = x + y; e = a.e + b.e; break;
        case BinaryOp::sub: v = x - y; e = a.e + b.e; break;
        case BinaryOp::mul: v = x * y; e = std::fabs(x) * b.e + std::fabs(y) * a.e + a.e * b.e; break;
        default: v = x / y; e = (a.e + std::fabs(v) * b.e) / (std::fabs(y) - b.e); break;
      }
      return known_float(v, e + 4 * u * (std::fabs(x) + std::fabs(y) + std::fabs(v)));
    }
    case BinaryOp::floordiv:
    case BinaryOp::mod: {
      if (!exact || y == 0) return {};
      const double q = std::floor(ieee(x, y));  // ieee() with op div
      if (op == BinaryOp::floordiv) return known_float(q, 0);
      const double v = in_dt(x - in_dt(q * y));
      return known_float(v, 2 * u * (std::fabs(x) + std::fabs(q * y)));
    }
    case BinaryOp::pow: {
      if (!exact) return {};
      // exp(y log x): the error grows with |y log x|.
      const double v = std::pow(x, y);
      const double growth = x == 0 ? 0 : std::fabs(y * std::log(std::fabs(x)));
      return known_float(v, 16 * u * std::fabs(v) * (1 + growth));
    }
    case BinaryOp::maximum: return known_float(std::max(x, y), std::max(a.e, b.e));
    case BinaryOp::minimum: return known_float(std::min(x, y), std::max(a.e, b.e));
    default: break;
  }
  // Comparisons: decided where the values are apart by more than their bounds.
  if (!exact && std::fabs(x - y) <= a.e + b.e) return {};
  switch (op) {
    case BinaryOp::equal: return known_int(x == y);
    case BinaryOp::not_equal: return known_int(x != y);
    case BinaryOp::less: return known_int(x < y);
    case BinaryOp::less_equal: return known_int(x <= y);
    case BinaryOp::greater: return known_int(x > y);
    default: return known_int(x >= y);
  }
}

// Integers wrap in two's complement; floordiv and mod of the minimum by -1 wrap too.
int64_t int_pow(DType dt, int64_t a, int64_t e) {
  if (e < 0) return a == 1 ? 1 : a == -1 ? ((e & 1) ? -1 : 1) : 0;
  uint64_t r = 1, base = uint64_t(a);
  while (e) {
    if (e & 1) r = uint64_t(wrap(dt, r * base));
    base = uint64_t(wrap(dt, base * base));
    e >>= 1;
  }
  return wrap(dt, r);
}

Val int_binary(BinaryOp op, DType dt, const Val& a, const Val& b) {
  if (!a.known || !b.known) return {};
  const int64_t x = a.i, y = b.i;
  const uint64_t ux = uint64_t(x), uy = uint64_t(y);
  switch (op) {
    case BinaryOp::add: return known_int(wrap(dt, ux + uy));
    case BinaryOp::sub: return known_int(wrap(dt, ux - uy));
    case BinaryOp::mul: return known_int(wrap(dt, ux * uy));
    case BinaryOp::floordiv: {
      if (y == 0) return {};
      if (y == -1) return known_int(wrap(dt, uint64_t(0) - ux));
      int64_t q = x / y;
      if (x % y != 0 && ((x < 0) != (y < 0))) --q;
      return known_int(q);
    }
    case BinaryOp::mod: {
      if (y == 0) return {};
      if (y == -1) return known_int(0);
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return known_int(m);
    }
    case BinaryOp::pow: return known_int(int_pow(dt, x, y));
    case BinaryOp::maximum: return known_int(std::max(x, y));
    case BinaryOp::minimum: return known_int(std::min(x, y));
    case BinaryOp::equal: return known_int(x == y);
    case BinaryOp::not_equal: return known_int(x != y);
    case BinaryOp::less: return known_int(x < y);
    case BinaryOp::less_equal: return known_int(x <= y);
    case BinaryOp::greater: return known_int(x > y);
    case BinaryOp::greater_equal: return known_int(x >= y);
    case BinaryOp::logical_and: return known_int(x && y);
    case BinaryOp::logical_or: return known_int(x || y);
    default: return known_int(bool(x) != bool(y));
  }
}

// The documented dtype rules of combine(): "" if allowed, else why not.
std::string binary_refusal(BinaryOp op, DType da, DType db) {
  if (da != db) return "dtype mismatch";
  if (is_logical(op) && da != DType::boolean) return "logical op on non-bool";
  if (!is_comparison(op) && da == DType::boolean) return "arithmetic on bool";
  if (op == BinaryOp::div && is_int(da)) return "integer div";
  return "";
}

// The output Dims of an elementwise op: the Dims of the first operand that has them all; else
// their union where allowed (nullopt: refused).
std::optional<Dims> elementwise_dims(const std::vector<const Dims*>& ops, bool allow) {
  Dims all;
  for (const Dims* d : ops) all = joined(all, *d);
  for (const Dims* d : ops)
    if (subset(all, *d)) return *d;
  if (!allow) return std::nullopt;
  return all;
}

// A scalar as an operand: a tensor without Dims, and its reference.
Entry scalar_entry(double s, DType dt) {
  Entry e;
  e.ref.dt = dt;
  Val v;
  if (is_fp(dt)) v = known_float(in_dtype(dt, s), 0);
  else v = known_int(int64_t(s));
  e.ref.vals = {v};
  return e;
}

bool representable(double s, DType dt) {
  switch (dt) {
    case DType::i32: return s == std::floor(s) && s >= -2147483648.0 && s <= 2147483647.0;
    case DType::i64: return s == std::floor(s) && s >= -9223372036854775808.0 && s < 9223372036854775808.0;
    case DType::boolean: return s == 0 || s == 1;
    default: return true;
  }
}

void Harness::op_binary(bool with_scalar) {
  static const double scalars[] = {0, 1, -1, 2, -3, 0.5, 2.5, -0.25, 1e10, 3e9, 4};
  const BinaryOp op = BinaryOp(r_.pick(size_t(BinaryOp::logical_xor) + 1));
  const Entry& a0 = pick();
  const bool allow = r_.pick(4) == 0;
  const bool scalar_left = with_scalar && r_.flag();
  const double s = scalars[r_.pick(std::size(scalars))];
  Entry a = a0, b;
  if (with_scalar) {
    b = scalar_entry(s, a0.ref.dt);
    if (scalar_left) std::swap(a, b);
  } else {
    b = pick();
  }
  desc_ = std::string(op_name(op)) + "(" + (with_scalar && scalar_left ? std::to_string(s) : a.t.str()) + ", " +
          (with_scalar && !scalar_left ? std::to_string(s) : b.t.str()) + ")";
  const DType dt = a.ref.dt;
  std::string refusal = binary_refusal(op, a.ref.dt, b.ref.dt);
  if (with_scalar && !representable(s, a0.ref.dt)) refusal = "scalar not representable";
  const Dims la = lay(a), lb = lay(b);
  const std::optional<Dims> out = elementwise_dims({&la, &lb}, allow || with_scalar);
  if (!out) refusal = "no operand has all Dims";
  auto run = [&, op, allow, s, scalar_left]() -> Tensor {
    if (!with_scalar) return combine(a.t, op, b.t, allow);
    return scalar_left ? combine(s, op, a0.t) : combine(a0.t, op, s);
  };
  if (!refusal.empty()) return finish(Expect::fail, run, {}, nullptr);
  if (space_size(*out) > kMaxSpace) return;

  // Integer division: refused for a zero divisor in a valid frame; zeros in padded frames are
  // padding content and must not matter.
  Expect ex = Expect::pass;
  if (is_int(dt) && (op == BinaryOp::floordiv || op == BinaryOp::mod)) {
    const std::vector<int64_t> bs = strides_in(b.ref.dims, b.ref.dims);
    for_each_index(b.ref.dims, [&](const Index& idx) {
      const Val& v = b.ref.vals[size_t(flat(bs, idx))];
      if (w_.padding(b.ref.dims, idx)) return;
      if (!v.known && ex == Expect::pass) ex = Expect::either;
      if (v.known && v.i == 0) ex = Expect::fail;
    });
    if (ex == Expect::fail) return finish(ex, run, {}, nullptr);
  }
  Ref ref;
  ref.dims = *out;
  ref.dt = is_comparison(op) ? DType::boolean : dt;
  const std::vector<int64_t> sa = strides_in(a.ref.dims, *out), sb = strides_in(b.ref.dims, *out);
  for_each_index(*out, [&](const Index& idx) {
    const Val& x = a.ref.vals[size_t(flat(sa, idx))];
    const Val& y = b.ref.vals[size_t(flat(sb, idx))];
    ref.vals.push_back(is_fp(dt) ? float_binary(op, dt, x, y) : int_binary(op, dt, x, y));
  });
  mark_padding(ref);
  finish(ex, run, std::move(ref), &*out);
}

Val float_unary(UnaryOp op, DType dt, const Val& a) {
  if (!a.known) return {};
  const double x = a.v, e = a.e, u = unit(dt);
  const double c = 128 * u;  // library functions (xsimd's erf in f64 is off by ~25 ulps)
  auto near = [&](double edge) { return e > 0 && std::fabs(x - edge) <= e; };
  auto step = [&](double v) -> Val { return known_float(v, 0); };
  switch (op) {
    case UnaryOp::neg: return known_float(-x, e);
    case UnaryOp::abs: return known_float(std::fabs(x), e);
    case UnaryOp::sign: return near(0) ? Val{} : step(x > 0 ? 1 : x < 0 ? -1 : 0);
    case UnaryOp::square: {
      if (e == 0) return known_float(in_dtype(dt, x * x), 0);
      return known_float(x * x, 2 * std::fabs(x) * e + e * e + 4 * u * x * x);
    }
    case UnaryOp::sqrt:
    case UnaryOp::rsqrt: {
      if (x - 2 * e <= 0) return {};
      const double v = op == UnaryOp::sqrt ? std::sqrt(x) : 1 / std::sqrt(x);
      const double d = op == UnaryOp::sqrt ? 1 / (2 * std::sqrt(x - e)) : 0.5 / std::pow(x - e, 1.5);
      return known_float(v, d * e + c * std::fabs(v));
    }
    case UnaryOp::reciprocal: {
      if (std::fabs(x) <= 2 * e || x == 0) return {};
      const double v = 1 / x;
      return known_float(v, e / ((std::fabs(x) - e) * (std::fabs(x) - e)) + c * std::fabs(v));
    }
    case UnaryOp::exp:
    case UnaryOp::expm1: {
      const double v = op == UnaryOp::exp ? std::exp(x) : std::expm1(x);
      return known_float(v, std::exp(x) * std::expm1(e) + c * (std::fabs(v) + 1e-30));
    }
    case UnaryOp::log:
    case UnaryOp::log1p: {
      const double arg = op == UnaryOp::log ? x : 1 + x;
      if (arg - 2 * e <= 0) return {};
      const double v = op == UnaryOp::log ? std::log(x) : std::log1p(x);
      return known_float(v, e / (arg - e) + c * (std::fabs(v) + 1));
    }
    case UnaryOp::sin: return known_float(std::sin(x), e + c * (std::fabs(x) + 1));
    case UnaryOp::cos: return known_float(std::cos(x), e + c * (std::fabs(x) + 1));
    case UnaryOp::tanh: return known_float(std::tanh(x), e + c);
    case UnaryOp::sigmoid: return known_float(1 / (1 + std::exp(-x)), e / 4 + c);
    case UnaryOp::relu: return known_float(std::max(x, 0.0), e);
    case UnaryOp::gelu: return known_float(0.5 * x * (1 + std::erf(x / std::sqrt(2.0))), 1.2 * e + c * (std::fabs(x) + 1));
    case UnaryOp::silu: return known_float(x / (1 + std::exp(-x)), 1.1 * e + c * (std::fabs(x) + 1));
    case UnaryOp::softplus: return known_float(std::log1p(std::exp(-std::fabs(x))) + std::max(x, 0.0), e + c * (std::fabs(x) + 1));
    case UnaryOp::erf: return known_float(std::erf(x), 1.2 * e + c);
    case UnaryOp::floor: return near(std::floor(x)) || near(std::floor(x) + 1) ? Val{} : step(std::floor(x));
    case UnaryOp::ceil: return near(std::ceil(x)) || near(std::ceil(x) - 1) ? Val{} : step(std::ceil(x));
    case UnaryOp::round: return near(std::floor(x) + 0.5) || near(std::floor(x) - 0.5) ? Val{} : step(std::nearbyint(x));
    default: break;
  }
  return {};
}

void Harness::op_unary() {
  const UnaryOp op = UnaryOp(r_.pick(size_t(UnaryOp::isnan) + 1));
  const Entry& x = pick();
  desc_ = std::string(op_name(op)) + "(" + x.t.str() + ")";
  const DType dt = x.ref.dt;
  auto run = [&, op] { return apply(op, x.t); };
  const bool int_ok = op == UnaryOp::neg || op == UnaryOp::abs || op == UnaryOp::sign || op == UnaryOp::square;
  bool refused = false;
  if (op != UnaryOp::isnan) {
    if ((op == UnaryOp::logical_not) != (dt == DType::boolean)) refused = true;
    else if (!is_fp(dt) && !int_ok && op != UnaryOp::logical_not) refused = true;
  }
  if (refused) return finish(Expect::fail, run, {}, nullptr);
  Ref ref;
  ref.dims = x.ref.dims;
  ref.dt = op == UnaryOp::isnan ? DType::boolean : dt;
  for (const Val& a : x.ref.vals) {
    if (op == UnaryOp::isnan) {
      ref.vals.push_back(a.known ? known_int(is_fp(dt) ? std::isnan(a.v) : 0) : Val{});
    } else if (is_fp(dt)) {
      ref.vals.push_back(float_unary(op, dt, a));
    } else if (!a.known) {
      ref.vals.push_back({});
    } else {
      const uint64_t u = uint64_t(a.i);
      switch (op) {
        case UnaryOp::neg: ref.vals.push_back(known_int(wrap(dt, uint64_t(0) - u))); break;
        case UnaryOp::abs: ref.vals.push_back(known_int(a.i < 0 ? wrap(dt, uint64_t(0) - u) : a.i)); break;
        case UnaryOp::sign: ref.vals.push_back(known_int(a.i > 0 ? 1 : a.i < 0 ? -1 : 0)); break;
        case UnaryOp::square: ref.vals.push_back(known_int(wrap(dt, u * u))); break;
        default: ref.vals.push_back(known_int(!a.i)); break;  // logical_not
      }
    }
  }
  mark_padding(ref);
  finish(Expect::pass, run, std::move(ref), &x.t.dims());
}

void Harness::op_where() {
  const Entry& c = pick();
  const Entry& a = pick();
  const bool scalar_b = r_.flag();
  const bool allow = r_.pick(4) == 0;
  const Entry b = scalar_b ? scalar_entry(0, a.ref.dt) : pick();
  desc_ = "where(" + c.t.str() + ", " + a.t.str() + ", " + (scalar_b ? std::string("0") : b.t.str()) + ")";
  auto run = [&, scalar_b, allow]() -> Tensor {
    return scalar_b ? where(c.t, a.t, 0.0, allow) : where(c.t, a.t, b.t, allow);
  };
  const Dims la = lay(a), lb = lay(b), lc = lay(c);
  const std::optional<Dims> out = elementwise_dims({&la, &lb, &lc}, allow);
  if (c.ref.dt != DType::boolean || a.ref.dt != b.ref.dt || !out) return finish(Expect::fail, run, {}, nullptr);
  if (space_size(*out) > kMaxSpace) return;
  Ref ref;
  ref.dims = *out;
  ref.dt = a.ref.dt;
  const std::vector<int64_t> sc = strides_in(c.ref.dims, *out), sa = strides_in(a.ref.dims, *out),
                             sb = strides_in(b.ref.dims, *out);
  for_each_index(*out, [&](const Index& idx) {
    const Val& cv = c.ref.vals[size_t(flat(sc, idx))];
    ref.vals.push_back(!cv.known ? Val{} : cv.i ? a.ref.vals[size_t(flat(sa, idx))] : b.ref.vals[size_t(flat(sb, idx))]);
  });
  mark_padding(ref);
  finish(Expect::pass, run, std::move(ref), &*out);
}

// ---- reductions

// Picks Dims of x by the bits of one byte; sometimes one x lacks or a repeated one.
Dims pick_subset(ByteReader& r, const World& w, const Dims& dims) {
  const uint8_t bits = r.byte();
  Dims out;
  for (size_t i = 0; i < dims.size(); ++i)
    if (bits & (1u << i)) out.push_back(dims[i]);
  if ((bits & 0xc0) == 0xc0) out.push_back(w[r.pick(w.size())]);  // maybe foreign or repeated
  return out;
}

bool unique(const Dims& dims) {
  for (size_t i = 0; i < dims.size(); ++i)
    for (size_t j = i + 1; j < dims.size(); ++j)
      if (dims[i] == dims[j]) return false;
  return true;
}

// Dynamic Dims of x that stay but whose sequences run over reduced Dims (time, with lengths
// over batch, when batch is reduced): their padded frames are left out too.
Dims padded_across(const World& w, const Dims& x, const Dims& reduced) {
  Dims out;
  for (const Dim& d : x) {
    const DimInfo& info = w.at(d);
    if (!info.dynamic || has(reduced, d) || !subset(info.over, x)) continue;
    if (std::any_of(info.over.begin(), info.over.end(), [&](const Dim& o) { return has(reduced, o); })) out.push_back(d);
  }
  return out;
}

void Harness::op_reduce() {
  const ReduceOp op = ReduceOp(r_.pick(size_t(ReduceOp::all) + 1));
  const Entry& x = pick();
  const Dims dims = pick_subset(r_, w_, x.ref.dims);
  const bool use_mask = r_.pick(5) != 0;
  desc_ = std::string("reduce op ") + std::to_string(int(op)) + " of " + x.t.str() + " over " + dims_str(dims) +
          (use_mask ? "" : " (use_mask=false)");
  auto run = [&, op, use_mask] { return reduce(x.t, op, dims, use_mask); };
  const DType dt = x.ref.dt;
  const bool dtype_ok = op == ReduceOp::any || op == ReduceOp::all ? dt == DType::boolean
                        : op == ReduceOp::mean || op == ReduceOp::logsumexp ? is_fp(dt)
                                                                            : dt != DType::boolean;
  if (!unique(dims) || !subset(dims, x.ref.dims) || !dtype_ok)
    return finish(Expect::fail, run, {}, nullptr);

  // Masked Dims: the reduced dynamic ones and those padded across; the result gains the Dims
  // the reduced ones' lengths run over that x lacks.
  Dims masked, gained;
  if (use_mask) {
    for (const Dim& d : dims)
      if (w_.at(d).dynamic) {
        masked.push_back(d);
        gained = joined(gained, w_.gained(d, x.ref.dims));
      }
    masked = joined(masked, padded_across(w_, x.ref.dims, dims));
  }
  const Dims kept = joined(without(x.ref.dims, dims), gained);
  const Dims space = joined(kept, dims);
  if (space_size(space) > kMaxSpace) return;
  Ref ref;
  ref.dims = kept;
  ref.dt = dt;
  const std::vector<int64_t> sx = strides_in(x.ref.dims, space);
  const double u = is_fp(dt) ? unit(dt) : 0;
  for_each_index(kept, [&](const Index& o) {
    Index idx = o;
    idx.resize(space.size(), 0);
    std::vector<const Val*> in;
    for_each_index(dims, [&](const Index& rdx) {
      std::copy(rdx.begin(), rdx.end(), idx.begin() + long(kept.size()));
      for (const Dim& d : masked)
        if (idx[position(space, d)] >= w_.valid_len(d, space, idx)) return;
      in.push_back(&x.ref.vals[size_t(flat(sx, idx))]);
    });
    const bool known = std::all_of(in.begin(), in.end(), [](const Val* v) { return v->known; });
    if (!known) return ref.vals.push_back({});
    if (!is_fp(dt)) {
      int64_t acc = op == ReduceOp::max ? (dt == DType::i32 ? std::numeric_limits<int32_t>::min() : std::numeric_limits<int64_t>::min())
                    : op == ReduceOp::min ? (dt == DType::i32 ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int64_t>::max())
                    : op == ReduceOp::all ? 1 : 0;
      for (const Val* v : in) {
        switch (op) {
          case ReduceOp::sum: acc = wrap(dt, uint64_t(acc) + uint64_t(v->i)); break;
          case ReduceOp::max: acc = std::max(acc, v->i); break;
          case ReduceOp::min: acc = std::min(acc, v->i); break;
          case ReduceOp::any: acc = acc || v->i; break;
          default: acc = acc && v->i; break;
        }
      }
      return ref.vals.push_back(known_int(acc));
    }
    double sum = 0, mag = 0, err = 0, mx = -INFINITY, mn = INFINITY;
    for (const Val* v : in) {
      sum += v->v;
      mag += std::fabs(v->v);
      err += v->e;
      mx = std::max(mx, v->v);
      mn = std::min(mn, v->v);
    }
    double emax = 0;
    for (const Val* v : in) emax = std::max(emax, v->e);
    const double n = double(in.size());
    const double round = 2 * n * u * mag;
    switch (op) {
      case ReduceOp::sum: return ref.vals.push_back(known_float(sum, err + round));
      case ReduceOp::mean: {
        const double c = std::max(n, 1.0);
        return ref.vals.push_back(known_float(sum / c, (err + round) / c + 2 * u * std::fabs(sum / c)));
      }
      case ReduceOp::max: return ref.vals.push_back(known_float(mx, emax));
      case ReduceOp::min: return ref.vals.push_back(known_float(mn, emax));
      default: {  // logsumexp
        if (in.empty()) return ref.vals.push_back(known_float(-INFINITY, 0));
        double s = 0;
        for (const Val* v : in) s += std::exp(v->v - mx);
        const double lse = mx + std::log(s);
        return ref.vals.push_back(known_float(lse, emax + 16 * u * (std::fabs(lse) + std::log(n + 1) + 1)));
      }
    }
  });
  mark_padding(ref);
  Tensor y;
  if (!attempt(Expect::pass, run, y)) return;
  // x's remaining Dims keep their order; gained ones go anywhere.
  Dims order;
  for (const Dim& d : y.dims())
    if (has(x.ref.dims, d)) order.push_back(d);
  if (!(order == without(x.t.dims(), dims))) fail("the remaining Dims changed order: " + dims_str(y.dims()));
  check(y, ref, nullptr);
  store(y, std::move(ref));
}

void Harness::op_arg() {
  const bool is_max = r_.flag();
  const Entry& x = pick();
  const Dim axis = r_.pick(4) == 0 || x.ref.dims.empty() ? w_[r_.pick(w_.size())] : x.ref.dims[r_.pick(x.ref.dims.size())];
  const bool use_mask = r_.pick(5) != 0;
  desc_ = std::string(is_max ? "reduce_argmax(" : "reduce_argmin(") + x.t.str() + ", " + axis.str() + ")";
  auto run = [&, is_max, use_mask] { return is_max ? reduce_argmax(x.t, axis, use_mask) : reduce_argmin(x.t, axis, use_mask); };
  if (!has(x.ref.dims, axis) || x.ref.dt == DType::boolean) return finish(Expect::fail, run, {}, nullptr);
  const bool masked = use_mask && w_.at(axis).dynamic;
  const Dims kept = joined(without(x.ref.dims, {axis}), masked ? w_.gained(axis, x.ref.dims) : Dims{});
  const Dims space = joined(kept, {axis});
  if (space_size(space) > kMaxSpace) return;
  Ref ref;
  ref.dims = kept;
  ref.dt = DType::i64;
  const std::vector<int64_t> sx = strides_in(x.ref.dims, space);
  const size_t ax = kept.size();
  for_each_index(kept, [&](const Index& o) {
    Index idx = o;
    idx.push_back(0);
    const int64_t n = masked ? std::min(axis.extent(), w_.valid_len(axis, space, idx)) : axis.extent();
    std::vector<const Val*> in;
    for (int64_t t = 0; t < n; ++t) {
      idx[ax] = t;
      in.push_back(&x.ref.vals[size_t(flat(sx, idx))]);
    }
    if (!std::all_of(in.begin(), in.end(), [](const Val* v) { return v->known; })) return ref.vals.push_back({});
    if (in.empty()) return ref.vals.push_back(known_int(0));
    // The first best; undecided where another is within the rounding bounds.
    auto better = [&](const Val* a, const Val* b) {
      const double va = is_fp(x.ref.dt) ? a->v : double(a->i), vb = is_fp(x.ref.dt) ? b->v : double(b->i);
      return is_max ? va > vb : va < vb;
    };
    size_t best = 0;
    for (size_t i = 1; i < in.size(); ++i)
      if (is_fp(x.ref.dt) ? better(in[i], in[best]) : (is_max ? in[i]->i > in[best]->i : in[i]->i < in[best]->i)) best = i;
    if (is_fp(x.ref.dt))
      for (size_t i = 0; i < in.size(); ++i)
        if (i != best && (in[i]->e > 0 || in[best]->e > 0) && std::fabs(in[i]->v - in[best]->v) <= in[i]->e + in[best]->e)
          return ref.vals.push_back({});
    ref.vals.push_back(known_int(int64_t(best)));
  });
  mark_padding(ref);
  finish(Expect::pass, run, std::move(ref), nullptr);
}

// ---- matmul

void Harness::op_matmul() {
  const Entry& a = pick();
  const Entry& b = pick();
  Dims common;
  for (const Dim& d : a.ref.dims)
    if (has(b.ref.dims, d)) common.push_back(d);
  const Dims reduce = pick_subset(r_, w_, common);
  const bool use_mask = r_.pick(6) != 0;
  desc_ = "matmul(" + a.t.str() + ", " + b.t.str() + ", " + dims_str(reduce) + (use_mask ? ")" : ", use_mask=false)");
  auto run = [&, use_mask] { return matmul(a.t, b.t, reduce, use_mask); };
  if (!unique(reduce) || !subset(reduce, a.ref.dims) || !subset(reduce, b.ref.dims) || a.ref.dt != b.ref.dt ||
      !is_fp(a.ref.dt))
    return finish(Expect::fail, run, {}, nullptr);
  Dims batch, own_a, own_b;
  for (const Dim& d : a.ref.dims)
    if (!has(reduce, d)) (has(b.ref.dims, d) ? batch : own_a).push_back(d);
  for (const Dim& d : b.ref.dims)
    if (!has(reduce, d) && !has(a.ref.dims, d)) own_b.push_back(d);
  const Dims out = joined(joined(batch, own_a), own_b);
  const Dims space = joined(out, reduce);
  // Layout: batch Dims in a's order, then a's own, then b's own, each in storage order.
  Dims layout;
  for (const Dim& d : a.t.dims())
    if (has(batch, d)) layout.push_back(d);
  for (const Dim& d : a.t.dims())
    if (has(own_a, d)) layout.push_back(d);
  for (const Dim& d : b.t.dims())
    if (has(own_b, d)) layout.push_back(d);
  if (space_size(space) > kMaxSpace) return;

  // Masked Dims: padded frames of each are zeroed in an operand, by its own view of them.
  Dims masked;
  if (use_mask) {
    for (const Dim& d : reduce)
      if (w_.at(d).dynamic) masked.push_back(d);
    masked = joined(masked, padded_across(w_, a.ref.dims, reduce));
    masked = joined(masked, padded_across(w_, b.ref.dims, reduce));
  }
  // Element of operand `e` at the full index, after zeroing its padded frames.
  auto operand = [&](const Entry& e, const std::vector<int64_t>& st, const Index& idx) -> Val {
    for (const Dim& d : masked) {
      if (!has(e.ref.dims, d)) continue;
      Index own(e.ref.dims.size());
      for (size_t i = 0; i < own.size(); ++i) own[i] = idx[position(space, e.ref.dims[i])];
      if (idx[position(space, d)] >= w_.valid_len(d, e.ref.dims, own)) return known_float(0, 0);
    }
    return e.ref.vals[size_t(flat(st, idx))];
  };
  const std::vector<int64_t> sa = strides_in(a.ref.dims, space), sb = strides_in(b.ref.dims, space);
  const double u = unit(a.ref.dt);
  Ref ref;
  ref.dims = out;
  ref.dt = a.ref.dt;
  for_each_index(out, [&](const Index& o) {
    Index idx = o;
    idx.resize(space.size(), 0);
    double sum = 0, mag = 0, err = 0, n = 0;
    bool known = true;
    for_each_index(reduce, [&](const Index& k) {
      std::copy(k.begin(), k.end(), idx.begin() + long(out.size()));
      const Val x = operand(a, sa, idx), y = operand(b, sb, idx);
      known = known && x.known && y.known;
      sum += x.v * y.v;
      mag += std::fabs(x.v * y.v);
      err += std::fabs(x.v) * y.e + std::fabs(y.v) * x.e + x.e * y.e;
      n += 1;
    });
    ref.vals.push_back(known ? known_float(sum, err + 2 * (n + 1) * u * mag) : Val{});
  });
  mark_padding(ref);
  finish(Expect::pass, run, std::move(ref), &layout);
}

// ---- shape ops

void Harness::op_split() {
  const Entry& x = pick();
  if (x.ref.dims.empty()) return;
  const Dim axis = r_.pick(8) == 0 ? w_[r_.pick(w_.size())] : x.ref.dims[r_.pick(x.ref.dims.size())];
  const int64_t ext = axis.extent();
  // Mostly a factorization of the extent; sometimes not, or with a Dim x has.
  Dims parts;
  const uint8_t how = r_.byte();
  int64_t f = 1;
  for (int64_t c = 1 + int64_t(how % 4); c <= ext; ++c)
    if (ext % c == 0) {
      f = c;
      break;
    }
  if (how % 16 == 15) {
    parts = {Dim(ext + 1, "bad")};
  } else if (how % 16 == 14) {
    parts = {x.ref.dims[r_.pick(x.ref.dims.size())], Dim(1, "one")};
  } else if (ext == 0) {
    parts = {Dim(0, "p0"), Dim(r_.range(0, 3), "p1")};
  } else {
    parts = {Dim(f, "p0"), Dim(ext / f, "p1")};
    if (how & 0x80) parts.push_back(Dim(1, "p2"));
  }
  desc_ = "split_dims(" + x.t.str() + ", " + axis.str() + ", " + dims_str(parts) + ")";
  auto run = [&] { return split_dims(x.t, axis, parts); };
  int64_t prod = 1;
  bool ok = has(x.ref.dims, axis) && unique(parts);
  for (const Dim& d : parts) {
    prod *= d.extent();
    if (!w_.knows(d)) w_.add_static(d);
    if (w_.at(d).dynamic || (d != axis && has(x.ref.dims, d))) ok = false;
  }
  if (!ok || prod != ext) return finish(Expect::fail, run, {}, nullptr);
  Ref ref;
  ref.dt = x.ref.dt;
  for (const Dim& d : x.ref.dims) {
    if (d == axis) ref.dims.insert(ref.dims.end(), parts.begin(), parts.end());
    else ref.dims.push_back(d);
  }
  // Element (.., p0, p1, .., ..) is x's (.., p0 * |p1| * .. + p1 * .. , ..): the same row-major
  // order, so the values are x's as they are.
  ref.vals = x.ref.vals;
  mark_padding(ref);
  Dims layout;
  for (const Dim& d : x.t.dims()) {
    if (d == axis) layout.insert(layout.end(), parts.begin(), parts.end());
    else layout.push_back(d);
  }
  finish(Expect::pass, run, std::move(ref), &layout);
}

void Harness::op_merge() {
  const Entry& x = pick();
  Dims dims = pick_subset(r_, w_, x.ref.dims);
  if (dims.size() >= 2 && r_.flag()) std::swap(dims[0], dims[1]);
  const uint8_t how = r_.byte();
  int64_t prod = 1;
  for (const Dim& d : dims) prod *= d.extent();
  std::optional<Dim> out;
  if (how % 4 == 1) out = Dim(prod, "merged");
  else if (how % 4 == 2) out = Dim(prod + 1, "wrong");
  else if (how % 4 == 3 && !dims.empty()) out = dims[0];
  desc_ = "merge_dims(" + x.t.str() + ", " + dims_str(dims) + ")";
  auto run = [&] { return merge_dims(x.t, dims, out).first; };
  bool ok = !dims.empty() && unique(dims) && subset(dims, x.ref.dims);
  for (const Dim& d : dims) ok = ok && !w_.at(d).dynamic;
  if (out) {
    w_.add_static(*out);
    ok = ok && out->extent() == prod && (has(dims, *out) || !has(x.ref.dims, *out));
  }
  if (!ok) return finish(Expect::fail, run, {}, nullptr);
  Tensor y;
  Dim merged(0);
  if (!attempt(Expect::pass, [&] {
        auto [t, d] = merge_dims(x.t, dims, out);
        merged = d;
        return t;
      }, y))
    return;
  if (out && merged != *out) fail("merge_dims returned another Dim than out_dim");
  if (merged.is_dynamic() || merged.extent() != prod) fail("the merged Dim " + merged.str() + " has the wrong extent");
  w_.add_static(merged);
  // The merged Dim sits where the first of `dims` sat in x's layout.
  size_t first = y.ndim();
  for (const Dim& d : dims) first = std::min(first, position(x.t.dims(), d));
  Dims expect;
  for (size_t i = 0; i < x.t.ndim(); ++i) {
    if (i == first) expect.push_back(merged);
    if (!has(dims, x.t.dims()[i])) expect.push_back(x.t.dims()[i]);
  }
  Ref ref;
  ref.dims = joined(without(x.ref.dims, dims), {merged});
  ref.dt = x.ref.dt;
  const Dims src = joined(without(x.ref.dims, dims), dims);
  const std::vector<int64_t> sx = strides_in(x.ref.dims, src);
  for_each_index(src, [&](const Index& idx) { ref.vals.push_back(x.ref.vals[size_t(flat(sx, idx))]); });
  mark_padding(ref);
  check(y, ref, &expect);
  store(y, std::move(ref));
}

// The lengths of a concatenation's Dim: each part's lengths (a static part: its size) added,
// over the union of the Dims they run over.
struct Lengths {
  Dims over;
  std::vector<int64_t> lens;
};

Lengths summed_lengths(const World& w, const std::vector<Dim>& parts) {
  Lengths l;
  for (const Dim& d : parts) l.over = joined(l.over, w.at(d).over);
  for_each_index(l.over, [&](const Index& idx) {
    int64_t total = 0;
    for (const Dim& d : parts) total += w.valid_len(d, l.over, idx);
    l.lens.push_back(total);
  });
  return l;
}

// Checks dimx's new Dim `d` against the expected extent and lengths, then registers it.
// A dynamic Dim's extent is its longest length (0 without sequences), whatever `extent` says.
void check_new_dim(World& world, const Dim& d, int64_t extent, const Lengths* lengths, const std::string& op) {
  if (lengths) extent = lengths->lens.empty() ? 0 : *std::max_element(lengths->lens.begin(), lengths->lens.end());
  if (d.extent() != extent)
    finding(op + ": new Dim " + d.str() + " has extent " + std::to_string(d.extent()) + ", expected " + std::to_string(extent));
  if (!lengths) {
    if (d.is_dynamic()) finding(op + ": new Dim " + d.str() + " is dynamic, expected static");
    world.add_static(d);
    return;
  }
  if (!d.is_dynamic()) finding(op + ": new Dim " + d.str() + " is static, expected dynamic");
  const Tensor l = d.lengths();
  if (!same_set(l.dims(), lengths->over)) finding(op + ": new Dim " + d.str() + " has lengths over " + dims_str(l.dims()));
  if (l.to_vector<int64_t>(lengths->over) != lengths->lens) finding(op + ": new Dim " + d.str() + " has other lengths");
  world.add_dynamic(d, lengths->over, lengths->lens);
}

void Harness::op_concat() {
  const size_t n = 2 + r_.pick(2);
  std::vector<const Entry*> src;
  std::vector<std::pair<Tensor, Dim>> parts;
  std::vector<Dim> axes;
  for (size_t i = 0; i < n; ++i) {
    const Entry& e = pick();
    const Dim d = r_.pick(8) == 0 || e.ref.dims.empty() ? w_[r_.pick(w_.size())] : e.ref.dims[r_.pick(e.ref.dims.size())];
    src.push_back(&e);
    parts.push_back({e.t, d});
    axes.push_back(d);
  }
  desc_ = "concat(";
  for (const auto& [t, d] : parts) desc_ += "(" + t.str() + ", " + d.str() + ") ";
  desc_ += ")";
  Dim out(0);
  auto run = [&] {
    auto [t, d] = concat(parts);
    out = d;
    return t;
  };
  bool ok = true;
  Dims others;
  for (size_t i = 0; i < n; ++i) {
    ok = ok && has(src[i]->ref.dims, axes[i]) && src[i]->ref.dt == src[0]->ref.dt;
    others = joined(others, without(src[i]->ref.dims, {axes[i]}));
  }
  if (!ok) return finish(Expect::fail, run, {}, nullptr);
  bool dynamic = false;
  int64_t extent = 0;
  for (const Dim& d : axes) {
    dynamic = dynamic || w_.at(d).dynamic;
    extent += d.extent();
  }
  const Lengths lengths = summed_lengths(w_, axes);
  if (space_size(joined(joined(others, lengths.over), {axes[0]})) * 4 > kMaxSpace) return;
  // The new Dim is the cached sum of the parts' Dims; a part that has it otherwise is refused.
  Dim sum = axes[0];
  for (size_t i = 1; i < n; ++i) sum = sum + axes[i];
  for (size_t i = 0; i < n; ++i)
    if (sum != axes[i] && has(src[i]->ref.dims, sum)) return finish(Expect::fail, run, {}, nullptr);
  // A part's concat Dim among the other Dims (or among the Dims the lengths run over) has no
  // meaning the docs give: either outcome is accepted, the values are not checked.
  const Dims context = joined(others, dynamic ? lengths.over : Dims{});
  if (std::any_of(axes.begin(), axes.end(), [&](const Dim& d) { return has(context, d); }) || has(context, sum)) {
    Tensor y;
    attempt(Expect::either, run, y);
    return;
  }
  Tensor y;
  if (!attempt(Expect::pass, run, y)) return;
  if (out != sum) fail("the new Dim " + out.str() + " is not the sum of the parts' Dims");
  check_new_dim(w_, out, extent, dynamic ? &lengths : nullptr, desc_);
  // Frame t of a sequence comes from the part whose range of that sequence's frames holds it.
  Ref ref;
  ref.dims = joined(context, {out});
  ref.dt = src[0]->ref.dt;
  const size_t at = ref.dims.size() - 1;
  std::vector<std::vector<int64_t>> strides;
  for (size_t i = 0; i < n; ++i) {
    Dims space = ref.dims;
    space.push_back(axes[i]);
    strides.push_back(strides_in(src[i]->ref.dims, space));
  }
  for_each_index(ref.dims, [&](const Index& o) {
    int64_t offset = 0;
    for (size_t i = 0; i < n; ++i) {
      const int64_t len = w_.valid_len(axes[i], ref.dims, o);
      if (o[at] < offset + len) {
        Index full = o;
        full[at] = 0;
        full.push_back(o[at] - offset);
        return ref.vals.push_back(src[i]->ref.vals[size_t(flat(strides[i], full))]);
      }
      offset += len;
    }
    ref.vals.push_back({});
  });
  mark_padding(ref);
  check(y, ref, nullptr);
  store(y, std::move(ref));
}

void Harness::op_gather() {
  const Entry& x = pick();
  // Indices: a pool tensor, or fresh ones in range with a few outside and garbage in padding.
  Entry fresh;
  const bool from_pool = r_.pick(4) == 0;
  const Dim axis = r_.pick(8) == 0 || x.ref.dims.empty() ? w_[r_.pick(w_.size())] : x.ref.dims[r_.pick(x.ref.dims.size())];
  if (!from_pool) {
    fresh.ref.dims = pick_dims(2);
    fresh.ref.dt = r_.flag() ? DType::i64 : DType::i32;
    if (space_size(fresh.ref.dims) > kMaxNumel) return;
    std::vector<int64_t> v;
    for_each_index(fresh.ref.dims, [&](const Index& idx) {
      Val val = w_.padding(fresh.ref.dims, idx) ? garbage(fresh.ref.dt) : known_int(r_.range(-1, axis.extent()) % (axis.extent() + 2));
      if (val.known && r_.pick(8) != 0) val.i = std::clamp<int64_t>(val.i, 0, std::max<int64_t>(0, axis.extent() - 1));
      fresh.ref.vals.push_back(val);
      v.push_back(val.i);
    });
    if (fresh.ref.dt == DType::i64) {
      fresh.t = Tensor::from_vector<int64_t>(fresh.ref.dims, v);
    } else {
      std::vector<int32_t> v32(v.begin(), v.end());
      fresh.t = Tensor::from_vector<int32_t>(fresh.ref.dims, v32);
    }
  }
  const Entry& idx_e = from_pool ? pick() : fresh;
  const bool clip = r_.pick(4) == 0;
  const bool by_sparse = r_.pick(4) == 0;
  Tensor indices = idx_e.t;
  std::optional<Dim> given = axis;
  if (by_sparse) {
    given = std::nullopt;
    if (is_int(idx_e.ref.dt)) indices = indices.with_sparse_dim(axis);
  }
  desc_ = "gather(" + x.t.str() + ", " + indices.str() + ", " + axis.str() + (clip ? ", clip" : "") + ")";
  auto run = [&, given, clip] { return gather(x.t, indices, given, clip); };
  if (!is_int(idx_e.ref.dt) || !has(x.ref.dims, axis)) return finish(Expect::fail, run, {}, nullptr);
  Dims idx_only;
  for (const Dim& d : idx_e.ref.dims)
    if (d == axis || !has(x.ref.dims, d)) idx_only.push_back(d);
  Dims out;
  for (const Dim& d : x.ref.dims) {
    if (d == axis) out.insert(out.end(), idx_only.begin(), idx_only.end());
    else out.push_back(d);
  }
  if (space_size(out) > kMaxSpace) return;
  Expect ex = Expect::pass;
  const int64_t ext = axis.extent();
  const std::vector<int64_t> si = strides_in(idx_e.ref.dims, out);
  // Indices in padded frames of their own Dims that x lacks are padding: never read or checked.
  auto padding_index = [&](const Index& o) {
    Index own(idx_e.ref.dims.size());
    for (size_t i = 0; i < own.size(); ++i) own[i] = o[position(out, idx_e.ref.dims[i])];
    for (size_t i = 0; i < own.size(); ++i) {
      const Dim& d = idx_e.ref.dims[i];
      if (has(idx_only, d) && w_.at(d).dynamic && own[i] >= w_.valid_len(d, idx_e.ref.dims, own)) return true;
    }
    return false;
  };
  if (space_size(out) > 0) {
    if (ext == 0) {
      ex = Expect::fail;
    } else if (!clip) {
      for_each_index(out, [&](const Index& o) {
        if (padding_index(o)) return;
        const Val& v = idx_e.ref.vals[size_t(flat(si, o))];
        if (!v.known && ex == Expect::pass) ex = Expect::either;
        if (v.known && (v.i < 0 || v.i >= ext)) ex = Expect::fail;
      });
    }
  }
  if (ex == Expect::fail) return finish(ex, run, {}, nullptr);
  Ref ref;
  ref.dims = out;
  ref.dt = x.ref.dt;
  // x's strides over (out..., gathered index): its axis is the last entry, even where the
  // indices have the axis Dim too (then it is an output Dim of its own).
  std::vector<int64_t> sx(out.size() + 1, 0);
  {
    const std::vector<int64_t> rm = strides_in(x.ref.dims, x.ref.dims);
    for (size_t i = 0; i < x.ref.dims.size(); ++i)
      sx[x.ref.dims[i] == axis ? out.size() : position(out, x.ref.dims[i])] = rm[i];
  }
  for_each_index(out, [&](const Index& o) {
    const Val& v = idx_e.ref.vals[size_t(flat(si, o))];
    if (!v.known || padding_index(o)) return ref.vals.push_back({});
    Index full = o;
    full.push_back(clip ? std::clamp<int64_t>(v.i, 0, ext - 1) : v.i);
    ref.vals.push_back(x.ref.vals[size_t(flat(sx, full))]);
  });
  mark_padding(ref);
  // Layout: x's, with the axis replaced by the index Dims it lacks (in the indices' order).
  Dims layout;
  for (const Dim& d : x.t.dims()) {
    if (d != axis) {
      layout.push_back(d);
      continue;
    }
    for (const Dim& i : indices.dims())
      if (has(idx_only, i)) layout.push_back(i);
  }
  finish(ex, run, std::move(ref), &layout);
}

void Harness::op_pad() {
  const Entry& x = pick();
  if (x.ref.dims.empty()) return;
  Dims axes = {x.ref.dims[r_.pick(x.ref.dims.size())]};
  if (r_.flag()) axes.push_back(r_.pick(6) == 0 ? w_[r_.pick(w_.size())] : x.ref.dims[r_.pick(x.ref.dims.size())]);
  std::vector<std::pair<int64_t, int64_t>> padding;
  for (size_t i = 0; i < axes.size(); ++i) padding.emplace_back(r_.range(-1, 3), r_.range(0, 2));
  if (r_.pick(16) == 0) padding.pop_back();
  static const double values[] = {0, 1, -2, 0.5, 1e10};
  const double value = values[r_.pick(std::size(values))];
  desc_ = "pad(" + x.t.str() + ", " + dims_str(axes) + ", value " + std::to_string(value) + ")";
  auto run = [&, value] { return pad(x.t, axes, padding, value).first; };
  bool ok = axes.size() == padding.size() && unique(axes) && subset(axes, x.ref.dims);
  bool any = false;
  for (size_t i = 0; ok && i < axes.size(); ++i) {
    ok = padding[i].first >= 0 && padding[i].second >= 0;
    any = any || padding[i].first || padding[i].second;
  }
  if (!ok || (any && !representable(value, x.ref.dt))) return finish(Expect::fail, run, {}, nullptr);
  // Each axis becomes the cached (left + d) + right, through concat, which refuses it where the
  // tensor so far has that Dim already.
  Dims so_far = x.ref.dims;
  for (size_t i = 0; i < axes.size(); ++i) {
    const Dim o = (axes[i] + padding[i].first) + padding[i].second;
    if (o == axes[i]) continue;
    if (has(so_far, o)) return finish(Expect::fail, run, {}, nullptr);
    so_far = joined(joined(without(so_far, {axes[i]}), w_.at(axes[i]).over), {o});
  }
  Tensor y;
  Dims outs;
  if (!attempt(Expect::pass, [&] {
        auto [t, o] = pad(x.t, axes, padding, value);
        outs = o;
        return t;
      }, y))
    return;
  if (outs.size() != axes.size()) fail("pad returned " + std::to_string(outs.size()) + " Dims");
  // One axis at a time, as concat of [value x left, x, value x right] per sequence.
  Ref cur = x.ref;
  Val fill = is_fp(x.ref.dt) ? known_float(in_dtype(x.ref.dt, value), 0) : known_int(int64_t(value));
  for (size_t i = 0; i < axes.size(); ++i) {
    const Dim& d = axes[i];
    const int64_t l = padding[i].first, rr = padding[i].second;
    if (l == 0 && rr == 0) {
      if (outs[i] != d) fail("pad by (0, 0) changed the Dim");
      continue;
    }
    const DimInfo info = w_.at(d);
    Lengths lengths;
    if (info.dynamic) {
      lengths.over = info.over;
      for (int64_t len : info.lens) lengths.lens.push_back(len + l + rr);
    }
    check_new_dim(w_, outs[i], d.extent() + l + rr, info.dynamic ? &lengths : nullptr, desc_);
    const Dim& o = outs[i];
    Ref next;
    next.dt = cur.dt;
    next.dims = joined(joined(without(cur.dims, {d}), info.dynamic ? info.over : Dims{}), {o});
    if (space_size(next.dims) > kMaxSpace) return;
    Dims space = next.dims;
    space.push_back(d);
    const std::vector<int64_t> sc = strides_in(cur.dims, space);
    const size_t at = next.dims.size() - 1;
    for_each_index(next.dims, [&](const Index& idx) {
      const int64_t len = info.dynamic ? w_.valid_len(d, next.dims, idx) : d.extent();
      const int64_t t = idx[at];
      if (t < l || (t >= l + len && t < l + len + rr)) return next.vals.push_back(fill);
      if (t >= l + len + rr) return next.vals.push_back({});
      Index full = idx;
      full[at] = 0;
      full.push_back(t - l);
      next.vals.push_back(cur.vals[size_t(flat(sc, full))]);
    });
    cur = std::move(next);
  }
  mark_padding(cur);
  check(y, cur, nullptr);
  store(y, std::move(cur));
}

void Harness::op_slice() {
  const Entry& x = pick();
  const Dim axis = r_.pick(8) == 0 || x.ref.dims.empty() ? w_[r_.pick(w_.size())] : x.ref.dims[r_.pick(x.ref.dims.size())];
  const int64_t ext = axis.extent();
  const int64_t start = r_.range(-1, ext + 1);
  const std::optional<int64_t> end = r_.flag() ? std::optional<int64_t>(r_.range(start - 1, ext + 1)) : std::nullopt;
  const int64_t step = r_.range(0, 3) + (r_.pick(8) == 0 ? std::numeric_limits<int64_t>::max() - 3 : 0);
  desc_ = "slice(" + x.t.str() + ", " + axis.str() + ", " + std::to_string(start) + ", " +
          (end ? std::to_string(*end) : "end") + ", " + std::to_string(step) + ")";
  auto run = [&, start, end, step] { return slice(x.t, axis, start, end, step).first; };
  const int64_t e = end.value_or(ext);
  if (!has(x.ref.dims, axis) || step < 1 || start < 0 || e > ext || start > e) return finish(Expect::fail, run, {}, nullptr);
  const int64_t count = (e - start) / step + ((e - start) % step != 0);
  Tensor y;
  Dim out(0);
  if (!attempt(Expect::pass, [&] {
        auto [t, d] = slice(x.t, axis, start, end, step);
        out = d;
        return t;
      }, y))
    return;
  const DimInfo info = w_.at(axis);
  Lengths lengths;
  if (info.dynamic) {
    lengths.over = info.over;
    for (int64_t len : info.lens) {
      const int64_t k = std::max<int64_t>(0, std::min(len, e) - start);
      lengths.lens.push_back(k / step + (k % step != 0));
    }
  }
  check_new_dim(w_, out, count, info.dynamic ? &lengths : nullptr, desc_);
  Ref ref;
  ref.dt = x.ref.dt;
  for (const Dim& d : x.ref.dims) ref.dims.push_back(d == axis ? out : d);
  Dims space = ref.dims;
  space.push_back(axis);
  const std::vector<int64_t> sx = strides_in(x.ref.dims, space);
  const size_t at = position(ref.dims, out);
  for_each_index(ref.dims, [&](const Index& o) {
    Index full = o;
    full.push_back(start + o[at] * step);
    full[at] = 0;
    ref.vals.push_back(x.ref.vals[size_t(flat(sx, full))]);
  });
  mark_padding(ref);
  Dims layout = x.t.dims();
  for (Dim& d : layout)
    if (d == axis) d = out;
  check(y, ref, &layout);
  store(y, std::move(ref));
}

// Views and masks: transpose_to, expand_dim, squeeze, replace_dim, copy_masked.
void Harness::op_view() {
  const Entry& x = pick();
  const size_t kind = r_.pick(5);
  Ref ref = x.ref;
  if (kind == 0) {  // transpose_to a permutation (sometimes not one)
    Dims order = x.ref.dims;
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[r_.pick(i)]);
    if (r_.pick(8) == 0) order.push_back(w_[r_.pick(w_.size())]);
    desc_ = "transpose_to(" + x.t.str() + ", " + dims_str(order) + ")";
    auto run = [&] { return x.t.transpose_to(order); };
    if (!unique(order) || !same_set(order, x.ref.dims)) return finish(Expect::fail, run, {}, nullptr);
    Tensor y;
    if (!attempt(Expect::pass, run, y)) return;
    check(y, ref, &order);
    return store(y, std::move(ref));
  }
  if (kind == 1) {  // expand_dim by a new Dim (or one x has)
    const Dim d = r_.pick(4) == 0 ? w_[r_.pick(w_.size())] : Dim(r_.range(0, 3), "new");
    w_.add_static(d);
    desc_ = "expand_dim(" + x.t.str() + ", " + d.str() + ")";
    auto run = [&] { return expand_dim(x.t, d); };
    if (has(x.ref.dims, d)) return finish(Expect::fail, run, {}, nullptr);
    if (space_size(joined(x.ref.dims, {d})) > kMaxSpace) return;
    Ref e;
    e.dt = x.ref.dt;
    e.dims = joined({d}, x.ref.dims);
    for (int64_t i = 0; i < d.extent(); ++i) e.vals.insert(e.vals.end(), x.ref.vals.begin(), x.ref.vals.end());
    mark_padding(e);
    const Dims layout = joined({d}, x.t.dims());
    return finish(Expect::pass, run, std::move(e), &layout);
  }
  const Dim axis = x.ref.dims.empty() || r_.pick(8) == 0 ? w_[r_.pick(w_.size())] : x.ref.dims[r_.pick(x.ref.dims.size())];
  if (kind == 2) {  // squeeze
    desc_ = "squeeze(" + x.t.str() + ", " + axis.str() + ")";
    auto run = [&] { return squeeze(x.t, axis); };
    if (!has(x.ref.dims, axis) || axis.extent() != 1) return finish(Expect::fail, run, {}, nullptr);
    ref.dims = without(x.ref.dims, {axis});
    mark_padding(ref);
    const Dims layout = without(x.t.dims(), {axis});
    return finish(Expect::pass, run, std::move(ref), &layout);
  }
  if (kind == 3) {  // replace_dim by a fresh copy
    desc_ = "replace_dim(" + x.t.str() + ", " + axis.str() + ")";
    Tensor y;
    Dim out(0);
    const bool present = has(x.ref.dims, axis);
    if (!attempt(present ? Expect::pass : Expect::fail, [&] {
          auto [t, d] = replace_dim(x.t, axis);
          out = d;
          return t;
        }, y) || !present)
      return;
    const DimInfo info = w_.at(axis);
    if (out == axis || out.extent() != axis.extent() || out.is_dynamic() != info.dynamic)
      fail("replace_dim's new Dim " + out.str() + " does not copy " + axis.str());
    if (info.dynamic) w_.add_dynamic(out, info.over, info.lens);
    else w_.add_static(out);
    for (Dim& d : ref.dims)
      if (d == axis) d = out;
    mark_padding(ref);
    Dims layout = x.t.dims();
    for (Dim& d : layout)
      if (d == axis) d = out;
    check(y, ref, &layout);
    return store(y, std::move(ref));
  }
  // copy_masked over x's Dims: padded frames become the value (and are known), the result
  // gains the Dims the masked Dims' lengths run over.
  Dims dims = pick_subset(r_, w_, x.ref.dims);
  desc_ = "copy_masked(" + x.t.str() + ", " + dims_str(dims) + ")";
  auto run = [&] { return copy_masked(x.t, dims, 0); };
  if (!subset(dims, x.ref.dims)) return finish(Expect::fail, run, {}, nullptr);
  Dims dyn, gained;
  for (const Dim& d : dims)
    if (w_.at(d).dynamic) {
      dyn.push_back(d);
      gained = joined(gained, w_.gained(d, x.ref.dims));
    }
  ref.dims = joined(x.ref.dims, gained);
  if (space_size(ref.dims) > kMaxSpace) return;
  ref.vals.clear();
  const std::vector<int64_t> sx = strides_in(x.ref.dims, ref.dims);
  for_each_index(ref.dims, [&](const Index& idx) {
    for (const Dim& d : dyn)
      if (idx[position(ref.dims, d)] >= w_.valid_len(d, ref.dims, idx))
        return ref.vals.push_back(is_fp(ref.dt) ? known_float(0, 0) : known_int(0));
    // Other frames keep x's values (unknown where they were padding content).
    ref.vals.push_back(x.ref.vals[size_t(flat(sx, idx))]);
  });
  // The masked frames hold the value now: they stay known.
  finish(Expect::pass, run, std::move(ref), nullptr);
}

void Harness::op_astype() {
  const Entry& x = pick();
  const DType to = pick_dtype();
  desc_ = "astype(" + x.t.str() + ", " + dt_name(to) + ")";
  Ref ref = x.ref;
  ref.dt = to;
  const DType from = x.ref.dt;
  for (Val& v : ref.vals) {
    if (!v.known || from == to) continue;
    if (is_fp(from) && is_fp(to)) {
      if (v.e == 0) v.v = in_dtype(to, v.v);
      else v.e += 2 * unit(to) * std::fabs(v.v);
    } else if (!is_fp(from) && is_fp(to)) {
      const double d = double(v.i);
      v = known_float(in_dtype(to, d), std::fabs(d) < (to == DType::f32 ? 0x1p24 : 0x1p53) ? 0 : 2 * unit(to) * std::fabs(d));
    } else if (is_fp(from) && to == DType::boolean) {
      v = v.e > 0 && std::fabs(v.v) <= v.e ? Val{} : known_int(v.v != 0);
    } else if (is_fp(from)) {
      // Toward zero; values near the integer range's ends are not compared.
      const double lo = std::trunc(v.v - v.e), hi = std::trunc(v.v + v.e);
      const double lim = to == DType::i32 ? 2147483647.0 : 9.2e18;
      v = lo != hi || std::fabs(v.v) + v.e >= lim ? Val{} : known_int(int64_t(lo));
    } else if (to == DType::boolean) {
      v = known_int(v.i != 0);
    } else {
      v = known_int(wrap(to, uint64_t(v.i)));
    }
  }
  mark_padding(ref);
  finish(Expect::pass, [&] { return x.t.astype(to); }, std::move(ref), &x.t.dims());
}

void Harness::run() {
  make_world();
  op_create();
  op_create();
  for (int i = 0; i < kMaxOps && !r_.empty(); ++i) {
    if (pool_.empty()) op_create();
    // Every op once, matmul twice (it has the most cases).
    using Op = void (Harness::*)();
    static constexpr Op kOps[] = {&Harness::op_create, &Harness::op_binary_tensors, &Harness::op_binary_scalar,
                                  &Harness::op_unary,  &Harness::op_where,          &Harness::op_reduce,
                                  &Harness::op_arg,    &Harness::op_matmul,         &Harness::op_split,
                                  &Harness::op_merge,  &Harness::op_concat,         &Harness::op_gather,
                                  &Harness::op_pad,    &Harness::op_slice,          &Harness::op_view,
                                  &Harness::op_astype, &Harness::op_matmul};
    (this->*kOps[r_.pick(std::size(kOps))])();
    if (trace_) std::fprintf(stderr, "op %d: %s\n", i, desc_.c_str());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader r(data, size);
  Harness h(r);
  h.run();
  return 0;
}
