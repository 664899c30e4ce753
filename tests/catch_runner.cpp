// Catch2's implementation, compiled once for every test program (its session is declared only
// where the implementation is), and the one call the programs' mains make of it.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "catch_runner.h"

int run_catch_session(int argc, char** argv) { return Catch::Session().run(argc, argv); }
