#pragma once
/// \file
/// Where the time of a program goes, by primitive and by the op that issued it.
///
/// While a Profiler is alive, every device primitive (elementwise kernel, reduction, GEMM,
/// copy, attention, ...) is timed, and keyed by
///   - its context: the innermost ProfileSection around it: the name of the autograd node whose
///     backward issued it ("matmul", "softmax", ...), "backward" for the engine's own work
///     (seeds, sums of gradients), "optimizer step", or a section of the program's own; and
///     "forward" for everything outside any section;
///   - the primitive with its op and extents ("binary mul f32 [8,1024,768]").
/// With synchronize on (the default) each primitive waits for its device, so `total` is the
/// primitive's own time, kernel included, and `host` the time until the call returned; off,
/// `total` is launch time only and the program runs at its normal speed. Timing changes what
/// it measures: read the report for proportions, and time programs without it.
///
///   Profiler prof;
///   backward(loss);
///   std::cerr << prof.report();
///
/// One Profiler at a time (a second one is a dimx::Error); it sees the primitives of every
/// thread.
#include <cstdint>
#include <string>
#include <vector>

namespace dimx {

/// Names the context of the primitives this thread issues while it lives (sections nest; the
/// innermost wins). Costs a thread-local store when no Profiler is alive. `name` must outlive it.
class ProfileSection {
 public:
  /// Makes `name` this thread's context until the destructor restores the previous one.
  explicit ProfileSection(const char* name);
  ~ProfileSection();
  ProfileSection(const ProfileSection&) = delete;
  ProfileSection& operator=(const ProfileSection&) = delete;

 private:
  const char* prev_;
};

/// Times every device primitive while it lives and reports the times by context and primitive
/// (see the top of this file).
class Profiler {
 public:
  /// The times of one (context, primitive) pair, summed over its calls.
  struct Entry {
    std::string context;    ///< the ProfileSection's name, or "forward"
    std::string primitive;  ///< the primitive, its op, dtype and extents
    int64_t calls = 0;      ///< number of calls
    double host_ms = 0;   ///< until the call returned
    double total_ms = 0;  ///< until the device had finished it (with synchronize)
  };

  /// Starts profiling; `synchronize` as described at the top of this file. Throws dimx::Error
  /// if another Profiler is alive.
  explicit Profiler(bool synchronize = true);
  ~Profiler();
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;

  /// Every (context, primitive) seen so far, the most expensive first.
  std::vector<Entry> entries() const;
  /// The same summed per context, the most expensive first (primitive left empty).
  std::vector<Entry> by_context() const;
  /// Wall time since construction (or the last reset), milliseconds.
  double wall_ms() const;
  /// A table: wall time, time inside primitives, the contexts, and the `top` entries.
  std::string report(size_t top = 25) const;
  /// Clears the entries and restarts the wall clock.
  void reset();
};

}  // namespace dimx
