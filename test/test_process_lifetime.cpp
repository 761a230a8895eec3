// Worker lifetime in a process_pool_executor: min_workers kept started (and
// start()), idle_timeout retiring workers above it, max_worker_memory
// replacing a worker that grew, and the setrlimit limits (address space, CPU
// time per call) with the deaths and errors they cause.
//
// This executable is its own worker. Calls that must overlap block on the
// test's gate; conditions only the loop's callbacks make true (a worker
// reaped and replaced, an idle timeout over) are waited for with run_until.
#define DOCTEST_CONFIG_IMPLEMENT
#include <csignal>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "fault_load.hpp"
#include "gate.hpp"
#include "support.hpp"

using namespace test;
using namespace std::chrono_literals;
using uvexec::fn;
using uvexec::future;
using uvexec::process_pool_executor;

namespace work {

int pid() { return static_cast<int>(::getpid()); }

/// Allocates and touches mib MiB and keeps them for the worker's life.
int grow(int mib) {
    static std::vector<std::unique_ptr<char[]>> kept;
    const std::size_t n = static_cast<std::size_t>(mib) << 20;
    kept.push_back(std::make_unique<char[]>(n));
    std::memset(kept.back().get(), 1, n);
    return pid();
}

/// Allocates (and touches) mib MiB, then frees them.
int allocate(int mib) {
    std::vector<char> v((static_cast<std::size_t>(mib) << 20) + 1, 1);
    return v.back();
}

/// Never returns: it spins on the CPU.
int spin() {
    volatile unsigned long x = 0;
    for (;;) x = x + 1;
}

}  // namespace work


TEST_SUITE("process_lifetime") {

TEST_CASE("options: bad lifetime options are refused") {
    using opts = uvexec::process_pool_options;
    CHECK_THROWS_AS(process_pool_executor(opts{.max_workers = 2, .min_workers = 3}), std::invalid_argument);
    CHECK_THROWS_AS(process_pool_executor(opts{.min_workers = -1}), std::invalid_argument);
    CHECK_THROWS_AS(process_pool_executor(opts{.idle_timeout = 0ms}), std::invalid_argument);
    CHECK_THROWS_AS(process_pool_executor(opts{.idle_timeout = -5ms}), std::invalid_argument);
    CHECK_THROWS_AS(process_pool_executor(opts{.max_worker_memory = 0}), std::invalid_argument);
    CHECK_THROWS_AS(process_pool_executor(opts{.limits = {.address_space = 0}}), std::invalid_argument);
    CHECK_THROWS_AS(process_pool_executor(opts{.limits = {.cpu_time = 0s}}), std::invalid_argument);
    CHECK_NOTHROW(process_pool_executor(opts{.max_workers = 2, .min_workers = 2}));
}

TEST_CASE("min_workers: start() starts them before any call; one killed from outside is replaced at once") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 3, .min_workers = 2}};
    ex.start(lp);
    CHECK(ex.live_workers() == 2);
    CHECK(ex.stats().starts == 2);
    const auto pids = ex.worker_pids();
    REQUIRE(pids.size() == 2);
    ::kill(pids[0], SIGKILL);
    run_until(lp, [&] { return ex.stats().deaths.crashed == 1 && ex.live_workers() == 2; });
    CHECK(ex.stats().deaths.crashed == 1);
    CHECK(ex.live_workers() == 2);
    CHECK(ex.stats().starts == 3);
    const int served = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(served != pids[0]);
    CHECK(ex.stats().starts == 3);  // a call on a started worker starts nothing
    lp.run_until_complete(ex.shutdown());
    CHECK(ex.live_workers() == 0);  // shut down: none is kept
    CHECK_THROWS_AS(ex.start(lp), uvexec::executor_shutdown_error);
}

TEST_CASE("min_workers: without start(), the first submission starts them") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 3, .min_workers = 2}};
    CHECK(ex.live_workers() == 0);
    lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(ex.live_workers() == 2);
}

TEST_CASE("idle_timeout: workers above min_workers exit after it; the rest stay and serve") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 3, .max_in_flight_per_worker = 1, .min_workers = 1, .idle_timeout = 50ms}};
    gate g;
    std::vector<future<int>> fs;
    for (int i = 0; i < 3; ++i) fs.push_back(lp.run_in_executor(ex, fn<&test::held>, g.path()));
    g.wait_started(3);
    CHECK(ex.live_workers() == 3);
    g.release(3);
    settle(lp, fs);
    run_until(lp, [&] { return ex.live_workers() == 1; });
    auto s = ex.stats();
    CHECK(s.workers == 1);
    CHECK(s.idle_exits == 2);
    CHECK(s.deaths.exited == 0);  // retired, not deaths
    CHECK(s.deaths.crashed == 0);
    const int left = ex.worker_pids().at(0);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) == left);
    CHECK(ex.stats().starts == 3);
}

TEST_CASE("idle_timeout: an idle worker's countdown does not keep the host's uv_run alive") {
    host_loop host;
    {
        uvexec::loop lp(&host.uv);
        process_pool_executor ex{{.max_workers = 1, .idle_timeout = 3600s}};
        auto f = lp.run_in_executor(ex, fn<&work::pid>);
        uv_run(&host.uv, UV_RUN_DEFAULT);  // returns once the call is answered, not in an hour
        CHECK(f.done());
        CHECK(ex.live_workers() == 1);  // idle, counting down
        auto down = ex.shutdown();
        uv_run(&host.uv, UV_RUN_DEFAULT);
        CHECK(down.done());
    }
}

TEST_CASE("max_worker_memory: a worker that grew past it is replaced after its call; one below it stays") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 1, .max_worker_memory = std::size_t{192} << 20}};
    const int a = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::grow>, 16)) == a);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) == a);  // below the limit
    CHECK(ex.stats().memory_recycles == 0);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::grow>, 256)) == a);  // answered, then retired
    const int b = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(b != a);
    auto s = ex.stats();
    CHECK(s.memory_recycles == 1);
    CHECK(s.starts == 2);
    CHECK(s.deaths.exited == 0);
    CHECK(s.deaths.crashed == 0);
    CHECK(s.deaths.killed == 0);
    CHECK(s.failed == 0);
}

TEST_CASE("max_worker_memory: a call pipelined behind the one that grew is not lost") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .max_in_flight_per_worker = 2,
                              .pipeline_below = std::chrono::microseconds::max(),
                              .max_worker_memory = std::size_t{192} << 20}};
    auto grown = lp.run_in_executor(ex, fn<&work::grow>, 256);
    auto behind = lp.run_in_executor(ex, fn<&work::pid>);
    auto after = lp.run_in_executor(ex, fn<&work::pid>);
    settle(lp, std::vector<future<int>>{grown, behind, after});
    CHECK(behind.result() == grown.result());  // sent before the report: it ran on the same worker
    CHECK(after.result() != grown.result());   // the replacement
    CHECK(ex.stats().memory_recycles == 1);
}

TEST_CASE("limits.address_space: an allocation past it is std::bad_alloc in the caller, and the worker serves on") {
    if (test::sanitized) {  // their runtimes reserve terabytes of address space
        MESSAGE("skipped: sanitizer runtimes reserve more address space than any such limit");
        return;
    }
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .limits = {.address_space = std::size_t{1} << 30}}};
    const int a = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::allocate>, 64)) == 1);  // within it
    auto big = lp.run_in_executor(ex, fn<&work::allocate>, 2048);
    settle(lp, std::vector{big});
    try {
        big.result();
        FAIL("2 GiB were allocated under a 1 GiB limit");
    } catch (const uvexec::remote_error& e) {
        CHECK(e.type_name() == "std::bad_alloc");
    }
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) == a);
    CHECK(ex.stats().starts == 1);
}

TEST_CASE("limits.cpu_time: a call past it dies of SIGXCPU, said so, and the next call runs on a new worker") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .limits = {.cpu_time = 1s}}};
    const int a = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    auto spun = lp.run_in_executor(ex, fn<&work::spin>);
    settle(lp, std::vector{spun});
    try {
        spun.result();
        FAIL("a call that never returns returned");
    } catch (const uvexec::worker_died_error& e) {
        CHECK(e.pid() == a);
        CHECK(e.term_signal() == SIGXCPU);
        CHECK(std::string(e.what()).find("SIGXCPU") != std::string::npos);
        CHECK(std::string(e.what()).find("limits.cpu_time (1 s)") != std::string::npos);
    }
    const int b = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(b != a);
    CHECK(ex.stats().deaths.crashed == 1);
}

TEST_CASE("worker lifetime under random kills: min_workers and a short idle_timeout lose no call") {
    auto rep = faults::run(4000, 20, 50, 20261206, [](uvexec::process_pool_options& o) {
        o.min_workers = 2;
        o.idle_timeout = 2ms;  // workers come and go between batches and while the killer strikes
    });
    CHECK(rep.kills >= 20);
}

TEST_CASE("worker lifetime under random kills: a worker recycled for memory after every call loses no call") {
    auto rep = faults::run(600, 5, 50, 20261207, [](uvexec::process_pool_options& o) {
        o.max_worker_memory = 1;  // every worker is over it: each is retired after the calls sent to it
        o.max_in_flight_per_worker = 16;  // a worker runs up to 16 calls before it goes: fewer starts
        o.pipeline_below = std::chrono::microseconds::max();
    });
    CHECK(rep.kills >= 5);
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
