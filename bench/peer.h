#pragma once
// Running a Python peer script from a benchmark: it prints "case<TAB>median ms" per line.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace dimx::bench {

// Case name -> median ms; tries $PYTHON, else python3 and then /usr/bin/python3 (Debian's,
// which has python3-torch) until one prints results. Empty if none can run the script.
inline std::map<std::string, double> run_peer(const std::string& script, const std::string& args = "") {
  std::vector<std::string> pythons = {"python3", "/usr/bin/python3"};
  if (const char* env = std::getenv("PYTHON")) pythons = {env};
  for (const std::string& py : pythons) {
    std::map<std::string, double> r;
    // The peer's messages (a backend that declines a case, say) go to DIMX_PEER_LOG when set.
    const char* log = std::getenv("DIMX_PEER_LOG");
    const std::string err = log ? std::string(" 2>>'") + log + "'" : std::string(" 2>/dev/null");
    FILE* p = popen((py + " " + script + " " + args + err).c_str(), "r");
    if (!p) continue;
    char line[512];
    while (fgets(line, sizeof line, p)) {
      std::string s(line);
      auto c = s.find('\t');
      if (c != std::string::npos) r[s.substr(0, c)] = std::stod(s.substr(c + 1));
    }
    pclose(p);
    if (!r.empty()) return r;
  }
  return {};
}

}  // namespace dimx::bench
