#pragma once
/// \file
/// Sharding a data set across ranks: each rank gets a disjoint part of a per-epoch permutation.
#include <cstdint>
#include <vector>

namespace dimx::dist {

/// What happens to the items left over when n is not a multiple of the number of ranks.
enum class Remainder {
  drop,  ///< each rank gets floor(n / size) items; the last n mod size of the epoch's permutation are skipped (others each epoch)
  pad,   ///< each rank gets ceil(n / size) items; the permutation is extended by its own first items
};

/// The items of `rank` (of `size`) for `epoch`: a permutation of [0, n) drawn from (seed,
/// epoch), deterministic on every platform, reshuffled each epoch; rank r gets its entries
/// r, r + size, r + 2 size, ... (after the remainder rule), so the ranks' parts are disjoint
/// under drop (and cover every item once per epoch when size divides n) and equal in size.
/// Every rank passes the same n, seed and epoch. Throws dimx::Error ("dist::shard_indices:
/// ...") for n < 0, size < 1 or a rank outside [0, size).
std::vector<int64_t> shard_indices(int64_t n, int rank, int size, uint64_t seed, int64_t epoch,
                                   Remainder remainder = Remainder::drop);

/// The permutation of [0, n) that shard_indices() deals out for (seed, epoch).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

}  // namespace dimx::dist
