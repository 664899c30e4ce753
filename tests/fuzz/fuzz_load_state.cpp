// libFuzzer harness: load_state of safetensors files into a small module (self-attention with
// a projection, LayerNorm, Embedding, two Linears in a vector). The fuzz bytes either are the
// file (first byte 0 mod 4) or drive a mutated file made from the module's own tensors:
// renamed, dropped, duplicated or extra keys, other dtypes, shapes and data_offsets, junk in
// the header, a wrong header length, a truncated file. The load runs with each Strictness,
// with and without a key prefix, a renaming and a declared layout.
// Contract checked: every outcome is a LoadReport or a dimx::Error; which one, and the
// report's loaded / missing / mismatched / unexpected lists, follow from the file's header as
// SafeTensors reports it; a failed load changes no parameter; a successful one changes exactly
// the loaded parameters, to the file's values. A padded load (SafeTensors::load with a dynamic
// Dim) of an extra entry "feats" keeps the valid frames or throws when the Dim is too long.
#include <dimx/nn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "fuzz_util.h"

using namespace dimx;
using dimx_fuzz::ByteReader;
using dimx_fuzz::finding;
using dimx_fuzz::run_guarded;

namespace {

struct Small : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(Small, (nn::SelfAttention, att), (nn::LayerNorm, norm), (nn::Embedding, emb),
                           (std::vector<nn::Linear>, layers));
  Small(Dim model, Dim vocab, Dim feature, Dim out, Generator& gen, DType dt)
      : att(model, model.copy("proj"), Dim(4, "kt"), Dim(4, "vt"), 2, gen, true, 0.1, false, dt),
        norm(model, 1e-5, true, true, dt),
        emb(vocab, feature, gen, dt),
        layers{nn::Linear(feature, out, gen, true, dt), nn::Linear(feature, out.copy("out1"), gen, false, dt)} {}
};

const char* const kFloatTypes[] = {"F32", "F64", "F16", "BF16", "F8_E5M2", "F8_E4M3"};
const char* const kOtherTypes[] = {"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F31", "f32", ""};

size_t file_type_size(const std::string& dt) {
  if (dt == "F64" || dt == "I64" || dt == "U64") return 8;
  if (dt == "F32" || dt == "I32" || dt == "U32") return 4;
  if (dt == "F16" || dt == "BF16" || dt == "I16" || dt == "U16") return 2;
  return 1;
}

bool is_float_file_type(const std::string& dt) {
  return std::find(std::begin(kFloatTypes), std::end(kFloatTypes), dt) != std::end(kFloatTypes);
}

// A JSON string literal of arbitrary bytes (bytes >= 0x80 are kept: invalid UTF-8 must be
// refused by the reader, not by this writer).
std::string quote(const std::string& s) {
  std::string q = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      q += '\\';
      q += char(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      q += buf;
    } else {
      q += char(c);
    }
  }
  return q + "\"";
}

// One header entry as written: shape entries as JSON tokens, so they can be anything.
struct FileEntry {
  std::string key, dtype;
  std::vector<std::string> shape;
  uint64_t numel = 1;  // of the intended shape, for the data size
  int64_t begin_delta = 0, end_delta = 0;
};

std::string mutate_key(ByteReader& r, const std::string& key, const std::vector<std::string>& names) {
  switch (r.pick(6)) {
    case 0: return key + r.bytes(r.range(1, 3));
    case 1: return key.substr(0, key.size() - std::min(key.size(), size_t(r.range(1, 4))));
    case 2: return names[r.pick(names.size())];  // collides with another tensor's key
    case 3: return r.bytes(r.range(0, 6));
    case 4: return "__metadata__";
    default: return key;
  }
}

void mutate_shape(ByteReader& r, FileEntry& e) {
  switch (r.pick(8)) {
    case 0:
      if (!e.shape.empty()) e.shape.pop_back();
      break;
    case 1: e.shape.push_back("1"); break;
    case 2:
      if (e.shape.size() >= 2) std::swap(e.shape[0], e.shape[1]);
      break;
    case 3:
      if (!e.shape.empty()) e.shape[r.pick(e.shape.size())] = std::to_string(r.range(0, 9));
      break;
    case 4: {
      static const char* const odd[] = {"-1", "1.5", "\"4\"", "null", "9223372036854775807", "18446744073709551615",
                                        "4294967296", "1e3", "[2]", "0"};
      if (!e.shape.empty()) e.shape[r.pick(e.shape.size())] = odd[r.pick(std::size(odd))];
      break;
    }
    case 5: e.shape = {"0", "4611686018427387904", "4"}; break;
    default: break;
  }
}

struct Built {
  std::string file;
  bool has_feats = false;
};

// A safetensors file from the module's tensors (key -> tensor), mutated as the bytes say.
Built build_file(ByteReader& r, const std::vector<std::pair<std::string, Tensor>>& tensors,
                 const std::map<std::string, Dims>& file_orders) {
  std::vector<std::string> keys;
  for (const auto& [k, t] : tensors) keys.push_back(k);
  std::vector<FileEntry> entries;
  const bool mutate = r.flag();
  for (const auto& [key, t] : tensors) {
    FileEntry e;
    e.key = key;
    e.dtype = t.dtype() == DType::f64 ? "F64" : "F32";
    for (const Dim& d : file_orders.at(key)) e.shape.push_back(std::to_string(d.extent()));
    e.numel = uint64_t(t.numel());
    if (mutate) {
      const uint8_t what = r.byte();
      if (what & 1) e.key = mutate_key(r, key, keys);
      if (what & 2) mutate_shape(r, e);
      if (what & 4) e.dtype = r.flag() ? kFloatTypes[r.pick(std::size(kFloatTypes))] : kOtherTypes[r.pick(std::size(kOtherTypes))];
      if (what & 8) {
        e.begin_delta = r.range(-3, 3);
        e.end_delta = r.range(-3, 3);
      }
      if ((what & 0x30) == 0x30) continue;  // dropped
    } else if (r.flag()) {
      e.dtype = kFloatTypes[r.pick(std::size(kFloatTypes))];
    }
    entries.push_back(e);
  }
  Built out;
  // Extra entries: unexpected keys, one under the prefix, and the padded-load entry "feats".
  const size_t extras = r.pick(4);
  for (size_t i = 0; i < extras; ++i) {
    static const char* const names[] = {"feats", "extra", "m.extra", "m.layers/2/weight", "optimizer.step", "feats"};
    FileEntry e;
    e.key = names[r.pick(std::size(names))];
    e.dtype = r.flag() ? "F32" : kFloatTypes[r.pick(std::size(kFloatTypes))];
    e.shape = {std::to_string(r.range(0, 3)), std::to_string(r.range(0, 5))};
    e.numel = uint64_t(std::stoll(e.shape[0]) * std::stoll(e.shape[1]));
    out.has_feats = out.has_feats || e.key == "feats";
    entries.push_back(e);
  }

  // Header and data, offsets in order; each tensor's bytes from the input (or a pattern).
  std::string header = "{", data;
  if (r.flag()) header += "\"__metadata__\":{\"format\":\"pt\",\"config\":" + quote(r.bytes(r.range(0, 12))) + "},";
  for (size_t i = 0; i < entries.size(); ++i) {
    const FileEntry& e = entries[i];
    const uint64_t bytes = e.numel * file_type_size(e.dtype);
    const uint64_t begin = data.size();
    std::string chunk = r.flag() ? r.bytes(bytes) : std::string();
    for (size_t j = chunk.size(); j < bytes; ++j) chunk += char((j * 37 + i) & 0x3f);  // small, finite values
    data += chunk;
    auto off = [](uint64_t v, int64_t d) { return std::to_string(int64_t(v) + d < 0 ? v : uint64_t(int64_t(v) + d)); };
    std::string shape;
    for (size_t j = 0; j < e.shape.size(); ++j) shape += (j ? "," : "") + e.shape[j];
    header += (i ? "," : "") + quote(e.key) + ":{\"dtype\":" + quote(e.dtype) + ",\"shape\":[" + shape +
              "],\"data_offsets\":[" + off(begin, e.begin_delta) + "," + off(data.size(), e.end_delta) + "]}";
  }
  header += "}";
  if (mutate && r.pick(8) == 0) {
    // Junk inside the header.
    const size_t at = r.pick(header.size() + 1);
    header.insert(at, r.bytes(r.range(1, 4)));
  }
  while (r.flag() && header.size() % 8 != 0) header += ' ';
  int64_t length = int64_t(header.size());
  if (mutate && r.pick(8) == 0) length += r.range(-9, 9);
  out.file = dimx_fuzz::le64(uint64_t(length)) + header + data;
  if (mutate && r.pick(8) == 0) out.file.resize(out.file.size() - std::min(out.file.size(), size_t(r.range(1, 300))));
  return out;
}

std::vector<uint64_t> bits_of(const Tensor& t) {
  const std::vector<double> v = t.to_vector<double>();
  std::vector<uint64_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(double));
  return b;
}

bool same_values(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>(a.dims());
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) return false;
  return true;
}

// The padded load of "feats" [b, f] into {b, time} with time's lengths over b from the bytes.
void check_padded_load(ByteReader& r, const SafeTensors& st) {
  const TensorInfo info = st.info("feats");
  if (info.shape.size() != 2 || info.shape[0] > 8 || !is_float_file_type(info.dtype)) return;
  Dim b(info.shape[0], "b"), f(info.shape[1], "f");
  std::vector<int32_t> lens(size_t(b.extent()));
  for (int32_t& l : lens) l = int32_t(r.range(0, 6));
  Dim time(Tensor::from_vector<int32_t>({b}, lens), "time");
  const bool must_fail = time.extent() > f.extent();
  Tensor t;
  std::string msg;
  const bool ok = run_guarded("SafeTensors::load (padded)", [&] { t = st.load("feats", {b, f}, {{f, time}}); }, &msg);
  if (ok == must_fail) finding(std::string("padded load: ") + (ok ? "a Dim longer than the file loaded" : msg));
  if (!ok) return;
  if (!(t.dims() == Dims{b, time})) finding("padded load: Dims " + dims_str(t.dims()));
  const Tensor plain = st.load("feats", {b, f});
  const std::vector<double> got = t.to_vector<double>(), all = plain.to_vector<double>();
  for (int64_t i = 0; i < b.extent(); ++i)
    for (int64_t j = 0; j < lens[size_t(i)]; ++j) {
      const double x = got[size_t(i * time.extent() + j)], y = all[size_t(i * f.extent() + j)];
      if (!(x == y || (std::isnan(x) && std::isnan(y)))) finding("padded load: a valid frame differs");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader r(data, size);
  const uint8_t mode = r.byte();
  const DType dt = (mode & 4) ? DType::f64 : DType::f32;
  Generator gen(7);
  Dim model(4, "model"), vocab(5, "vocab"), feature(3, "feature"), out(2, "out");
  Small m(model, vocab, feature, out, gen, dt);
  std::vector<std::pair<std::string, Tensor>> named;
  for (const auto& [name, p] : nn::named_tensors(m)) named.emplace_back(name, *p);

  // How the load maps names to keys: the plain names, or StateOptions with a prefix, a
  // renaming ('.' -> '/') and emb.weight declared in the file as [feature, vocab].
  const uint8_t how = r.byte();
  const bool with_options = how & 1;
  nn::StateOptions opts;
  if (with_options) {
    opts.strict = std::array{Strictness::exact, Strictness::module, Strictness::none}[(how >> 1) % 3];
    if (how & 8) opts.prefix = "m.";
    if (how & 16) opts.rename = [](const std::string& n) {
      std::string s = n;
      std::replace(s.begin(), s.end(), '.', '/');
      return s;
    };
    if (how & 32) opts.layouts["emb.weight"] = {m.emb.feature, m.emb.vocab};
    if ((how & 0xc0) == 0xc0) opts.layouts["no.such.tensor"] = {model};  // a binding error
  }
  const bool strict_bool = how & 2;
  std::map<std::string, Dims> order_by_key;  // the file order of each bound key
  std::vector<std::pair<std::string, Tensor>> by_key;
  for (const auto& [name, t] : named) {
    const std::string key = with_options ? opts.prefix + (opts.rename ? opts.rename(name) : name) : name;
    Dims order = t.dims();
    if (with_options && opts.layouts.count(name)) order = opts.layouts.at(name);
    order_by_key[key] = order;
    by_key.emplace_back(key, t);
  }

  Built built;
  if ((mode & 3) == 0) built.file = r.rest();
  else built = build_file(r, by_key, order_by_key);
  dimx_fuzz::MemFile file(built.file);
  SafeTensors st;
  if (!run_guarded("SafeTensors::open", [&] { st = SafeTensors::open(file.path()); })) return 0;

  // What the header says the load must do.
  std::set<std::string> missing, mismatched, loaded, unexpected;
  for (const auto& [key, t] : by_key) {
    if (!st.contains(key)) {
      missing.insert(key);
      continue;
    }
    const TensorInfo info = st.info(key);
    const Dims& order = order_by_key.at(key);
    bool fits = info.shape.size() == order.size() && is_float_file_type(info.dtype);
    for (size_t i = 0; fits && i < order.size(); ++i) fits = info.shape[i] == order[i].extent();
    (fits ? loaded : mismatched).insert(key);
  }
  const std::string scope = with_options ? opts.prefix : "";
  for (const std::string& k : st.keys())
    if (!order_by_key.count(k) && k.rfind(scope, 0) == 0) unexpected.insert(k);
  const Strictness strictness = with_options ? opts.strict : strict_bool ? Strictness::exact : Strictness::none;
  const bool binding_error = with_options && opts.layouts.count("no.such.tensor");
  const bool must_fail = binding_error || (strictness != Strictness::none && (!missing.empty() || !mismatched.empty())) ||
                         (strictness == Strictness::exact && !unexpected.empty());

  std::vector<std::vector<uint64_t>> before;
  for (const auto& [key, t] : by_key) before.push_back(bits_of(t));
  LoadReport rep;
  std::string msg;
  const bool ok = run_guarded("load_state", [&] {
    if (with_options) rep = nn::load_state(m, st, opts);
    else if (how & 4) rep = nn::load_state(m, file.path(), strict_bool);
    else rep = nn::load_state(m, st, strict_bool);
  }, &msg);
  if (ok == must_fail) finding(std::string("load_state: ") + (ok ? "loaded where the header says it must fail" : "failed: " + msg));
  if (!ok && msg.rfind("load_state", 0) != 0) finding("load_state error does not start with the op: " + msg);

  const std::set<std::string> got_loaded(rep.loaded.begin(), rep.loaded.end());
  const std::set<std::string> got_missing(rep.missing.begin(), rep.missing.end());
  const std::set<std::string> got_unexpected(rep.unexpected.begin(), rep.unexpected.end());
  std::set<std::string> got_mismatched;
  for (const std::string& s : rep.mismatched) {
    bool matched = false;
    for (const std::string& k : mismatched) matched = matched || s.rfind(k + ": ", 0) == 0;
    if (!matched) finding("load_state reports an unexpected mismatch: " + s);
    got_mismatched.insert(s.substr(0, s.find(": ")));
  }
  if (ok && (got_loaded != loaded || got_missing != missing || got_unexpected != unexpected ||
             got_mismatched.size() != mismatched.size()))
    finding("load_state: the report differs from the header");

  for (size_t i = 0; i < by_key.size(); ++i) {
    const auto& [key, t] = by_key[i];
    if (ok && loaded.count(key)) {
      if (!same_values(t, st.load(key, order_by_key.at(key), t.dtype())))
        finding("load_state: '" + key + "' does not hold the file's values");
    } else if (bits_of(t) != before[i]) {
      finding("load_state: '" + key + "' changed although it was not loaded" + (ok ? "" : " (the load failed)"));
    }
  }
  if (built.has_feats && st.contains("feats")) check_padded_load(r, st);
  return 0;
}
