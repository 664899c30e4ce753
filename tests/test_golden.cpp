// Placeholder until the golden tests land.
#include <catch2/catch.hpp>
