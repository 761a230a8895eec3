// Flow control and metrics of a process_pool_executor: max_queue bounds the
// pool's own queue (calls not yet sent to a worker), room() wakes waiters
// first come first served, and stats() counts calls, worker starts, deaths by
// cause and recycles. Run with --prometheus, it prints the metrics of a known
// mix instead (test/prometheus_check.py parses them).
//
// This executable is its own worker; calls that must wait block on the
// test's gate, so nothing here waits on the clock.
#define DOCTEST_CONFIG_IMPLEMENT
#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "gate.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::future;
using uvexec::process_pool_executor;

namespace work {

int pid() { return static_cast<int>(::getpid()); }
int fails() { throw std::runtime_error("no"); }
std::size_t length(std::string s) { return s.size(); }

}  // namespace work

namespace {

/// One pipelining-free worker (each call it holds is running), as a server sizes a pool of long calls.
uvexec::process_pool_options one_worker(std::size_t max_queue) {
    return {.max_workers = 1, .max_in_flight_per_worker = 1, .max_queue = max_queue};
}

}  // namespace

TEST_SUITE("process_flow") {

TEST_CASE("max_queue: the call beyond it is refused at once and its rvalue argument is not moved from") {
    uvexec::loop lp;
    process_pool_executor ex{one_worker(2)};
    gate g;
    auto running = lp.run_in_executor(ex, fn<&test::held>, g.path());
    g.wait_started(1);
    auto q1 = lp.run_in_executor(ex, fn<&work::pid>);
    auto q2 = lp.run_in_executor(ex, fn<&work::pid>);
    CHECK(ex.queued() == 2);
    std::string payload(100, 'x');
    CHECK_THROWS_AS(ex.submit(lp, fn<&work::length>, std::move(payload)), uvexec::queue_full_error);
    CHECK(payload == std::string(100, 'x'));
    const char* literal = "converted";  // a conversion (const char* → std::string) is not built either
    CHECK_THROWS_AS(ex.submit(lp, fn<&work::length>, literal), uvexec::queue_full_error);
    CHECK(ex.stats().rejected == 2);
    g.release();
    lp.run_until_complete(running);
    // The answer sent q1 to the worker: one slot.
    CHECK(ex.queued() == 1);
    CHECK(lp.run_until_complete(ex.submit(lp, fn<&work::length>, std::move(payload))) == 100);
    lp.run_until_complete(ex.shutdown());
    CHECK_THROWS_AS(process_pool_executor({.max_queue = 0}), std::invalid_argument);
}

TEST_CASE("room() wakes waiters first come first served, one per freed slot; a cancelled one takes none; shutdown fails the rest") {
    uvexec::loop lp;
    process_pool_executor ex{one_worker(1)};
    gate g;
    std::vector<future<int>> calls;
    calls.push_back(lp.run_in_executor(ex, fn<&test::held>, g.path()));
    g.wait_started(1);
    calls.push_back(lp.run_in_executor(ex, fn<&test::held>, g.path()));  // full
    std::vector<int> order;
    std::vector<future<void>> rooms;
    auto wait_room = [&](int id) {
        rooms.push_back(ex.room(lp));
        rooms.back().add_done_callback([&, id](future<void> f) {
            if (!f.done() || f.cancelled() || f.exception()) return;
            order.push_back(id);
            calls.push_back(ex.submit(lp, fn<&test::held>, g.path()));
        });
    };
    for (int i = 0; i < 4; ++i) wait_room(i);
    CHECK(order.empty());
    g.release();  // the first returns, the second is sent: one slot
    run_until(lp, [&] { return !order.empty(); });
    CHECK(order == std::vector<int>{0});
    CHECK(ex.queued() == 1);
    CHECK(rooms[1].cancel());
    g.release();
    run_until(lp, [&] { return order.size() == 2; });
    CHECK(order == std::vector<int>{0, 2});
    auto done = ex.shutdown(true);  // cancels the queued call; waiter 3 fails
    REQUIRE(rooms[3].done());
    CHECK_THROWS_AS(rooms[3].result(), uvexec::executor_shutdown_error);
    g.release(8);
    lp.run_until_complete(done);
    auto s = ex.stats();
    CHECK(s.submitted == 4);
    CHECK(s.completed == 3);
    CHECK(s.cancelled == 1);
}

TEST_CASE("a burst of waiters with cancellations loses no call and never passes max_queue") {
    uvexec::loop lp;
    constexpr int n = 200;
    process_pool_executor ex{{.max_workers = 2, .max_queue = 3}};
    std::vector<future<int>> calls;
    std::vector<future<void>> rooms;
    int refused = 0, over = 0;
    for (int i = 0; i < n; ++i) {
        rooms.push_back(ex.room(lp));
        rooms.back().add_done_callback([&](future<void> r) {
            if (r.cancelled()) return;
            if (ex.queued() >= 3) ++over;
            try {
                calls.push_back(ex.submit(lp, fn<&work::pid>));
            } catch (const uvexec::queue_full_error&) {
                ++refused;
            }
        });
    }
    int cancelled = 0;
    for (int i = 5; i < n; i += 5) cancelled += rooms[static_cast<std::size_t>(i)].cancel() ? 1 : 0;
    run_until(lp, [&] { return static_cast<int>(calls.size()) + cancelled >= n; });
    settle(lp, calls);
    CHECK(refused == 0);
    CHECK(over == 0);
    CHECK(static_cast<int>(calls.size()) + cancelled == n);
    auto s = ex.stats();
    CHECK(s.submitted == calls.size());
    CHECK(s.completed == calls.size());
    CHECK(s.wait_time.count() == calls.size());
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("stats(): calls by outcome, worker starts, deaths by cause (SIGKILL from outside, kill_workers) and recycles") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_tasks_per_child = 3, .max_in_flight_per_worker = 1}};
    std::vector<future<int>> fs;
    fs.push_back(lp.run_in_executor(ex, fn<&work::pid>));
    fs.push_back(lp.run_in_executor(ex, fn<&work::fails>));
    fs.push_back(lp.run_in_executor(ex, fn<&work::pid>));
    fs.push_back(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(fs[3].cancel());  // queued: never runs
    settle(lp, fs);
    auto s = ex.stats();
    CHECK(s.of == uvexec::executor_stats::kind::processes);
    CHECK(s.submitted == 4);
    CHECK(s.completed == 2);
    CHECK(s.failed == 1);
    CHECK(s.cancelled == 1);
    CHECK(s.starts == 1);
    CHECK(s.recycles == 1);  // three calls: max_tasks_per_child
    CHECK(s.wait_time.count() == 3);
    CHECK(s.run_time.count() == 3);
    CHECK(s.run_time.quantile(1.0) <= s.run_time.sum());
    // A worker killed from outside is a crash; the call it ran fails.
    // (Each held call goes to a worker that is up, so it is sent at once:
    // wait_started blocks the loop.)
    gate g;
    lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    auto victim = lp.run_in_executor(ex, fn<&test::held>, g.path());
    g.wait_started(1);
    auto pids = ex.worker_pids();
    REQUIRE(pids.size() == 1);
    ::kill(pids[0], SIGKILL);
    settle(lp, std::vector{victim});
    CHECK_THROWS_AS(victim.result(), uvexec::worker_died_error);
    // kill_workers(): a death by uvexec's hand.
    lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    auto last = lp.run_in_executor(ex, fn<&test::held>, g.path());
    g.wait_started(1);
    lp.run_until_complete(ex.kill_workers());
    s = ex.stats();
    CHECK(s.deaths.crashed == 1);
    CHECK(s.deaths.killed == 1);
    CHECK(s.deaths.exited == 0);
    CHECK(s.starts == 3);
    CHECK(s.failed == 3);
    CHECK(s.workers == 0);
    CHECK(s.submitted == s.completed + s.failed + s.cancelled);
}

}  // TEST_SUITE

namespace {

/// Prints the Prometheus text of a thread pool and a process pool after a
/// known mix (what prometheus_check.py expects).
int print_metrics() {
    uvexec::loop lp;
    uvexec::thread_pool_executor threads{{.max_workers = 2, .max_queue = 8}};
    std::vector<future<int>> fs;
    for (int i = 0; i < 5; ++i) fs.push_back(threads.submit(lp, [i] { return i; }));
    fs.push_back(threads.submit(lp, []() -> int { throw std::runtime_error("no"); }));
    settle(lp, fs);
    process_pool_executor procs{{.max_workers = 1, .max_tasks_per_child = 2}};
    std::vector<future<int>> ps;
    for (int i = 0; i < 3; ++i) ps.push_back(lp.run_in_executor(procs, fn<&work::pid>));
    ps.push_back(lp.run_in_executor(procs, fn<&work::fails>));
    settle(lp, ps);
    const auto t = threads.stats(), p = procs.stats();
    std::string out = uvexec::prometheus_text({{"threads", &t}, {"procs \"p\"", &p}});
    std::fwrite(out.data(), 1, out.size(), stdout);
    lp.run_until_complete(threads.shutdown());
    lp.run_until_complete(procs.shutdown());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    if (argc > 1 && std::strcmp(argv[1], "--prometheus") == 0) return print_metrics();
    doctest::Context context(argc, argv);
    return context.run();
}
