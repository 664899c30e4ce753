#pragma once
/// \file
/// Collectives on Tensors across the processes of an MPI job (library dimx_dist, target
/// dimx::dimx_dist; built where MPI is found).
///
///   int main(int argc, char** argv) {
///     dist::init(argc, argv);                        // MPI_Init_thread; once per process
///     return dist::abort_on_error([&] {              // an error on any rank ends every rank
///       dist::Communicator comm = dist::world();
///       Tensor s = comm.all_reduce(x, dist::ReduceOp::sum);
///       ...
///       return 0;
///     });
///   }
///
/// Launch with `mpirun -np N program`. Every collective is called by every rank of the
/// communicator, in the same order, and one thread at a time uses a communicator (threads
/// that communicate concurrently each take their own duplicate()).
///
/// Agreement. Before each collective the ranks agree on what they call: rank 0 gathers every
/// rank's description (the op, its arguments, the dtype and the Dims) and answers each rank. A
/// rank whose description differs (another op, dtype, Dim name or extent) makes every rank throw
/// dimx::Error naming the op, this rank, the differing rank and both descriptions, e.g.
///   dist::all_reduce: rank 1 of 2 called all_reduce(sum) f32 {batch:4, feature:8}, but rank 0
///   called all_reduce(sum) f32 {batch:4, feature:6}
/// Dims are matched by name and extent, since identities do not cross processes: a tensor's
/// values are exchanged in the order of its Dims sorted by name (ties in layout order), so
/// ranks may hold their tensors in different layouts; the result has the caller's own Dims. A
/// dynamic Dim matches when its lengths are equal on every rank too (exchange sequences of
/// different lengths padded to a common static extent, with their lengths as a tensor).
///
/// Timeouts. No call waits forever: every wait polls non-blocking MPI against a deadline,
/// timeout() seconds (default 300, environment DIMX_DIST_TIMEOUT). When it passes the call
/// throws dimx::Error naming the op, this rank and, where known, the rank that did not answer
/// (a rank that died, hangs or called another collective), and the communicator is marked
/// broken: later calls on it throw at once. A failed collective leaves MPI unable to go on, so
/// the error should end the job: abort_on_error() does that.
///
/// Devices. CPU tensors go through MPI. CUDA tensors are staged through host memory (their
/// result is on their device), unless the communicator comes from dist::with_nccl
/// (dimx/dist/nccl.h), whose collectives of its device's tensors run on the GPUs through NCCL.
///
/// bf16 and f16 are reduced in f32 and rounded once; bool supports max (logical or),
/// broadcast and all_gather; integers support sum and max, not mean.
#include <dimx/tensor.h>

#include <functional>
#include <memory>
#include <string>

namespace dimx::dist {

/// How all_reduce combines the ranks' values elementwise.
enum class ReduceOp {
  sum,   ///< the sum over ranks
  mean,  ///< the sum divided by size() (floating dtypes)
  max,   ///< the largest value (logical or for bool)
};

/// "sum", "mean" or "max".
const char* reduce_op_name(ReduceOp op);

/// Starts MPI once per process (MPI_Init_thread, MPI_THREAD_MULTIPLE where the library
/// provides it, else the level it gives), unless the program started it already, and installs
/// a terminate handler that prints "rank R: <what>" and calls MPI_Abort, so an uncaught
/// exception on one rank ends every rank. MPI is finalized at exit (if init() started it).
/// Throws dimx::Error ("dist::init: ...") if MPI fails to start.
void init(int& argc, char**& argv);
/// Whether init() has run (or MPI was started by the program).
bool initialized();
/// This process's rank in the world communicator (0 before init()).
int world_rank();

/// Runs fn() and returns its result. If it throws, prints "rank R: <what>" on stderr and calls
/// MPI_Abort(1): mpirun then ends every rank with a non-zero status, instead of the others
/// waiting in their next collective until their timeout.
int abort_on_error(const std::function<int()>& fn);

/// A group of ranks and the collectives over them (see the file description). A cheap handle:
/// copies share the same communicator.
class Communicator {
 public:
  /// An empty handle (use world()); its collectives throw.
  Communicator() = default;

  /// This process's rank, in [0, size()).
  int rank() const;
  /// The number of ranks.
  int size() const;
  /// Seconds any one collective may wait for the other ranks (> 0).
  double timeout() const;
  /// Sets timeout() for this handle and its copies (seconds, > 0).
  void set_timeout(double seconds);
  /// True once a collective of this communicator failed (timed out, mismatched): every later
  /// call throws.
  bool broken() const;

  /// The elementwise reduction of every rank's `x` (same dtype, Dim names and extents on every
  /// rank), over the caller's Dims, on x's device.
  Tensor all_reduce(const Tensor& x, ReduceOp op = ReduceOp::sum) const;
  /// Rank `root`'s `x` on every rank; every rank passes a tensor of the same dtype and Dims
  /// (its values are ignored except on root), and gets one over its own Dims.
  Tensor broadcast(const Tensor& x, int root = 0) const;
  /// Every rank's `x` stacked along `ranks` (a static Dim of size() that x does not have):
  /// {ranks, x's Dims sorted by name}; entry r is rank r's x.
  Tensor all_gather(const Tensor& x, const Dim& ranks) const;
  /// Waits until every rank has called barrier().
  void barrier() const;
  /// Throws unless every rank passes the same `what` (any text: a configuration, a list of
  /// parameter names and Dims), naming the first rank that differs; `op` starts the message.
  void check_same(const std::string& op, const std::string& what) const;

  /// A new communicator over the same ranks with its own message space (collective: every
  /// rank calls it), e.g. for a library that must not interleave with the caller's traffic.
  /// It goes through MPI only (no NCCL).
  Communicator duplicate() const;

  /// The implementation (used by the library itself).
  struct Impl;
  /// Wraps an implementation (used by the library itself).
  explicit Communicator(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  /// The implementation; throws if empty.
  Impl& impl() const;

 private:
  std::shared_ptr<Impl> impl_;
};

/// The communicator over every process of the job (init() must have run).
Communicator world();

}  // namespace dimx::dist
