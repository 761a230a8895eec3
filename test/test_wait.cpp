// wait(), wait_for() and sleep().
#include <chrono>
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::promise;
using uvexec::return_when;
using uvexec::task;

namespace {
std::vector<int> values(const std::vector<future<int>>& fs) {
    std::vector<int> v;
    for (auto& f : fs) v.push_back(f.result());
    return v;
}
}  // namespace

TEST_SUITE("wait") {

TEST_CASE("wait(all_completed) returns when every future is done, in completion order") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    auto t = [](std::vector<future<int>> fs) -> task<uvexec::wait_result<int>> {
        co_return co_await uvexec::wait(std::move(fs));
    };
    auto r = lp.spawn(t({a.get_future(), b.get_future(), c.get_future()}));
    b.set_value(2);
    CHECK_FALSE(r.done());
    c.set_value(3);
    CHECK_FALSE(r.done());
    a.set_value(1);
    REQUIRE(r.done());
    CHECK(values(r.result().done) == std::vector<int>{2, 3, 1});
    CHECK(r.result().pending.empty());
}

TEST_CASE("wait(first_completed) returns at the first completion with the rest pending") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    auto t = [](std::vector<future<int>> fs) -> task<uvexec::wait_result<int>> {
        co_return co_await uvexec::wait(std::move(fs), return_when::first_completed);
    };
    auto r = lp.spawn(t({a.get_future(), b.get_future(), c.get_future()}));
    CHECK_FALSE(r.done());
    c.set_value(3);
    REQUIRE(r.done());
    CHECK(values(r.result().done) == std::vector<int>{3});
    REQUIRE(r.result().pending.size() == 2);
    CHECK_FALSE(r.result().pending[0].done());
    // Completing the others afterwards is harmless: the wait has let go of them.
    a.set_value(1);
    b.set_value(2);
}

TEST_CASE("wait(first_exception) returns at the first exception, not at a cancellation or a value") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp), d(lp);
    auto fa = a.get_future(), fb = b.get_future(), fc = c.get_future(), fd = d.get_future();
    auto t = [](std::vector<future<int>> fs) -> task<uvexec::wait_result<int>> {
        co_return co_await uvexec::wait(std::move(fs), return_when::first_exception);
    };
    auto r = lp.spawn(t({fa, fb, fc, fd}));
    a.set_value(1);
    CHECK_FALSE(r.done());
    fb.cancel();  // Python: a cancellation is not an exception here
    CHECK_FALSE(r.done());
    c.set_exception(std::make_exception_ptr(custom_error("c", 3)));
    REQUIRE(r.done());
    CHECK(r.result().done.size() == 3);
    REQUIRE(r.result().pending.size() == 1);
    CHECK(r.result().pending[0] == fd);
    d.set_value(4);
}

TEST_CASE("wait(first_exception) with no exception returns when all are done") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp);
    auto t = [](std::vector<future<int>> fs) -> task<uvexec::wait_result<int>> {
        co_return co_await uvexec::wait(std::move(fs), return_when::first_exception);
    };
    auto r = lp.spawn(t({a.get_future(), b.get_future()}));
    a.set_value(1);
    CHECK_FALSE(r.done());
    b.set_value(2);
    REQUIRE(r.done());
    CHECK(r.result().done.size() == 2);
}

TEST_CASE("wait with a timeout returns what is done by then and leaves the rest pending, uncancelled") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp);
    auto fa = a.get_future(), fb = b.get_future();
    a.set_value(1);
    auto t = [](std::vector<future<int>> fs) -> task<uvexec::wait_result<int>> {
        co_return co_await uvexec::wait(std::move(fs), return_when::all_completed, 20ms);
    };
    auto before = std::chrono::steady_clock::now();
    auto r = lp.run_until_complete(t({fa, fb}));
    // libuv's clock has 1 ms resolution, so a deadline can be met up to 1 ms early.
    CHECK(std::chrono::steady_clock::now() - before >= 19ms);
    CHECK(values(r.done) == std::vector<int>{1});
    REQUIRE(r.pending.size() == 1);
    CHECK_FALSE(fb.done());
    b.set_value(2);
}

TEST_CASE("wait on an empty set or already-done futures returns at once") {
    uvexec::loop lp;
    promise<int> a(lp);
    a.set_value(1);
    auto t = [](std::vector<future<int>> fs) -> task<std::size_t> {
        auto r = co_await uvexec::wait(std::move(fs), return_when::all_completed, 10s);
        co_return r.done.size();
    };
    CHECK(lp.run_until_complete(t({})) == 0);
    CHECK(lp.run_until_complete(t({a.get_future()})) == 1);
}

TEST_CASE("wait with a zero timeout does not wait") {
    uvexec::loop lp;
    promise<int> a(lp);
    auto t = [](std::vector<future<int>> fs) -> task<std::size_t> {
        auto r = co_await uvexec::wait(std::move(fs), return_when::all_completed, 0ms);
        co_return r.pending.size();
    };
    CHECK(lp.run_until_complete(t({a.get_future()})) == 1);
    a.set_value(0);
}

TEST_CASE("an empty future passed to wait is an error") {
    uvexec::loop lp;
    std::vector<future<int>> fs(1);
    CHECK_THROWS_AS(uvexec::wait(std::move(fs)), uvexec::invalid_state_error);
}

TEST_CASE("wait_for returns the result when it comes in time") {
    uvexec::loop lp;
    promise<int> a(lp);
    auto f = lp.spawn(uvexec::wait_for(a.get_future(), 10s));
    a.set_value(8);
    REQUIRE(f.done());
    CHECK(f.result() == 8);
}

TEST_CASE("wait_for rethrows the future's exception") {
    uvexec::loop lp;
    promise<int> a(lp);
    auto f = lp.spawn(uvexec::wait_for(a.get_future(), 10s));
    a.set_exception(std::make_exception_ptr(custom_error("x", 1)));
    CHECK_THROWS_AS(f.result(), custom_error);
}

TEST_CASE("wait_for raises timeout_error and cancels the future when time runs out") {
    uvexec::loop lp;
    promise<int> a(lp);
    auto fa = a.get_future();
    CHECK_THROWS_AS(lp.run_until_complete(uvexec::wait_for(fa, 10ms)), uvexec::timeout_error);
    CHECK(fa.cancelled());
}

TEST_CASE("wait_for cancels thread-pool work that has not started") {
    uvexec::loop lp;
    uvexec::thread_pool_executor ex{{.max_workers = 1}};
    std::atomic<bool> release{false}, second_ran{false};
    auto first = lp.run_in_executor(ex, [&] {
        while (!release) std::this_thread::yield();
    });
    auto second = lp.run_in_executor(ex, [&] { second_ran = true; });
    CHECK_THROWS_AS(lp.run_until_complete(uvexec::wait_for(second, 10ms)), uvexec::timeout_error);
    CHECK(second.cancelled());
    release = true;
    lp.run_until_complete(first);
    lp.run_until_complete(ex.shutdown());
    CHECK_FALSE(second_ran);
}

TEST_CASE("sleep suspends for at least the duration and lets other coroutines run") {
    uvexec::loop lp;
    std::vector<int> order;
    auto sleeper = [&](int id, std::chrono::milliseconds d) -> task<void> {
        co_await uvexec::sleep(lp, d);
        order.push_back(id);
    };
    auto before = std::chrono::steady_clock::now();
    auto a = lp.spawn(sleeper(1, 30ms));
    auto b = lp.spawn(sleeper(2, 5ms));
    lp.run_until_complete(a);
    CHECK(std::chrono::steady_clock::now() - before >= 29ms);  // 1 ms resolution
    CHECK(b.done());
    CHECK(order == std::vector<int>{2, 1});
}

TEST_CASE("sleep(0) yields to the loop once") {
    uvexec::loop lp;
    std::vector<int> order;
    auto a = [&]() -> task<void> {
        order.push_back(1);
        co_await uvexec::sleep(lp, 0ms);
        order.push_back(3);
    };
    auto fa = lp.spawn(a());
    order.push_back(2);
    lp.run_until_complete(fa);
    CHECK(order == std::vector<int>{1, 2, 3});
}

TEST_CASE("a loop destroyed during a sleep closes the timer cleanly") {
    host_loop host;
    {
        uvexec::loop lp(&host.uv);
        auto t = [&]() -> task<void> { co_await uvexec::sleep(lp, 10s); };
        auto f = lp.spawn(t());
        uv_run(&host.uv, UV_RUN_NOWAIT);
        CHECK_FALSE(f.done());
    }
    // host_loop checks uv_loop_close() == 0 after one more uv_run.
}

}  // TEST_SUITE
