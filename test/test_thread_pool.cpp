// thread_pool_executor: runners and the max_workers cap, names, failures, cancellation, shutdown, lifetime.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::task;
using uvexec::thread_pool_executor;

namespace {
/// A gate worker calls block on until the test opens it.
struct gate {
    std::atomic<bool> open{false};
    std::atomic<int> waiting{0};
    void pass() {
        ++waiting;
        while (!open) std::this_thread::yield();
    }
};
}  // namespace

TEST_SUITE("thread_pool") {

TEST_CASE("before libuv's pool starts, UV_THREADPOOL_SIZE is raised to fit the executors") {
    // This is the first test of this executable: nothing has used libuv's pool yet.
    if (std::getenv("UV_THREADPOOL_SIZE") != nullptr) {
        MESSAGE("UV_THREADPOOL_SIZE set by the environment; uvexec must leave it alone");
        std::string before = std::getenv("UV_THREADPOOL_SIZE");
        thread_pool_executor ex{{.max_workers = 3}};
        CHECK(std::string(std::getenv("UV_THREADPOOL_SIZE")) == before);
        return;
    }
    thread_pool_executor ex{{.max_workers = 9}};
    REQUIRE(std::getenv("UV_THREADPOOL_SIZE") != nullptr);
    CHECK(std::atoi(std::getenv("UV_THREADPOOL_SIZE")) >= 9 + 4);
    CHECK(uvexec::libuv_pool_size() >= 13);
    // And max_workers calls really run at once: 9 calls meet at a barrier.
    uvexec::loop lp;
    std::atomic<int> arrived{0};
    std::vector<future<void>> fs;
    for (int i = 0; i < 9; ++i)
        fs.push_back(lp.run_in_executor(ex, [&] {
            ++arrived;
            eventually([&] { return arrived == 9; });
        }));
    lp.run_until_complete(uvexec::gather(std::move(fs)));
    CHECK(arrived == 9);
}

TEST_CASE("once libuv's pool has started, an executor it cannot fit is reported once on stderr") {
    // The first test started the pool (13 threads, or the environment's size).
    const std::size_t size = uvexec::libuv_pool_size();
    std::FILE* capture = std::tmpfile();
    REQUIRE(capture != nullptr);
    std::fflush(stderr);
    int saved = ::dup(2);
    ::dup2(::fileno(capture), 2);
    {
        thread_pool_executor too_big{{.max_workers = static_cast<int>(size) + 1}};
        thread_pool_executor again{{.max_workers = static_cast<int>(size) + 1}};
    }
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::string text;
    std::rewind(capture);
    for (int c; (c = std::fgetc(capture)) != EOF;) text.push_back(static_cast<char>(c));
    std::fclose(capture);
    CHECK(text.find("uvexec: warning: libuv's thread pool has") != std::string::npos);
    CHECK(text.find("UV_THREADPOOL_SIZE=") != std::string::npos);
    CHECK(text.find("warning", text.find("warning") + 1) == std::string::npos);  // once
}

TEST_CASE("max_workers below 1 or above 1024 is an error at construction") {
    CHECK_THROWS_AS(thread_pool_executor({.max_workers = 0}), std::invalid_argument);
    CHECK_THROWS_AS(thread_pool_executor({.max_workers = -2}), std::invalid_argument);
    CHECK_THROWS_AS(thread_pool_executor({.max_workers = 1025}), std::invalid_argument);
    thread_pool_executor ex;
    CHECK(ex.max_workers() == thread_pool_executor::default_max_workers());
    CHECK(ex.max_workers() >= 5);
}

TEST_CASE("no more than max_workers calls run at once, and all of them run") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 3}};
    std::atomic<int> now{0}, peak{0};
    gate g;
    std::vector<future<int>> fs;
    for (int i = 0; i < 60; ++i) {
        fs.push_back(lp.run_in_executor(ex, [&, i] {
            int n = ++now;
            int p = peak;
            while (n > p && !peak.compare_exchange_weak(p, n)) {}
            g.pass();
            std::this_thread::sleep_for(1ms);
            --now;
            return i;
        }));
    }
    // Runners take calls without the loop's help: three are running now, held
    // at the gate, and the rest wait for them.
    REQUIRE(eventually([&] { return g.waiting == 3; }));
    CHECK(ex.in_flight() == 3);
    CHECK(ex.queued() == 57);
    g.open = true;
    auto results = lp.run_until_complete(uvexec::gather(std::move(fs)));
    CHECK(peak <= 3);
    CHECK(peak >= 2);  // they did overlap
    for (int i = 0; i < 60; ++i) CHECK(results[i] == i);
    CHECK(ex.in_flight() == 0);
    CHECK(ex.queued() == 0);
}

TEST_CASE("each call knows its slot name; names are stable and distinct while running") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 3, .name_prefix = "crunch"}};
    gate g;
    std::vector<future<std::string>> fs;
    for (int i = 0; i < 3; ++i)
        fs.push_back(lp.run_in_executor(ex, [&] {
            g.pass();
            return std::string(uvexec::this_worker::name());
        }));
    REQUIRE(eventually([&] { return g.waiting == 3; }));
    g.open = true;
    auto names = lp.run_until_complete(uvexec::gather(std::move(fs)));
    std::set<std::string> distinct(names.begin(), names.end());
    CHECK(distinct == std::set<std::string>{"crunch_0", "crunch_1", "crunch_2"});
    CHECK(uvexec::this_worker::name().empty());  // the loop thread is no worker

    thread_pool_executor unnamed{{.max_workers = 1}};
    auto n = lp.run_until_complete(lp.run_in_executor(unnamed, [] { return std::string(uvexec::this_worker::name()); }));
    CHECK(n.rfind("ThreadPoolExecutor-", 0) == 0);
    CHECK(n.substr(n.size() - 2) == "_0");
}

TEST_CASE("an exception thrown by the work reaches the awaiter intact") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 2}};
    auto t = [&]() -> task<int> {
        try {
            co_await lp.run_in_executor(ex, [] {
                throw custom_error("from a worker", 11);
                return 0;
            });
        } catch (const custom_error& e) {
            co_return e.code;
        }
        co_return -1;
    };
    CHECK(lp.run_until_complete(t()) == 11);
    auto f = lp.run_in_executor(ex, [] { throw 42; });
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), int);
}

namespace forwarding {
int take(std::unique_ptr<int> p) { return *p; }
std::size_t by_value(std::string s) { return s.size(); }
/// A result with neither a default constructor nor a copy.
struct only_built {
    explicit only_built(int v) : value(v) {}
    only_built(only_built&&) = default;
    only_built(const only_built&) = delete;
    int value;
};
}  // namespace forwarding

TEST_CASE("arguments are stored once and passed as rvalues once: by-value parameters are moved, never copied") {
    counted::reset();
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    auto r = lp.run_until_complete(lp.run_in_executor(ex, [](counted c) { return counted(c.value * 2); }, counted(21)));
    CHECK(r.value == 42);
    CHECK(counted::copies == 0);
    // From an lvalue: one copy into the call (the caller keeps its own), then moves only.
    counted::reset();
    counted mine(5);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, [](counted c) { return c.value; }, mine)) == 5);
    CHECK(counted::copies == 1);
    // An rvalue-reference parameter binds to the stored argument.
    counted::reset();
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, [](counted&& c) { return c.value; }, counted(8))) == 8);
    CHECK(counted::copies == 0);
    // A std::string by value is moved into the function: its buffer is the one the caller made.
    std::string big(1000, 'x');
    const char* buffer = big.data();
    auto same = lp.run_until_complete(lp.run_in_executor(
        ex, [buffer](std::string s) { return s.data() == buffer && s.size() == 1000; }, std::move(big)));
    CHECK(same);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, forwarding::by_value, std::string(7, 'y'))) == 7);
}

TEST_CASE("move-only arguments and results work, and results need no default constructor") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, forwarding::take, std::make_unique<int>(7))) == 7);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, uvexec::fn<&forwarding::take>, std::make_unique<int>(8))) == 8);
    auto p = lp.run_until_complete(lp.run_in_executor(
        ex, [](std::unique_ptr<int> q) { return std::make_unique<int>(*q + 1); }, std::make_unique<int>(1)));
    CHECK(*p == 2);
    auto f = lp.run_in_executor(ex, [] { return forwarding::only_built(3); });
    auto take_it = [](future<forwarding::only_built> f) -> uvexec::task<int> {
        forwarding::only_built v = co_await std::move(f);
        co_return v.value;
    };
    CHECK(lp.run_until_complete(take_it(f)) == 3);
}

TEST_CASE("cancelling queued work removes it: it never runs") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    gate g;
    std::atomic<bool> ran{false};
    auto first = lp.run_in_executor(ex, [&] { g.pass(); });
    auto second = lp.run_in_executor(ex, [&] { ran = true; });
    REQUIRE(eventually([&] { return g.waiting == 1; }));  // the runner holds the first call
    CHECK(ex.queued() == 1);
    CHECK(second.cancel());
    CHECK(ex.queued() == 0);
    CHECK(second.cancelled());
    g.open = true;
    lp.run_until_complete(first);
    lp.run_until_complete(ex.shutdown());
    CHECK_FALSE(ran);
}

TEST_CASE("cancelling work whose runner waits in libuv's queue for a thread removes it too") {
    uvexec::loop lp;
    // One libuv thread is kept busy by a gate on another executor... libuv's
    // pool is shared, so fill every libuv thread and then cancel one more.
    const int pool = static_cast<int>(uvexec::libuv_pool_size());
    thread_pool_executor blockers{{.max_workers = pool}};
    thread_pool_executor ex{{.max_workers = 1}};
    gate g;
    std::vector<future<void>> fs;
    for (int i = 0; i < pool; ++i) fs.push_back(lp.run_in_executor(blockers, [&] { g.pass(); }));
    REQUIRE(eventually([&] { return g.waiting == pool; }));
    std::atomic<bool> ran{false};
    auto victim = lp.run_in_executor(ex, [&] { ran = true; });
    // Its runner is inside libuv, waiting for a thread; the call is pending.
    CHECK(ex.queued() == 1);
    CHECK(ex.in_flight() == 0);
    CHECK(victim.cancel());
    CHECK(ex.queued() == 0);
    g.open = true;
    lp.run_until_complete(uvexec::gather(std::move(fs)));
    lp.run_until_complete(ex.shutdown());
    CHECK(victim.cancelled());
    CHECK_FALSE(ran);
    CHECK(ex.in_flight() == 0);
}

TEST_CASE("cancelling running work: the awaiter stops waiting, the work finishes, nothing dangles") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    gate g;
    std::atomic<bool> finished{false};
    auto f = lp.run_in_executor(ex, [&] {
        g.pass();
        finished = true;
        return counted(1);
    });
    bool cancelled_seen = false;
    auto t = [&](future<counted> f) -> task<void> {
        try {
            co_await f;
        } catch (const uvexec::cancelled_error&) {
            cancelled_seen = true;
        }
    };
    auto waiter = lp.spawn(t(f));
    REQUIRE(eventually([&] { return g.waiting == 1; }));
    CHECK(f.cancel());
    CHECK(cancelled_seen);
    f = {};  // drop every handle while the work runs
    waiter = {};
    g.open = true;
    lp.run_until_complete(ex.shutdown());
    CHECK(finished);
}

TEST_CASE("a dropped future's work still runs to completion safely") {
    counted::reset();
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 2}};
    std::atomic<int> done{0};
    for (int i = 0; i < 10; ++i) {
        (void)lp.run_in_executor(ex, [&](counted c) {
            ++done;
            return c;
        }, counted(i));
    }
    lp.run_until_complete(ex.shutdown());
    CHECK(done == 10);
    CHECK(counted::alive == 0);
}

TEST_CASE("shutdown() waits for queued and running work; submitting afterwards is an error") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    std::atomic<int> ran{0};
    std::vector<future<void>> fs;
    for (int i = 0; i < 5; ++i) fs.push_back(lp.run_in_executor(ex, [&] { ++ran; }));
    auto stopped = ex.shutdown();
    CHECK_FALSE(stopped.done());
    CHECK_THROWS_AS(lp.run_in_executor(ex, [] {}), uvexec::executor_shutdown_error);
    lp.run_until_complete(stopped);
    CHECK(ran == 5);
    for (auto& f : fs) CHECK((f.done() && !f.cancelled()));
    CHECK(ex.shutdown().done());  // idempotent, and already idle
}

TEST_CASE("shutdown(cancel_futures) cancels queued work and waits only for running work") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    gate g;
    std::atomic<int> ran{0};
    auto running = lp.run_in_executor(ex, [&] { g.pass(); ++ran; });
    std::vector<future<void>> queued;
    for (int i = 0; i < 4; ++i) queued.push_back(lp.run_in_executor(ex, [&] { ++ran; }));
    REQUIRE(eventually([&] { return g.waiting == 1; }));
    auto stopped = ex.shutdown(true);
    for (auto& f : queued) CHECK(f.cancelled());
    CHECK_FALSE(stopped.done());
    g.open = true;
    lp.run_until_complete(stopped);
    CHECK(ran == 1);
    CHECK((running.done() && !running.cancelled()));
}

TEST_CASE("destroying an executor cancels its queued work and lets running work finish") {
    uvexec::loop lp;
    auto ex = std::make_unique<thread_pool_executor>(uvexec::thread_pool_options{.max_workers = 1});
    gate g;
    auto running = lp.run_in_executor(*ex, [&] { g.pass(); return 1; });
    auto queued = lp.run_in_executor(*ex, [] { return 2; });
    REQUIRE(eventually([&] { return g.waiting == 1; }));
    ex.reset();
    CHECK(queued.cancelled());
    g.open = true;
    CHECK(lp.run_until_complete(running) == 1);
}

TEST_CASE("an executor destroyed from a coroutine resumed by its own completion is safe") {
    uvexec::loop lp;
    auto ex = std::make_unique<thread_pool_executor>(uvexec::thread_pool_options{.max_workers = 2});
    auto t = [&]() -> task<int> {
        int v = co_await lp.run_in_executor(*ex, [] { return 3; });
        ex.reset();  // inside the executor's completion callback
        co_return v;
    };
    CHECK(lp.run_until_complete(t()) == 3);
    CHECK_FALSE(ex);
}

TEST_CASE("an executor serves one loop at a time, and another after that loop closes") {
    thread_pool_executor ex{{.max_workers = 1}};
    auto a = std::make_unique<uvexec::loop>();
    uvexec::loop b;
    CHECK(a->run_until_complete(a->run_in_executor(ex, [] { return 1; })) == 1);
    CHECK_THROWS_AS(b.run_in_executor(ex, [] { return 2; }), uvexec::invalid_state_error);
    a.reset();
    CHECK(b.run_until_complete(b.run_in_executor(ex, [] { return 3; })) == 3);
}

TEST_CASE("the initializer runs once per pool thread before that thread's first call") {
    uvexec::loop lp;
    std::mutex m;
    std::multiset<std::thread::id> init_threads;
    thread_local bool initialized = false;
    thread_pool_executor ex{{.max_workers = 2, .initializer = [&] {
                                 initialized = true;
                                 std::lock_guard lock(m);
                                 init_threads.insert(std::this_thread::get_id());
                             }}};
    std::vector<future<bool>> fs;
    for (int i = 0; i < 40; ++i) fs.push_back(lp.run_in_executor(ex, [] { return initialized; }));
    auto seen = lp.run_until_complete(uvexec::gather(std::move(fs)));
    CHECK(std::all_of(seen.begin(), seen.end(), [](bool b) { return b; }));
    std::set<std::thread::id> distinct(init_threads.begin(), init_threads.end());
    CHECK(distinct.size() == init_threads.size());  // never twice on one thread
    CHECK(!init_threads.empty());
}

TEST_CASE("a failing initializer breaks the executor: that call, queued calls and new submissions fail") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1, .initializer = [] { throw std::runtime_error("no database"); }}};
    std::atomic<int> ran{0};
    auto first = lp.run_in_executor(ex, [&] { ++ran; });
    auto second = lp.run_in_executor(ex, [&] { ++ran; });
    settle(lp, std::vector{first, second});
    CHECK(ran == 0);
    CHECK_THROWS_AS(first.result(), uvexec::broken_executor_error);
    CHECK_THROWS_AS(second.result(), uvexec::broken_executor_error);
    try {
        first.result();
    } catch (const uvexec::broken_executor_error& e) {
        CHECK(std::string(e.what()).find("no database") != std::string::npos);
    }
    CHECK_THROWS_AS(lp.run_in_executor(ex, [] {}), uvexec::broken_executor_error);
}

TEST_CASE("an owned loop destroyed with queued work cancels it and leaks nothing") {
    counted::reset();
    thread_pool_executor ex{{.max_workers = 1}};
    gate g;
    std::vector<future<counted>> fs;
    {
        uvexec::loop lp;
        fs.push_back(lp.run_in_executor(ex, [&] {
            g.pass();
            return counted(-1);
        }));
        for (int i = 0; i < 49; ++i) fs.push_back(lp.run_in_executor(ex, [i] { return counted(i); }));
        REQUIRE(eventually([&] { return g.waiting == 1; }));
        std::thread opener([&] {
            std::this_thread::sleep_for(20ms);
            g.open = true;
        });
        opener.detach();  // ~loop waits for the running call, which waits for the gate
    }
    int cancelled = 0, values = 0;
    for (auto& f : fs) {
        REQUIRE(f.done());
        f.cancelled() ? ++cancelled : ++values;
    }
    CHECK(values == 1);  // the running call finished
    CHECK(cancelled == 49);
    CHECK(fs[0].result().value == -1);
    fs.clear();
    CHECK(counted::alive == 0);
}

// --- runners: the paths where a race would hide ------------------------------

TEST_CASE("bursts separated by idle gaps: runners retire and restart, and every call completes") {
    // Each gap lets every runner find the queue empty and retire; the next
    // burst arrives while some are retiring. Submissions happen both with the
    // loop running (from a coroutine) and with it stopped.
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 2}};
    std::atomic<long> ran{0};
    long expected = 0;
    unsigned seed = 12345;
    auto next = [&] { return seed = seed * 1103515245u + 12345u, (seed >> 16) % 64u; };
    for (int round = 0; round < 300; ++round) {
        std::vector<future<long>> fs;
        const long n = 1 + static_cast<long>(next());
        for (long i = 0; i < n; ++i) fs.push_back(lp.run_in_executor(ex, [&, i] { ++ran; return i; }));
        expected += n;
        if (round % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(next() * 4));  // loop stopped
        auto results = lp.run_until_complete(uvexec::gather(std::move(fs)));
        for (long i = 0; i < n; ++i) REQUIRE(results[static_cast<std::size_t>(i)] == i);
        CHECK(ex.in_flight() <= 2);
        if (round % 5 == 0) std::this_thread::sleep_for(std::chrono::microseconds(next() * 8));
    }
    CHECK(ran == expected);
    CHECK(ex.queued() == 0);
    lp.run_until_complete(ex.shutdown());
    CHECK(ex.in_flight() == 0);
}

TEST_CASE("calls submitted from worker completions under load all complete; in_flight stays within max_workers") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 3}};
    std::atomic<long> ran{0};
    std::size_t peak_in_flight = 0;
    auto chain = [&](int depth) -> task<long> {
        long sum = 0;
        for (int i = 0; i < depth; ++i) {
            sum += co_await lp.run_in_executor(ex, [&, i] { ++ran; return static_cast<long>(i); });
            peak_in_flight = std::max(peak_in_flight, ex.in_flight());
        }
        co_return sum;
    };
    std::vector<future<long>> chains;
    for (int c = 0; c < 20; ++c) chains.push_back(lp.spawn(chain(200)));
    auto sums = lp.run_until_complete(uvexec::gather(std::move(chains)));
    for (long s : sums) CHECK(s == 199L * 200 / 2);
    CHECK(ran == 20 * 200);
    CHECK(peak_in_flight <= 3);
}

TEST_CASE("work submitted while the loop does not run makes progress, even after a runner retired") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    std::atomic<int> ran{0};
    std::vector<future<void>> fs;
    fs.push_back(lp.run_in_executor(ex, [&] { ++ran; }));
    // Its runner found the queue empty and retired; its after_work_cb needs
    // the loop, which does not run in this test until the end.
    REQUIRE(eventually([&] { return ran == 1 && ex.in_flight() == 0; }));
    for (int i = 0; i < 300; ++i) fs.push_back(lp.run_in_executor(ex, [&] { ++ran; }));
    // Batches of 128 reach a spare runner without the loop's help.
    CHECK(eventually([&] { return ran >= 1 + 256; }));
    settle(lp, fs);
    CHECK(ran == 301);
}

TEST_CASE("calls that finished while the loop was away complete on it in the order they finished") {
    // One runner, so calls finish in submission order. 1 + 2 * 128 calls all
    // reach it without the loop (one direct, two batches); they finish onto
    // the done stack while the loop does not run, and the loop completes them
    // from that one stack, oldest first.
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    constexpr int n = 1 + 2 * 128;
    std::atomic<int> ran{0};
    std::vector<int> completed;
    std::vector<future<int>> fs;
    for (int i = 0; i < n; ++i) {
        fs.push_back(lp.run_in_executor(ex, [&ran, i] {
            ++ran;
            return i;
        }));
        fs.back().add_done_callback([&completed](future<int> f) { completed.push_back(f.result()); });
    }
    REQUIRE(eventually([&] { return ran == n && ex.in_flight() == 0; }));
    settle(lp, fs);
    std::vector<int> expected(n);
    for (int i = 0; i < n; ++i) expected[static_cast<std::size_t>(i)] = i;
    CHECK(completed == expected);
}

TEST_CASE("a burst runs in submission order across direct, batched and staged calls, even cancelled in between") {
    // One runner, so calls run one after another in queue order: the first
    // goes straight to the runner, later ones are staged on the loop thread and
    // handed over in batches of 128, the tail just before the loop polls.
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    std::vector<int> order;  // written by the single runner only
    std::vector<future<void>> fs;
    constexpr int n = 1000;
    for (int i = 0; i < n; ++i) fs.push_back(lp.run_in_executor(ex, [&order, i] { order.push_back(i); }));
    // Cancel some of the staged tail (1 + 7 * 128 = 897 calls were handed over
    // during the burst; the last 103 wait for the loop), which surely has not run.
    std::set<int> cancelled;
    for (int i = n - 1; i >= n - 90; i -= 7)
        if (fs[static_cast<std::size_t>(i)].cancel()) cancelled.insert(i);
    CHECK(cancelled.size() == 13);
    CHECK(ex.queued() >= 90 - 13);
    settle(lp, fs);
    std::vector<int> expected;
    for (int i = 0; i < n; ++i)
        if (!cancelled.count(i)) expected.push_back(i);
    CHECK(order == expected);
    for (int i = 0; i < n; ++i) CHECK(fs[static_cast<std::size_t>(i)].cancelled() == (cancelled.count(i) == 1));
    CHECK(ex.queued() == 0);
}

TEST_CASE("cancelling pending calls while runners are busy: they never run, the others all do") {
    counted::reset();
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 2}};
    gate g;
    constexpr int n = 200;
    std::vector<std::atomic<bool>> ran(n);
    std::vector<future<counted>> fs;
    for (int i = 0; i < n; ++i) {
        fs.push_back(lp.run_in_executor(ex, [&, i] {
            if (i < 2) g.pass();
            ran[static_cast<std::size_t>(i)] = true;
            return counted(i);
        }));
    }
    // Both runners are held at the gate by calls 0 and 1; the rest are pending.
    REQUIRE(eventually([&] { return g.waiting == 2; }));
    CHECK(ex.queued() == n - 2);
    int cancelled_now = 0;
    for (int i = 3; i < n; i += 2) cancelled_now += fs[static_cast<std::size_t>(i)].cancel() ? 1 : 0;
    CHECK(cancelled_now == (n - 3 + 1) / 2);
    CHECK(ex.queued() == static_cast<std::size_t>(n - 2 - cancelled_now));
    g.open = true;
    // And more cancellations while the runners race through the rest: a call
    // is either cancelled before it starts (never runs) or completes.
    std::vector<bool> cancelled_late(n, false);
    for (int i = n - 2; i > 2; i -= 4) cancelled_late[static_cast<std::size_t>(i)] = fs[static_cast<std::size_t>(i)].cancel();
    settle(lp, fs);
    lp.run_until_complete(ex.shutdown());
    for (int i = 0; i < n; ++i) {
        auto& f = fs[static_cast<std::size_t>(i)];
        REQUIRE(f.done());
        if (i >= 3 && i % 2 == 1) {
            CHECK(f.cancelled());
            CHECK_FALSE(ran[static_cast<std::size_t>(i)]);
        } else if (!cancelled_late[static_cast<std::size_t>(i)]) {
            CHECK(f.result().value == i);
            CHECK(ran[static_cast<std::size_t>(i)]);
        } else {
            CHECK(f.cancelled());  // it may have been running already; its result was dropped
        }
    }
    fs.clear();
    CHECK(counted::alive == 0);
}

TEST_CASE("a loop destroyed with calls pending and running under load: values only for calls that ran") {
    for (int round = 0; round < 20; ++round) {
        counted::reset();
        thread_pool_executor ex{{.max_workers = 3}};
        std::atomic<int> ran{0};
        std::vector<future<counted>> fs;
        {
            uvexec::loop lp;
            for (int i = 0; i < 300; ++i)
                fs.push_back(lp.run_in_executor(ex, [&, i] {
                    std::this_thread::sleep_for(std::chrono::microseconds(i % 7 * 20));
                    ++ran;
                    return counted(i);
                }));
            if (round % 2 == 0) std::this_thread::sleep_for(std::chrono::microseconds(round * 100));
        }  // ~loop: pending calls cancelled, running ones waited for
        int values = 0;
        for (auto& f : fs) {
            REQUIRE(f.done());
            if (!f.cancelled()) ++values;
        }
        CHECK(values == ran.load());
        CHECK(ex.in_flight() == 0);
        CHECK(ex.queued() == 0);
        fs.clear();
        CHECK(counted::alive == 0);
    }
}

TEST_CASE("an executor destroyed while its runners are busy frees itself once they are back") {
    counted::reset();
    uvexec::loop lp;
    auto ex = std::make_unique<thread_pool_executor>(uvexec::thread_pool_options{.max_workers = 2});
    std::atomic<int> ran{0};
    std::vector<future<counted>> fs;
    for (int i = 0; i < 500; ++i)
        fs.push_back(lp.run_in_executor(*ex, [&, i] {
            std::this_thread::sleep_for(std::chrono::microseconds(50));
            ++ran;
            return counted(i);
        }));
    REQUIRE(eventually([&] { return ran >= 3; }));
    ex.reset();  // pending calls cancelled; runners finish the calls they hold
    settle(lp, fs);
    int values = 0;
    for (auto& f : fs) values += f.cancelled() ? 0 : 1;
    CHECK(values == ran.load());
    CHECK(values < 500);
    // The runners' after_work_cb still has to come back: the loop closes cleanly
    // (ASan reports the core if it leaked, and a use after free if it did not wait).
    fs.clear();
    CHECK(counted::alive == 0);
}

TEST_CASE("on a borrowed loop, an executor destroyed mid-work leaves nothing open and uv_run returns") {
    test::host_loop host;
    {
        uvexec::loop lp(&host.uv);
        std::atomic<int> ran{0};
        std::vector<future<int>> fs;
        {
            thread_pool_executor ex{{.max_workers = 2}};
            for (int i = 0; i < 100; ++i)
                fs.push_back(lp.run_in_executor(ex, [&, i] {
                    std::this_thread::sleep_for(std::chrono::microseconds(30));
                    ++ran;
                    return i;
                }));
            REQUIRE(eventually([&] { return ran >= 1; }));
        }
        uv_run(&host.uv, UV_RUN_DEFAULT);  // returns: nothing of uvexec's is referenced any more
        int values = 0;
        for (auto& f : fs) {
            REQUIRE(f.done());
            values += f.cancelled() ? 0 : 1;
        }
        CHECK(values == ran.load());
        // An idle executor on the same loop does not keep uv_run alive either.
        thread_pool_executor idle{{.max_workers = 1}};
        auto f = lp.spawn([](uvexec::loop& lp, thread_pool_executor& ex) -> task<int> {
            co_return co_await lp.run_in_executor(ex, [] { return 7; });
        }(lp, idle));
        uv_run(&host.uv, UV_RUN_DEFAULT);
        CHECK(f.result() == 7);
        CHECK(uv_run(&host.uv, UV_RUN_DEFAULT) == 0);
    }
    // host_loop's destructor checks uv_loop_close() == 0: every async handle was closed.
}

}  // TEST_SUITE
