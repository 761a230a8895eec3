// Must not compile: a process-pool result is rebuilt in the parent by default
// construction, so a serializable type without a default constructor is refused
// with a message that says what to do instead.
#include <uvexec/uvexec.hpp>

struct sized {
    explicit sized(int n) : n(n) {}
    int n;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(n);
    }
};

sized make(int n) { return sized(n); }

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    uvexec::loop lp;
    uvexec::process_pool_executor ex;
    auto f = lp.run_in_executor(ex, uvexec::fn<&make>, 3);
    (void)f;
}
