// shield(): the awaiter's cancellation does not reach the shielded work.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::promise;
using uvexec::task;
using uvexec::task_group;

TEST_SUITE("shield") {

TEST_CASE("shield under wait_for: the timeout cancels the shield, the executor call runs on and keeps its result") {
    uvexec::loop lp;
    uvexec::thread_pool_executor ex{{.max_workers = 1}};
    promise<void> release(lp);
    std::atomic<bool> may_finish{false};
    // The call waits for the test; the coroutine gives up on it after 1 ms.
    auto work = lp.run_in_executor(ex, [&] {
        REQUIRE(eventually([&] { return may_finish.load(); }));
        return 42;
    });
    auto outer = [&]() -> task<void> {
        try {
            co_await uvexec::wait_for(uvexec::shield(work), 1ms);
            FAIL("no timeout");
        } catch (const uvexec::timeout_error&) {
        }
        CHECK_FALSE(work.done());  // not cancelled
        may_finish = true;
        CHECK(co_await work == 42);
    };
    lp.run_until_complete(outer());
    CHECK(work.result() == 42);
}

TEST_CASE("without shield the same timeout cancels the work") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto f = p.get_future();
    CHECK_THROWS_AS(lp.run_until_complete(uvexec::wait_for(f, 1ms)), uvexec::timeout_error);
    CHECK(f.cancelled());
}

TEST_CASE("a task group cancelling a child leaves the work it shielded running") {
    uvexec::loop lp;
    promise<int> p(lp);
    auto inner = p.get_future();
    bool child_cancelled = false;
    auto outer = [&]() -> task<void> {
        try {
            co_await task_group::run(lp, [&](task_group& g) -> task<void> {
                g.spawn([&]() -> task<void> {
                    try {
                        co_await uvexec::shield(inner);
                    } catch (const uvexec::cancelled_error&) {
                        child_cancelled = true;
                    }
                });
                throw custom_error("body", 1);
                co_return;
            });
        } catch (const custom_error&) {
        }
    };
    lp.run_until_complete(outer());
    CHECK(child_cancelled);
    CHECK_FALSE(inner.done());
    p.set_value(5);
    CHECK(inner.result() == 5);
}

TEST_CASE("shield passes the value, the exception and the cancellation of the inner future through") {
    uvexec::loop lp;
    promise<std::string> a(lp), b(lp), c(lp);
    auto sa = uvexec::shield(a.get_future());
    auto sb = uvexec::shield(b.get_future());
    auto sc = uvexec::shield(c.get_future());
    CHECK_FALSE(sa == a.get_future());
    a.set_value("v");
    b.set_exception(std::make_exception_ptr(custom_error("b", 2)));
    c.get_future().cancel();
    settle(lp, std::vector{sa, sb, sc});
    CHECK(sa.result() == "v");
    CHECK(a.get_future().result() == "v");  // copied: the inner future keeps it
    CHECK_THROWS_AS(sb.result(), custom_error);
    CHECK(sc.cancelled());
}

TEST_CASE("shield of a done future is that future; move-only values are moved through") {
    uvexec::loop lp;
    promise<int> done(lp);
    done.set_value(1);
    settle(lp, std::vector{done.get_future()});
    CHECK(uvexec::shield(done.get_future()) == done.get_future());

    promise<std::unique_ptr<int>> m(lp);
    auto s = uvexec::shield(m.get_future());
    m.set_value(std::make_unique<int>(7));
    auto v = lp.run_until_complete(std::move(s));
    REQUIRE(v);
    CHECK(*v == 7);
}

TEST_CASE("a cancelled shield drops nothing: the inner result is released when it arrives") {
    counted::reset();
    {
        uvexec::loop lp;
        promise<counted> p(lp);
        auto s = uvexec::shield(p.get_future());
        s.cancel();
        p.set_value(counted(3));
        settle(lp, std::vector{p.get_future()});
        CHECK(s.cancelled());
        CHECK(p.get_future().result().value == 3);
    }
    CHECK(counted::alive == 0);
}

TEST_CASE("a shield of a future that never completes leaks nothing (LeakSanitizer checks this in the ASan build)") {
    auto lp = std::make_unique<uvexec::loop>();
    auto p = std::make_unique<uvexec::promise<int>>(*lp);
    {
        auto s = uvexec::shield(p->get_future());
        CHECK_FALSE(s.done());
    }
    lp.reset();
    p.reset();  // abandoned after its loop closed: the inner future never completes, and is freed with its link
}

}  // TEST_SUITE
