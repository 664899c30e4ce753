#pragma once
/// \file
/// Data-parallel training: every rank holds the same model, computes the gradient of its own
/// part of the batch, and the gradients are averaged across ranks before the optimizer step.
///
///   nn::... model(...);
///   auto params = nn::named_parameters(model);
///   dist::DataParallel dp(params, dist::world());   // rank 0's parameters on every rank
///   optim::AdamW opt(params, {...});
///   for (...) {
///     opt.zero_grad();
///     backward(loss_of(model, my_shard_of_the_batch));  // returns with averaged gradients
///     optim::clip_grad_norm(params, 1.0);
///     opt.step();
///   }
///
/// What it does:
/// - construction (collective) checks that every rank has the same parameters (names, dtypes,
///   Dim names and extents; an error names the first rank that differs) and copies rank 0's
///   values into every rank's parameters (copy_from: the module keeps its tensors);
/// - the parameters are grouped into buckets of at most bucket_bytes (default 25 MiB), in the
///   reverse of their order, which is about the order in which backward() finishes them, one
///   dtype and device per bucket. A hook on each parameter (register_grad_ready_hook) notes
///   when backward() has finished its gradient; once every parameter of a bucket is done, and
///   every earlier bucket has started, the bucket's sum over ranks starts as a non-blocking MPI
///   all-reduce while the backward goes on. Later hooks drive its progress;
/// - at the end of backward() (register_backward_end_hook) the buckets not yet started start,
///   in order (a parameter without a gradient on this rank contributes zeros), every bucket is
///   waited for, and each parameter's gradient is replaced (set_grad) by the sum over ranks
///   divided by size(). So when backward() returns the gradients are averaged and equal on
///   every rank: nothing to call and nothing to forget before clipping or the optimizer step.
///   A parameter with no gradient on any rank keeps none.
///
/// With the other parts of training:
/// - optimizers and clip_grad_norm see equal gradients on every rank, so every rank computes
///   the same norm and the same update and the parameters stay equal;
/// - optim::GradScaler: the inf/NaN check reads the averaged gradients, and an inf or NaN on
///   any rank is in the sum of every rank, so every rank skips the same steps and backs off
///   the scale alike;
/// - gradient accumulation (several backward() per step) stays correct: the gradient already
///   averaged is equal on every rank and averages to itself (each backward communicates);
/// - checkpoints: the parameters and optimizer states are equal on every rank; let rank 0
///   write them (`if (comm.rank() == 0) ...`) and every rank load the same files to resume
///   (construct the DataParallel after loading, or load into the parameters on every rank).
///
/// Every rank runs the same number of backward() passes over the parameters. Through MPI the
/// gradient of a half parameter is reduced in f32 and rounded once; on a communicator from
/// dist::with_nccl the gradients of its device stay there: a bucket's gradients are copied into
/// one row (f32 for half parameters, as through MPI) and summed by one NCCL all-reduce, queued
/// on a stream of its own behind the backward's work so far without the host waiting: the GPU
/// sums a finished bucket while it computes the rest of the backward. Only the per-parameter
/// counts go through MPI. Errors (a rank that died, a
/// mismatch, the timeout) throw dimx::Error from backward() or the constructor, naming the
/// rank; the communicator is then unusable (see communicator.h, and abort_on_error()).
#include <dimx/autograd.h>
#include <dimx/dist/communicator.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dimx::dist {

/// DataParallel's options.
struct DataParallelOptions {
  int64_t bucket_bytes = 25 << 20;  ///< the largest bucket, in bytes (> 0); one parameter may exceed it alone
  int root = 0;                     ///< the rank whose parameters every rank starts from
};

/// Averages the gradients of `params` across the ranks of a communicator (see the file
/// description). Holds the parameter pointers: the tensors must outlive it. Not copyable or
/// movable (its hooks refer to it).
class DataParallel {
 public:
  /// Collective: checks and broadcasts the parameters (see the file description). `params` are
  /// what nn::named_parameters(module) returns. Throws dimx::Error ("DataParallel: ...") for
  /// an empty list, an undefined parameter or one that does not require grad.
  DataParallel(std::vector<std::pair<std::string, Tensor*>> params, Communicator comm,
               DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  /// The communicator.
  const Communicator& comm() const;
  /// The buckets as parameter names, in the order they are reduced.
  std::vector<std::vector<std::string>> buckets() const;
  /// Turns averaging off (false) or on again: while off, backward() leaves the gradients
  /// local (e.g. evaluation of a loss's gradient on one rank). Every rank must agree.
  void set_enabled(bool on);
  /// Whether averaging is on.
  bool enabled() const;
  /// How many buckets of the last backward() started their all-reduce before that backward()
  /// ended (the communication that overlapped the rest of the backward).
  int64_t overlapped_buckets() const;
  /// Copies rank `root`'s parameter values into every rank's parameters (collective), e.g.
  /// after loading a checkpoint on rank 0 only.
  void broadcast_parameters(int root = 0);

  /// The implementation (used by the library itself).
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace dimx::dist
