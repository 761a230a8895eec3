// process_pool_executor: every call runs the function it names; no call is
// lost when user code runs inside a completion; calls a dead worker never
// started run elsewhere; an exception inside a libuv callback fails a call,
// never the process.
//
// This executable is its own worker (main begins with worker_main). It
// replaces the global operator new so that a test can make the parent's
// large allocations fail; workers never arm it.
#define DOCTEST_CONFIG_IMPLEMENT
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <new>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "failing_new.hpp"
#include "identity/identity.hpp"
#include "remote_functions.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::future;
using uvexec::process_pool_executor;
using uvexec::task;

namespace work {
int pid() { return static_cast<int>(::getpid()); }
/// Dies (SIGABRT) on the first attempt, answers i * i on any other.
int abort_on_first(int i, int attempt) {
    if (attempt == 1) {
        std::signal(SIGABRT, SIG_DFL);  // a sanitizer's handler would make it an exit
        std::abort();
    }
    return i * i;
}
/// Naps 1 ms and answers i * i and its pid; some first attempts kill their own worker.
std::pair<int, int> nap_or_die(int i, int attempt) {
    if (attempt == 1 && i % 7 == 3) ::kill(::getpid(), SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return {i * i, static_cast<int>(::getpid())};
}
void kill9() { ::kill(::getpid(), SIGKILL); }
std::string bytes(std::size_t n) { return std::string(n, 'z'); }
/// A type without a default constructor: it crosses inside a unique_ptr,
/// rebuilt by cereal's load_and_construct.
struct sized {
    explicit sized(int n) : n(n) {}
    int n;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(n);
    }
    template <class Archive>
    static void load_and_construct(Archive& ar, cereal::construct<sized>& construct) {
        int n = 0;
        ar(n);
        construct(n);
    }
};
std::unique_ptr<sized> doubled(std::unique_ptr<sized> s) { return std::make_unique<sized>(s->n * 2); }
void garbage() {
    const char junk[] = "\xff\xff\xff\x7fthis is not a frame";
    (void)!::write(3, junk, sizeof(junk));
    std::this_thread::sleep_for(std::chrono::seconds(30));
}
}  // namespace work

namespace {

/// The retry loop a user writes: resubmit at once when the worker died.
template <auto F>
task<int> retrying(uvexec::loop& lp, process_pool_executor& ex, int i, int& attempts) {
    for (int attempt = 1;; ++attempt) {
        ++attempts;
        try {
            co_return co_await lp.run_in_executor(ex, fn<F>, i, attempt);
        } catch (const uvexec::worker_died_error&) {
            // try again, in the same turn of the loop
        }
    }
}

task<void> shut_down_within(process_pool_executor& ex) {
    co_await uvexec::wait_for(ex.shutdown(), std::chrono::seconds(30));
}

}  // namespace

TEST_SUITE("process_correctness") {

TEST_CASE("file-local functions of one name in two translation units each run as named") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    for (int round = 0; round < 2; ++round) {
        CHECK(lp.run_until_complete(identity::scale_a(lp, ex, 5)) == 50);
        CHECK(lp.run_until_complete(identity::scale_b(lp, ex, 5)) == 500);
        CHECK(lp.run_until_complete(identity::bump_a(lp, ex, 5)) == 6);
        CHECK(lp.run_until_complete(identity::bump_b(lp, ex, 5)) == 7);
    }
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a worker that is another executable cannot tell them apart: submit refuses the call, naming it") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .worker_executable = UVEXEC_TEST_WORKER_EXE}};
    for (auto submit : {&identity::scale_a, &identity::scale_b}) {
        try {
            (void)submit(lp, ex, 5);
            FAIL("the call was accepted");
        } catch (const uvexec::ambiguous_function_error& e) {
            std::string what = e.what();
            CHECK(what.find("scale") != std::string::npos);
            CHECK(what.find("another name or external linkage") != std::string::npos);
        }
    }
    CHECK(ex.live_workers() == 0);  // nothing was started for it
    // The same pool still serves a function it can name.
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 9)) == 81);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("the retry loop a user writes: a call resubmitted inside the completion of one whose worker died runs") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    int attempts = 0;
    CHECK(lp.run_until_complete(retrying<&work::abort_on_first>(lp, ex, 7, attempts)) == 49);
    CHECK(attempts == 2);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 3)) == 9);
    lp.run_until_complete(shut_down_within(ex));
    CHECK(ex.live_workers() == 0);
}

TEST_CASE("retry loops under random kills of four workers lose no call, and shutdown and the loop's end finish") {
    auto lp = std::make_unique<uvexec::loop>();
    process_pool_executor ex{{.max_workers = 4}};
    constexpr int calls = 300;
    std::set<int> serving;  // pids that have answered a call: past their start-up
    auto call = [](uvexec::loop& lp, process_pool_executor& ex, int i, std::set<int>& serving) -> task<int> {
        for (int attempt = 1;; ++attempt) {
            try {
                auto [value, pid] = co_await lp.run_in_executor(ex, fn<&work::nap_or_die>, i, attempt);
                serving.insert(pid);
                co_return value;
            } catch (const uvexec::worker_died_error&) {
                // try again, in the same turn of the loop
            }
        }
    };
    std::vector<future<int>> fs;
    for (int i = 0; i < calls; ++i) fs.push_back(lp->spawn(call(*lp, ex, i, serving)));
    // Kills from outside as well, at random moments, bounded in number, of
    // workers that have served (killing workers before their hello, again
    // and again, is how a pool is found broken: another test).
    auto killer = [](uvexec::loop& lp, process_pool_executor& ex, std::vector<future<int>>& fs,
                     std::set<int>& serving) -> task<int> {
        std::mt19937 rng(20261202);
        int kills = 0;
        for (int round = 0; round < 400 && kills < 25; ++round) {
            co_await uvexec::sleep(lp, std::chrono::milliseconds(1 + rng() % 5));
            bool all_done = true;
            for (auto& f : fs) all_done = all_done && f.done();
            if (all_done) break;
            std::vector<int> pids;
            for (int pid : ex.worker_pids())
                if (serving.count(pid)) pids.push_back(pid);
            if (pids.empty()) continue;
            ::kill(pids[rng() % pids.size()], SIGKILL);
            ++kills;
        }
        co_return kills;
    };
    auto k = lp->spawn(killer(*lp, ex, fs, serving));
    auto results = lp->run_until_complete(uvexec::gather(fs));
    for (int i = 0; i < calls; ++i) CHECK(results[static_cast<std::size_t>(i)] == i * i);
    CHECK(lp->run_until_complete(std::move(k)) > 0);
    lp->run_until_complete(shut_down_within(ex));
    lp.reset();  // the loop's end finishes (it spun forever when a call was lost)
}

TEST_CASE("destroying the executor inside the completion of a call whose worker died is clean") {
    uvexec::loop lp;
    auto ex = std::make_unique<process_pool_executor>(uvexec::process_pool_options{.max_workers = 1});
    auto victim = lp.run_in_executor(*ex, fn<&work::kill9>);
    auto queued = lp.run_in_executor(*ex, fn<&remote::square>, 4);
    auto body = [](future<void> v, std::unique_ptr<process_pool_executor>& ex) -> task<void> {
        try {
            co_await v;
        } catch (const uvexec::worker_died_error&) {
        }
        ex.reset();  // inside the pool's handling of the death
    };
    lp.run_until_complete(body(victim, ex));
    settle(lp, std::vector<future<int>>{queued});
    // It was cancelled with the executor, or it had run before.
    CHECK((queued.cancelled() || queued.result() == 16));
}

TEST_CASE("shutdown() called again by the code its own completion resumes completes too") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 3)) == 9);
    auto twice = [](process_pool_executor& ex) -> task<int> {
        co_await ex.shutdown();
        co_await ex.shutdown();  // from inside the first one's completion
        co_return 1;
    };
    CHECK(lp.run_until_complete(twice(ex)) == 1);
}

TEST_CASE("a call its worker never started runs elsewhere when that worker dies; only the running one fails") {
    uvexec::loop lp;
    // Pipelined whatever their cost, so that they wait inside the worker.
    process_pool_executor ex{
        {.max_workers = 1, .max_in_flight_per_worker = 3, .pipeline_below = std::chrono::microseconds::max()}};
    int first = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    // All three go to the one worker at once: the second and third wait in
    // its channel behind the first, which kills the worker.
    auto dies = lp.run_in_executor(ex, fn<&work::kill9>);
    auto second = lp.run_in_executor(ex, fn<&work::pid>);
    auto third = lp.run_in_executor(ex, fn<&remote::square>, 6);
    CHECK(ex.queued() == 0);
    settle(lp, std::vector<future<void>>{dies});
    CHECK_THROWS_AS(dies.result(), uvexec::worker_died_error);
    int other = lp.run_until_complete(second);
    CHECK(other != first);
    CHECK(lp.run_until_complete(third) == 36);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("move-only arguments and results cross; a type without a default constructor crosses in a unique_ptr") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    auto f = lp.run_in_executor(ex, fn<&work::doubled>, std::make_unique<work::sized>(21));
    auto take = [](future<std::unique_ptr<work::sized>> f) -> task<int> {
        std::unique_ptr<work::sized> r = co_await std::move(f);
        co_return r->n;
    };
    CHECK(lp.run_until_complete(take(f)) == 42);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("running out of memory for a worker's answer fails that call with a clear error, not the process") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::bytes>, 1000)).size() == 1000);
    test::fail_allocations_from = 32u << 20;
    auto big = lp.run_in_executor(ex, fn<&work::bytes>, std::size_t{64} << 20);
    settle(lp, std::vector<future<std::string>>{big});
    test::fail_allocations_from = 0;
    try {
        big.result();
        FAIL("the call did not fail");
    } catch (const uvexec::worker_died_error& e) {
        CHECK(std::string(e.what()).find("ran out of memory") != std::string::npos);
    }
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 5)) == 25);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a worker that sends a corrupt frame fails its call with the decoder's reason in the message") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    auto f = lp.run_in_executor(ex, fn<&work::garbage>);
    settle(lp, std::vector<future<void>>{f});
    try {
        f.result();
        FAIL("the call did not fail");
    } catch (const uvexec::worker_died_error& e) {
        std::string what = e.what();
        CHECK(what.find("corrupt message (frame length 2147483647 exceeds the maximum frame size") !=
              std::string::npos);
    }
    lp.run_until_complete(ex.shutdown());
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
