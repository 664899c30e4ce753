// libFuzzer harness: the safetensors reader on arbitrary bytes. The input is the whole file.
// Contract checked: open() either throws a dimx::Error naming the file or returns a reader
// whose header entries are consistent with the bytes (every range inside the data section,
// sized for its shape and dtype, no overlaps); then every tensor loads with its natural dtype
// (or throws dimx::Error exactly where a U64 value exceeds i64), holding the values a
// reference decoder written here reads from the same bytes; other target dtypes load or
// throw dimx::Error as the dtype rules say; metadata parses or throws dimx::Error, and what
// parses dumps to JSON that parses back to the same dump.
#include <dimx/io.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "fuzz_util.h"

using namespace dimx;
using dimx_fuzz::finding;
using dimx_fuzz::run_guarded;

namespace {

enum class FileKind { floating, signed_int, unsigned_int, boolean };

struct FileType {
  size_t size;
  FileKind kind;
};

// The safetensors dtypes dimx documents (include/dimx/io.h, docs/io.md).
const std::map<std::string, FileType>& file_types() {
  static const std::map<std::string, FileType> types = {
      {"F64", {8, FileKind::floating}},    {"F32", {4, FileKind::floating}},     {"F16", {2, FileKind::floating}},
      {"BF16", {2, FileKind::floating}},   {"F8_E5M2", {1, FileKind::floating}}, {"F8_E4M3", {1, FileKind::floating}},
      {"I64", {8, FileKind::signed_int}},  {"I32", {4, FileKind::signed_int}},   {"I16", {2, FileKind::signed_int}},
      {"I8", {1, FileKind::signed_int}},   {"U64", {8, FileKind::unsigned_int}}, {"U32", {4, FileKind::unsigned_int}},
      {"U16", {2, FileKind::unsigned_int}}, {"U8", {1, FileKind::unsigned_int}}, {"BOOL", {1, FileKind::boolean}},
  };
  return types;
}

uint64_t read_uint(const unsigned char* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

// A binary floating format by its definition: sign, `eb` exponent bits (bias 2^(eb-1) - 1),
// `mb` fraction bits, subnormals. `ieee`: the top exponent holds inf and NaN (IEEE binary16,
// OCP FP8 E5M2); otherwise only the all-ones pattern is NaN and there is no inf (OCP FP8
// E4M3 "fn").
double ref_minifloat(uint64_t bits, int eb, int mb, bool ieee) {
  const uint64_t top = (uint64_t(1) << eb) - 1, fmask = (uint64_t(1) << mb) - 1;
  const uint64_t e = (bits >> mb) & top, f = bits & fmask;
  const int bias = int(top >> 1);
  double mag;
  if ((ieee && e == top && f != 0) || (!ieee && e == top && f == fmask)) mag = std::numeric_limits<double>::quiet_NaN();
  else if (ieee && e == top) mag = std::numeric_limits<double>::infinity();
  else if (e == 0) mag = std::ldexp(double(f), 1 - bias - mb);
  else mag = std::ldexp(double(f | (fmask + 1)), int(e) - bias - mb);
  return ((bits >> (eb + mb)) & 1) ? -mag : mag;
}

// Element i of a floating entry, exactly, as double.
double ref_float(const std::string& dt, const unsigned char* p) {
  if (dt == "F64") return std::bit_cast<double>(read_uint(p, 8));
  if (dt == "F32") return double(std::bit_cast<float>(uint32_t(read_uint(p, 4))));
  if (dt == "F16") return ref_minifloat(read_uint(p, 2), 5, 10, true);
  if (dt == "BF16") return double(std::bit_cast<float>(uint32_t(read_uint(p, 2)) << 16));
  if (dt == "F8_E5M2") return ref_minifloat(p[0], 5, 2, true);
  return ref_minifloat(p[0], 4, 3, false);
}

// Element i of an integer entry; `huge` is set for a U64 value beyond int64.
int64_t ref_int(const std::string& dt, const FileType& ft, const unsigned char* p, bool& huge) {
  const uint64_t u = read_uint(p, ft.size);
  huge = false;
  if (ft.kind == FileKind::unsigned_int) {
    huge = u > uint64_t(std::numeric_limits<int64_t>::max());
    return int64_t(u);
  }
  const int bits = int(ft.size * 8);
  if (bits == 64) return int64_t(u);
  const uint64_t sign = uint64_t(1) << (bits - 1);
  return (u & sign) ? int64_t(u) - int64_t(sign << 1) : int64_t(u);
}

bool same_float(double want, double got) { return std::isnan(want) ? std::isnan(got) : want == got; }

// Compares loaded tensor `t` (dtype dt) with the entry's bytes.
void check_values(const std::string& key, const TensorInfo& info, const FileType& ft, const unsigned char* bytes,
                  const Tensor& t, DType dt) {
  const size_t n = size_t(t.numel());
  if (n * ft.size != info.end - info.begin) finding("load '" + key + "': element count does not match the byte range");
  const unsigned char* p = bytes + info.begin;
  auto bad = [&](size_t i, const std::string& why) {
    finding("load '" + key + "' (" + info.dtype + " as " + dtype_name(dt) + "): element " + std::to_string(i) + ": " + why);
  };
  if (dt == DType::f32 || dt == DType::f64) {
    const std::vector<double> got = t.to_vector<double>();
    for (size_t i = 0; i < n; ++i) {
      double want = ref_float(info.dtype, p + i * ft.size);
      if (dt == DType::f32 && std::isfinite(want)) {
        // An F64 value beyond f32's range becomes +-inf (IEEE rounding), else the nearest f32.
        const double limit = double(std::numeric_limits<float>::max()) + std::ldexp(1.0, 103);
        want = std::fabs(want) >= limit ? std::copysign(std::numeric_limits<double>::infinity(), want)
               : std::fabs(want) > double(std::numeric_limits<float>::max())
                   ? std::copysign(double(std::numeric_limits<float>::max()), want)
                   : double(float(want));
      }
      if (!same_float(want, got[i])) bad(i, "got " + std::to_string(got[i]) + ", file holds " + std::to_string(want));
    }
  } else if (dt == DType::i32 || dt == DType::i64) {
    const std::vector<int64_t> got = t.to_vector<int64_t>();
    for (size_t i = 0; i < n; ++i) {
      bool huge;
      const int64_t want = ref_int(info.dtype, ft, p + i * ft.size, huge);
      if (huge || got[i] != want) bad(i, "got " + std::to_string(got[i]) + ", file holds " + std::to_string(want));
    }
  } else if (dt == DType::boolean) {
    const std::vector<bool> got = t.to_vector<bool>();
    for (size_t i = 0; i < n; ++i)
      if (got[i] != (p[i] != 0)) bad(i, "bool value differs");
  }
}

// Whether loading an entry of kind `k` as `dt` must fail before any value is read.
bool incompatible(FileKind k, DType dt) {
  switch (k) {
    case FileKind::floating: return !is_float_like(dt);
    case FileKind::signed_int:
    case FileKind::unsigned_int: return !is_integer(dt);
    case FileKind::boolean: return dt != DType::boolean;
  }
  return true;
}

// Whether some value of the entry does not fit in the integer dtype `dt`.
bool out_of_range(const TensorInfo& info, const FileType& ft, const unsigned char* bytes, DType dt) {
  const size_t n = (info.end - info.begin) / ft.size;
  for (size_t i = 0; i < n; ++i) {
    bool huge;
    const int64_t v = ref_int(info.dtype, ft, bytes + info.begin + i * ft.size, huge);
    if (huge) return true;
    if (dt == DType::i32 && (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()))
      return true;
  }
  return false;
}

DType natural(const std::string& dt, const FileType& ft) {
  switch (ft.kind) {
    case FileKind::floating: return dt == "F64" ? DType::f64 : DType::f32;
    case FileKind::signed_int: return ft.size == 8 ? DType::i64 : DType::i32;
    case FileKind::unsigned_int: return ft.size >= 4 ? DType::i64 : DType::i32;
    case FileKind::boolean: return DType::boolean;
  }
  return DType::f32;
}

void check_entry(const SafeTensors& st, const std::string& key, const unsigned char* data, uint64_t data_size) {
  const TensorInfo info = st.info(key);
  auto it = file_types().find(info.dtype);
  if (it == file_types().end()) finding("key '" + key + "': open() accepted the unknown dtype '" + info.dtype + "'");
  const FileType& ft = it->second;
  uint64_t numel = 1;
  for (int64_t d : info.shape) {
    if (d < 0) finding("key '" + key + "': negative extent accepted");
    if (__builtin_mul_overflow(numel, uint64_t(d), &numel)) finding("key '" + key + "': shape product overflows");
  }
  if (info.end < info.begin || info.end > data_size)
    finding("key '" + key + "': data_offsets outside the data section accepted");
  if (numel * ft.size != info.end - info.begin) finding("key '" + key + "': byte range does not fit shape and dtype");

  const DType nat = natural(info.dtype, ft);
  const bool fails = is_integer(nat) && out_of_range(info, ft, data, nat);
  Tensor t;
  std::string msg;
  const bool ok = run_guarded("SafeTensors::load", [&] { t = st.load(key); }, &msg);
  if (ok == fails) finding("load '" + key + "' (" + info.dtype + "): " + (ok ? "loaded a value out of range" : msg));
  if (ok) {
    if (t.dtype() != nat) finding("load '" + key + "': natural dtype is " + dtype_name(t.dtype()));
    if (t.ndim() != info.shape.size()) finding("load '" + key + "': rank differs from the shape");
    for (size_t i = 0; i < t.ndim(); ++i)
      if (t.dims()[i].extent() != info.shape[i]) finding("load '" + key + "': extent differs from the shape");
    check_values(key, info, ft, data, t, nat);
  }

  // Every target dtype: loads as the rules say, or throws dimx::Error.
  Dims dims;
  for (int64_t d : info.shape) dims.emplace_back(d);
  for (DType dt : {DType::f32, DType::f64, DType::i32, DType::i64, DType::boolean, DType::bf16, DType::f16}) {
    if (dt == nat) continue;
    const bool must_fail = incompatible(ft.kind, dt) || (is_integer(dt) && out_of_range(info, ft, data, dt));
    Tensor u;
    const bool loaded = run_guarded("SafeTensors::load", [&] { u = st.load(key, dims, dt); }, &msg);
    if (loaded == must_fail)
      finding("load '" + key + "' (" + info.dtype + ") as " + dtype_name(dt) + ": " + (loaded ? "no error" : msg));
    if (loaded && !is_half(dt)) check_values(key, info, ft, data, u, dt);
  }
  // Dims that do not match the file's shape: an error.
  Dims wrong = dims;
  wrong.emplace_back(1);
  if (run_guarded("SafeTensors::load", [&] { st.load(key, wrong); }))
    finding("load '" + key + "' with one Dim too many succeeded");
}

void check_metadata(const SafeTensors& st) {
  for (const auto& entry : st.metadata()) {
    const std::string& k = entry.first;  // a plain reference: Clang 14's lambdas cannot capture bindings
    const std::string& v = entry.second;
    if (st.metadata(k) != v) finding("metadata('" + k + "') differs from metadata()");
    MetaValue m;
    if (!run_guarded("SafeTensors::metadata_json", [&] { m = st.metadata_json(k); })) continue;
    const std::string dumped = m.dump();
    MetaValue again;
    if (!run_guarded("MetaValue::parse", [&] { again = MetaValue::parse(dumped, "dump"); }))
      finding("metadata '" + k + "': dump() is not JSON that MetaValue parses: " + dumped);
    if (again.dump() != dumped) finding("metadata '" + k + "': dump does not round-trip: " + dumped);
  }
  if (st.metadata("\x01not a key\x02") != std::nullopt) finding("metadata() of a missing key is not nullopt");
  if (run_guarded("SafeTensors::metadata_json", [&] { st.metadata_json("\x01not a key\x02"); }))
    finding("metadata_json() of a missing key succeeded");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  dimx_fuzz::MemFile file(bytes);
  SafeTensors st;
  std::string msg;
  if (!run_guarded("SafeTensors::open", [&] { st = SafeTensors::open(file.path()); }, &msg)) {
    if (msg.find(file.path()) == std::string::npos) finding("open error does not name the file: " + msg);
    return 0;
  }
  if (size < 8) finding("open() accepted a file of " + std::to_string(size) + " bytes");
  const uint64_t header = dimx_fuzz::ByteReader(data, 8).u64();
  if (header > size - 8) finding("open() accepted a header length beyond the file");
  const unsigned char* section = data + 8 + header;
  const uint64_t section_size = size - 8 - header;

  const std::vector<std::string> keys = st.keys();
  if (keys.size() != st.size()) finding("keys().size() != size()");
  if (!std::is_sorted(keys.begin(), keys.end()) || std::adjacent_find(keys.begin(), keys.end()) != keys.end())
    finding("keys() not sorted and unique");
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const std::string& k : keys) {
    if (k == "__metadata__") finding("\"__metadata__\" listed as a tensor key");
    if (!st.contains(k)) finding("contains() is false for listed key '" + k + "'");
    check_entry(st, k, section, section_size);
    const TensorInfo info = st.info(k);
    if (info.end > info.begin) ranges.emplace_back(info.begin, info.end);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) finding("open() accepted overlapping data_offsets");
  if (run_guarded("SafeTensors::info", [&] { st.info("\x01not a key\x02"); })) finding("info() of a missing key succeeded");
  check_metadata(st);
  return 0;
}
