// Must not compile: a process pool cannot run a lambda.
#include <uvexec/uvexec.hpp>

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    uvexec::loop lp;
    uvexec::process_pool_executor ex;
    int factor = 3;
    auto f = lp.run_in_executor(ex, [factor](int n) { return n * factor; }, 2);
    (void)f;
}
