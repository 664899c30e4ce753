// libFuzzer's start-up hook, shared by every harness (and called by fuzz_replay's main).
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  dimx_fuzz::single_threaded();
  return 0;
}
