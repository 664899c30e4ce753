#include "cpu/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace dimx::cpu {

namespace {

thread_local bool t_in_parallel = false;

class Pool {
 public:
  explicit Pool(int n) : n_(n) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return n_; }

  // Returns false if the pool is busy with another caller.
  bool run(int64_t n, const RangeFn& fn) {
    std::unique_lock<std::mutex> busy(call_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_items_ = n;
      pending_ = n_ - 1;
      ++generation_;
    }
    cv_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
    return true;
  }

 private:
  void work(int i) {
    int64_t chunk = (n_items_ + n_ - 1) / n_;
    int64_t b = std::min<int64_t>(n_items_, chunk * i), e = std::min<int64_t>(n_items_, b + chunk);
    if (b < e) {
      t_in_parallel = true;
      (*fn_)(b, e);
      t_in_parallel = false;
    }
  }
  void loop(int i) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work(i);
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  const RangeFn* fn_ = nullptr;
  int64_t n_items_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p([] {
    if (const char* env = std::getenv("DIMX_NUM_THREADS")) return std::max(1, std::atoi(env));
    return std::max(1, int(std::thread::hardware_concurrency()));
  }());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_for(int64_t n, int64_t grain, RangeFn fn) {
  if (n <= 0) return;
  if (n < grain || t_in_parallel || pool().size() == 1 || !pool().run(n, fn)) fn(0, n);
}

}  // namespace dimx::cpu
