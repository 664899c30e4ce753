// MetaValue: JSON values of a safetensors file's metadata, parsed with nlohmann::json (a
// private dependency: the public header names no JSON library).
#include <dimx/io.h>

#include <cmath>

#include <nlohmann/json.hpp>

namespace dimx {

namespace {

constexpr int kMaxDepth = 64;

const char* kind_name(MetaValue::Kind k) {
  static const char* names[] = {"null", "boolean", "number", "string", "array", "object"};
  return names[size_t(k)];
}

}  // namespace

struct MetaValueBuilder {
  static MetaValue from(const nlohmann::json& j, int depth, const std::string& what) {
    if (depth > kMaxDepth) throw Error(what + ": JSON nested deeper than " + std::to_string(kMaxDepth) + " levels");
    MetaValue v;
    switch (j.type()) {
      case nlohmann::json::value_t::null: v.kind_ = MetaValue::Kind::null; break;
      case nlohmann::json::value_t::boolean:
        v.kind_ = MetaValue::Kind::boolean;
        v.bool_ = j.get<bool>();
        break;
      case nlohmann::json::value_t::number_integer:
      case nlohmann::json::value_t::number_unsigned:
      case nlohmann::json::value_t::number_float:
        v.kind_ = MetaValue::Kind::number;
        v.number_ = j.get<double>();
        break;
      case nlohmann::json::value_t::string:
        v.kind_ = MetaValue::Kind::string;
        v.string_ = j.get<std::string>();
        break;
      case nlohmann::json::value_t::array:
        v.kind_ = MetaValue::Kind::array;
        for (const auto& e : j) v.array_.push_back(from(e, depth + 1, what));
        break;
      case nlohmann::json::value_t::object:
        v.kind_ = MetaValue::Kind::object;
        for (const auto& [k, e] : j.items()) v.object_[k] = from(e, depth + 1, what);
        break;
      default: throw Error(what + ": unsupported JSON value");
    }
    return v;
  }
  static nlohmann::json to(const MetaValue& v) {
    switch (v.kind_) {
      case MetaValue::Kind::null: return nullptr;
      case MetaValue::Kind::boolean: return v.bool_;
      case MetaValue::Kind::number: return v.number_;
      case MetaValue::Kind::string: return v.string_;
      case MetaValue::Kind::array: {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& e : v.array_) a.push_back(to(e));
        return a;
      }
      case MetaValue::Kind::object: {
        nlohmann::json o = nlohmann::json::object();
        for (const auto& [k, e] : v.object_) o[k] = to(e);
        return o;
      }
    }
    return nullptr;
  }
};

MetaValue MetaValue::parse(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    // Depth is checked while parsing, so a hostile string cannot exhaust the stack.
    j = nlohmann::json::parse(text, [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
      if (depth > kMaxDepth) throw Error(what + ": JSON nested deeper than " + std::to_string(kMaxDepth) + " levels");
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    throw Error(what + ": not JSON (" + e.what() + ")");
  }
  return MetaValueBuilder::from(j, 0, what);
}

namespace {
[[noreturn]] void wrong(const MetaValue& v, const char* want) {
  throw Error(std::string("MetaValue: wanted ") + want + ", got " + kind_name(v.kind()) + " " + v.dump());
}
}  // namespace

bool MetaValue::as_bool() const {
  if (kind_ != Kind::boolean) wrong(*this, "a boolean");
  return bool_;
}

double MetaValue::as_double() const {
  if (kind_ != Kind::number) wrong(*this, "a number");
  return number_;
}

int64_t MetaValue::as_int() const {
  if (kind_ != Kind::number || !(std::abs(number_) < 9.007199254740992e15) || number_ != std::floor(number_))
    wrong(*this, "an integer");
  return int64_t(number_);
}

const std::string& MetaValue::as_string() const {
  if (kind_ != Kind::string) wrong(*this, "a string");
  return string_;
}

const std::vector<MetaValue>& MetaValue::as_array() const {
  if (kind_ != Kind::array) wrong(*this, "an array");
  return array_;
}

const std::map<std::string, MetaValue>& MetaValue::as_object() const {
  if (kind_ != Kind::object) wrong(*this, "an object");
  return object_;
}

bool MetaValue::contains(const std::string& member) const { return kind_ == Kind::object && object_.count(member); }

const MetaValue& MetaValue::operator[](const std::string& member) const {
  const auto& o = as_object();
  auto it = o.find(member);
  if (it == o.end()) throw Error("MetaValue: no member '" + member + "' in " + dump());
  return it->second;
}

const MetaValue& MetaValue::operator[](size_t index) const {
  const auto& a = as_array();
  if (index >= a.size())
    throw Error("MetaValue: index " + std::to_string(index) + " out of range for an array of " + std::to_string(a.size()));
  return a[index];
}

size_t MetaValue::size() const {
  return kind_ == Kind::array ? array_.size() : kind_ == Kind::object ? object_.size() : 0;
}

std::string MetaValue::dump() const {
  std::string s = MetaValueBuilder::to(*this).dump();
  return s.size() <= 200 ? s : s.substr(0, 200) + "...";
}

}  // namespace dimx
