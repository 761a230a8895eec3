// The one doctest main shared by every test executable. It begins with
// worker_main, so each test executable can serve as its own process-pool
// worker (as libuv's spawn tests use the test binary itself as the child).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <uvexec/process_pool_executor.hpp>

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
