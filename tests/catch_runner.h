#pragma once
// Runs the test cases the command line selects (Catch2's session); the exit status of the run.
int run_catch_session(int argc, char** argv);
