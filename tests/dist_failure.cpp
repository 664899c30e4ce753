// A 2-rank job in which rank 1 fails in the way named by argv[1]; tests/dist_failure.cmake
// checks that mpirun ends with a non-zero status and an error naming rank 1, in time.
//   throw     rank 1 throws in user code (abort_on_error ends every rank)
//   exit      rank 1 dies without a word while rank 0 waits in a barrier
//   mismatch  the ranks all_reduce tensors of different Dims
//   uncaught  rank 1 throws outside abort_on_error (the terminate handler ends every rank)
#include <dimx/dist.h>

#include <cstdlib>
#include <string>

using namespace dimx;

int main(int argc, char** argv) {
  dist::init(argc, argv);
  const std::string what = argc > 1 ? argv[1] : "";
  dist::Communicator w = dist::world();
  if (what == "uncaught" && w.rank() == 1) throw Error("user code failed on purpose, outside abort_on_error");
  return dist::abort_on_error([&] {
    if (what == "throw" && w.rank() == 1) throw Error("user code failed on purpose");
    if (what == "exit" && w.rank() == 1) std::_Exit(3);
    if (what == "mismatch") w.all_reduce(Tensor::zeros({Dim(w.rank() == 0 ? 2 : 3, "a")}));
    w.barrier();
    return 0;
  });
}
