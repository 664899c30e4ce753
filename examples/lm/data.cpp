#include "data.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace lm {

namespace fs = std::filesystem;

namespace {

bool is_text(const fs::path& p) {
  static const char* ext[] = {".md", ".txt", ".h", ".hpp", ".c", ".cc", ".cpp", ".py", ".cmake"};
  const std::string e = p.extension().string();
  return std::any_of(std::begin(ext), std::end(ext), [&](const char* x) { return e == x; });
}

}  // namespace

std::vector<std::string> default_data() {
  std::vector<std::string> out;
  const fs::path root = DIMX_LM_SOURCE_DIR;
  for (const char* p : {"README.md", "docs", "include", "src", "examples"})
    if (fs::exists(root / p)) out.push_back((root / p).string());
  return out;
}

Corpus load_corpus(const std::vector<std::string>& paths, int64_t max_len) {
  if (max_len < 2) throw Error("--max-len must be at least 2, got " + std::to_string(max_len));
  if (paths.empty())
    throw Error(std::string("no --data given, and the repository's text is not at ") + DIMX_LM_SOURCE_DIR +
                " (give text files or folders with --data)");
  std::vector<fs::path> files;
  for (const std::string& p : paths) {
    const fs::path path(p);
    if (!fs::exists(path)) throw Error("no such data file or directory: " + p);
    if (fs::is_directory(path)) {
      for (const auto& e : fs::recursive_directory_iterator(path))
        if (e.is_regular_file() && is_text(e.path())) files.push_back(e.path());
    } else {
      files.push_back(path);
    }
  }
  std::sort(files.begin(), files.end());
  Corpus c;
  int64_t line_no = 0, bytes = 0;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw Error("cannot read data file " + f.string());
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      if (int64_t(line.size()) > max_len - 1) line.resize(size_t(max_len - 1));
      bytes += int64_t(line.size()) + 1;
      (line_no++ % 20 == 19 ? c.valid : c.train).push_back(line);
    }
  }
  if (c.train.empty() || c.valid.empty())
    throw Error("the data has " + std::to_string(line_no) + " non-empty lines; need at least 20 (train and validation)");
  c.description = std::to_string(files.size()) + " files, " + std::to_string(bytes) + " bytes, " +
                  std::to_string(c.train.size()) + " training and " + std::to_string(c.valid.size()) +
                  " validation lines";
  return c;
}

Batch make_batch(const std::vector<const std::string*>& lines, const Dim& vocab, Device device) {
  const int64_t B = int64_t(lines.size());
  std::vector<int32_t> lens;
  int64_t T = 0;
  for (const std::string* l : lines) {
    lens.push_back(int32_t(l->size() + 1));
    T = std::max<int64_t>(T, int64_t(l->size()) + 1);
  }
  const Dim batch(B, "batch");
  Batch b{batch, Dim(Tensor::from_vector<int32_t>({batch}, lens), "time"), Tensor(), Tensor()};
  std::vector<int64_t> in(size_t(B * T), 0), out(size_t(B * T), 0);
  for (int64_t i = 0; i < B; ++i) {
    const std::string& l = *lines[size_t(i)];
    in[size_t(i * T)] = '\n';
    for (size_t j = 0; j < l.size(); ++j) {
      in[size_t(i * T) + j + 1] = static_cast<unsigned char>(l[j]);
      out[size_t(i * T) + j] = static_cast<unsigned char>(l[j]);
    }
    out[size_t(i * T) + l.size()] = '\n';
    b.tokens += int64_t(l.size()) + 1;
  }
  b.input = Tensor::from_vector<int64_t>({b.batch, b.time}, in).with_sparse_dim(vocab).to(device);
  b.target = Tensor::from_vector<int64_t>({b.batch, b.time}, out).with_sparse_dim(vocab).to(device);
  return b;
}

std::vector<const std::string*> training_lines(const Corpus& c, int64_t batch, uint64_t seed, int64_t step) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + uint64_t(step));
  std::uniform_int_distribution<size_t> pick(0, c.train.size() - 1);
  std::vector<const std::string*> out;
  for (int64_t i = 0; i < batch; ++i) out.push_back(&c.train[pick(rng)]);
  return out;
}

double unigram_bits_per_byte(const Corpus& c) {
  std::vector<double> count(256, 1.0);
  double total = 256;
  for (const std::string& l : c.train) {
    for (unsigned char ch : l) count[ch] += 1;
    count['\n'] += 1;
    total += double(l.size()) + 1;
  }
  double bits = 0, n = 0;
  for (const std::string& l : c.valid) {
    for (unsigned char ch : l) bits -= std::log2(count[ch] / total);
    bits -= std::log2(count['\n'] / total);
    n += double(l.size()) + 1;
  }
  return bits / n;
}

}  // namespace lm
