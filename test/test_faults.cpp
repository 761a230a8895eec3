// Faults under load, the short variant (the soak suite runs the long one).
#define DOCTEST_CONFIG_IMPLEMENT
#include "fault_load.hpp"

TEST_CASE("faults under load: 10k calls, dozens of workers killed or exiting; nothing lost, answered twice or leaked") {
    auto rep = faults::run(10000, 40, 50, 20260611);
    CHECK(rep.failures > 0);
    // Each failure was matched to a kill or a self-exit in run(); none fails
    // twice. rep.tasks counts every call run, the batches that ran until the
    // kills were done and the final one included, not only the first 10000.
    CHECK(rep.failures - rep.self_exits <= rep.kills);
    CHECK(rep.self_exits <= rep.tasks / 509 + 1);
}

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
