// A dedicated worker executable: serves remote::square only, so the tests can
// show both a dedicated worker and the error for a function it does not know.
#include <cstdio>

#include <uvexec/process_pool_executor.hpp>

#include "remote_functions.hpp"

int main(int argc, char** argv) {
    uvexec::expose<&remote::square>();
    uvexec::worker_main(argc, argv);
    std::fprintf(stderr, "worker_exe: run me only as a uvexec worker\n");
    return 2;
}
