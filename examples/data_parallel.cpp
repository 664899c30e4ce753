// Data-parallel training over MPI (docs/tutorials/12-data-parallel.md):
//
//   mpirun -np 2 ./data_parallel
//
// Every rank holds the same small regression model; each epoch the data set is dealt out anew
// (dist::shard_indices), each rank computes the gradient of its part, DataParallel averages the
// gradients during backward(), and every rank takes the same optimizer step. Rank 0 prints and
// writes the checkpoint; every rank resumes from it.
#include <dimx/dimx.h>
#include <dimx/dist.h>
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

using namespace dimx;

namespace {

// A two-layer regression network.
struct Net : nn::Module {
  Dim in, hidden, out;
  BOOST_HANA_DEFINE_STRUCT(Net, (nn::Linear, l1), (nn::LayerNorm, norm), (nn::Linear, l2));
  Net(Dim i, Dim h, Dim o, Generator& gen) : in(i), hidden(h), out(o), l1(i, h, gen), norm(h), l2(h, o, gen) {}
  Tensor operator()(const Tensor& x) const { return l2(tanh(norm(l1(x)))); }
};

// Item k of the data set: 4 inputs drawn from k, and 2 targets that are a smooth function of them.
void item(int64_t k, std::vector<float>& x, std::vector<float>& y) {
  double v[4];
  for (int i = 0; i < 4; ++i) v[i] = std::sin(0.37 * double(k) * (i + 1) + i);
  x.insert(x.end(), v, v + 4);
  y.push_back(float(v[0] * v[1] + 0.5 * v[2]));
  y.push_back(float(std::sin(2 * v[3]) - 0.3 * v[0]));
}

}  // namespace

int main(int argc, char** argv) {
  dist::init(argc, argv);
  // An exception on any rank prints "rank R: <what>" and ends every rank.
  return dist::abort_on_error([&] {
    dist::Communicator comm = dist::world();
    const bool root = comm.rank() == 0;
    Dim in(4, "in"), hidden(32, "hidden"), out(2, "out");

    // Ranks may start from different weights: DataParallel copies rank 0's to every rank.
    Generator gen(1234 + uint64_t(comm.rank()));
    Net model(in, hidden, out, gen);
    auto params = nn::named_parameters(model);
    dist::DataParallel dp(params, comm);
    optim::AdamW opt(params, {.lr = 1e-2});
    if (root)
      std::printf("%d ranks, %zu gradient bucket(s), %lld parameters\n", comm.size(), dp.buckets().size(),
                  static_cast<long long>(nn::num_parameters(model)));

    // 256 items; each epoch every rank gets 256 / size of them, reshuffled per epoch.
    const int64_t n_items = 256, per_step = 32 / comm.size();
    for (int64_t epoch = 0; epoch < 8; ++epoch) {
      const std::vector<int64_t> mine = dist::shard_indices(n_items, comm.rank(), comm.size(), /*seed=*/7, epoch);
      double epoch_loss = 0;
      int64_t steps = 0;
      for (size_t first = 0; first + size_t(per_step) <= mine.size(); first += size_t(per_step)) {
        std::vector<float> xs, ys;
        for (size_t j = first; j < first + size_t(per_step); ++j) item(mine[j], xs, ys);
        Dim batch(per_step, "batch");
        Tensor x = Tensor::from_vector<float>({batch, in}, xs), y = Tensor::from_vector<float>({batch, out}, ys);
        Tensor d = model(x) - y;
        Tensor loss = reduce_mean(d * d, {batch, out});
        opt.zero_grad();
        backward(loss);  // returns with the gradients averaged over the ranks
        optim::clip_grad_norm(params, 1.0);
        opt.step();
        epoch_loss += loss.item<double>();
        ++steps;
      }
      // The mean over every rank's batches (the loss values are per rank).
      const double mean = comm.all_reduce(Tensor::scalar(epoch_loss / double(steps), DType::f64),
                                          dist::ReduceOp::mean).item<double>();
      if (root) std::printf("epoch %lld: mean loss %.5f\n", static_cast<long long>(epoch), mean);
    }

    // Checkpoint: the parameters and optimizer state are equal on every rank; rank 0 writes.
    const std::string dir = (std::filesystem::temp_directory_path() / "dimx_data_parallel_example").string();
    if (root) {
      std::filesystem::create_directories(dir);
      nn::save_state(model, dir + "/model.safetensors");
      opt.save_state(dir + "/optimizer.safetensors");
    }
    comm.barrier();  // the files are complete before anyone reads them
    // Resume: every rank loads the same files, then wraps the model again.
    Generator other(99);
    Net resumed(in, hidden, out, other);
    nn::load_state(resumed, dir + "/model.safetensors");
    auto resumed_params = nn::named_parameters(resumed);
    optim::AdamW resumed_opt(resumed_params, {.lr = 1e-2});
    resumed_opt.load_state(dir + "/optimizer.safetensors");
    dist::DataParallel resumed_dp(resumed_params, comm);
    // Every rank holds the same values: the largest difference to rank 0's is 0.
    double diff = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor mine = *resumed_params[i].second;
      Tensor r0 = comm.broadcast(mine, 0);
      diff = std::max(diff, reduce_max(abs(mine - r0), mine.dims()).item<double>());
    }
    diff = comm.all_reduce(Tensor::scalar(diff, DType::f64), dist::ReduceOp::max).item<double>();
    if (root) std::printf("resumed from %s on every rank; largest difference between ranks: %g\n", dir.c_str(), diff);
    comm.barrier();
    if (root) std::filesystem::remove_all(dir);
    return diff == 0 ? 0 : 1;
  });
}
