// to_thread(): the loop's default thread pool.
#include <stdexcept>
#include <string>
#include <thread>

#include "support.hpp"

using namespace test;
using uvexec::task;
using uvexec::thread_pool_executor;

TEST_SUITE("to_thread") {

TEST_CASE("to_thread runs fn(args...) on a thread of the loop's default pool and returns its result") {
    uvexec::loop lp;
    auto loop_thread = std::this_thread::get_id();
    auto r = lp.run_until_complete([&]() -> task<std::string> {
        co_return co_await uvexec::to_thread(
            lp,
            [&](std::string a, int b) {
                CHECK(std::this_thread::get_id() != loop_thread);
                CHECK(uvexec::this_worker::name().rfind("ThreadPoolExecutor-", 0) == 0);
                return a + std::to_string(b);
            },
            std::string("x"), 3);
    }());
    CHECK(r == "x3");
}

TEST_CASE("to_thread uses default_executor(), created on first use and the same afterwards") {
    uvexec::loop lp;
    thread_pool_executor other;  // another pool, with a prefix of its own
    auto name_of_worker = [] { return std::string(uvexec::this_worker::name()); };
    auto first = lp.run_until_complete(uvexec::to_thread(lp, name_of_worker));
    auto& ex = lp.default_executor();
    CHECK(&ex == &lp.default_executor());
    CHECK(first.rfind(ex.name_prefix() + "_", 0) == 0);  // it ran on the default pool, not another
    CHECK(first.rfind(other.name_prefix() + "_", 0) != 0);
    auto second = lp.run_until_complete(uvexec::to_thread(lp, name_of_worker));
    CHECK(second.rfind(ex.name_prefix() + "_", 0) == 0);
}

TEST_CASE("to_thread rethrows fn's exception with its type") {
    uvexec::loop lp;
    auto f = uvexec::to_thread(lp, [] {
        throw custom_error("boom", 4);
        return 0;
    });
    try {
        lp.run_until_complete(std::move(f));
        FAIL("no exception");
    } catch (const custom_error& e) {
        CHECK(e.code == 4);
    }
}

TEST_CASE("a borrowed loop that used to_thread closes cleanly: its default pool goes with it") {
    // The default pool is owned by the loop: a loop that used it closes cleanly.
    host_loop host;
    {
        uvexec::loop lp(&host.uv);
        CHECK(lp.run_until_complete(uvexec::to_thread(lp, [] { return 2; })) == 2);
    }
}

}  // TEST_SUITE
