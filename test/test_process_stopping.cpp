// Stopping work that runs in a process pool: cancel_grace kills a worker
// whose cancelled call does not return, terminate_workers() and
// kill_workers() stop every worker. Nothing is lost: calls a stopped worker
// had not started run elsewhere or are cancelled, and every worker is reaped.
//
// This executable is its own worker. A call that "hangs" blocks on a FIFO
// (the test's gate), so nothing here waits on the clock.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cerrno>
#include <chrono>
#include <csignal>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault_load.hpp"
#include "gate.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::future;
using uvexec::process_pool_executor;

namespace work {

int pid() { return static_cast<int>(::getpid()); }
int held(std::string path) { return test::held(std::move(path)); }
/// As held(), but ignores SIGTERM first (before it says it started).
int held_ignoring_sigterm(std::string path) {
    std::signal(SIGTERM, SIG_IGN);
    return test::held(std::move(path));
}

}  // namespace work

namespace {

bool reaped(int pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

template <class T>
uvexec::task<bool> timed_out(future<T> f, std::chrono::milliseconds d) {
    try {
        co_await uvexec::wait_for(std::move(f), d);
    } catch (const uvexec::timeout_error&) {
        co_return true;
    }
    co_return false;
}

}  // namespace

TEST_CASE("cancel_grace: a cancelled call that does not return has its worker killed and replaced; nothing else is lost") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .max_in_flight_per_worker = 2,
                              .pipeline_below = std::chrono::microseconds::max(),  // so one waits behind it
                              .cancel_grace = std::chrono::milliseconds(50)}};
    int first = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    gate g;
    auto hung = lp.run_in_executor(ex, fn<&work::held>, g.path());
    auto behind = lp.run_in_executor(ex, fn<&work::pid>);  // pipelined behind the hung call, never started
    CHECK(ex.queued() == 0);
    CHECK(lp.run_until_complete(timed_out(hung, std::chrono::milliseconds(20))));
    CHECK(hung.cancelled());
    // Past the grace period the worker is killed; the call behind it runs on the replacement.
    int second = lp.run_until_complete(uvexec::wait_for(behind, 60s));  // (a hang guard, not a timing check)
    CHECK(second != first);
    CHECK(reaped(first));
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("cancel_grace: a call cancelled while it waited behind another starts its grace when it starts running") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .max_in_flight_per_worker = 2,
                              .pipeline_below = std::chrono::microseconds::max(),  // so the second waits in the worker
                              .cancel_grace = std::chrono::milliseconds(50)}};
    int first_pid = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    gate g;
    auto first = lp.run_in_executor(ex, fn<&work::held>, g.path());
    auto second = lp.run_in_executor(ex, fn<&work::held>, g.path());
    CHECK(ex.queued() == 0);
    g.wait_started(1);
    CHECK(second.cancel());  // not running yet: no grace starts, the worker is not killed
    g.release(1);            // the first returns; the second starts and never returns
    CHECK(lp.run_until_complete(uvexec::wait_for(first, 60s)) == first_pid);
    // Its grace began when it started: the worker is killed and replaced.
    int next = lp.run_until_complete(uvexec::wait_for(lp.run_in_executor(ex, fn<&work::pid>), 60s));
    CHECK(next != first_pid);
    CHECK(reaped(first_pid));
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("cancel_grace: a cancelled call that returns within its grace keeps its worker") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .cancel_grace = std::chrono::hours(1)}};
    gate g;
    auto running = lp.run_in_executor(ex, fn<&work::held>, g.path());
    int worker = ex.worker_pids().at(0);
    CHECK(lp.run_until_complete(timed_out(running, std::chrono::milliseconds(20))));
    g.release();  // it returns; its answer is dropped
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) == worker);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("cancel_grace unset (the default): a cancelled call runs to its end on its worker, as in Python") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    gate g;
    auto running = lp.run_in_executor(ex, fn<&work::held>, g.path());
    auto next = lp.run_in_executor(ex, fn<&work::pid>);
    int worker = ex.worker_pids().at(0);
    CHECK(running.cancel());
    g.release();
    CHECK(lp.run_until_complete(next) == worker);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("cancel_grace: negative is refused") {
    CHECK_THROWS_AS(process_pool_executor({.cancel_grace = std::chrono::milliseconds(-1)}), std::invalid_argument);
}

TEST_CASE("terminate_workers(): running calls fail naming SIGTERM, the rest are cancelled, every worker is reaped") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2, .pipeline_below = std::chrono::microseconds::max()}};
    settle(lp, std::vector{lp.run_in_executor(ex, fn<&work::pid>), lp.run_in_executor(ex, fn<&work::pid>)});
    REQUIRE(ex.live_workers() == 2);
    gate g;
    std::vector<future<int>> running{lp.run_in_executor(ex, fn<&work::held>, g.path()),
                                     lp.run_in_executor(ex, fn<&work::held>, g.path())};
    g.wait_started(2);
    std::vector<future<int>> waiting;
    for (int i = 0; i < 4; ++i) waiting.push_back(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(ex.queued() == 2);  // two pipelined, two queued
    auto pids = ex.worker_pids();
    lp.run_until_complete(uvexec::wait_for(ex.terminate_workers(), 60s));
    for (int pid : pids) CHECK(reaped(pid));
    for (auto& f : waiting) CHECK(f.cancelled());
    for (auto& f : running) {
        REQUIRE(f.done());
        try {
            f.result();
            FAIL("a running call survived terminate_workers()");
        } catch (const uvexec::worker_died_error& e) {
            CHECK(e.term_signal() == SIGTERM);
            CHECK(std::string(e.what()).find("terminate_workers() sent it SIGTERM") != std::string::npos);
        }
    }
    CHECK(ex.live_workers() == 0);
    CHECK_THROWS_AS(lp.run_in_executor(ex, fn<&work::pid>), uvexec::executor_shutdown_error);
}

TEST_CASE("terminate_workers(): a worker that ignores SIGTERM goes at its channel's end") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) > 0);  // it has said hello
    gate g;
    auto f = lp.run_in_executor(ex, fn<&work::held_ignoring_sigterm>, g.path());
    int pid = ex.worker_pids().at(0);
    g.wait_started(1);
    auto stopped = ex.terminate_workers();
    CHECK(::kill(pid, 0) == 0);  // SIGTERM did not end it
    g.release();  // it returns from its call, then reads its channel's end and exits
    lp.run_until_complete(uvexec::wait_for(stopped, 60s));
    CHECK(reaped(pid));
    REQUIRE(f.done());
    CHECK_THROWS_AS(f.result(), uvexec::worker_died_error);  // it exited while the pool counted it as running
}

TEST_CASE("kill_workers(): SIGKILL to every worker, the running call fails with it, the future completes once reaped") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) > 0);
    gate g;
    auto f = lp.run_in_executor(ex, fn<&work::held_ignoring_sigterm>, g.path());
    int pid = ex.worker_pids().at(0);
    g.wait_started(1);
    lp.run_until_complete(uvexec::wait_for(ex.kill_workers(), 60s));
    CHECK(reaped(pid));
    REQUIRE(f.done());
    try {
        f.result();
        FAIL("the call survived kill_workers()");
    } catch (const uvexec::worker_died_error& e) {
        CHECK(e.term_signal() == SIGKILL);
    }
}

TEST_CASE("terminate_workers() on a pool that never started a worker completes at once") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2}};
    auto stopped = ex.terminate_workers();
    CHECK(stopped.done());
    CHECK_THROWS_AS(lp.run_in_executor(ex, fn<&work::pid>), uvexec::executor_shutdown_error);
}

TEST_CASE("under random kills: timed-out calls, with and without a std::stop_token, lose no other call (cancel_grace)") {
    // Every 211th call hangs and its wait_for times out after 5 ms: one that
    // watches its token returns, one that ignores it has its worker killed
    // 20 ms later; meanwhile workers are killed at random from outside.
    auto rep = faults::run(
        3000, 15, 50, 20261208, [](uvexec::process_pool_options& o) { o.cancel_grace = std::chrono::milliseconds(20); },
        std::chrono::milliseconds(5));
    CHECK(rep.timeouts >= 10);
    CHECK(rep.kills >= 15);
}

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
