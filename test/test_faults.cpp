// Faults under load, the short variant (the soak suite runs the long one).
#define DOCTEST_CONFIG_IMPLEMENT
#include "fault_load.hpp"

TEST_CASE("faults under load: 10k calls, dozens of workers killed or exiting; nothing lost, answered twice or leaked") {
    auto rep = faults::run(10000, 40, 50, 20260611);
    CHECK(rep.failures > 0);
    CHECK(rep.failures <= rep.kills + 10000 / 509 + 1);
}

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
