// The doctest main of the server tests. It begins with uvexec::worker_main
// because the in-process servers start this very executable again as their
// process-pool workers.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <uvexec/process_pool_executor.hpp>

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);  // returns at once unless this process is a worker
    doctest::Context context(argc, argv);
    return context.run();
}
