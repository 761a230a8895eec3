// Flow control and metrics of a thread_pool_executor: max_queue refuses the
// call beyond it (queue_full_error) without touching its arguments, room()
// wakes its waiters first come first served, one per freed slot, and
// stats() counts every call exactly once. Calls block on semaphores the test
// releases, so nothing here waits on the clock.
#include <memory>
#include <semaphore>
#include <string>
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::thread_pool_executor;

namespace {

/// Calls that block on a pool thread until released, and say when they started.
struct blocker {
    std::counting_semaphore<1024> go{0};
    std::counting_semaphore<1024> started{0};
    auto call() {
        return [this] {
            started.release();
            go.acquire();
        };
    }
    void wait_started(int n = 1) {
        for (int i = 0; i < n; ++i) REQUIRE(started.try_acquire_for(60s));  // a hang guard
    }
};

}  // namespace

TEST_SUITE("thread_flow") {

TEST_CASE("max_queue: the call beyond it is refused at once and its rvalue arguments are not moved from") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1, .max_queue = 2}};
    blocker b;
    auto running = ex.submit(lp, b.call());
    b.wait_started();
    auto q1 = ex.submit(lp, b.call());
    auto q2 = ex.submit(lp, b.call());
    CHECK(ex.queued() == 2);
    std::string payload(100, 'x');
    auto owned = std::make_unique<int>(7);
    CHECK_THROWS_AS(ex.submit(lp, [](std::string, std::unique_ptr<int>) {}, std::move(payload), std::move(owned)),
                    uvexec::queue_full_error);
    CHECK(payload == std::string(100, 'x'));
    REQUIRE(owned != nullptr);
    CHECK(*owned == 7);
    auto f = [p = std::make_unique<int>(8)] { return *p; };
    CHECK_THROWS_AS(ex.submit(lp, std::move(f)), uvexec::queue_full_error);
    CHECK(ex.stats().rejected == 2);
    // Once the running call ends, one slot frees and one more call fits.
    b.go.release();
    lp.run_until_complete(running);
    run_until(lp, [&] { return ex.queued() < 2; });
    auto q3 = ex.submit(lp, std::move(f));
    b.go.release(2);
    CHECK(lp.run_until_complete(q3) == 8);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("room() wakes its waiters first come first served, exactly one per freed slot; a cancelled one takes none") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1, .max_queue = 1}};
    blocker b;
    std::vector<future<void>> calls;
    calls.push_back(ex.submit(lp, b.call()));
    b.wait_started();
    calls.push_back(ex.submit(lp, b.call()));  // the queue is full
    std::vector<int> order;
    std::vector<future<void>> rooms;
    auto wait_room = [&](int id) {
        rooms.push_back(ex.room(lp));
        rooms.back().add_done_callback([&, id](future<void> f) {
            if (f.cancelled()) return;
            order.push_back(id);
            calls.push_back(ex.submit(lp, b.call()));  // takes the slot at once
        });
    };
    for (int i = 0; i < 3; ++i) wait_room(i);
    CHECK(order.empty());
    b.go.release();  // call 0 ends, call 1 starts: one slot
    run_until(lp, [&] { return !order.empty(); });
    CHECK(order == std::vector<int>{0});
    CHECK(ex.queued() == 1);
    rooms[1].cancel();  // leaves the line without a slot
    wait_room(3);
    b.go.release();
    run_until(lp, [&] { return order.size() == 2; });
    CHECK(order == std::vector<int>{0, 2});
    b.go.release();
    run_until(lp, [&] { return order.size() == 3; });
    CHECK(order == std::vector<int>{0, 2, 3});
    CHECK(ex.queued() == 1);
    b.go.release(16);
    settle(lp, calls);
    auto s = ex.stats();
    CHECK(s.submitted == 5);
    CHECK(s.completed == 5);
    CHECK(s.rejected == 0);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("room() waiters fail with executor_shutdown_error on shutdown; room() is ready at once when unbounded") {
    uvexec::loop lp;
    thread_pool_executor unbounded{{.max_workers = 1}};
    CHECK(unbounded.room(lp).done());
    thread_pool_executor ex{{.max_workers = 1, .max_queue = 1}};
    blocker b;
    auto running = ex.submit(lp, b.call());
    b.wait_started();
    auto queued = ex.submit(lp, b.call());
    auto r = ex.room(lp);
    CHECK_FALSE(r.done());
    auto done = ex.shutdown();
    REQUIRE(r.done());
    CHECK_THROWS_AS(r.result(), uvexec::executor_shutdown_error);
    CHECK_THROWS_AS(ex.room(lp).result(), uvexec::executor_shutdown_error);
    b.go.release(2);
    lp.run_until_complete(done);
    CHECK_THROWS_AS(thread_pool_executor({.max_queue = 0}), std::invalid_argument);
}

TEST_CASE("a burst of waiters with cancellations loses no call and never passes max_queue") {
    uvexec::loop lp;
    constexpr int n = 400;
    thread_pool_executor ex{{.max_workers = 2, .max_queue = 3}};
    std::vector<future<int>> calls;
    std::vector<future<void>> rooms;
    int refused = 0, over = 0, ran_total = 0;
    for (int i = 0; i < n; ++i) {
        rooms.push_back(ex.room(lp));
        rooms.back().add_done_callback([&, i](future<void> r) {
            if (r.cancelled()) return;
            if (ex.queued() >= 3) ++over;
            try {
                calls.push_back(ex.submit(lp, [i] { return i; }));
            } catch (const uvexec::queue_full_error&) {
                ++refused;
            }
        });
    }
    for (int i = 0; i < n; i += 7) rooms[static_cast<std::size_t>(i)].cancel();
    run_until(lp, [&] { return calls.size() + 57 >= n; });
    settle(lp, rooms);
    settle(lp, calls);
    int cancelled = 0;
    for (auto& r : rooms) cancelled += r.cancelled() ? 1 : 0;
    for (auto& c : calls) ran_total += c.done() && !c.cancelled() ? 1 : 0;
    CHECK(refused == 0);
    CHECK(over == 0);
    CHECK(static_cast<int>(calls.size()) + cancelled == n);
    CHECK(ran_total == static_cast<int>(calls.size()));
    auto s = ex.stats();
    CHECK(s.submitted == calls.size());
    CHECK(s.completed == calls.size());
    CHECK(s.queued == 0);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("stats() counts submitted, completed, failed and cancelled calls, and their wait and run times") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    blocker b;
    std::vector<future<int>> fs;
    fs.push_back(ex.submit(lp, [&] { b.call()(); return 1; }));
    b.wait_started();
    fs.push_back(ex.submit(lp, [] { return 2; }));
    fs.push_back(ex.submit(lp, []() -> int { throw std::runtime_error("no"); }));
    fs.push_back(ex.submit(lp, [] { return 4; }));
    fs.push_back(ex.submit(lp, [] { return 5; }));
    fs[3].cancel();  // queued: never runs
    auto s = ex.stats();
    CHECK(s.submitted == 5);
    CHECK(s.cancelled == 1);
    CHECK(s.queued == 3);
    CHECK(s.running == 1);
    CHECK(s.workers == 1);
    CHECK(s.max_workers == 1);
    CHECK(s.max_queue == 0);
    b.go.release();
    settle(lp, fs);
    s = ex.stats();
    CHECK(s.submitted == 5);
    CHECK(s.completed == 3);
    CHECK(s.failed == 1);
    CHECK(s.cancelled == 1);
    CHECK(s.queued == 0);
    CHECK(s.running == 0);
    CHECK(s.of == uvexec::executor_stats::kind::threads);
    // Four calls ran: four waits and four runs. The first was held until the
    // others were queued: the longest run, and the others waited at least as long.
    CHECK(s.wait_time.count() == 4);
    CHECK(s.run_time.count() == 4);
    CHECK(s.run_time.quantile(1.0) >= s.run_time.quantile(0.5));
    CHECK(s.wait_time.quantile(1.0) <= s.wait_time.sum());
    CHECK(s.utilisation >= 0.0);
    CHECK(s.utilisation <= 1.0);
    CHECK(s.uptime.count() > 0);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("time_calls = false: counters only, no wait or run times") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1, .time_calls = false}};
    lp.run_until_complete(ex.submit(lp, [] {}));
    auto s = ex.stats();
    CHECK(s.completed == 1);
    CHECK(s.wait_time.count() == 0);
    CHECK(s.run_time.count() == 0);
    lp.run_until_complete(ex.shutdown());
}

}  // TEST_SUITE
