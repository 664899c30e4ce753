// Placeholder until the autograd tests land.
#include <catch2/catch.hpp>
