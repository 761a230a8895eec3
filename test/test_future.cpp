// future<T> and promise<T>: values, exceptions, cancellation, callbacks, threads.
#include <memory>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::promise;
using uvexec::task;

TEST_SUITE("future") {

TEST_CASE("a value set on a promise is the future's result and what co_await returns") {
    uvexec::loop lp;
    promise<int> p(lp);
    future<int> f = p.get_future();
    CHECK_FALSE(f.done());
    p.set_value(42);
    CHECK(f.done());
    CHECK_FALSE(f.cancelled());
    CHECK(f.result() == 42);
    CHECK(f.exception() == nullptr);
    auto t = [](future<int> f) -> task<int> { co_return co_await f + 1; };
    CHECK(lp.run_until_complete(t(f)) == 43);
}

TEST_CASE("result() of a pending future and a second result are invalid_state_error") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    CHECK_THROWS_AS(f.result(), uvexec::invalid_state_error);
    CHECK_THROWS_AS(f.exception(), uvexec::invalid_state_error);
    p.set_value(1);
    CHECK_THROWS_AS(p.set_value(2), uvexec::invalid_state_error);
    CHECK(f.result() == 1);
}

TEST_CASE("an exception travels intact: same type, same fields") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    p.set_exception(std::make_exception_ptr(custom_error("boom", 7)));
    CHECK(f.exception() != nullptr);
    try {
        f.result();
        FAIL("result() did not throw");
    } catch (const custom_error& e) {
        CHECK(std::string(e.what()) == "boom");
        CHECK(e.code == 7);
    }
    auto t = [](future<int> f) -> task<int> { co_return co_await f; };
    CHECK_THROWS_AS(lp.run_until_complete(t(f)), custom_error);
}

TEST_CASE("void futures work") {
    uvexec::loop lp;
    promise<void> p(lp);
    auto f = p.get_future();
    bool resumed = false;
    auto t = [&](future<void> f) -> task<void> {
        co_await f;
        resumed = true;
    };
    auto g = lp.spawn(t(f));
    CHECK_FALSE(resumed);
    p.set_value();
    CHECK(resumed);
    CHECK(g.done());
    g.result();
}

TEST_CASE("move-only results are moved out with co_await std::move(f)") {
    uvexec::loop lp;
    promise<std::unique_ptr<int>> p(lp);
    auto f = p.get_future();
    p.set_value(std::make_unique<int>(5));
    auto t = [](future<std::unique_ptr<int>> f) -> task<std::unique_ptr<int>> { co_return co_await std::move(f); };
    auto v = lp.run_until_complete(t(std::move(f)));
    REQUIRE(v);
    CHECK(*v == 5);
}

TEST_CASE("cancel() makes a pending future cancelled and awaiters get cancelled_error") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    bool got_cancelled = false;
    auto t = [&](future<int> f) -> task<void> {
        try {
            co_await f;
        } catch (const uvexec::cancelled_error&) {
            got_cancelled = true;
        }
    };
    auto g = lp.spawn(t(f));
    CHECK(f.cancel());
    CHECK(got_cancelled);
    CHECK(f.cancelled());
    CHECK(f.done());
    CHECK_THROWS_AS(f.result(), uvexec::cancelled_error);
    CHECK_THROWS_AS(f.exception(), uvexec::cancelled_error);
    CHECK_FALSE(f.cancel());
    // Setting a cancelled future's promise later is not an error: the result is dropped.
    p.set_value(3);
    CHECK(f.cancelled());
}

TEST_CASE("cancel() of a done future returns false and changes nothing") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    p.set_value(1);
    CHECK_FALSE(f.cancel());
    CHECK(f.result() == 1);
}

TEST_CASE("add_done_callback fires once, with the future, also when already done or cancelled") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    int calls = 0;
    int seen = 0;
    f.add_done_callback([&](future<int> g) {
        ++calls;
        seen = g.result();
    });
    CHECK(calls == 0);
    p.set_value(9);
    CHECK(calls == 1);
    CHECK(seen == 9);
    f.add_done_callback([&](future<int>) { ++calls; });  // already done: runs now
    CHECK(calls == 2);

    promise<int> q(lp);
    auto h = q.get_future();
    bool cancelled_seen = false;
    h.add_done_callback([&](future<int> g) { cancelled_seen = g.cancelled(); });
    h.cancel();
    CHECK(cancelled_seen);
}

TEST_CASE("a throwing done-callback does not stop the other callbacks") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    int after = 0;
    f.add_done_callback([](future<int>) { throw std::runtime_error("callback failure (expected in this test)"); });
    f.add_done_callback([&](future<int>) { ++after; });
    p.set_value(1);
    CHECK(after == 1);
}

TEST_CASE("a promise set on another thread resumes the coroutine on the loop thread") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    const auto loop_thread = std::this_thread::get_id();
    std::thread::id resumed_on;
    auto t = [&](future<int> f) -> task<int> {
        int v = co_await f;
        resumed_on = std::this_thread::get_id();
        co_return v;
    };
    std::thread producer([&p] { p.set_value(77); });
    // The unfulfilled promise keeps the loop running until the value arrives.
    CHECK(lp.run_until_complete(t(f)) == 77);
    producer.join();
    CHECK(resumed_on == loop_thread);
}

TEST_CASE("a promise destroyed unfulfilled fails its future with broken_promise_error") {
    uvexec::loop lp;
    future<int> f;
    {
        promise<int> p(lp);
        f = p.get_future();
    }
    CHECK_THROWS_AS(f.result(), uvexec::broken_promise_error);

    // ... also when it is dropped on another thread.
    auto p2 = std::make_unique<promise<int>>(lp);
    auto f2 = p2->get_future();
    std::thread dropper([p = std::move(p2)]() mutable { p.reset(); });
    auto t = [](future<int> f) -> task<int> { co_return co_await f; };
    CHECK_THROWS_AS(lp.run_until_complete(t(f2)), uvexec::broken_promise_error);
    dropper.join();
}

TEST_CASE("setting a promise after its loop is gone throws loop_closed_error") {
    auto lp = std::make_unique<uvexec::loop>();
    auto p = std::make_unique<promise<int>>(*lp);
    lp.reset();
    std::thread other([&] { CHECK_THROWS_AS(p->set_value(1), uvexec::loop_closed_error); });
    other.join();
}

TEST_CASE("a coroutine destroyed while awaiting a future unhooks itself") {
    // The loop closes with the coroutine suspended: its frame is destroyed and
    // the awaiter must leave the promise's waiter list (ASan would catch a
    // dangling node when the promise is fulfilled afterwards).
    counted::reset();
    auto lp = std::make_unique<uvexec::loop>();
    auto p = std::make_unique<promise<int>>(*lp);
    auto t = [](future<int> f) -> task<void> {
        counted c(1);
        co_await f;
        FAIL("resumed after the loop closed");
    };
    auto g = lp->spawn(t(p->get_future()));
    CHECK(counted::alive == 1);
    lp.reset();
    CHECK(counted::alive == 0);
    CHECK(g.cancelled());
    // The promise's future state is still alive (p holds it): completing it
    // must not touch the destroyed frame. The loop is closed, so it throws.
    CHECK_THROWS_AS(p->set_value(1), uvexec::loop_closed_error);
}

TEST_CASE("a done-callback of a promise abandoned after its loop closed is freed, not leaked") {
    auto lp = std::make_unique<uvexec::loop>();
    auto p = std::make_unique<promise<int>>(*lp);
    auto token = std::make_shared<int>(0);
    p->get_future().add_done_callback([token](future<int>) { FAIL("fired after the loop closed"); });
    CHECK(token.use_count() == 2);
    lp.reset();
    p.reset();  // abandons the promise: its loop is gone, so nothing can fire
    CHECK(token.use_count() == 1);
}

TEST_CASE("an empty future (default-constructed or moved from) is invalid_state_error, not a crash") {
    uvexec::loop lp;
    future<int> empty;
    CHECK_FALSE(empty.valid());
    CHECK_THROWS_AS((void)empty.done(), uvexec::invalid_state_error);
    CHECK_THROWS_AS((void)empty.cancelled(), uvexec::invalid_state_error);
    CHECK_THROWS_AS((void)empty.cancel(), uvexec::invalid_state_error);
    CHECK_THROWS_AS((void)empty.result(), uvexec::invalid_state_error);
    CHECK_THROWS_AS((void)empty.exception(), uvexec::invalid_state_error);
    CHECK_THROWS_AS(empty.add_done_callback([](future<int>) {}), uvexec::invalid_state_error);
    promise<int> p(lp);
    future<int> f = p.get_future();
    future<int> g = std::move(f);
    auto await_it = [](future<int>& f) -> task<int> { co_return co_await f; };
    CHECK_THROWS_AS(lp.run_until_complete(await_it(f)), uvexec::invalid_state_error);
    auto await_moved = [](future<int>& f) -> task<int> { co_return co_await std::move(f); };
    CHECK_THROWS_AS(lp.run_until_complete(await_moved(f)), uvexec::invalid_state_error);
    p.set_value(4);
    CHECK(g.result() == 4);
}

}  // TEST_SUITE
