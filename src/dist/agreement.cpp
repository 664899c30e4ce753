// The agreement before each collective: rank 0 gathers every rank's description of its call
// (point to point, tagged with the agreement's sequence number on the control communicator)
// and answers each rank with the verdict, so a mismatch or a missing rank is named on every
// rank instead of corrupting or hanging the collective.
#include <cstring>

#include "comm_impl.h"

namespace dimx::dist {

namespace {

// FNV-1a, 64 bits.
uint64_t hash_bytes(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

constexpr size_t kText = 496;

struct Description {
  uint64_t hash;
  char text[kText];  // the description, cut to fit, NUL-terminated
};

enum Status : int32_t { agreed = 0, mismatch = 1, missing = 2 };

struct Verdict {
  int32_t status;
  int32_t rank;          // the differing or missing rank
  char root[kText];      // rank 0's description
  char other[kText];     // the differing rank's description
};

void put(char (&dst)[kText], const std::string& s) {
  const size_t n = std::min(s.size(), kText - 1);
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

std::string hex(uint64_t h) {
  char b[20];
  std::snprintf(b, sizeof b, "%08llx", static_cast<unsigned long long>(h & 0xffffffffull));
  return b;
}

}  // namespace

std::string describe(const Tensor& x) {
  std::string s = std::string(dtype_name(x.dtype())) + " {";
  bool first = true;
  for (const Dim& d : exchange_order(x)) {
    if (!first) s += ", ";
    first = false;
    if (d.is_static()) {
      s += d.name() + ":" + std::to_string(d.size());
    } else {
      const Tensor len = d.lengths();
      const std::vector<int32_t> v = len.to_vector<int32_t>(exchange_order(len));
      s += d.name() + ":<=" + std::to_string(d.extent()) + " (dyn, lengths #" +
           hex(hash_bytes(v.data(), v.size() * sizeof(int32_t))) + ")";
    }
  }
  return s + "}";
}

void Communicator::Impl::agree(const std::string& op, const std::string& description) {
  check_usable(op);
  const int tag = int(seq++ % uint64_t(tag_ub));
  const uint64_t h = hash_bytes(description.data(), description.size());
  if (size == 1) return;
  char t[32];
  std::snprintf(t, sizeof t, "%g", timeout);
  if (rank == 0) {
    auto descs = std::make_shared<std::vector<Description>>(size_t(size));
    std::vector<MPI_Request> reqs(size_t(size - 1));
    for (int r = 1; r < size; ++r)
      MPI_Irecv(&(*descs)[size_t(r)], int(sizeof(Description)), MPI_BYTE, r, tag, control, &reqs[size_t(r - 1)]);
    const double deadline = now_seconds() + timeout;
    int missing_rank = -1;
    for (int64_t polls = 0;; ++polls) {
      int done = 0;
      MPI_Testall(int(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE);
      if (done) break;
      if (now_seconds() > deadline) {
        for (int r = 1; r < size && missing_rank < 0; ++r) {
          int flag = 0;
          MPI_Test(&reqs[size_t(r - 1)], &flag, MPI_STATUS_IGNORE);
          if (!flag) missing_rank = r;
        }
        break;
      }
      poll_pause(polls);
    }
    auto verdict = std::make_shared<Verdict>();
    std::memset(verdict.get(), 0, sizeof(Verdict));
    put(verdict->root, description);
    if (missing_rank >= 0) {
      verdict->status = missing;
      verdict->rank = missing_rank;
    } else {
      for (int r = 1; r < size; ++r)
        if ((*descs)[size_t(r)].hash != h) {
          verdict->status = mismatch;
          verdict->rank = r;
          std::memcpy(verdict->other, (*descs)[size_t(r)].text, kText);
          break;
        }
    }
    // Every rank that answered learns the verdict (a missing rank's send may still arrive).
    std::vector<MPI_Request> sends;
    for (int r = 1; r < size; ++r) {
      int answered = 1;
      if (missing_rank >= 0) MPI_Test(&reqs[size_t(r - 1)], &answered, MPI_STATUS_IGNORE);
      if (!answered) continue;
      sends.emplace_back();
      MPI_Isend(verdict.get(), int(sizeof(Verdict)), MPI_BYTE, r, tag, control, &sends.back());
    }
    if (missing_rank >= 0) {
      abandoned.push_back(descs);
      abandoned.push_back(verdict);
      for (MPI_Request& s : sends) MPI_Request_free(&s);
      fail_broken(op, "rank " + std::to_string(missing_rank) + " did not answer " + op + " within " + t +
                                     " s (DIMX_DIST_TIMEOUT): it died, hangs or is in a different collective");
    }
    wait(op, sends, verdict, "sending the agreement on " + op);
    if (verdict->status == mismatch)
      throw Error(op + ": rank 0 of " + std::to_string(size) + " called " + description + ", but rank " +
                  std::to_string(verdict->rank) + " called " + verdict->other);
    return;
  }
  auto mine = std::make_shared<Description>();
  std::memset(mine.get(), 0, sizeof(Description));
  mine->hash = h;
  put(mine->text, description);
  auto verdict = std::make_shared<Verdict>();
  MPI_Request reqs[2];
  MPI_Isend(mine.get(), int(sizeof(Description)), MPI_BYTE, 0, tag, control, &reqs[0]);
  MPI_Irecv(verdict.get(), int(sizeof(Verdict)), MPI_BYTE, 0, tag, control, &reqs[1]);
  const double deadline = now_seconds() + timeout;
  for (int64_t polls = 0;; ++polls) {
    int done = 0;
    MPI_Testall(2, reqs, &done, MPI_STATUSES_IGNORE);
    if (done) break;
    if (now_seconds() > deadline) {
      abandoned.push_back(mine);
      abandoned.push_back(verdict);
      fail_broken(op, "rank 0 did not answer " + op + " within " + std::string(t) +
                                     " s (DIMX_DIST_TIMEOUT): it died, hangs or is in a different collective");
    }
    poll_pause(polls);
  }
  const std::string me = "rank " + std::to_string(rank) + " of " + std::to_string(size);
  if (verdict->status == missing) {
    fail_broken(op, "rank " + std::to_string(verdict->rank) + " did not answer " + op +
                                   " within " + t + " s (DIMX_DIST_TIMEOUT): it died, hangs or is in a different collective");
  }
  if (verdict->status == mismatch) {
    if (verdict->rank == rank)
      throw Error(op + ": " + me + " called " + description + ", but rank 0 called " + verdict->root);
    throw Error(op + ": " + me + ": rank " + std::to_string(verdict->rank) + " called " + verdict->other +
                ", but rank 0 called " + verdict->root);
  }
}

void Communicator::check_same(const std::string& op, const std::string& what) const {
  impl().agree(op, what);
}

}  // namespace dimx::dist
