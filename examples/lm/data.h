#pragma once
// dimx-lm's data: text files as lines of bytes, split into training and validation lines by a
// fixed rule, batched as whole lines padded into a dynamic time Dim.
#include <dimx/dimx.h>

#include <string>
#include <vector>

namespace lm {

using namespace dimx;

struct Corpus {
  std::vector<std::string> train, valid;  // lines without their '\n', at most max_len - 1 bytes
  std::string description;                // "<n> files, <bytes> bytes"
};

// Files, or directories searched for text files (.md .txt .h .hpp .c .cc .cpp .py .cmake);
// sorted by path. Line i of the whole text goes to validation when i % 20 == 19. Empty lines
// are skipped. Throws dimx::Error for a missing path or no text.
Corpus load_corpus(const std::vector<std::string>& paths, int64_t max_len);
// The repository's own text (README.md, docs, include, src, examples), when it is there.
std::vector<std::string> default_data();

// A batch: input = '\n' + line, target = line + '\n', over {batch, time} with time's lengths
// the lines' lengths + 1 (targets index the vocab Dim).
struct Batch {
  Dim batch, time;
  Tensor input, target;
  int64_t tokens = 0;
};
Batch make_batch(const std::vector<const std::string*>& lines, const Dim& vocab, Device device);
// Lines for training step `step`: drawn from a generator seeded by (seed, step), so a resumed
// run sees the same batches as an uninterrupted one.
std::vector<const std::string*> training_lines(const Corpus& c, int64_t batch, uint64_t seed, int64_t step);

// The unigram baseline: the cross entropy (bits per byte) of the training bytes' frequencies
// (add-one smoothed) on the validation text.
double unigram_bits_per_byte(const Corpus& c);

}  // namespace lm
