// gather() and as_completed().
#include <memory>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::promise;
using uvexec::task;

TEST_SUITE("gather") {

TEST_CASE("gather(range) returns the results in input order, whatever the completion order") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    auto r = lp.spawn(uvexec::gather(std::vector{a.get_future(), b.get_future(), c.get_future()}));
    c.set_value(3);
    a.set_value(1);
    CHECK_FALSE(r.done());
    b.set_value(2);
    REQUIRE(r.done());
    CHECK(r.result() == std::vector<int>{1, 2, 3});
}

TEST_CASE("gather rethrows the first exception as soon as it happens, without waiting for the rest") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    auto fa = a.get_future();
    auto r = lp.spawn(uvexec::gather(std::vector{fa, b.get_future(), c.get_future()}));
    c.set_exception(std::make_exception_ptr(custom_error("third", 3)));
    REQUIRE(r.done());
    try {
        r.result();
        FAIL("no exception");
    } catch (const custom_error& e) {
        CHECK(e.code == 3);
    }
    CHECK_FALSE(fa.done());  // the others keep going, as in Python
    a.set_value(1);
    b.set_exception(std::make_exception_ptr(custom_error("second", 2)));
}

TEST_CASE("gather treats a cancelled future as a cancelled_error") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp);
    auto fb = b.get_future();
    auto r = lp.spawn(uvexec::gather(std::vector{a.get_future(), fb}));
    fb.cancel();
    REQUIRE(r.done());
    CHECK_THROWS_AS(r.result(), uvexec::cancelled_error);
    a.set_value(1);
}

TEST_CASE("gather(return_exceptions, ...) returns every value or exception in place") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    auto fc = c.get_future();
    auto r = lp.spawn(uvexec::gather(uvexec::return_exceptions, std::vector{a.get_future(), b.get_future(), fc}));
    b.set_exception(std::make_exception_ptr(custom_error("b", 2)));
    CHECK_FALSE(r.done());
    fc.cancel();
    a.set_value(1);
    REQUIRE(r.done());
    auto& out = r.result();
    REQUIRE(out.size() == 3);
    CHECK(out[0].has_value());
    CHECK(out[0].value() == 1);
    CHECK_FALSE(out[1].has_value());
    CHECK_THROWS_AS(std::rethrow_exception(out[1].exception()), custom_error);
    CHECK_THROWS_AS(out[1].value(), custom_error);
    CHECK_THROWS_AS(std::rethrow_exception(out[2].exception()), uvexec::cancelled_error);
}

TEST_CASE("variadic gather mixes types and void and returns a tuple") {
    uvexec::loop lp;
    promise<int> a(lp);
    promise<std::string> b(lp);
    promise<void> c(lp);
    auto r = lp.spawn(uvexec::gather(a.get_future(), b.get_future(), c.get_future()));
    c.set_value();
    b.set_value("two");
    a.set_value(1);
    REQUIRE(r.done());
    auto& [x, y, z] = r.result();
    CHECK(x == 1);
    CHECK(y == "two");
    CHECK(std::is_same_v<std::decay_t<decltype(z)>, std::monostate>);
}

TEST_CASE("variadic gather with return_exceptions") {
    uvexec::loop lp;
    promise<int> a(lp);
    promise<void> b(lp);
    auto r = lp.spawn(uvexec::gather(uvexec::return_exceptions, a.get_future(), b.get_future()));
    b.set_exception(std::make_exception_ptr(custom_error("b", 1)));
    a.set_value(5);
    REQUIRE(r.done());
    auto& [x, y] = r.result();
    CHECK(x.value() == 5);
    CHECK_FALSE(y.has_value());
    CHECK_THROWS_AS(y.value(), custom_error);
}

TEST_CASE("gather moves move-only results out") {
    uvexec::loop lp;
    promise<std::unique_ptr<int>> a(lp), b(lp);
    auto r = lp.spawn(uvexec::gather(std::vector{a.get_future(), b.get_future()}));
    a.set_value(std::make_unique<int>(1));
    b.set_value(std::make_unique<int>(2));
    REQUIRE(r.done());
    auto v = std::move(r).result();
    CHECK(*v[0] + *v[1] == 3);
}

TEST_CASE("gather copies results that another future handle can still read") {
    counted::reset();
    uvexec::loop lp;
    promise<counted> a(lp);
    auto kept = a.get_future();
    auto r = lp.spawn(uvexec::gather(std::vector{kept}));
    a.set_value(counted(6));
    REQUIRE(r.done());
    CHECK(r.result()[0].value == 6);
    CHECK(kept.result().value == 6);  // still intact
    CHECK(counted::copies == 1);
}

TEST_CASE("gather of an empty range returns an empty vector at once") {
    uvexec::loop lp;
    CHECK(lp.run_until_complete(uvexec::gather(std::vector<future<int>>{})).empty());
}

TEST_CASE("gather of void futures") {
    uvexec::loop lp;
    promise<void> a(lp), b(lp);
    auto r = lp.spawn(uvexec::gather(std::vector{a.get_future(), b.get_future()}));
    a.set_value();
    b.set_value();
    REQUIRE(r.done());
    r.result();
}

TEST_CASE("gather returns at a failure done before it starts; the futures it was watching then are let go") {
    // await_ready watches the pending futures as it scans and finds the
    // failure later in the same scan: it must unhook from the earlier ones,
    // or completing them would reach a finished (and freed) wait.
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    auto fa = a.get_future();
    b.set_exception(std::make_exception_ptr(custom_error("done", 2)));
    auto r = lp.spawn(uvexec::gather(std::vector{fa, b.get_future(), c.get_future()}));
    REQUIRE(r.done());
    CHECK_THROWS_AS(r.result(), custom_error);
    r = {};  // the gather's frame is gone
    a.set_value(1);
    c.set_value(3);
    CHECK(fa.result() == 1);
}

TEST_CASE("gather and wait over tens of thousands of futures: input order, completion order, first failure by completion") {
    // Large enough that the wait's nodes are mapped in one block (wait.cpp).
    constexpr int n = 40000;
    uvexec::loop lp;
    std::vector<promise<int>> ps;
    ps.reserve(n);
    std::vector<future<int>> fs, ws;
    for (int i = 0; i < n; ++i) {
        ps.emplace_back(lp);
        fs.push_back(ps.back().get_future());
        ws.push_back(fs.back());
    }
    auto g = lp.spawn(uvexec::gather(std::move(fs)));
    auto w = lp.spawn([](std::vector<future<int>> fs) -> task<uvexec::wait_result<int>> {
        co_return co_await uvexec::wait(std::move(fs));
    }(std::move(ws)));
    // Completed from the last to the first; two failures, the later index first.
    for (int i = n - 1; i >= 0; --i) {
        if (i == n / 2) ps[static_cast<std::size_t>(i)].set_exception(std::make_exception_ptr(custom_error("first", 1)));
        else if (i == n / 4) ps[static_cast<std::size_t>(i)].set_exception(std::make_exception_ptr(custom_error("second", 2)));
        else ps[static_cast<std::size_t>(i)].set_value(i);
    }
    REQUIRE(g.done());
    try {
        g.result();
        FAIL("no exception");
    } catch (const custom_error& e) {
        CHECK(e.code == 1);
    }
    REQUIRE(w.done());
    auto& done = w.result().done;
    REQUIRE(done.size() == static_cast<std::size_t>(n));
    CHECK(done.front().result() == n - 1);
    CHECK(done.back().result() == 0);
    CHECK(w.result().pending.empty());

    // All values: gather returns them in input order.
    std::vector<promise<int>> qs;
    qs.reserve(n);
    std::vector<future<int>> hs;
    for (int i = 0; i < n; ++i) {
        qs.emplace_back(lp);
        hs.push_back(qs.back().get_future());
    }
    auto h = lp.spawn(uvexec::gather(std::move(hs)));
    for (int i = n - 1; i >= 0; --i) qs[static_cast<std::size_t>(i)].set_value(i * 2);
    REQUIRE(h.done());
    auto values = h.result();
    REQUIRE(values.size() == static_cast<std::size_t>(n));
    bool in_order = true;
    for (int i = 0; i < n; ++i) in_order = in_order && values[static_cast<std::size_t>(i)] == i * 2;
    CHECK(in_order);
}

TEST_CASE("a wait on hundreds of thousands of futures asks for huge pages for its nodes") {
    // The node block is written once, right after it is mapped: with 4 KiB
    // pages that first touch costs a page fault each (lib/pages.cpp).
    if (!test::huge_pages_available()) {
        MESSAGE("skipped: this kernel has no transparent huge pages");
        return;
    }
    constexpr int n = 300000;  // nodes of 40 bytes or more: past the 4 MiB advice threshold
    uvexec::loop lp;
    std::vector<promise<int>> ps;
    ps.reserve(n);
    std::vector<future<int>> fs;
    for (int i = 0; i < n; ++i) {
        ps.emplace_back(lp);
        fs.push_back(ps.back().get_future());
    }
    const std::size_t before = test::huge_advised_bytes();
    auto g = lp.spawn(uvexec::gather(std::move(fs)));
    REQUIRE_FALSE(g.done());
    CHECK(test::huge_advised_bytes() >= before + (std::size_t{4} << 20));
    for (int i = 0; i < n; ++i) ps[static_cast<std::size_t>(i)].set_value(i);
    REQUIRE(g.done());
    CHECK(g.result().back() == n - 1);
}

}  // TEST_SUITE

TEST_SUITE("as_completed") {

TEST_CASE("as_completed hands out futures in the order they finish") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp), c(lp);
    std::vector<int> got;
    auto t = [&](std::vector<future<int>> fs) -> task<void> {
        auto ac = uvexec::as_completed(std::move(fs));
        CHECK(ac.size() == 3);
        while (ac.remaining() > 0) {
            future<int> f = co_await ac.next();
            CHECK(f.done());
            got.push_back(f.result());
        }
        CHECK_THROWS_AS(ac.next(), uvexec::invalid_state_error);
    };
    a.set_value(1);  // done before as_completed starts: handed out first
    auto r = lp.spawn(t({a.get_future(), b.get_future(), c.get_future()}));
    c.set_value(3);
    b.set_exception(std::make_exception_ptr(custom_error("b", 2)));
    REQUIRE(r.done());
    CHECK_THROWS_AS(r.result(), custom_error);  // f.result() of b rethrows in the loop
    CHECK(got == std::vector<int>{1, 3});
}

TEST_CASE("as_completed delivers several completions that happen between two next() calls") {
    uvexec::loop lp;
    promise<int> a(lp), b(lp);
    auto ac = uvexec::as_completed(std::vector{a.get_future(), b.get_future()});
    b.set_value(2);
    a.set_value(1);
    auto t = [&]() -> task<std::vector<int>> {
        std::vector<int> v;
        while (ac.remaining()) v.push_back((co_await ac.next()).result());
        co_return v;
    };
    CHECK(lp.run_until_complete(t()) == std::vector<int>{2, 1});
}

TEST_CASE("as_completed dropped before its futures complete unhooks itself") {
    uvexec::loop lp;
    promise<int> a(lp);
    {
        auto ac = uvexec::as_completed(std::vector{a.get_future()});
    }
    a.set_value(1);  // ASan would see a dangling node here
}

}  // TEST_SUITE
