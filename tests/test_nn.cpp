// Placeholder until the nn tests land.
#include <catch2/catch.hpp>
