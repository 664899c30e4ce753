// Placeholder until the optim tests land.
#include <catch2/catch.hpp>
