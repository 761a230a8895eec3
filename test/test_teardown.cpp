// Shutdown and teardown while work is moving: submissions from other threads,
// loops destroyed while calls complete, executors and loops destroyed in
// either order. Every future must end (value, error or cancelled), nothing
// may leak (ASan) or race (TSan).
#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include <sys/wait.h>

#include "remote_functions.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::future;
using uvexec::task;

namespace {
bool reaped(int pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}
}  // namespace

TEST_SUITE("teardown") {

TEST_CASE("shutdown while other threads are submitting: each submission either runs or is refused, none hangs") {
    uvexec::loop lp;
    uvexec::thread_pool_executor ex{{.max_workers = 2}};
    constexpr int threads = 3, per_thread = 300;
    std::atomic<int> ran{0}, refused{0}, other{0};
    std::atomic<int> submitted{0};
    std::atomic<int> finished_threads{0};
    uvexec::promise<void> all_done(lp);
    auto done = all_done.get_future();
    std::vector<std::thread> submitters;
    for (int t = 0; t < threads; ++t) {
        submitters.emplace_back([&] {
            for (int i = 0; i < per_thread; ++i) {
                ++submitted;
                auto r = lp.run_in_executor_threadsafe(ex, fn<&remote::square>, i);
                try {
                    if (r.get() == i * i) ++ran;
                    else ++other;
                } catch (const uvexec::executor_shutdown_error&) {
                    ++refused;
                } catch (...) {
                    ++other;
                }
            }
            if (++finished_threads == threads) lp.call_soon_threadsafe([&] { all_done.set_value(); });
        });
    }
    // Shut down once some work has gone through, while the rest still arrives.
    auto stopper = [&]() -> task<void> {
        while (ran < 100) co_await uvexec::sleep(lp, 1ms);
        co_await ex.shutdown();
    };
    auto stopped = lp.spawn(stopper());
    lp.run_until_complete(done);
    for (auto& s : submitters) s.join();
    lp.run_until_complete(stopped);
    CHECK(ran + refused == threads * per_thread);
    CHECK(other == 0);
    CHECK(ran >= 100);
    CHECK(ex.in_flight() == 0);
}

TEST_CASE("a loop destroyed while thread-pool calls are completing leaves every future done and nothing leaked") {
    counted::reset();
    uvexec::thread_pool_executor ex{{.max_workers = 4}};
    std::vector<future<counted>> fs;
    for (int round = 0; round < 20; ++round) {
        auto lp = std::make_unique<uvexec::loop>();
        for (int i = 0; i < 200; ++i) fs.push_back(lp->run_in_executor(ex, [i] { return counted(i); }));
        // Let some complete, then close the loop with the rest queued, running or completing.
        auto t = [](uvexec::loop& lp) -> task<void> { co_await uvexec::sleep(lp, std::chrono::milliseconds(0)); };
        lp->run_until_complete(t(*lp));
        lp.reset();
    }
    int values = 0, cancelled = 0;
    for (auto& f : fs) {
        REQUIRE(f.done());
        if (f.cancelled()) {
            ++cancelled;
        } else {
            CHECK(f.exception() == nullptr);
            ++values;
        }
    }
    CHECK(values + cancelled == 20 * 200);
    fs.clear();
    CHECK(counted::alive == 0);
}

TEST_CASE("executor destroyed before its loop, and after it: both clean, for both kinds") {
    SUBCASE("thread pool destroyed first, with calls queued and running") {
        uvexec::loop lp;
        std::vector<future<int>> fs;
        {
            uvexec::thread_pool_executor ex{{.max_workers = 1}};
            for (int i = 0; i < 50; ++i) fs.push_back(lp.run_in_executor(ex, fn<&remote::square>, i));
        }
        settle(lp, fs);
        for (auto& f : fs) CHECK(f.done());
    }
    SUBCASE("thread pool destroyed after its loop") {
        uvexec::thread_pool_executor ex{{.max_workers = 1}};
        std::vector<future<int>> fs;
        {
            uvexec::loop lp;
            for (int i = 0; i < 50; ++i) fs.push_back(lp.run_in_executor(ex, fn<&remote::square>, i));
        }
        for (auto& f : fs) CHECK(f.done());
    }
    SUBCASE("process pool destroyed first, with calls queued and sent") {
        uvexec::loop lp;
        std::vector<future<int>> fs;
        std::vector<int> pids;
        {
            uvexec::process_pool_executor ex{{.max_workers = 2}};
            for (int i = 0; i < 50; ++i) fs.push_back(lp.run_in_executor(ex, fn<&remote::square>, i));
            pids = ex.worker_pids();
        }
        settle(lp, fs);
        for (auto& f : fs) CHECK(f.done());
        for (int pid : pids) {
            run_until(lp, [&] { return reaped(pid); });
            CHECK(reaped(pid));
        }
    }
    SUBCASE("process pool destroyed after its loop") {
        uvexec::process_pool_executor ex{{.max_workers = 2}};
        std::vector<future<int>> fs;
        std::vector<int> pids;
        {
            uvexec::loop lp;
            for (int i = 0; i < 50; ++i) fs.push_back(lp.run_in_executor(ex, fn<&remote::square>, i));
            pids = ex.worker_pids();
        }
        for (auto& f : fs) CHECK(f.done());
        for (int pid : pids) CHECK(reaped(pid));
        CHECK(ex.live_workers() == 0);
    }
}

}  // TEST_SUITE
