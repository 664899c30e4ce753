// MPI's start and end in the process, the world communicator, and ending every rank when one
// fails (abort_on_error and the terminate handler).
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <mutex>

#include "comm_impl.h"

namespace dimx::dist {

namespace {

std::mutex g_mu;
std::shared_ptr<Communicator::Impl> g_world;
bool g_started_mpi = false;

bool mpi_initialized() {
  int i = 0;
  MPI_Initialized(&i);
  int f = 0;
  MPI_Finalized(&f);
  return i && !f;
}

// Prints "rank R: <what>" and ends the job.
[[noreturn]] void abort_job(const char* what) {
  std::fprintf(stderr, "rank %d: %s\n", world_rank(), what);
  std::fflush(stderr);
  if (mpi_initialized()) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

void on_terminate() {
  std::string what = "terminate called without an active exception";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
      what = "terminate called with an exception that is not a std::exception";
    }
  }
  abort_job(what.c_str());
}

void finalize_at_exit() {
  std::lock_guard<std::mutex> lk(g_mu);
  const bool broken = g_world && g_world->broken;
  g_world.reset();
  if (g_started_mpi && mpi_initialized()) {
    // Requests abandoned by a failed collective may keep MPI_Finalize waiting for a peer that
    // is gone: such a job ends by MPI_Abort instead.
    if (broken) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
  }
}

}  // namespace

void init(int& argc, char**& argv) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_world) return;
  if (!mpi_initialized()) {
    int provided = 0;
    const int rc = MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) throw Error("dist::init: MPI_Init_thread failed (code " + std::to_string(rc) + ")");
    g_started_mpi = true;
    std::atexit(finalize_at_exit);
  }
  std::set_terminate(on_terminate);
  g_world = std::make_shared<Communicator::Impl>(MPI_COMM_WORLD);
}

bool initialized() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_world != nullptr;
}

int world_rank() {
  if (!mpi_initialized()) return 0;
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

Communicator world() {
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_world) throw Error("dist::world: call dist::init(argc, argv) first");
  return Communicator(g_world);
}

int abort_on_error(const std::function<int()>& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    abort_job(e.what());
  } catch (...) {
    abort_job("an exception that is not a std::exception");
  }
}

}  // namespace dimx::dist
