// safetensors reader (memory-mapped, validated up front) and writer. See include/dimx/io.h and
// docs/io.md. The parser treats the file as untrusted: every length, offset and size is
// checked (with overflow checks) before any byte of data is touched.
#include <dimx/io.h>

#include <dimx/shape.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "tensor_impl.h"

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; dimx assumes a little-endian host");

namespace dimx {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as in the reference implementation
constexpr int kMaxJsonDepth = 64;                   // a valid header needs 3

// ---- file dtypes

enum class Kind { floating, signed_int, unsigned_int, boolean };
enum class Code { F64, F32, F16, BF16, F8_E5M2, F8_E4M3, I64, I32, I16, I8, U64, U32, U16, U8, BOOL };

struct FileDType {
  const char* name;
  Code code;
  size_t size;
  Kind kind;
};

constexpr FileDType kFileDTypes[] = {
    {"F64", Code::F64, 8, Kind::floating},       {"F32", Code::F32, 4, Kind::floating},
    {"F16", Code::F16, 2, Kind::floating},       {"BF16", Code::BF16, 2, Kind::floating},
    {"F8_E5M2", Code::F8_E5M2, 1, Kind::floating}, {"F8_E4M3", Code::F8_E4M3, 1, Kind::floating},
    {"I64", Code::I64, 8, Kind::signed_int},     {"I32", Code::I32, 4, Kind::signed_int},
    {"I16", Code::I16, 2, Kind::signed_int},     {"I8", Code::I8, 1, Kind::signed_int},
    {"U64", Code::U64, 8, Kind::unsigned_int},   {"U32", Code::U32, 4, Kind::unsigned_int},
    {"U16", Code::U16, 2, Kind::unsigned_int},   {"U8", Code::U8, 1, Kind::unsigned_int},
    {"BOOL", Code::BOOL, 1, Kind::boolean},
};

const FileDType* find_file_dtype(const std::string& name) {
  for (const auto& d : kFileDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

std::string known_dtypes() {
  std::string s;
  for (const auto& d : kFileDTypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

const char* file_name_of(DType dt) {
  switch (dt) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::boolean: return "BOOL";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
  }
  throw Error("save_safetensors: invalid dtype");
}

DType natural_dtype(const FileDType& fd) {
  switch (fd.code) {
    case Code::F64: return DType::f64;
    case Code::F32: case Code::F16: case Code::BF16: case Code::F8_E5M2: case Code::F8_E4M3: return DType::f32;
    case Code::I64: case Code::U32: case Code::U64: return DType::i64;
    case Code::I32: case Code::I16: case Code::I8: case Code::U16: case Code::U8: return DType::i32;
    case Code::BOOL: return DType::boolean;
  }
  return DType::f32;
}

bool compatible(const FileDType& fd, DType dt) {
  switch (fd.kind) {
    case Kind::floating: return is_floating(dt);
    case Kind::signed_int: case Kind::unsigned_int: return is_integer(dt);
    case Kind::boolean: return dt == DType::boolean;
  }
  return false;
}

// ---- bit-level decoding (little-endian, possibly unaligned)

template <class T>
T read_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in f32.
    float mag = std::ldexp(float(mant), -24);
    return sign ? -mag : mag;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

float bf16_to_f32(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

// OCP FP8 E4M3 ("fn": no infinities, S.1111.111 is NaN), bias 7.
float f8e4m3_to_f32(uint8_t b) {
  const bool neg = b & 0x80u;
  const int exp = (b >> 3) & 0xf;
  const int mant = b & 0x7;
  float mag;
  if (exp == 15 && mant == 7) mag = std::numeric_limits<float>::quiet_NaN();
  else if (exp == 0) mag = std::ldexp(float(mant), -9);
  else mag = std::ldexp(float(8 + mant), exp - 10);
  return neg ? -mag : mag;
}

// E5M2 is the upper byte of an IEEE f16.
float f8e5m2_to_f32(uint8_t b) { return f16_to_f32(uint16_t(uint16_t(b) << 8)); }

// Value `i` of a floating file tensor, as double (exact for every source format).
double read_float(Code c, const unsigned char* p) {
  switch (c) {
    case Code::F64: return read_le<double>(p);
    case Code::F32: return read_le<float>(p);
    case Code::F16: return f16_to_f32(read_le<uint16_t>(p));
    case Code::BF16: return bf16_to_f32(read_le<uint16_t>(p));
    case Code::F8_E5M2: return f8e5m2_to_f32(*p);
    case Code::F8_E4M3: return f8e4m3_to_f32(*p);
    default: break;
  }
  return 0;
}

float read_f32(Code c, const unsigned char* p) {
  switch (c) {
    case Code::F32: return read_le<float>(p);
    case Code::F16: return f16_to_f32(read_le<uint16_t>(p));
    case Code::BF16: return bf16_to_f32(read_le<uint16_t>(p));
    case Code::F8_E5M2: return f8e5m2_to_f32(*p);
    case Code::F8_E4M3: return f8e4m3_to_f32(*p);
    case Code::F64: {
      // Narrowing an out-of-range double is undefined in C++; round to +-inf as IEEE does.
      double d = read_le<double>(p);
      if (std::isfinite(d) && std::fabs(d) > double(std::numeric_limits<float>::max())) {
        // Values that round down to FLT_MAX still convert normally.
        double limit = double(std::numeric_limits<float>::max()) +
                       std::ldexp(1.0, std::numeric_limits<float>::max_exponent - std::numeric_limits<float>::digits - 1);
        if (std::fabs(d) >= limit) return d < 0 ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
        return d < 0 ? -std::numeric_limits<float>::max() : std::numeric_limits<float>::max();
      }
      return float(d);
    }
    default: break;
  }
  return 0;
}

// Integer values: signed ones as int64; unsigned as uint64 (flag set).
struct IntValue {
  int64_t s = 0;
  uint64_t u = 0;
  bool is_unsigned = false;
};

IntValue read_int(Code c, const unsigned char* p) {
  IntValue v;
  switch (c) {
    case Code::I64: v.s = read_le<int64_t>(p); break;
    case Code::I32: v.s = read_le<int32_t>(p); break;
    case Code::I16: v.s = read_le<int16_t>(p); break;
    case Code::I8: v.s = read_le<int8_t>(p); break;
    case Code::U64: v.u = read_le<uint64_t>(p); v.is_unsigned = true; break;
    case Code::U32: v.s = read_le<uint32_t>(p); break;
    case Code::U16: v.s = read_le<uint16_t>(p); break;
    case Code::U8: v.s = *p; break;
    default: break;
  }
  return v;
}

// ---- messages

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string extents_str(const Dims& dims) {
  std::vector<int64_t> e;
  for (const auto& d : dims) e.push_back(d.extent());
  return shape_str(e);
}

// Untrusted text (keys, JSON values) shortened for an error message.
std::string clip(const std::string& s, size_t max = 120) { return s.size() <= max ? s : s.substr(0, max) + "..."; }
std::string clip(const json& j) { return clip(j.dump()); }

std::string file_prefix(const std::string& path) { return "safetensors '" + path + "': "; }
std::string key_prefix(const std::string& path, const std::string& key) {
  return "safetensors '" + path + "', key '" + clip(key) + "': ";
}

std::string json_kind(const json& j) { return j.type_name(); }

// A short, printable excerpt of untrusted bytes for an error message.
std::string excerpt(const char* p, size_t n, size_t max = 40) {
  std::string s;
  for (size_t i = 0; i < n && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(p[i]);
    if (c >= 0x20 && c < 0x7f) s += char(c);
    else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      s += buf;
    }
  }
  if (n > max) s += "...";
  return s;
}

// Deepest nesting of [ and { outside strings, stopping early once over `limit`.
int json_depth(const char* p, size_t n, int limit) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
      if (max_depth > limit) return max_depth;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

}  // namespace

// ---- the mapped file

struct SafeTensors::Impl {
  std::string path;
  void* map = nullptr;
  size_t map_size = 0;
  const unsigned char* data = nullptr;  // start of the data section
  uint64_t data_size = 0;
  uint64_t header_size = 0;
  struct Entry {
    TensorInfo info;
    const FileDType* dtype = nullptr;
    int64_t numel = 0;
  };
  std::map<std::string, Entry> entries;
  std::map<std::string, std::string> metadata;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map) ::munmap(map, map_size);
  }

  [[noreturn]] void fail(const std::string& msg) const { throw Error(file_prefix(path) + msg); }
  [[noreturn]] void fail_key(const std::string& key, const std::string& msg) const {
    throw Error(key_prefix(path, key) + msg);
  }

  const Entry& entry(const std::string& key, const char* op) const {
    auto it = entries.find(key);
    if (it != entries.end()) return it->second;
    std::string ks;
    size_t shown = 0;
    for (const auto& [k, e] : entries) {
      if (shown++ == 20) {
        ks += ", ...";
        break;
      }
      ks += (ks.empty() ? "'" : ", '") + clip(k) + "'";
    }
    throw Error(std::string(op) + ": no tensor '" + key + "' in safetensors '" + path + "' (" +
                std::to_string(entries.size()) + " keys" + (ks.empty() ? "" : ": " + ks) + ")");
  }

  void parse_header();
  void parse_entry(const std::string& key, const json& v);
};

void SafeTensors::Impl::parse_header() {
  const char* header = static_cast<const char*>(map) + 8;
  const size_t n = size_t(header_size);
  if (n == 0) fail("header length is 0; expected a JSON object");
  // nlohmann's lexer takes a NUL byte for the end of input; JSON never contains a raw one.
  if (const void* nul = std::memchr(header, 0, n))
    fail("header is not valid JSON (NUL byte at offset " +
         std::to_string(static_cast<const char*>(nul) - header) + ")");
  if (json_depth(header, n, kMaxJsonDepth) > kMaxJsonDepth)
    fail("header JSON is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");

  std::set<std::string> seen;
  std::string duplicate;
  json j;
  try {
    j = json::parse(
        header, header + n,
        [&](int depth, json::parse_event_t ev, json& parsed) {
          if (depth == 1 && ev == json::parse_event_t::key && duplicate.empty()) {
            const std::string& k = parsed.get_ref<const std::string&>();
            if (!seen.insert(k).second) duplicate = k;
          }
          return true;
        },
        /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    fail("header is not valid JSON (" + std::string(e.what()) + "); header starts with '" + excerpt(header, n) + "'");
  }
  if (!j.is_object()) fail("header is not a JSON object (got " + json_kind(j) + ")");
  if (!duplicate.empty()) fail_key(duplicate, "the key occurs more than once in the header");

  for (const auto& [key, v] : j.items()) {
    if (key == "__metadata__") {
      if (!v.is_object()) fail("\"__metadata__\" must be an object of strings, got " + json_kind(v));
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string())
          fail("\"__metadata__\" entry '" + clip(mk) + "' must be a string, got " + json_kind(mv));
        metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    parse_entry(key, v);
  }

  // Ranges must not overlap (empty tensors occupy no bytes).
  std::vector<std::pair<const std::string*, const TensorInfo*>> ranges;
  for (const auto& [k, e] : entries)
    if (e.info.end > e.info.begin) ranges.push_back({&k, &e.info});
  std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) {
    return a.second->begin != b.second->begin ? a.second->begin < b.second->begin : *a.first < *b.first;
  });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& [ka, a] = ranges[i - 1];
    const auto& [kb, b] = ranges[i];
    if (b->begin < a->end)
      fail("data_offsets of keys '" + clip(*ka) + "' [" + std::to_string(a->begin) + ", " + std::to_string(a->end) +
           ") and '" + clip(*kb) + "' [" + std::to_string(b->begin) + ", " + std::to_string(b->end) + ") overlap");
  }
}

void SafeTensors::Impl::parse_entry(const std::string& key, const json& v) {
  if (!v.is_object()) fail_key(key, "entry must be an object with dtype, shape and data_offsets, got " + json_kind(v));
  Entry e;

  auto dt = v.find("dtype");
  if (dt == v.end()) fail_key(key, "missing \"dtype\"");
  if (!dt->is_string()) fail_key(key, "\"dtype\" must be a string, got " + json_kind(*dt));
  e.info.dtype = dt->get<std::string>();
  e.dtype = find_file_dtype(e.info.dtype);
  if (!e.dtype) fail_key(key, "unknown dtype '" + excerpt(e.info.dtype.data(), e.info.dtype.size()) + "' (known: " + known_dtypes() + ")");

  auto sh = v.find("shape");
  if (sh == v.end()) fail_key(key, "missing \"shape\"");
  if (!sh->is_array()) fail_key(key, "\"shape\" must be an array of non-negative integers, got " + json_kind(*sh));
  // The product of the non-zero extents must fit too: a zero-size tensor with a huge shape
  // would otherwise give views and reductions whose element counts overflow.
  int64_t numel = 1, nonzero = 1;
  for (size_t i = 0; i < sh->size(); ++i) {
    const json& x = (*sh)[i];
    bool ok = x.is_number_unsigned() ? x.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max())
                                     : x.is_number_integer() && x.get<int64_t>() >= 0;
    if (!ok)
      fail_key(key, "shape entry " + std::to_string(i) + " is " + clip(x) + "; shape must be non-negative integers");
    int64_t d = x.get<int64_t>();
    e.info.shape.push_back(d);
    if (__builtin_mul_overflow(numel, d, &numel) || (d && __builtin_mul_overflow(nonzero, d, &nonzero)))
      fail_key(key, "shape " + clip(*sh) + " has too many elements");
  }
  e.numel = numel;

  auto off = v.find("data_offsets");
  if (off == v.end()) fail_key(key, "missing \"data_offsets\"");
  if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
    fail_key(key, "\"data_offsets\" must be two non-negative integers [begin, end], got " + clip(*off));
  e.info.begin = (*off)[0].get<uint64_t>();
  e.info.end = (*off)[1].get<uint64_t>();
  const std::string offs = "data_offsets [" + std::to_string(e.info.begin) + ", " + std::to_string(e.info.end) + "]";
  if (e.info.end < e.info.begin) fail_key(key, offs + ": end < begin");
  if (e.info.end > data_size)
    fail_key(key, offs + " are out of the file: the data section has " + std::to_string(data_size) + " bytes (file " +
                      std::to_string(map_size) + " bytes, header " + std::to_string(header_size) + ")");
  uint64_t nbytes;
  if (__builtin_mul_overflow(uint64_t(numel), uint64_t(e.dtype->size), &nbytes))
    fail_key(key, "shape " + shape_str(e.info.shape) + " of " + e.info.dtype + " is too large");
  if (e.info.end - e.info.begin != nbytes)
    fail_key(key, offs + " span " + std::to_string(e.info.end - e.info.begin) + " bytes, but shape " +
                      shape_str(e.info.shape) + " of " + e.info.dtype + " needs " + std::to_string(nbytes) +
                      " bytes (size mismatch)");
  entries.emplace(key, std::move(e));
}

SafeTensors SafeTensors::open(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) impl->fail(std::string("cannot open file: ") + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    impl->fail(std::string("cannot stat file: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    impl->fail("not a regular file");
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    if (size == 0) impl->fail("empty file (0 bytes); a safetensors file starts with an 8-byte header length");
    impl->fail("file is only " + std::to_string(size) +
               " bytes, shorter than the 8-byte header length (truncated file?)");
  }
  if (size > uint64_t(std::numeric_limits<size_t>::max())) {
    ::close(fd);
    impl->fail("file too large to map");
  }
  void* m = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);
  if (m == MAP_FAILED) impl->fail(std::string("cannot map file: ") + std::strerror(map_err));
  impl->map = m;
  impl->map_size = size_t(size);

  const uint64_t n = read_le<uint64_t>(static_cast<const unsigned char*>(m));
  if (n > size - 8)
    impl->fail("header length " + std::to_string(n) + " is larger than the file allows (file " + std::to_string(size) +
               " bytes, so at most " + std::to_string(size - 8) + " header bytes; truncated or not a safetensors file?)");
  if (n > kMaxHeaderBytes)
    impl->fail("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes) +
               " bytes");
  impl->header_size = n;
  impl->data = static_cast<const unsigned char*>(m) + 8 + n;
  impl->data_size = size - 8 - n;
  impl->parse_header();

  SafeTensors f;
  f.impl_ = std::move(impl);
  return f;
}

namespace {
const SafeTensors::Impl& need(const std::shared_ptr<const SafeTensors::Impl>& p, const char* op) {
  if (!p) throw Error(std::string(op) + ": SafeTensors not opened (use SafeTensors::open)");
  return *p;
}
}  // namespace

const std::string& SafeTensors::path() const { return need(impl_, "SafeTensors::path").path; }

std::vector<std::string> SafeTensors::keys() const {
  std::vector<std::string> ks;
  for (const auto& [k, e] : need(impl_, "SafeTensors::keys").entries) ks.push_back(k);
  return ks;
}

bool SafeTensors::contains(const std::string& key) const {
  return need(impl_, "SafeTensors::contains").entries.count(key) != 0;
}

size_t SafeTensors::size() const { return need(impl_, "SafeTensors::size").entries.size(); }

TensorInfo SafeTensors::info(const std::string& key) const {
  return need(impl_, "SafeTensors::info").entry(key, "SafeTensors::info").info;
}

const std::map<std::string, std::string>& SafeTensors::metadata() const {
  return need(impl_, "SafeTensors::metadata").metadata;
}

std::optional<std::string> SafeTensors::metadata(const std::string& key) const {
  const auto& m = need(impl_, "SafeTensors::metadata").metadata;
  auto it = m.find(key);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

MetaValue SafeTensors::metadata_json(const std::string& key) const {
  const Impl& f = need(impl_, "SafeTensors::metadata_json");
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) {
    std::string have;
    for (const auto& [k, v] : f.metadata) have += (have.empty() ? "" : ", ") + ("'" + clip(k, 40) + "'");
    throw Error(file_prefix(f.path) + "no metadata entry '" + key + "' (entries: " + (have.empty() ? "none" : have) + ")");
  }
  return MetaValue::parse(it->second, file_prefix(f.path) + "metadata entry '" + key + "'");
}

namespace {

// Converts `n` values of file dtype `fd` at `src` into `out` (dimx dtype `dt`).
void convert(const SafeTensors::Impl& f, const std::string& key, const FileDType& fd, const unsigned char* src,
             int64_t n, DType dt, void* out) {
  const size_t es = fd.size;
  if (n == 0) return;
  auto int_fail = [&](int64_t i, const IntValue& v) {
    f.fail_key(key, "value " + (v.is_unsigned ? std::to_string(v.u) : std::to_string(v.s)) + " at index " +
                        std::to_string(i) + " does not fit in " + dtype_name(dt));
  };
  switch (dt) {
    case DType::f32: {
      float* o = static_cast<float*>(out);
      if (fd.code == Code::F32) std::memcpy(o, src, size_t(n) * 4);
      else
        for (int64_t i = 0; i < n; ++i) o[i] = read_f32(fd.code, src + size_t(i) * es);
      return;
    }
    case DType::f64: {
      double* o = static_cast<double*>(out);
      if (fd.code == Code::F64) std::memcpy(o, src, size_t(n) * 8);
      else
        for (int64_t i = 0; i < n; ++i) o[i] = read_float(fd.code, src + size_t(i) * es);
      return;
    }
    case DType::i32: {
      int32_t* o = static_cast<int32_t*>(out);
      if (fd.code == Code::I32) {
        std::memcpy(o, src, size_t(n) * 4);
        return;
      }
      for (int64_t i = 0; i < n; ++i) {
        IntValue v = read_int(fd.code, src + size_t(i) * es);
        if (v.is_unsigned ? v.u > uint64_t(std::numeric_limits<int32_t>::max())
                          : (v.s < std::numeric_limits<int32_t>::min() || v.s > std::numeric_limits<int32_t>::max()))
          int_fail(i, v);
        o[i] = int32_t(v.is_unsigned ? int64_t(v.u) : v.s);
      }
      return;
    }
    case DType::i64: {
      int64_t* o = static_cast<int64_t*>(out);
      if (fd.code == Code::I64) {
        std::memcpy(o, src, size_t(n) * 8);
        return;
      }
      for (int64_t i = 0; i < n; ++i) {
        IntValue v = read_int(fd.code, src + size_t(i) * es);
        if (v.is_unsigned && v.u > uint64_t(std::numeric_limits<int64_t>::max())) int_fail(i, v);
        o[i] = v.is_unsigned ? int64_t(v.u) : v.s;
      }
      return;
    }
    case DType::boolean: {
      unsigned char* o = static_cast<unsigned char*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = src[i] != 0;  // normalized to 0/1
      return;
    }
    case DType::bf16:
    case DType::f16: break;  // load() widens to f32 first
  }
}

}  // namespace

Tensor SafeTensors::load(const std::string& key, const Dims& dims, std::optional<DType> dtype) const {
  // bf16/f16 targets: widen to f32 (exact for BF16/F16 files), then round once.
  if (dtype && is_half(*dtype)) return load(key, dims, DType::f32).astype(*dtype);
  const Impl& f = need(impl_, "SafeTensors::load");
  const Impl::Entry& e = f.entry(key, "SafeTensors::load");
  const std::string file_desc = e.info.dtype + shape_str(e.info.shape);
  for (size_t i = 0; i < dims.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (dims[i] == dims[j])
        f.fail_key(key, "dims " + dims_str(dims) + " contain '" + dims[i].str() + "' twice");
  bool same = dims.size() == e.info.shape.size();
  for (size_t i = 0; same && i < dims.size(); ++i) same = dims[i].extent() == e.info.shape[i];
  if (!same)
    f.fail_key(key, "file shape " + file_desc + " does not match dims " + dims_str(dims) + " (extents " +
                        extents_str(dims) + "); give the Dims in the file's row-major order");
  const DType dt = dtype.value_or(natural_dtype(*e.dtype));
  if (!compatible(*e.dtype, dt))
    f.fail_key(key, std::string("cannot load ") + e.info.dtype + " as " + dtype_name(dt) +
                        " (float files load as f32/f64, integer files as i32/i64, BOOL as bool; use astype after "
                        "loading)");
  Tensor t = empty(dims, dt, Device::cpu(), "SafeTensors::load");
  convert(f, key, *e.dtype, f.data + e.info.begin, e.numel, dt, t.impl().data());
  return t;
}

Tensor SafeTensors::load(const std::string& key, const Dims& dims, const std::vector<std::pair<Dim, Dim>>& padded,
                         std::optional<DType> dtype) const {
  const std::string where = key_prefix(need(impl_, "SafeTensors::load").path, key);
  for (const auto& [fd, dd] : padded) {
    if (!dimx::contains(dims, fd)) throw Error(where + "padded file Dim '" + fd.str() + "' is not among " + dims_str(dims));
    if (fd.is_dynamic()) throw Error(where + "padded file Dim '" + fd.str() + "' must be static");
    if (!dd.is_dynamic()) throw Error(where + "'" + dd.str() + "' is not a dynamic Dim (padded loads make one)");
    if (dimx::contains(dims, dd)) throw Error(where + "dynamic Dim '" + dd.str() + "' is also among the file's Dims " + dims_str(dims));
    if (dd.extent() > fd.extent())
      throw Error(where + "dynamic Dim '" + dd.str() + "' is longer than the stored '" + fd.str() + "'");
    const Tensor lens = dd.lengths();  // named: a range-for over a temporary's member dangles
    for (const Dim& l : lens.dims())
      if (!dimx::contains(dims, l) || l == fd)
        throw Error(where + "the lengths of '" + dd.str() + "' are over '" + l.str() + "', which the file's Dims " +
                    dims_str(dims) + " lack");
  }
  Tensor t = load(key, dims, dtype);
  for (const auto& [fd, dd] : padded) {
    Dim kept(dd.extent(), fd.name());
    t = slice(t, fd, 0, dd.extent(), 1, kept).first;
    t = replace_dim(t, kept, dd).first;
  }
  return t.contiguous();
}

Tensor SafeTensors::load(const std::string& key) const {
  const Impl& f = need(impl_, "SafeTensors::load");
  const Impl::Entry& e = f.entry(key, "SafeTensors::load");
  Dims dims;
  for (size_t i = 0; i < e.info.shape.size(); ++i) dims.emplace_back(e.info.shape[i], "dim" + std::to_string(i));
  return load(key, dims);
}

// ---- writing

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::string where = "save_safetensors '" + path + "': ";
  struct Item {
    const std::string* key;
    Tensor data;  // contiguous CPU
    DType dtype;
    uint64_t bytes;
  };
  std::vector<Item> items;
  std::set<std::string> keys;
  for (const auto& [key, t] : tensors) {
    if (key.empty()) throw Error(where + "empty key");
    if (key == "__metadata__") throw Error(where + "key '__metadata__' is reserved for metadata");
    if (!keys.insert(key).second) throw Error(where + "duplicate key '" + key + "'");
    if (!t.defined()) throw Error(where + "key '" + key + "': undefined tensor");
    Tensor c = t.detach().to(Device::cpu()).contiguous();
    items.push_back({&key, c, c.dtype(), uint64_t(c.numel()) * dtype_size(c.dtype())});
  }
  // Larger elements first, so every tensor starts aligned to its element size.
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    size_t sa = dtype_size(items[a].dtype), sb = dtype_size(items[b].dtype);
    return sa != sb ? sa > sb : *items[a].key < *items[b].key;
  });

  json header = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (size_t i : order) {
    const Item& it = items[i];
    json shape = json::array();
    for (const auto& d : it.data.dims()) shape.push_back(d.extent());
    header[*it.key] = {{"dtype", file_name_of(it.dtype)}, {"shape", shape}, {"data_offsets", {offset, offset + it.bytes}}};
    offset += it.bytes;
  }
  std::string text;
  try {
    text = header.dump();  // keys sorted (nlohmann::json objects are std::maps)
  } catch (const json::exception& e) {
    throw Error(where + "cannot encode the header (keys and metadata must be valid UTF-8): " + e.what());
  }
  while ((8 + text.size()) % 8 != 0) text += ' ';

  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  std::FILE* fp = std::fopen(tmp.c_str(), "wb");
  if (!fp) throw Error(where + "cannot create '" + tmp + "': " + std::strerror(errno));
  bool ok = true;
  auto put = [&](const void* p, size_t n) {
    if (ok && n && std::fwrite(p, 1, n, fp) != n) ok = false;
  };
  uint64_t n = text.size();
  put(&n, 8);
  put(text.data(), text.size());
  for (size_t i : order) put(items[i].data.data_ptr(), size_t(items[i].bytes));
  int werr = ok ? 0 : errno;
  if (std::fclose(fp) != 0 && ok) {
    ok = false;
    werr = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error(where + "write failed: " + std::strerror(werr));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw Error(where + "cannot rename '" + tmp + "' to the destination: " + std::strerror(err));
  }
}

// ---- loading into existing tensors

LoadReport load_into(const SafeTensors& file, const std::vector<LoadBinding>& bindings, bool strict) {
  return load_into(file, bindings, LoadOptions{strict ? Strictness::exact : Strictness::none, ""});
}

LoadReport load_into(const SafeTensors& file, const std::vector<LoadBinding>& bindings, const LoadOptions& options) {
  const std::string& path = file.path();
  const std::string where = "load_into '" + path + "': ";
  std::set<std::string> bound;
  std::vector<std::pair<const LoadBinding*, Dims>> fitting;
  LoadReport report;
  for (const auto& b : bindings) {
    if (!bound.insert(b.key).second) throw Error(where + "key '" + b.key + "' is bound twice");
    if (!b.target.defined()) throw Error(where + "key '" + b.key + "': undefined target tensor");
    if (b.target.impl().storage->read_only)
      throw Error(where + "key '" + b.key + "': target " + b.target.str() + " is read-only");
    const Dims& tdims = b.target.dims();
    Dims order = b.file_order.empty() ? tdims : b.file_order;
    if (order.size() != tdims.size() || !contains_all(order, tdims) || !contains_all(tdims, order))
      throw Error(where + "key '" + b.key + "': file_order " + dims_str(order) + " is not a permutation of the target's " +
                  dims_str(tdims));
    if (!file.contains(b.key)) {
      report.missing.push_back(b.key);
      continue;
    }
    TensorInfo info = file.info(b.key);
    bool fits = info.shape.size() == order.size();
    for (size_t i = 0; fits && i < order.size(); ++i) fits = order[i].extent() == info.shape[i];
    const FileDType* fd = find_file_dtype(info.dtype);
    if (fits && !(fd && compatible(*fd, b.target.dtype()))) fits = false;
    if (!fits) {
      report.mismatched.push_back(b.key + ": file " + info.dtype + shape_str(info.shape) + " vs " + dims_str(order) +
                                  " (" + dtype_name(b.target.dtype()) + ")");
      continue;
    }
    fitting.push_back({&b, std::move(order)});
  }
  for (const auto& k : file.keys())
    if (!bound.count(k) && k.rfind(options.scope, 0) == 0) report.unexpected.push_back(k);
  const bool strict = options.strict != Strictness::none;
  const bool fail_unexpected = options.strict == Strictness::exact;

  // Every value is converted before any target is written, so a failure (a value out of the
  // target dtype's range) never leaves some targets loaded and others not.
  std::vector<std::pair<const LoadBinding*, Tensor>> staged;
  for (const auto& [b, order] : fitting) {
    try {
      staged.push_back({b, file.load(b->key, order, b->target.dtype())});
    } catch (const Error& e) {
      if (strict) throw Error(where + "strict load failed, nothing loaded; " + e.what());
      report.mismatched.push_back(b->key + ": " + e.what());
    }
  }

  if (strict && (!report.missing.empty() || (fail_unexpected && !report.unexpected.empty()) ||
                 !report.mismatched.empty())) {
    std::string msg = where + "strict load failed, nothing loaded";
    auto list = [&](const char* what, const std::vector<std::string>& v, bool quote) {
      if (v.empty()) return;
      msg += "; " + std::to_string(v.size()) + " " + what + ": ";
      for (size_t i = 0; i < v.size(); ++i) msg += (i ? ", " : "") + (quote ? "'" + v[i] + "'" : v[i]);
    };
    list("missing", report.missing, true);
    if (fail_unexpected) list("unexpected", report.unexpected, true);
    list("mis-shaped", report.mismatched, false);
    throw Error(msg);
  }
  for (const auto& [b, t] : staged) {
    b->target.copy_from(t);
    report.loaded.push_back(b->key);
  }
  return report;
}

}  // namespace dimx
