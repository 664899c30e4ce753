#pragma once
// Helpers shared by the optimizers: options as strings (for the state file's metadata).
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>

namespace dimx::optim::detail {

inline std::string format_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

template <class Fail>
double parse_double(const std::string& s, Fail&& fail) {
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE) fail("'" + s + "' is not a number");
  return v;
}

template <class Fail>
long long parse_int(const std::string& s, Fail&& fail) {
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE) fail("'" + s + "' is not an integer");
  return v;
}

template <class Fail>
bool parse_bool(const std::string& s, Fail&& fail) {
  if (s == "true") return true;
  if (s == "false") return false;
  fail("'" + s + "' is not true or false");
  return false;
}

// Checks that `options` has exactly the keys `want`; calls fail with the first problem.
template <class Fail>
void check_option_keys(const std::map<std::string, std::string>& options, const std::set<std::string>& want,
                       Fail&& fail) {
  for (const auto& k : want)
    if (options.count(k) == 0) fail("missing option '" + k + "'");
  for (const auto& [k, v] : options)
    if (want.count(k) == 0) fail("unknown option '" + k + "'");
}

}  // namespace dimx::optim::detail
