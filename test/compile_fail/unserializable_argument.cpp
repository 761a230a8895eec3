// Must not compile: a type without a cereal serialize function cannot cross to a worker.
#include <uvexec/uvexec.hpp>

struct opaque {
    int secret = 0;
};

int reveal(opaque o) { return o.secret; }

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    uvexec::loop lp;
    uvexec::process_pool_executor ex;
    auto f = lp.run_in_executor(ex, uvexec::fn<&reveal>, opaque{});
    (void)f;
}
