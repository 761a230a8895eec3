// One of two translation units that each hold a file-local function named
// scale and one named bump in an anonymous namespace: valid C++, and the same
// qualified name and type in both (see test_process_correctness.cpp).
#include "identity.hpp"

static int scale(int x) { return x * 10; }

namespace {
int bump(int x) { return x + 1; }
}  // namespace

namespace identity {
uvexec::future<int> scale_a(uvexec::loop& lp, uvexec::process_pool_executor& ex, int x) {
    return lp.run_in_executor(ex, uvexec::fn<&scale>, x);
}
uvexec::future<int> bump_a(uvexec::loop& lp, uvexec::process_pool_executor& ex, int x) {
    return lp.run_in_executor(ex, uvexec::fn<&bump>, x);
}
}  // namespace identity
