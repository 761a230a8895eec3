// map() on both executors (uvexec/map.hpp): order over many chunks, chunk
// boundaries, laziness, the bound on chunks in flight, a failing item, an
// abandoned map, a full queue, bad options, a worker that dies mid-map.
//
// This executable is its own worker. Calls that must wait block on a
// semaphore (threads) or the test's gate (processes): nothing waits on the clock.
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <atomic>
#include <csignal>
#include <numeric>
#include <ranges>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "gate.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::map_options;
using uvexec::process_pool_executor;
using uvexec::task;
using uvexec::thread_pool_executor;

namespace work {

int twice(int i) { return 2 * i; }
int fails_at_37(int i) {
    if (i == 37) throw std::runtime_error("item 37");
    return 2 * i;
}
int dies_at_50(int i) {
    if (i == 50) ::raise(SIGKILL);
    return 2 * i;
}
/// A number, or (a path) blocks on that gate and returns -1.
int number_or_gate(std::string s) {
    if (!s.empty() && s[0] == '/') return test::held(s) * 0 - 1;
    return std::stoi(s);
}

}  // namespace work

namespace {

/// The ints [from, to) as an input range that computes them as they are read
/// and counts the reads in *pulled (if set). (The tests use it rather than
/// std::views::iota, which clang 14 cannot instantiate with libstdc++ 12.)
struct ints {
    struct iterator {
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        int i = 0;
        int* pulled = nullptr;
        int operator*() const {
            if (pulled) ++*pulled;
            return i;
        }
        iterator& operator++() {
            ++i;
            return *this;
        }
        void operator++(int) { ++i; }
        bool operator==(const iterator& o) const { return i == o.i; }
    };
    int from = 0, to = 0;
    int* pulled = nullptr;
    iterator begin() const { return {from, pulled}; }
    iterator end() const { return {to, nullptr}; }
};
static_assert(std::ranges::input_range<ints>);

/// The next n results (all of them by default); fails if the map ends before.
template <class T>
task<std::vector<T>> collect(uvexec::map_stream<T>& m, std::size_t n = std::size_t(-1)) {
    std::vector<T> out;
    while (out.size() < n) {
        auto r = co_await m.next();
        if (!r) break;
        out.push_back(*r);
    }
    if (n != std::size_t(-1)) CHECK(out.size() == n);
    co_return out;
}

std::vector<int> doubled(int n) {
    std::vector<int> v(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = 2 * i;
    return v;
}

/// Runs the map over iota(0, n) on ex and returns what it yields.
template <class Ex, class F>
std::vector<int> map_all(uvexec::loop& lp, Ex& ex, F f, int n, map_options opts) {
    auto m = ex.map(lp, f, ints{0, n}, opts);
    return lp.run_until_complete(collect(m));
}

/// Many chunks; n not a multiple of chunksize; chunksize 1; chunksize > n;
/// an empty range: one call per chunk each time.
template <class Ex>
void in_order_at_any_chunk_boundaries(uvexec::loop& lp, Ex& ex) {
    const std::uint64_t before = ex.stats().submitted;
    CHECK(map_all(lp, ex, fn<&work::twice>, 10000, {.chunksize = 64, .buffersize = 3}) == doubled(10000));
    CHECK(map_all(lp, ex, fn<&work::twice>, 10, {.chunksize = 3}) == doubled(10));
    CHECK(map_all(lp, ex, fn<&work::twice>, 10, {.chunksize = 1, .buffersize = 1}) == doubled(10));
    CHECK(map_all(lp, ex, fn<&work::twice>, 10, {.chunksize = 100}) == doubled(10));
    CHECK(map_all(lp, ex, fn<&work::twice>, 0, {.chunksize = 4}).empty());
    CHECK(ex.stats().submitted - before == 10000 / 64 + 1 + 4 + 10 + 1 + 0);
#if !defined(__clang__) || __clang_major__ >= 15  // clang 14 cannot instantiate libstdc++ 12's views
    // A view that computes as it goes, owned by the map (an rvalue).
    auto m = ex.map(lp, fn<&work::twice>, std::views::iota(0, 1000) | std::views::transform([](int i) {
                                              return 3 * i;
                                          }),
                    {.chunksize = 16});
    std::vector<int> want(1000);
    for (int i = 0; i < 1000; ++i) want[static_cast<std::size_t>(i)] = 6 * i;
    CHECK(lp.run_until_complete(collect(m)) == want);
#endif
}

/// Takes every result and checks, at each, that no more than buffersize
/// chunks were submitted beyond those already read; returns the most seen.
template <class Ex, class F>
std::size_t most_in_flight(uvexec::loop& lp, Ex& ex, F f, int n, std::size_t chunksize, map_options opts) {
    const std::uint64_t before = ex.stats().submitted;
    auto m = ex.map(lp, f, ints{0, n}, opts);
    return lp.run_until_complete([&]() -> task<std::size_t> {
        std::size_t most = 0;
        int i = 0;
        while (auto r = co_await m.next()) {
            CHECK(*r == 2 * i);
            const std::size_t read = static_cast<std::size_t>(i) / chunksize;  // chunks read up to this one
            const std::size_t in_flight = static_cast<std::size_t>(ex.stats().submitted - before) - read;
            most = std::max(most, in_flight);
            ++i;
        }
        CHECK(i == n);
        co_return most;
    }());
}

/// Checks that the map over iota(0, 100) of a function failing at item 37
/// yields 0..36 doubled, then throws E, then ends.
template <class E, class Ex, class F>
void fails_at_its_place(uvexec::loop& lp, Ex& ex, F f) {
    auto m = ex.map(lp, f, ints{0, 100}, map_options{.chunksize = 10, .buffersize = 3});
    CHECK(lp.run_until_complete(collect(m, 37)) == doubled(37));
    lp.run_until_complete([&]() -> task<void> {
        bool threw = false;
        try {
            co_await m.next();
        } catch (const E& e) {
            threw = true;
            CHECK(std::string(e.what()).find("item 37") != std::string::npos);
        }
        CHECK(threw);
        CHECK_FALSE(co_await m.next());  // finished
        CHECK_FALSE(co_await m.next());
    }());
}

}  // namespace

TEST_SUITE("map") {

TEST_CASE("threads: results come in input order over many chunks, whatever the chunk boundaries") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 3}};
    in_order_at_any_chunk_boundaries(lp, ex);
    const std::uint64_t before = ex.stats().submitted;
    // A lambda and an lvalue range of strings: a view over a container the caller keeps.
    std::vector<std::string> words{"a", "bb", "ccc"};
    auto m = ex.map(lp, [](std::string s) { return s.size(); }, words, {.chunksize = 2});
    CHECK(lp.run_until_complete(collect(m)) == std::vector<std::size_t>{1, 2, 3});
    CHECK(ex.stats().submitted - before == 2);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("processes: results come in input order over many chunks, one call per chunk") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2}};
    in_order_at_any_chunk_boundaries(lp, ex);
    const std::uint64_t before = ex.stats().submitted;
    // Items converted to the function's parameter type (const char* → std::string).
    std::vector<const char*> numbers{"7", "8", "9"};
    auto m = ex.map(lp, fn<&work::number_or_gate>, numbers, {.chunksize = 2});
    CHECK(lp.run_until_complete(collect(m)) == std::vector<int>{7, 8, 9});
    CHECK(ex.stats().submitted - before == 2);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("the input is pulled lazily: chunksize × buffersize items before the first result") {
    uvexec::loop lp;
    int pulled = 0;
    auto counting = ints{0, 100000, &pulled};
    auto first_result = [&](auto& ex) {
        pulled = 0;
        auto m = ex.map(lp, fn<&work::twice>, counting, {.chunksize = 7, .buffersize = 3});
        CHECK(pulled == 0);  // nothing before the first next()
        auto r = lp.run_until_complete(m.next().as_task());
        REQUIRE(r);
        CHECK(*r == 0);
        CHECK(pulled == 7 * 3);
        for (int i = 1; i < 7; ++i) CHECK(*lp.run_until_complete(m.next().as_task()) == 2 * i);
        CHECK(pulled == 7 * 3);  // the first chunk's results were already here
        CHECK(*lp.run_until_complete(m.next().as_task()) == 14);
        CHECK(pulled == 7 * 4);  // the first chunk read, one more went out
    };
    thread_pool_executor threads{{.max_workers = 2}};
    first_result(threads);
    process_pool_executor procs{{.max_workers = 2}};
    first_result(procs);
    lp.run_until_complete(threads.shutdown());
    lp.run_until_complete(procs.shutdown());
}

TEST_CASE("at most buffersize chunks are in flight (default 2 × max_workers), and the buffer fills") {
    uvexec::loop lp;
    thread_pool_executor threads{{.max_workers = 3}};
    CHECK(most_in_flight(lp, threads, fn<&work::twice>, 2000, 10, {.chunksize = 10, .buffersize = 4}) == 4);
    CHECK(most_in_flight(lp, threads, fn<&work::twice>, 2000, 10, {.chunksize = 10}) == 6);
    process_pool_executor procs{{.max_workers = 2}};
    CHECK(most_in_flight(lp, procs, fn<&work::twice>, 2000, 10, {.chunksize = 10, .buffersize = 4}) == 4);
    CHECK(most_in_flight(lp, procs, fn<&work::twice>, 2000, 10, {.chunksize = 10}) == 4);
    lp.run_until_complete(threads.shutdown());
    lp.run_until_complete(procs.shutdown());
}

TEST_CASE("threads: a failing item rethrows its own exception at its place, then the map is finished") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 2}};
    fails_at_its_place<std::runtime_error>(lp, ex, fn<&work::fails_at_37>);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("processes: a failing item rethrows as remote_error at its place, then the map is finished") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2}};
    fails_at_its_place<uvexec::remote_error>(lp, ex, fn<&work::fails_at_37>);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("threads: abandoning a map cancels its queued chunks: they never run") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    std::counting_semaphore<8> go(0);
    std::atomic<int> ran[4] = {0, 0, 0, 0};
    {
        auto m = ex.map(
            lp,
            [&](int i) {
                ++ran[i];
                if (i == 1) go.acquire();  // holds the only thread: 2 and 3 stay queued
                return i;
            },
            ints{0, 4}, {.chunksize = 1, .buffersize = 4});
        CHECK(*lp.run_until_complete(m.next().as_task()) == 0);
    }  // abandoned
    go.release();
    lp.run_until_complete(ex.shutdown());
    CHECK(ran[2] == 0);
    CHECK(ran[3] == 0);
    CHECK(ex.stats().cancelled >= 2);
}

TEST_CASE("processes: abandoning a map cancels its queued chunks: they never run") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 1}};
    gate g;
    std::vector<std::string> items{"0", g.path(), "2", "3"};
    {
        auto m = ex.map(lp, fn<&work::number_or_gate>, items, {.chunksize = 1, .buffersize = 4});
        CHECK(*lp.run_until_complete(m.next().as_task()) == 0);
        g.wait_started(1);  // chunk 1 holds the only worker: 2 and 3 wait in the pool's queue
        CHECK(ex.queued() == 2);
    }  // abandoned
    CHECK(ex.queued() == 0);
    g.release();
    lp.run_until_complete(ex.shutdown());
    const auto s = ex.stats();
    CHECK(s.cancelled >= 2);
    CHECK(s.completed <= 2);  // chunks 0 and (its answer dropped or not) 1
}

TEST_CASE("threads: a timeout on next() (wait_for) cancels it and finishes the map") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    std::binary_semaphore go(0);
    std::atomic<int> ran[3] = {0, 0, 0};
    auto m = ex.map(
        lp,
        [&](int i) {
            if (i < 3) ++ran[i];
            if (i == 0) go.acquire();  // held until the test lets it go
            return i;
        },
        ints{0, 100}, {.chunksize = 1, .buffersize = 3});
    lp.run_until_complete([&]() -> task<void> {
        CHECK_THROWS_AS(co_await uvexec::wait_for(lp, m.next().as_task(), std::chrono::milliseconds(1)),
                        uvexec::timeout_error);
        CHECK_FALSE(co_await m.next());
    }());
    go.release();
    lp.run_until_complete(ex.shutdown());
    // Chunk 0 ran or (the timeout came first) was cancelled; chunks 1 and 2
    // were cancelled in the queue behind it.
    CHECK(ran[0] <= 1);
    CHECK(ran[1] == 0);
    CHECK(ran[2] == 0);
    CHECK(ex.stats().cancelled >= 2);
}

TEST_CASE("threads: a full queue (max_queue) makes the map wait for room and go on, never fail") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1, .max_queue = 1}};
    std::binary_semaphore go(0);
    uvexec::promise<void> started(lp);
    auto blocker = ex.submit(lp, [&] {
        started.set_value();
        go.acquire();
    });
    lp.run_until_complete(started.get_future());  // the runner holds the blocker
    auto queued = ex.submit(lp, [] {});            // and the queue is full
    auto m = ex.map(lp, fn<&work::twice>, ints{0, 50}, {.chunksize = 2, .buffersize = 4});
    auto all = lp.spawn(collect(m));
    CHECK_THROWS_AS(ex.submit(lp, [] {}), uvexec::queue_full_error);  // still full
    go.release();
    CHECK(lp.run_until_complete(std::move(all)) == doubled(50));
    CHECK(ex.stats().rejected >= 2);  // the map's first chunk met the full queue
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("processes: a full queue (max_queue) makes the map wait for room and go on, never fail") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 1, .max_queue = 1}};
    gate g;
    auto blocker = ex.submit(lp, fn<&test::held>, g.path());
    g.wait_started(1);
    auto queued = ex.submit(lp, fn<&work::twice>, 1);
    auto m = ex.map(lp, fn<&work::twice>, ints{0, 50}, {.chunksize = 2, .buffersize = 4});
    auto all = lp.spawn(collect(m));
    CHECK(ex.stats().rejected == 1);  // the map's first chunk met the full queue and waits for room
    CHECK_FALSE(all.done());
    g.release();
    CHECK(lp.run_until_complete(std::move(all)) == doubled(50));
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("bad options throw std::invalid_argument at map()") {
    uvexec::loop lp;
    thread_pool_executor threads{{.max_workers = 1}};
    process_pool_executor procs{{.max_workers = 1}};
    auto range = ints{0, 3};
    CHECK_THROWS_AS(threads.map(lp, fn<&work::twice>, range, {.chunksize = 0}), std::invalid_argument);
    CHECK_THROWS_AS(threads.map(lp, fn<&work::twice>, range, {.buffersize = 0}), std::invalid_argument);
    CHECK_THROWS_AS(procs.map(lp, fn<&work::twice>, range, {.chunksize = 0}), std::invalid_argument);
    CHECK_THROWS_AS(procs.map(lp, fn<&work::twice>, range, {.buffersize = 0}), std::invalid_argument);
    CHECK(threads.stats().submitted == 0);
    CHECK(procs.stats().submitted == 0);
}

TEST_CASE("processes: a worker that dies mid-map surfaces as worker_died_error at its chunk's first item") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2}};
    auto m = ex.map(lp, fn<&work::dies_at_50>, ints{0, 100}, {.chunksize = 10, .buffersize = 3});
    CHECK(lp.run_until_complete(collect(m, 50)) == doubled(50));
    lp.run_until_complete([&]() -> task<void> {
        CHECK_THROWS_AS(co_await m.next(), uvexec::worker_died_error);
        CHECK_FALSE(co_await m.next());
    }());
    // The pool healed: a new map runs.
    CHECK(map_all(lp, ex, fn<&work::twice>, 30, {.chunksize = 4}) == doubled(30));
    lp.run_until_complete(ex.shutdown());
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
