// Must compile: the control case, so that the others fail for their own reason.
#include <uvexec/uvexec.hpp>

int square(int n) { return n * n; }

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    uvexec::loop lp;
    uvexec::process_pool_executor ex;
    auto f = lp.run_in_executor(ex, uvexec::fn<&square>, 2);
    (void)f;
}
