#pragma once
// Shared pieces of the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp): a reader that decodes
// choices from the fuzz bytes, an in-memory file to hand the safetensors reader, and the one
// way a harness reports a finding (a message, then abort, which libFuzzer records as a crash).
// The harnesses build with libFuzzer (scripts/fuzz) and, for the corpus replay of the normal
// test suite, with fuzz_replay.cpp's main.
#include <dimx/error.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <sys/mman.h>
#include <unistd.h>

namespace dimx_fuzz {

// Reports a finding and aborts. Never returns.
[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "\n==== dimx fuzz finding: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// Decodes choices from the fuzz bytes; once they run out every read gives 0, so any input,
// however short, decodes to a complete program.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}

  bool empty() const { return p_ == end_; }
  size_t left() const { return size_t(end_ - p_); }
  uint8_t byte() { return p_ == end_ ? 0 : *p_++; }
  bool flag() { return byte() & 1; }
  // A value in [lo, hi] (lo <= hi), from one byte (two when the range needs them).
  int64_t range(int64_t lo, int64_t hi) {
    const uint64_t span = uint64_t(hi - lo) + 1;
    uint64_t v = byte();
    if (span > 256) v = (v << 8) | byte();
    return lo + int64_t(v % span);
  }
  // One of `n` choices.
  size_t pick(size_t n) { return size_t(range(0, int64_t(n) - 1)); }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(byte()) << (8 * i);
    return v;
  }
  // Up to `max` raw bytes (fewer where the input ends).
  std::string bytes(size_t max) {
    const size_t n = std::min(max, left());
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  // The rest of the input.
  std::string rest() { return bytes(left()); }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// A file that lives in memory (memfd), reachable by path as /proc/self/fd/N, so the reader's
// open() + mmap() path runs without touching the disk. Closed with the object.
class MemFile {
 public:
  explicit MemFile(const std::string& contents) {
    fd_ = ::memfd_create("dimx_fuzz", MFD_CLOEXEC);
    if (fd_ < 0) finding("memfd_create failed");
    size_t done = 0;
    while (done < contents.size()) {
      const ssize_t n = ::write(fd_, contents.data() + done, contents.size() - done);
      if (n <= 0) finding("write to memfd failed");
      done += size_t(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  ~MemFile() { ::close(fd_); }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// Runs f(); a dimx::Error is an accepted outcome (returns false, the message in *message if
// given), any other exception is a finding naming `what`. Returns true when f() returned.
template <class F>
bool run_guarded(const char* what, F&& f, std::string* message = nullptr) {
  try {
    f();
    return true;
  } catch (const dimx::Error& e) {
    if (std::strlen(e.what()) == 0) finding(std::string(what) + ": dimx::Error with an empty message");
    if (message) *message = e.what();
    return false;
  } catch (const std::exception& e) {
    finding(std::string(what) + ": exception other than dimx::Error: " + e.what());
  } catch (...) {
    finding(std::string(what) + ": non-std exception");
  }
}

// Little-endian u64, as the safetensors header length is stored.
inline std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((v >> (8 * i)) & 0xff);
  return s;
}

// The library's thread pool and OpenBLAS run on the calling thread only: inputs stay
// deterministic and the fuzzer's process stays single-threaded. Called once per process.
inline void single_threaded() {
  ::setenv("DIMX_NUM_THREADS", "1", 1);
  ::setenv("OPENBLAS_NUM_THREADS", "1", 1);
}

}  // namespace dimx_fuzz
