// loop: owning and borrowing, run_until_complete, spawn, call_soon_threadsafe, teardown.
#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::promise;
using uvexec::task;

TEST_SUITE("loop") {

TEST_CASE("run_until_complete returns the task's value or rethrows its exception") {
    uvexec::loop lp;
    auto ok = []() -> task<int> { co_return 7; };
    auto bad = []() -> task<int> { throw custom_error("bad", 1); co_return 0; };
    CHECK(lp.run_until_complete(ok()) == 7);
    CHECK_THROWS_AS(lp.run_until_complete(bad()), custom_error);
}

TEST_CASE("spawn starts the task at once and its future completes with the result") {
    uvexec::loop lp;
    promise<int> p(lp);
    bool started = false;
    auto t = [&](future<int> f) -> task<int> {
        started = true;
        co_return co_await f * 2;
    };
    auto g = lp.spawn(t(p.get_future()));
    CHECK(started);
    CHECK_FALSE(g.done());
    p.set_value(21);
    CHECK(g.done());
    CHECK(g.result() == 42);
}

TEST_CASE("a spawned task's exception lands in its future") {
    uvexec::loop lp;
    auto bad = []() -> task<void> { throw custom_error("bad", 2); co_return; };
    auto g = lp.spawn(bad());
    REQUIRE(g.done());
    CHECK_THROWS_AS(g.result(), custom_error);
}

TEST_CASE("run_until_complete of a coroutine nothing can resume throws instead of hanging") {
    uvexec::loop lp;
    auto stuck = []() -> task<void> {
        struct never_awaitable {
            bool await_ready() const noexcept { return false; }
            void await_suspend(std::coroutine_handle<>) const noexcept {}
            void await_resume() const noexcept {}
        };
        co_await never_awaitable{};
    };
    CHECK_THROWS_AS(lp.run_until_complete(stuck()), uvexec::error);
}

TEST_CASE("an unfulfilled promise keeps run_until_complete running until another thread sets it") {
    uvexec::loop lp;
    promise<int> held(lp);
    auto t = [](future<int> f) -> task<int> { co_return co_await f; };
    auto f = lp.spawn(t(held.get_future()));
    std::thread th([&] {
        std::this_thread::sleep_for(20ms);
        held.set_value(5);
    });
    CHECK(lp.run_until_complete(f) == 5);
    th.join();
}

TEST_CASE("run_until_complete inside a running loop is refused") {
    uvexec::loop lp;
    auto inner = []() -> task<int> { co_return 1; };
    auto outer = [&]() -> task<void> {
        co_await uvexec::sleep(lp, 0ms);  // now inside run_until_complete's uv_run
        CHECK_THROWS_AS(lp.run_until_complete(inner()), uvexec::invalid_state_error);
    };
    lp.run_until_complete(outer());
}

TEST_CASE("call_soon_threadsafe from many threads at once runs everything on the loop thread, in order per thread") {
    uvexec::loop lp;
    constexpr int threads = 8, per_thread = 2000;
    const auto loop_thread = std::this_thread::get_id();
    std::map<int, std::vector<int>> seen;  // touched only on the loop thread
    std::atomic<bool> wrong_thread{false};
    promise<void> all_done(lp);
    int total = 0;
    auto done_future = all_done.get_future();
    std::vector<std::thread> producers;
    for (int t = 0; t < threads; ++t) {
        producers.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                lp.call_soon_threadsafe([&, t, i] {
                    if (std::this_thread::get_id() != loop_thread) wrong_thread = true;
                    seen[t].push_back(i);
                    if (++total == threads * per_thread) all_done.set_value();
                });
            }
        });
    }
    lp.run_until_complete(done_future);
    for (auto& p : producers) p.join();
    CHECK_FALSE(wrong_thread);
    REQUIRE(seen.size() == threads);
    for (auto& [t, v] : seen) {
        REQUIRE(v.size() == per_thread);
        bool in_order = true;
        for (int i = 0; i < per_thread; ++i) in_order = in_order && v[i] == i;
        CHECK(in_order);
    }
}

TEST_CASE("call_soon_threadsafe after the loop is closed throws loop_closed_error") {
    auto lp = std::make_unique<uvexec::loop>();
    auto core = lp->shared_core();
    lp.reset();
    CHECK_THROWS_AS(core->post([] {}), uvexec::loop_closed_error);
}

TEST_CASE("a borrowed loop is driven by the host's own uv_run and closes cleanly") {
    host_loop host;
    {
        uvexec::loop lp(&host.uv);
        CHECK(lp.native() == &host.uv);
        uvexec::thread_pool_executor ex{{.max_workers = 2}};
        auto t = [&]() -> task<int> {
            int a = co_await lp.run_in_executor(ex, [] { return 20; });
            int b = co_await lp.run_in_executor(ex, [] { return 22; });
            co_return a + b;
        };
        auto f = lp.spawn(t());
        // The host runs its loop as it always does; uvexec's wakeup handle is
        // unreferenced, so uv_run returns once the work is done.
        uv_run(&host.uv, UV_RUN_DEFAULT);
        REQUIRE(f.done());
        CHECK(f.result() == 42);
    }
    // host_loop's destructor runs the loop once more and checks uv_loop_close() == 0.
}

TEST_CASE("a borrowed loop does not keep the host's uv_run alive when idle") {
    host_loop host;
    uvexec::loop lp(&host.uv);
    CHECK(uv_run(&host.uv, UV_RUN_DEFAULT) == 0);
    CHECK(uv_loop_alive(&host.uv) == 0);
}

TEST_CASE("the null executor is the loop's default thread pool") {
    uvexec::loop lp;
    auto t = [&]() -> task<std::string> {
        co_return co_await lp.run_in_executor(nullptr, [] { return std::string(uvexec::this_worker::name()); });
    };
    std::string name = lp.run_until_complete(t());
    CHECK(name.rfind("ThreadPoolExecutor-", 0) == 0);
    CHECK(lp.default_executor().max_workers() == uvexec::thread_pool_executor::default_max_workers());
}

TEST_CASE("destroying a loop with work queued, running and awaited is clean") {
    counted::reset();
    std::atomic<int> started{0}, finished{0};
    std::atomic<bool> release{false};
    std::vector<future<int>> futures;
    uvexec::thread_pool_executor ex{{.max_workers = 2}};
    {
        auto lp = std::make_unique<uvexec::loop>();
        for (int i = 0; i < 6; ++i) {
            futures.push_back(lp->run_in_executor(ex, [&, i] {
                ++started;
                while (!release) std::this_thread::yield();
                ++finished;
                return i;
            }));
        }
        auto waiter = [](std::vector<future<int>> fs) -> task<void> {
            counted c(1);
            co_await uvexec::gather(std::move(fs));
            FAIL("resumed after the loop closed");
        };
        auto g = lp->spawn(waiter(futures));
        REQUIRE(eventually([&] { return started == 2; }));
        CHECK(counted::alive == 1);
        std::thread releaser([&] {
            std::this_thread::sleep_for(50ms);
            release = true;
        });
        // ~loop: the coroutine is destroyed, the 4 queued calls are cancelled,
        // the 2 running ones are waited for.
        lp.reset();
        releaser.join();
        CHECK(g.cancelled());
    }
    CHECK(counted::alive == 0);
    CHECK(started == 2);
    CHECK(finished == 2);
    int values = 0, cancelled = 0;
    for (auto& f : futures) {
        REQUIRE(f.done());
        if (f.cancelled()) ++cancelled;
        else ++values;
    }
    CHECK(values == 2);
    CHECK(cancelled == 4);
}

}  // TEST_SUITE
