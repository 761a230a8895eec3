// as_completed(): `while (auto f = co_await ac)`, beside next()/remaining().
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::promise;
using uvexec::task;

TEST_SUITE("as_completed") {

TEST_CASE("while (auto f = co_await ac) visits every future once, in completion order, then ends") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    b.set_value(2);  // done before the loop starts: first
    std::vector<int> seen;
    auto body = [&]() -> task<void> {  // named: the closure must outlive its coroutine
        auto ac = uvexec::as_completed(std::vector{a.get_future(), b.get_future(), c.get_future()});
        while (auto f = co_await ac) seen.push_back(f->result());
        CHECK(ac.remaining() == 0);
        auto again = co_await ac;  // still the end
        CHECK_FALSE(again.has_value());
    };
    auto r = lp.spawn(body());
    CHECK(seen == std::vector<int>{2});
    c.set_value(3);
    a.set_value(1);
    REQUIRE(r.done());
    r.result();
    CHECK(seen == std::vector<int>{2, 3, 1});
}

TEST_CASE("co_await on an empty as_completed ends at once") {
    uvexec::loop lp;
    int n = 0;
    lp.run_until_complete([&]() -> task<void> {
        auto ac = uvexec::as_completed(std::vector<future<int>>{});
        while (auto f = co_await ac) ++n;
    }());
    CHECK(n == 0);
}

TEST_CASE("the optional form and next() share one queue") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp);
    a.set_value(1);
    b.set_value(2);
    lp.run_until_complete([&]() -> task<void> {
        auto ac = uvexec::as_completed(std::vector{a.get_future(), b.get_future()});
        auto first = co_await ac.next();
        CHECK(first.result() == 1);
        auto second = co_await ac;
        REQUIRE(second);
        CHECK(second->result() == 2);
        CHECK_FALSE(co_await ac);
        CHECK_THROWS_AS(ac.next(), uvexec::invalid_state_error);
    }());
}

TEST_CASE("a failed future is handed out like the others; its result() rethrows") {
    uvexec::loop lp;
    promise<int> a(lp);
    a.set_exception(std::make_exception_ptr(custom_error("a", 1)));
    int failures = 0;
    lp.run_until_complete([&]() -> task<void> {
        auto ac = uvexec::as_completed(std::vector{a.get_future()});
        while (auto f = co_await ac) {
            if (f->exception()) ++failures;
        }
    }());
    CHECK(failures == 1);
}

}  // TEST_SUITE
