// The padding rule, module by module: NaN, inf or 1e30 in padded frames never change valid
// outputs or any gradient, and a sequence alone gives what it gives in a padded batch
// (tests/padding_cases.h; test_gpu runs the same table on cuda:0).
#include "padding_cases.h"

TEST_CASE("padding: no module lets padded content reach valid outputs or gradients; a sequence alone equals its frames of the batch", "[padding]") {
  dimx_test::check_padding_cases(dimx::Device::cpu());
}
