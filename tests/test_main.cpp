// The main of every test program without one of its own.
#include "catch_runner.h"

int main(int argc, char** argv) { return run_catch_session(argc, argv); }
