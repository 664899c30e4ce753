// A program outside the dimx tree linking dimx::dimx_dist from the installed package: one
// process, so MPI starts as a singleton and the world has one rank.
#include <dimx/dist.h>

#include <iostream>

int main(int argc, char** argv) {
  using namespace dimx;
  dist::init(argc, argv);
  return dist::abort_on_error([&] {
    dist::Communicator w = dist::world();
    Dim a(3, "a");
    Tensor s = w.all_reduce(Tensor::from_vector<float>({a}, std::vector<float>{1, 2, 3}));
    std::cout << "dist: " << w.size() << " rank(s), all_reduce " << s.to_vector<float>()[2] << ", shard "
              << dist::shard_indices(10, 0, 1, 0, 0).size() << "\n";
    return 0;
  });
}
