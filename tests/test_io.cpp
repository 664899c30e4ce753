// safetensors I/O: roundtrips in every dtype and layout, f16/bf16/f8 decoding against known bit
// patterns, a hand-built PyTorch-layout file, metadata, strict loading into existing tensors,
// and one test per kind of broken file (each must throw dimx::Error naming the problem, never
// crash; scripts/sanitize runs these under ASan and UBSan).
#include <catch2/catch.hpp>
#include <dimx/dimx.h>
#include <dimx/io.h>

#include "test_util.h"

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

using namespace dimx;
using Catch::Contains;
namespace fs = std::filesystem;

#define CHECK_DIMX_ERROR(expr, matcher) \
  do {                                  \
    CHECK_THROWS_AS(expr, dimx::Error); \
    CHECK_THROWS_WITH(expr, matcher);   \
  } while (0)

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
  fs::path dir;
  TempDir() {
    static std::atomic<int> counter{0};
    dir = fs::temp_directory_path() /
          ("dimx_test_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(f.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// 8-byte header length, header, data.
std::string st_file(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Writes `bytes` into a new file in `tmp` and opens it.
SafeTensors open_bytes(const TempDir& tmp, const std::string& bytes, const std::string& name = "t.safetensors") {
  std::string p = tmp.file(name);
  write_bytes(p, bytes);
  return SafeTensors::open(p);
}

// Expects opening `bytes` to fail with dimx::Error whose message matches.
template <class M>
void check_broken(const std::string& bytes, M matcher) {
  TempDir tmp;
  std::string p = tmp.file("broken.safetensors");
  write_bytes(p, bytes);
  CHECK_THROWS_AS(SafeTensors::open(p), dimx::Error);
  CHECK_THROWS_WITH(SafeTensors::open(p), matcher && Contains(p));
}

Tensor iota(const Dims& dims, DType dt) {
  std::vector<double> v(size_t(dimx_test::numel_of(dims)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = double(i % 11) - 4.5 + 0.25 * double(i);
  if (dt == DType::boolean)
    for (size_t i = 0; i < v.size(); ++i) v[i] = double((i * 7) % 3 == 0);
  else if (is_integer(dt))
    for (size_t i = 0; i < v.size(); ++i) v[i] = double(int64_t(i * 37 % 101) - 50);
  return Tensor::from_vector<double>(dims, v).astype(dt);
}

// Values of `t` in `order` as doubles.
std::vector<double> values(const Tensor& t, const Dims& order) {
  return t.astype(DType::f64).to_vector<double>(order);
}

}  // namespace

// ---------------------------------------------------------------- roundtrips

TEST_CASE("io: save/load roundtrip in every dtype and Dim order", "[io]") {
  TempDir tmp;
  Dim a(2, "a"), b(3, "b"), c(4, "c");
  const Dims base{a, b, c};
  for (DType dt : {DType::f32, DType::f64, DType::i32, DType::i64, DType::boolean}) {
    Tensor x = iota(base, dt);
    for (const Dims& order : dimx_test::dim_permutations(base)) {
      INFO(dtype_name(dt) << " order " << dims_str(order));
      Tensor xo = x.transpose_to(order);
      std::string p = tmp.file("rt.safetensors");
      save_safetensors(p, {{"x", xo}});
      SafeTensors f = SafeTensors::open(p);
      TensorInfo info = f.info("x");
      CHECK(info.shape == std::vector<int64_t>{order[0].extent(), order[1].extent(), order[2].extent()});
      const char* names[] = {"F32", "F64", "I32", "I64", "BOOL"};
      CHECK(info.dtype == names[int(dt)]);
      Tensor y = f.load("x", order);  // natural dtype
      CHECK(y.dtype() == dt);
      CHECK(y.dims() == order);
      CHECK(dimx_test::vec_identical(values(y, base), values(x, base)));
    }
  }
}

TEST_CASE("io: strided and broadcast views are exported in their Dim order", "[io]") {
  TempDir tmp;
  Dim a(3, "a"), b(4, "b");
  Tensor x = iota({a, b}, DType::f32);
  auto [s, b2] = slice(x, b, 1, 3);  // a strided view
  Tensor bc = expand_dim(Tensor::from_vector<float>({a}, std::vector<float>{1, 2, 3}), b);  // broadcast
  std::string p = tmp.file("views.safetensors");
  save_safetensors(p, {{"s", s}, {"bc", bc.transpose_to({b, a})}});
  SafeTensors f = SafeTensors::open(p);
  CHECK(f.load("s", {a, b2}).to_vector<float>() == s.to_vector<float>({a, b2}));
  CHECK(f.load("bc", {b, a}).to_vector<float>() == std::vector<float>{1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3});
}

TEST_CASE("io: scalars, empty tensors, several tensors, file layout", "[io]") {
  TempDir tmp;
  Dim z(0, "z"), n(3, "n"), one(1, "one");
  std::string p = tmp.file("mixed.safetensors");
  save_safetensors(p, {{"scalar", Tensor::scalar(2.5, DType::f64)},
                       {"empty", Tensor::zeros({z, n})},
                       {"flag", Tensor::from_vector<bool>({n}, std::vector<bool>{true, false, true})},
                       {"b.weight", iota({n, one}, DType::f32)},
                       {"a.index", iota({n}, DType::i64)}},
                   {{"format", "pt"}});
  std::string bytes = read_bytes(p);
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  CHECK((8 + hlen) % 8 == 0);
  std::string header = bytes.substr(8, hlen);
  size_t last = header.find_last_not_of(' ');
  CHECK(header[last] == '}');  // then padded with spaces

  SafeTensors f = SafeTensors::open(p);
  CHECK(f.keys() == std::vector<std::string>{"a.index", "b.weight", "empty", "flag", "scalar"});
  CHECK(f.size() == 5);
  CHECK(f.contains("flag"));
  CHECK_FALSE(f.contains("__metadata__"));
  // Every tensor starts aligned to its element size.
  for (const auto& k : f.keys()) {
    TensorInfo info = f.info(k);
    size_t es = info.dtype == "F64" || info.dtype == "I64" ? 8 : info.dtype == "F32" ? 4 : 1;
    CHECK((8 + hlen + info.begin) % es == 0);
  }
  Tensor s = f.load("scalar", {});
  CHECK(s.dtype() == DType::f64);
  CHECK(s.item<double>() == 2.5);
  Tensor e = f.load("empty", {z, n});
  CHECK(e.numel() == 0);
  CHECK(f.info("empty").begin == f.info("empty").end);
  CHECK(f.load("flag", {n}).to_vector<bool>() == std::vector<bool>{true, false, true});
  CHECK(f.load("a.index", {n}).to_vector<int64_t>() == iota({n}, DType::i64).to_vector<int64_t>());
  // Loading with fresh Dims for inspection.
  Tensor w = f.load("b.weight");
  REQUIRE(w.ndim() == 2);
  CHECK(w.dims()[0].name() == "dim0");
  CHECK(w.dims()[0].extent() == 3);
  CHECK(w.dims()[1].extent() == 1);
  CHECK(f.metadata().at("format") == "pt");
}

TEST_CASE("io: metadata roundtrip, including escapes and UTF-8", "[io]") {
  TempDir tmp;
  Dim n(2, "n");
  std::map<std::string, std::string> meta{
      {"format", "pt"}, {"note", "quote \" backslash \\ newline \n tab \t"}, {"unicode", "Dim \xc3\xa4\xe2\x82\xac"}, {"", "empty key"}};
  std::string p = tmp.file("meta.safetensors");
  save_safetensors(p, {{"x", Tensor::ones({n})}}, meta);
  SafeTensors f = SafeTensors::open(p);
  CHECK(f.metadata() == meta);
  // No metadata: no __metadata__ entry.
  save_safetensors(p, {{"x", Tensor::ones({n})}});
  CHECK(SafeTensors::open(p).metadata().empty());
  CHECK(read_bytes(p).find("__metadata__") == std::string::npos);
  // A file with no tensors at all.
  save_safetensors(p, {}, {{"k", "v"}});
  SafeTensors g = SafeTensors::open(p);
  CHECK(g.keys().empty());
  CHECK(g.metadata().at("k") == "v");
}

TEST_CASE("io: loaded tensors outlive the file object and the file", "[io]") {
  TempDir tmp;
  Dim n(4, "n");
  std::string p = tmp.file("life.safetensors");
  save_safetensors(p, {{"x", iota({n}, DType::f32)}});
  Tensor y;
  {
    SafeTensors f = SafeTensors::open(p);
    SafeTensors g = f;  // shares the mapping
    y = g.load("x", {n});
  }
  fs::remove(p);
  CHECK(y.to_vector<float>() == iota({n}, DType::f32).to_vector<float>());
  // Overwriting an open file: the old mapping stays valid (the writer renames a new file in).
  save_safetensors(p, {{"x", iota({n}, DType::f32)}});
  SafeTensors f = SafeTensors::open(p);
  save_safetensors(p, {{"x", Tensor::zeros({n})}});
  CHECK(f.load("x", {n}).to_vector<float>() == iota({n}, DType::f32).to_vector<float>());
  CHECK(SafeTensors::open(p).load("x", {n}).to_vector<float>() == std::vector<float>(4, 0.0f));
}

// ---------------------------------------------------------------- dtype conversion

TEST_CASE("io: F16 decoding against known bit patterns", "[io][dtype]") {
  TempDir tmp;
  const std::vector<uint16_t> bits{0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x3555, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x0000};
  const std::vector<double> want{1.0, -2.0, 65504.0, std::ldexp(1.0, -24), 1023 * std::ldexp(1.0, -24),
                                 std::ldexp(1.0, -14), 0.333251953125, -0.0, INFINITY, -INFINITY, NAN, 0.0};
  std::string header = R"({"h":{"dtype":"F16","shape":[12],"data_offsets":[0,24]}})";
  SafeTensors f = open_bytes(tmp, st_file(header, raw(bits)));
  Dim n(12, "n");
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    Tensor t = f.load("h", {n}, dt);
    CHECK(t.dtype() == dt);
    std::vector<double> got = values(t, {n});
    CHECK(dimx_test::vec_identical(got, want));
    CHECK(std::signbit(got[7]));   // -0.0 keeps its sign
    CHECK_FALSE(std::signbit(got[11]));
  }
  CHECK(f.load("h").dtype() == DType::f32);  // natural dtype of F16
}

TEST_CASE("io: BF16 decoding against known bit patterns", "[io][dtype]") {
  TempDir tmp;
  const std::vector<uint16_t> bits{0x3F80, 0xC0A0, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x3EAB, 0x7F7F, 0x8000, 0x0080};
  const std::vector<double> want{1.0, -5.0, INFINITY, -INFINITY, NAN, std::ldexp(1.0, -133), 0.333984375,
                                 std::ldexp(255.0, 120), -0.0, std::ldexp(1.0, -126)};
  std::string header = R"({"b":{"dtype":"BF16","shape":[2,5],"data_offsets":[0,20]}})";
  SafeTensors f = open_bytes(tmp, st_file(header, raw(bits)));
  Dim r(2, "r"), c(5, "c");
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor t = f.load("b", {r, c}, dt);
    std::vector<double> got = values(t, {r, c});
    CHECK(dimx_test::vec_identical(got, want));
    CHECK(std::signbit(got[8]));
  }
}

TEST_CASE("io: F8 E4M3 and E5M2 decoding", "[io][dtype]") {
  TempDir tmp;
  const std::string e4m3{'\x38', '\x7E', '\x7F', '\x01', '\xB8', '\x08'};  // 1, 448, NaN, 2^-9, -1, 2^-6
  const std::string e5m2{'\x3C', '\x7C', '\x01', '\xC0'};                   // 1, inf, 2^-16, -2
  std::string header = R"({"a":{"dtype":"F8_E4M3","shape":[6],"data_offsets":[0,6]},)"
                       R"("b":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[6,10]}})";
  SafeTensors f = open_bytes(tmp, st_file(header, e4m3 + e5m2));
  Tensor a = f.load("a");
  CHECK(dimx_test::vec_identical(values(a, a.dims()),
                                 std::vector<double>{1, 448, NAN, std::ldexp(1.0, -9), -1, std::ldexp(1.0, -6)}));
  Tensor b = f.load("b");
  CHECK(dimx_test::vec_identical(values(b, b.dims()), std::vector<double>{1, INFINITY, std::ldexp(1.0, -16), -2}));
}

TEST_CASE("io: F32 <-> F64 conversion on load", "[io][dtype]") {
  TempDir tmp;
  const std::vector<double> d{1.0 / 3.0, 1e300, -1e300, 3.4028235e38, -0.0, NAN, 1e-50};
  const std::vector<float> s{0.1f, -3.5f, 1e-40f /* subnormal */};
  std::string header = R"({"d":{"dtype":"F64","shape":[7],"data_offsets":[0,56]},)"
                       R"("s":{"dtype":"F32","shape":[3],"data_offsets":[56,68]}})";
  SafeTensors f = open_bytes(tmp, st_file(header, raw(d) + raw(s)));
  Dim n7(7, "n"), n3(3, "m");
  std::vector<float> df = f.load("d", {n7}, DType::f32).to_vector<float>();
  CHECK(df[0] == float(1.0 / 3.0));
  CHECK(df[1] == INFINITY);
  CHECK(df[2] == -INFINITY);
  CHECK(df[3] == std::numeric_limits<float>::max());  // rounds to FLT_MAX, not inf
  CHECK((df[4] == 0.0f && std::signbit(df[4])));
  CHECK(std::isnan(df[5]));
  CHECK(df[6] == 0.0f);
  CHECK(f.load("d", {n7}).to_vector<double>()[0] == 1.0 / 3.0);  // natural: f64, exact
  std::vector<double> sd = f.load("s", {n3}, DType::f64).to_vector<double>();
  CHECK(sd == std::vector<double>{double(0.1f), -3.5, double(1e-40f)});
}

TEST_CASE("io: integer and BOOL file dtypes", "[io][dtype]") {
  TempDir tmp;
  const std::vector<int8_t> i8{-128, 127};
  const std::vector<uint8_t> u8{0, 255};
  const std::vector<int16_t> i16{-32768, 32767};
  const std::vector<uint16_t> u16{0, 65535};
  const std::vector<uint32_t> u32{0, 4294967295u};
  const std::vector<uint64_t> u64{7, 18446744073709551615ull};
  const std::vector<int64_t> i64{-5, int64_t(1) << 40};
  const std::string bools{'\x00', '\x01', '\x02', '\xff'};
  std::string header = "{";
  std::string data;
  auto add = [&](const std::string& k, const char* dt, size_t n, const std::string& bytes) {
    header += (header.size() > 1 ? "," : "") + std::string("\"") + k + "\":{\"dtype\":\"" + dt + "\",\"shape\":[" +
              std::to_string(n) + "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + bytes.size()) + "]}";
    data += bytes;
  };
  add("i8", "I8", 2, raw(i8));
  add("u8", "U8", 2, raw(u8));
  add("i16", "I16", 2, raw(i16));
  add("u16", "U16", 2, raw(u16));
  add("u32", "U32", 2, raw(u32));
  add("u64", "U64", 2, raw(u64));
  add("i64", "I64", 2, raw(i64));
  add("bool", "BOOL", 4, bools);
  header += "}";
  SafeTensors f = open_bytes(tmp, st_file(header, data));
  Dim n(2, "n"), m(4, "m");
  CHECK(f.load("i8", {n}).to_vector<int32_t>() == std::vector<int32_t>{-128, 127});
  CHECK(f.load("u8", {n}).dtype() == DType::i32);
  CHECK(f.load("u8", {n}).to_vector<int32_t>() == std::vector<int32_t>{0, 255});
  CHECK(f.load("i16", {n}, DType::i64).to_vector<int64_t>() == std::vector<int64_t>{-32768, 32767});
  CHECK(f.load("u16", {n}).to_vector<int32_t>() == std::vector<int32_t>{0, 65535});
  CHECK(f.load("u32", {n}).dtype() == DType::i64);
  CHECK(f.load("u32", {n}).to_vector<int64_t>() == std::vector<int64_t>{0, 4294967295ll});
  CHECK(f.load("i64", {n}).to_vector<int64_t>() == i64);
  // Bools are normalized to 0/1.
  CHECK(f.load("bool", {m}).to_vector<bool>() == std::vector<bool>{false, true, true, true});
  CHECK(f.load("bool", {m}).to_vector<int32_t>() == std::vector<int32_t>{0, 1, 1, 1});
  // Values out of range of the requested dtype.
  CHECK_DIMX_ERROR(f.load("u32", {n}, DType::i32),
                   Contains("'u32'") && Contains("4294967295") && Contains("does not fit in i32"));
  CHECK_DIMX_ERROR(f.load("u64", {n}), Contains("'u64'") && Contains("18446744073709551615"));
  CHECK_DIMX_ERROR(f.load("i64", {n}, DType::i32), Contains("'i64'") && Contains("1099511627776"));
  // No implicit float <-> int <-> bool conversion.
  CHECK_DIMX_ERROR(f.load("i64", {n}, DType::f32), Contains("cannot load I64 as f32") && Contains("'i64'"));
  CHECK_DIMX_ERROR(f.load("bool", {m}, DType::i32), Contains("cannot load BOOL as i32"));
}

// ---------------------------------------------------------------- PyTorch layout

TEST_CASE("io: a PyTorch-written file (nn.Linear state_dict) maps onto Dims", "[io]") {
  // What safetensors.torch.save_file({"weight": W, "bias": b}, metadata={"format": "pt"}) writes
  // for nn.Linear(in_features=2, out_features=3): weight is [out, in] row-major.
  TempDir tmp;
  const std::vector<float> w{1, 2, 3, 4, 5, 6};  // w[o][i] = 2*o + i + 1
  const std::vector<float> bias{0.5f, -0.5f, 1.5f};
  std::string header =
      R"({"__metadata__":{"format":"pt"},"bias":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("weight":{"dtype":"F32","shape":[3,2],"data_offsets":[12,36]}})";
  while ((8 + header.size()) % 8) header += ' ';
  std::string p = tmp.file("linear.safetensors");
  write_bytes(p, st_file(header, raw(bias) + raw(w)));
  SafeTensors f = SafeTensors::open(p);
  CHECK(f.metadata().at("format") == "pt");
  Dim in(2, "in"), out(3, "out");
  Tensor W = f.load("weight", {out, in});
  // W(o, i), independent of the layout asked for later.
  std::vector<float> io = W.to_vector<float>({in, out});
  CHECK(io == std::vector<float>{1, 3, 5, 2, 4, 6});
  CHECK(f.load("bias", {out}).to_vector<float>() == bias);
  // Giving the Dims in the wrong order is a shape mismatch naming key, file shape and Dims.
  CHECK_DIMX_ERROR(f.load("weight", {in, out}),
                   Contains("'weight'") && Contains("F32[3, 2]") && Contains("in:2") && Contains("out:3") &&
                       Contains(p));
  // Saving it again from dimx gives the same values in the same layout.
  std::string q = tmp.file("again.safetensors");
  save_safetensors(q, {{"weight", W.transpose_to({in, out}).transpose_to({out, in})}, {"bias", f.load("bias", {out})}},
                   f.metadata());
  SafeTensors g = SafeTensors::open(q);
  CHECK(g.info("weight").shape == std::vector<int64_t>{3, 2});
  CHECK(g.load("weight", {out, in}).to_vector<float>() == w);
}

// ---------------------------------------------------------------- load_into (strict)

TEST_CASE("io: load_into copies into existing tensors, file_order maps the file layout", "[io][strict]") {
  TempDir tmp;
  Dim in(2, "in"), out(3, "out");
  std::string p = tmp.file("params.safetensors");
  Tensor w_file = iota({out, in}, DType::f32);  // PyTorch layout [out, in]
  save_safetensors(p, {{"weight", w_file}, {"bias", iota({out}, DType::f64)}});
  SafeTensors f = SafeTensors::open(p);

  // The module stores its weight as {in, out} and wants f64 bias -> f32.
  Tensor weight = Tensor::zeros({in, out}).with_requires_grad();
  Tensor bias = Tensor::zeros({out});
  LoadReport r = load_into(f, {{"weight", weight, {out, in}}, {"bias", bias, {}}});
  CHECK(r.loaded == std::vector<std::string>{"weight", "bias"});
  CHECK(r.missing.empty());
  CHECK(r.unexpected.empty());
  CHECK(r.mismatched.empty());
  CHECK(weight.to_vector<float>({out, in}) == w_file.to_vector<float>());
  CHECK(weight.requires_grad());
  CHECK(bias.to_vector<float>() == iota({out}, DType::f64).to_vector<float>());
}

TEST_CASE("io: strict load_into names every missing, unexpected and mis-shaped key", "[io][strict]") {
  TempDir tmp;
  Dim in(2, "in"), out(3, "out"), other(5, "other");
  std::string p = tmp.file("params.safetensors");
  save_safetensors(p, {{"weight", iota({out, in}, DType::f32)},
                       {"bias", iota({out}, DType::f32)},
                       {"extra.a", Tensor::ones({in})},
                       {"extra.b", Tensor::ones({in})},
                       {"steps", iota({in}, DType::i64)}});
  SafeTensors f = SafeTensors::open(p);
  Tensor weight = Tensor::zeros({in, out});
  Tensor bias = Tensor::zeros({other});
  Tensor steps = Tensor::zeros({in});  // f32 target, I64 in the file: mismatched dtype
  Tensor gamma = Tensor::zeros({out});
  Tensor beta = Tensor::zeros({out});
  std::vector<LoadBinding> bindings{{"weight", weight, {}},  // file is [3, 2], target order {in:2, out:3}
                                    {"bias", bias, {}},
                                    {"steps", steps, {}},
                                    {"norm.gamma", gamma, {}},
                                    {"norm.beta", beta, {}}};
  CHECK_DIMX_ERROR(load_into(f, bindings),
                   Contains(p) && Contains("2 missing: 'norm.gamma', 'norm.beta'") &&
                       Contains("2 unexpected: 'extra.a', 'extra.b'") && Contains("3 mis-shaped") &&
                       Contains("weight: file F32[3, 2] vs {in:2, out:3}") && Contains("bias: file F32[3] vs {other:5}") &&
                       Contains("steps: file I64[2]"));
  // Nothing was modified.
  CHECK(weight.to_vector<float>() == std::vector<float>(6, 0.0f));

  // Non-strict: loads what fits, reports the rest.
  Tensor extra_a = Tensor::zeros({in});
  bindings.push_back({"extra.a", extra_a, {}});
  LoadReport r = load_into(f, bindings, /*strict=*/false);
  CHECK(r.loaded == std::vector<std::string>{"extra.a"});
  CHECK(r.missing == std::vector<std::string>{"norm.gamma", "norm.beta"});
  CHECK(r.unexpected == std::vector<std::string>{"extra.b"});
  CHECK(r.mismatched.size() == 3);
  CHECK(extra_a.to_vector<float>() == std::vector<float>{1, 1});
  CHECK(weight.to_vector<float>() == std::vector<float>(6, 0.0f));

  // Misuse of the bindings themselves.
  CHECK_DIMX_ERROR(load_into(f, {{"bias", gamma, {}}, {"bias", beta, {}}}), Contains("'bias' is bound twice"));
  CHECK_DIMX_ERROR(load_into(f, {{"bias", gamma, {in}}}), Contains("not a permutation"));
  CHECK_DIMX_ERROR(load_into(f, {{"bias", Tensor(), {}}}), Contains("undefined target"));
}

// ---------------------------------------------------------------- misuse of load and save

TEST_CASE("io: load with wrong Dims names key, file shape and Dims", "[io][errors]") {
  TempDir tmp;
  Dim a(2, "a"), b(3, "b"), c(3, "c");
  std::string p = tmp.file("x.safetensors");
  save_safetensors(p, {{"layer.w", iota({a, b}, DType::f32)}});
  SafeTensors f = SafeTensors::open(p);
  CHECK_DIMX_ERROR(f.load("layer.w", {b, a}),
                   Contains(p) && Contains("'layer.w'") && Contains("F32[2, 3]") && Contains("{b:3, a:2}"));
  CHECK_DIMX_ERROR(f.load("layer.w", {a}), Contains("'layer.w'") && Contains("{a:2}"));
  CHECK_DIMX_ERROR(f.load("layer.w", {a, b, c}), Contains("'layer.w'") && Contains("does not match"));
  CHECK_DIMX_ERROR(f.load("layer.w", {b, b}), Contains("'layer.w'") && Contains("twice"));
  CHECK_DIMX_ERROR(f.load("layer.v", {a, b}), Contains("no tensor 'layer.v'") && Contains("'layer.w'") && Contains(p));
  CHECK_DIMX_ERROR(f.info("nope"), Contains("no tensor 'nope'"));
  CHECK_DIMX_ERROR(SafeTensors().keys(), Contains("not opened"));
}

TEST_CASE("io: save misuse", "[io][errors]") {
  TempDir tmp;
  Dim n(2, "n");
  std::string p = tmp.file("s.safetensors");
  Tensor x = Tensor::ones({n});
  CHECK_DIMX_ERROR(save_safetensors(p, {{"x", x}, {"x", x}}), Contains("duplicate key 'x'") && Contains(p));
  CHECK_DIMX_ERROR(save_safetensors(p, {{"__metadata__", x}}), Contains("reserved"));
  CHECK_DIMX_ERROR(save_safetensors(p, {{"", x}}), Contains("empty key"));
  CHECK_DIMX_ERROR(save_safetensors(p, {{"u", Tensor()}}), Contains("'u'") && Contains("undefined"));
  CHECK_DIMX_ERROR(save_safetensors(p, {{"bad\xff", x}}), Contains("UTF-8"));
  std::string nodir = tmp.file("no/such/dir/s.safetensors");
  CHECK_DIMX_ERROR(save_safetensors(nodir, {{"x", x}}), Contains("cannot create") && Contains(nodir));
  CHECK_FALSE(fs::exists(p));  // failed saves leave nothing behind
  CHECK(std::distance(fs::directory_iterator(tmp.dir), fs::directory_iterator()) == 0);
}

// ---------------------------------------------------------------- broken files

namespace {
// A valid one-tensor header around `entry`, e.g. R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})".
std::string one(const std::string& entry) { return "{\"w\":" + entry + "}"; }
const std::string k8(8, '\0');  // 8 data bytes
}  // namespace

TEST_CASE("io broken: nonexistent path", "[io][broken]") {
  TempDir tmp;
  std::string p = tmp.file("missing.safetensors");
  CHECK_DIMX_ERROR(SafeTensors::open(p), Contains(p) && Contains("cannot open") && Contains("No such file"));
}

TEST_CASE("io broken: a directory", "[io][broken]") {
  TempDir tmp;
  CHECK_DIMX_ERROR(SafeTensors::open(tmp.dir.string()), Contains("not a regular file"));
}

TEST_CASE("io broken: empty file", "[io][broken]") { check_broken("", Contains("empty file")); }

TEST_CASE("io broken: file shorter than 8 bytes", "[io][broken]") {
  check_broken(std::string("\x02\0\0", 3), Contains("only 3 bytes") && Contains("8-byte header length"));
  check_broken(std::string(7, '\0'), Contains("only 7 bytes"));
}

TEST_CASE("io broken: truncated header (length beyond the file)", "[io][broken]") {
  std::string header = one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})");
  std::string full = st_file(header, k8);
  // Cut inside the header: the declared length no longer fits.
  check_broken(full.substr(0, 20), Contains("header length " + std::to_string(header.size()) +
                                            " is larger than the file allows") && Contains("file 20 bytes"));
}

TEST_CASE("io broken: header length larger than the file", "[io][broken]") {
  check_broken(le64(1000) + "{}", Contains("header length 1000 is larger than the file allows"));
  check_broken(le64(~uint64_t(0)) + "{}", Contains("header length 18446744073709551615"));
  check_broken(le64(uint64_t(1) << 63) + std::string(64, ' '), Contains("larger than the file"));
}

TEST_CASE("io broken: header length over the 100 MB limit", "[io][broken]") {
  TempDir tmp;
  std::string p = tmp.file("huge.safetensors");
  {
    std::ofstream f(p, std::ios::binary);
    std::string len = le64(100'000'001);
    f.write(len.data(), 8);
  }
  fs::resize_file(p, 8 + 100'000'001);  // sparse
  CHECK_DIMX_ERROR(SafeTensors::open(p), Contains("exceeds the limit") && Contains(p));
}

TEST_CASE("io broken: header length 0", "[io][broken]") {
  check_broken(le64(0), Contains("header length is 0"));
}

TEST_CASE("io broken: non-JSON header", "[io][broken]") {
  check_broken(st_file("not json at all"), Contains("not valid JSON") && Contains("not json"));
  check_broken(st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), Contains("not valid JSON"));
  check_broken(st_file(std::string("{\"w\xff\":1}")), Contains("not valid JSON"));  // invalid UTF-8
  check_broken(st_file(std::string("{\"a\":1}\0\0\0", 10)), Contains("not valid JSON") && Contains("NUL byte at offset 7"));
  check_broken(st_file(std::string(100, '[') + std::string(100, ']')), Contains("nested deeper"));
}

TEST_CASE("io broken: JSON not an object", "[io][broken]") {
  check_broken(st_file("[1, 2, 3]"), Contains("not a JSON object") && Contains("array"));
  check_broken(st_file("42"), Contains("not a JSON object") && Contains("number"));
  check_broken(st_file(R"({"w": [0, 8]})"), Contains("'w'") && Contains("entry must be an object"));
}

TEST_CASE("io broken: duplicate keys", "[io][broken]") {
  std::string e = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  check_broken(st_file("{\"w\":" + e + ",\"w\":" + e + "}", k8), Contains("'w'") && Contains("more than once"));
}

TEST_CASE("io broken: unknown dtype", "[io][broken]") {
  check_broken(st_file(one(R"({"dtype":"F7","shape":[2],"data_offsets":[0,8]})"), k8),
               Contains("'w'") && Contains("unknown dtype 'F7'") && Contains("BF16"));
  check_broken(st_file(one(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})"), k8), Contains("unknown dtype 'f32'"));
  check_broken(st_file(one(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"), k8),
               Contains("'w'") && Contains("\"dtype\" must be a string"));
  check_broken(st_file(one(R"({"shape":[2],"data_offsets":[0,8]})"), k8), Contains("'w'") && Contains("missing \"dtype\""));
  // Huge untrusted strings are shortened in messages.
  TempDir tmp;
  std::string p = tmp.file("long.safetensors");
  write_bytes(p, st_file("{\"" + std::string(1 << 20, 'k') + R"(":{"dtype":")" + std::string(1 << 20, 'F') +
                         R"(","shape":[2],"data_offsets":[0,8]}})", k8));
  try {
    SafeTensors::open(p);
    FAIL("no error");
  } catch (const dimx::Error& e) {
    CHECK_THAT(e.what(), Contains("unknown dtype 'FFFF"));
    CHECK(std::strlen(e.what()) < 1000);
  }
}

TEST_CASE("io broken: shape with negative or non-integer entries", "[io][broken]") {
  check_broken(st_file(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), k8),
               Contains("'w'") && Contains("shape entry 0 is -2"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[1,2.5],"data_offsets":[0,8]})"), k8),
               Contains("'w'") && Contains("shape entry 1 is 2.5"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), k8), Contains("shape entry 0"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]})"), k8),
               Contains("shape entry 0"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), k8), Contains("\"shape\" must be an array"));
  check_broken(st_file(one(R"({"dtype":"F32","data_offsets":[0,8]})"), k8), Contains("missing \"shape\""));
  // numel overflows int64.
  check_broken(st_file(one(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), k8),
               Contains("too many elements"));
  // numel * element size overflows uint64.
  check_broken(st_file(one(R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]})"), k8),
               Contains("too large"));
}

TEST_CASE("io broken: offsets out of file", "[io][broken]") {
  check_broken(st_file(one(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), k8),
               Contains("'w'") && Contains("data_offsets [0, 16] are out of the file") && Contains("8 bytes"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[0],"data_offsets":[9,9]})"), k8), Contains("out of the file"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[18446744073709551608,18446744073709551615]})"), k8),
               Contains("out of the file"));
}

TEST_CASE("io broken: offsets end < begin", "[io][broken]") {
  check_broken(st_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})"), k8 + k8),
               Contains("'w'") && Contains("data_offsets [8, 4]: end < begin"));
}

TEST_CASE("io broken: malformed data_offsets", "[io][broken]") {
  check_broken(st_file(one(R"({"dtype":"F32","shape":[2]})"), k8), Contains("'w'") && Contains("missing \"data_offsets\""));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), k8), Contains("two non-negative integers"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,16]})"), k8), Contains("two non-negative"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), k8), Contains("two non-negative"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8.0]})"), k8), Contains("two non-negative"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":"0-8"})"), k8), Contains("two non-negative"));
}

TEST_CASE("io broken: size mismatch with shape", "[io][broken]") {
  check_broken(st_file(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), k8 + k8),
               Contains("'w'") && Contains("span 8 bytes") && Contains("needs 12 bytes") && Contains("size mismatch"));
  check_broken(st_file(one(R"({"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]})"), k8), Contains("needs 8 bytes"));
  check_broken(st_file(one(R"({"dtype":"F32","shape":[0],"data_offsets":[0,4]})"), k8), Contains("needs 0 bytes"));
}

TEST_CASE("io broken: overlapping ranges", "[io][broken]") {
  std::string h = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                  R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  check_broken(st_file(h, std::string(24, '\0')), Contains("'a' [0, 16)") && Contains("'b' [8, 24)") && Contains("overlap"));
  // The same range twice.
  std::string h2 = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  check_broken(st_file(h2, k8), Contains("overlap"));
  // Empty tensors at the same offset do not overlap anything.
  TempDir tmp;
  std::string h3 = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("e":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]}})";
  CHECK(open_bytes(tmp, st_file(h3, k8)).keys().size() == 2);
}

TEST_CASE("io broken: bad __metadata__", "[io][broken]") {
  check_broken(st_file(R"({"__metadata__":{"n":1}})"), Contains("\"__metadata__\" entry 'n' must be a string"));
  check_broken(st_file(R"({"__metadata__":"pt"})"), Contains("\"__metadata__\" must be an object"));
}

TEST_CASE("io broken: every truncation and random corruption of a valid file throws or loads", "[io][broken][fuzz]") {
  TempDir tmp;
  Dim a(3, "a"), b(2, "b");
  std::string src = tmp.file("src.safetensors");
  save_safetensors(src,
                   {{"w", iota({a, b}, DType::f32)}, {"i", iota({b}, DType::i64)}, {"m", Tensor::ones({a}, DType::boolean)}},
                   {{"format", "pt"}});
  const std::string good = read_bytes(src);
  auto try_file = [&](const std::string& bytes) {
    std::string p = tmp.file("fuzz.safetensors");
    write_bytes(p, bytes);
    try {
      SafeTensors f = SafeTensors::open(p);
      for (const auto& k : f.keys()) {
        (void)f.load(k);
        TensorInfo info = f.info(k);
        (void)info;
      }
      return true;
    } catch (const dimx::Error&) {
      return false;
    }
  };
  CHECK(try_file(good));
  size_t failures = 0;
  for (size_t n = 0; n < good.size(); ++n) failures += !try_file(good.substr(0, n));
  CHECK(failures == good.size());  // every proper prefix is broken
  std::mt19937 rng(7);
  for (int iter = 0; iter < 400; ++iter) {
    std::string bad = good;
    int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      size_t pos = rng() % bad.size();
      switch (rng() % 3) {
        case 0: bad[pos] = char(rng()); break;
        case 1: bad[pos] = "0123456789-[]{},:\"."[rng() % 20]; break;
        default: bad[pos] = char(bad[pos] ^ (1 << (rng() % 8))); break;
      }
    }
    CHECK_NOTHROW(try_file(bad));  // any dimx::Error is caught; anything else fails the test
  }
}
