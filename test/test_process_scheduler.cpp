// The process pool's scheduler and reaper: which call goes to which worker,
// and one SIGCHLD watcher per loop that reaps only the pool's children.
//
// This executable is its own worker (main begins with worker_main). Nothing
// here waits on the clock: a long call is one that blocks on a FIFO until the
// test releases it, so "the short calls did not wait for the long one" is
// shown by their finishing while it is still held.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cerrno>
#include <chrono>
#include <csignal>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gate.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::future;
using uvexec::process_pool_executor;

namespace work {

int pid() { return static_cast<int>(::getpid()); }
int quick(int) { return static_cast<int>(::getpid()); }
int first_of_its_kind() { return static_cast<int>(::getpid()); }
int held(std::string path) { return test::held(std::move(path)); }
/// Runs for about ms milliseconds (the work, not a synchronisation).
int busy_for(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return static_cast<int>(::getpid());
}

}  // namespace work

namespace {

/// Runs lp until every future in fs is done, or fails the test after a
/// generous bound (a hang guard, not a timing check).
void finish_all(uvexec::loop& lp, std::vector<future<int>> fs) {
    auto all = [](std::vector<future<int>> fs) -> uvexec::task<bool> {
        std::vector<future<int>> copy = fs;
        auto r = co_await uvexec::wait(std::move(copy), uvexec::return_when::all_completed, std::chrono::seconds(60));
        co_return r.pending.empty();
    };
    REQUIRE(lp.run_until_complete(all(std::move(fs))));
}

/// Runs the short calls to their end while the long one is still held (so
/// none of them waited for it), then releases it: the short calls all ran on
/// one worker, not the long call's.
void check_spared(uvexec::loop& lp, gate& g, future<int> long_call, std::vector<future<int>> shorts) {
    finish_all(lp, shorts);
    CHECK_FALSE(long_call.done());
    std::set<int> short_pids;
    for (auto& f : shorts) short_pids.insert(f.result());
    g.release();
    int long_pid = lp.run_until_complete(long_call);
    CHECK(short_pids.size() == 1);
    CHECK(short_pids.count(long_pid) == 0);
}

int count_signal_handles(uv_loop_t* uv) {
    int n = 0;
    uv_walk(
        uv, [](uv_handle_t* h, void* arg) {
            if (h->type == UV_SIGNAL && !uv_is_closing(h)) ++*static_cast<int*>(arg);
        },
        &n);
    return n;
}

}  // namespace

TEST_CASE("head of line: ten short calls behind a long one all run on the idle worker, while the long one runs") {
    // The scenario on a fresh pool: two workers, one long call, then
    // ten short ones submitted at once.
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2}};
    gate g;
    auto long_call = lp.run_in_executor(ex, fn<&work::held>, g.path());
    std::vector<future<int>> shorts;
    for (int i = 0; i < 10; ++i) shorts.push_back(lp.run_in_executor(ex, fn<&work::quick>, i));
    check_spared(lp, g, long_call, shorts);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("head of line: with warm workers, short calls are pipelined only to the worker running short ones") {
    uvexec::loop lp;
    // A generous pipeline_below: whether quick() counts as short must not
    // depend on how loaded the machine is.
    process_pool_executor ex{{.max_workers = 2, .max_in_flight_per_worker = 4, .pipeline_below = 10s}};
    // Both workers started, and quick() known to be short.
    {
        std::vector<future<int>> warm;
        for (int i = 0; i < 8; ++i) warm.push_back(lp.run_in_executor(ex, fn<&work::quick>, i));
        finish_all(lp, warm);
        REQUIRE(ex.live_workers() == 2);
    }
    gate g;
    auto long_call = lp.run_in_executor(ex, fn<&work::held>, g.path());  // unknown cost: counts as long
    std::vector<future<int>> shorts;
    for (int i = 0; i < 10; ++i) shorts.push_back(lp.run_in_executor(ex, fn<&work::quick>, i));
    // The idle worker takes one, three more are pipelined behind it (known
    // short); none goes behind the long call.
    CHECK(ex.queued() == 6);
    check_spared(lp, g, long_call, shorts);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("pipelining: behind a call known to be short, yes; behind one of unknown cost, no") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 2, .pipeline_below = 10s}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::quick>, 0)) > 0);

    SUBCASE("known short: the second call is sent at once") {
        auto a = lp.run_in_executor(ex, fn<&work::quick>, 1);
        auto b = lp.run_in_executor(ex, fn<&work::quick>, 2);
        CHECK(ex.queued() == 0);
        finish_all(lp, {a, b});
    }
    SUBCASE("unknown: the second call waits in the pool until the first is answered") {
        auto a = lp.run_in_executor(ex, fn<&work::first_of_its_kind>);
        auto b = lp.run_in_executor(ex, fn<&work::quick>, 2);
        CHECK(ex.queued() == 1);
        finish_all(lp, {a, b});
        CHECK(ex.queued() == 0);
    }
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("pipelining: one slow call of a function stops pipelining behind that function") {
    uvexec::loop lp;
    // Short is under 200 ms here, so that a loaded machine cannot make
    // busy_for(0) look long; busy_for(300) cannot look short.
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 2, .pipeline_below = 200ms}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::busy_for>, 0)) > 0);
    {
        auto a = lp.run_in_executor(ex, fn<&work::busy_for>, 0);
        auto b = lp.run_in_executor(ex, fn<&work::busy_for>, 0);
        CHECK(ex.queued() == 0);  // known short
        finish_all(lp, {a, b});
    }
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::busy_for>, 300)) > 0);
    auto a = lp.run_in_executor(ex, fn<&work::busy_for>, 0);
    auto b = lp.run_in_executor(ex, fn<&work::busy_for>, 0);
    CHECK(ex.queued() == 1);
    finish_all(lp, {a, b});
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("pipelining: pipeline_below = 0 never pipelines, max() always does; negative is refused") {
    uvexec::loop lp;
    SUBCASE("0") {
        process_pool_executor ex{{.max_workers = 1, .pipeline_below = std::chrono::microseconds(0)}};
        CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::quick>, 0)) > 0);
        auto a = lp.run_in_executor(ex, fn<&work::quick>, 1);
        auto b = lp.run_in_executor(ex, fn<&work::quick>, 2);
        CHECK(ex.queued() == 1);
        finish_all(lp, {a, b});
        lp.run_until_complete(ex.shutdown());
    }
    SUBCASE("max") {
        process_pool_executor ex{{.max_workers = 1, .pipeline_below = std::chrono::microseconds::max()}};
        auto a = lp.run_in_executor(ex, fn<&work::first_of_its_kind>);
        auto b = lp.run_in_executor(ex, fn<&work::quick>, 2);
        CHECK(ex.queued() == 0);
        finish_all(lp, {a, b});
        lp.run_until_complete(ex.shutdown());
    }
    SUBCASE("negative") {
        CHECK_THROWS_AS(process_pool_executor({.pipeline_below = std::chrono::microseconds(-1)}),
                        std::invalid_argument);
    }
}

TEST_CASE("reaper: one SIGCHLD watcher per loop, whatever the number of workers and pools") {
    uvexec::loop lp;
    CHECK(count_signal_handles(lp.native()) == 0);
    {
        process_pool_executor a{{.max_workers = 3}};
        process_pool_executor b{{.max_workers = 2}};
        std::vector<future<int>> fs;
        gate g;
        // Five held calls: every worker of both pools is started and busy.
        for (int i = 0; i < 3; ++i) fs.push_back(lp.run_in_executor(a, fn<&work::held>, g.path()));
        for (int i = 0; i < 2; ++i) fs.push_back(lp.run_in_executor(b, fn<&work::held>, g.path()));
        CHECK(a.live_workers() + b.live_workers() == 5);
        CHECK(count_signal_handles(lp.native()) == 1);
        g.release(5);
        finish_all(lp, fs);
        lp.run_until_complete(a.shutdown());
        lp.run_until_complete(b.shutdown());
    }
    // Every worker reaped (shutdown's futures say so): the watcher went with the last.
    CHECK(count_signal_handles(lp.native()) == 0);
}

TEST_CASE("reaper: the host's own children are left for the host to reap") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    int first = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    pid_t host_child = ::fork();
    REQUIRE(host_child >= 0);
    if (host_child == 0) ::_exit(7);
    siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(host_child), &info, WEXITED | WNOWAIT) == 0);  // exited, not reaped
    // A worker's death makes the reaper look at every child it watches,
    // after the host child's SIGCHLD.
    ::kill(first, SIGKILL);
    run_until(lp, [&] { return ex.live_workers() == 0; });
    CHECK(ex.live_workers() == 0);
    int status = 0;
    CHECK(::waitpid(host_child, &status, WNOHANG) == host_child);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 7));
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) != first);
    lp.run_until_complete(ex.shutdown());
}

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
