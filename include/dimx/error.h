#pragma once
/// \file
/// The one exception type dimx throws for every misuse (bad Dims, dtypes, indices, files).
#include <stdexcept>
#include <string>

namespace dimx {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dimx
