// std::stop_token on both executors: a function whose first parameter is a
// std::stop_token is given one, and cancelling its future while it runs (by
// future::cancel or wait_for's timeout) requests that stop; in a process pool
// the parent sends the worker a cancel frame. A call that watches its token
// returns without its worker being killed; one that ignores it is killed
// after cancel_grace.
//
// This executable is its own worker. Calls block on FIFOs (test/gate.hpp)
// and report on them, so nothing here waits on the clock (waits of 60 s are
// hang guards).
#define DOCTEST_CONFIG_IMPLEMENT
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <stop_token>
#include <string>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "gate.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::process_pool_executor;
using uvexec::thread_pool_executor;

namespace work {

int pid() { return static_cast<int>(::getpid()); }

/// Says it started (gate g), then blocks until g is released (returns the
/// pid) or its stop is requested: it then says so on gate `stopped` and
/// returns -1. Gives up after 60 s (a hang guard) and returns -2.
int stoppable(std::stop_token st, std::string g, std::string stopped) {
    int wake[2];
    if (::pipe(wake) != 0) return -3;
    int result = -2;
    int fifo = ::open(g.c_str(), O_RDONLY | O_NONBLOCK);
    {
        // Destroyed before wake is closed: its destructor waits for a
        // callback running on another thread.
        std::stop_callback on_stop(st, [&] { (void)!::write(wake[1], "x", 1); });
        int started = ::open((g + ".started").c_str(), O_WRONLY | O_NONBLOCK);
        (void)!::write(started, "s", 1);
        ::close(started);
        pollfd fds[2] = {{fifo, POLLIN, 0}, {wake[0], POLLIN, 0}};
        int r;
        while ((r = ::poll(fds, 2, 60000)) < 0 && errno == EINTR) {
        }
        if (st.stop_requested()) {
            int s = ::open((stopped + ".started").c_str(), O_WRONLY | O_NONBLOCK);
            (void)!::write(s, "x", 1);
            ::close(s);
            result = -1;
        } else if (r > 0 && (fds[0].revents & POLLIN) != 0) {
            char c = 0;
            (void)!::read(fifo, &c, 1);
            result = pid();
        }
    }
    ::close(fifo);
    ::close(wake[0]);
    ::close(wake[1]);
    return result;
}

/// Takes a token but never looks at it: blocks on gate g.
int ignores_its_token(std::stop_token, std::string g) { return test::held(std::move(g)); }

/// The token of a call nobody cancels is never stopped.
bool stop_requested(std::stop_token st, int) { return st.stop_requested(); }

}  // namespace work

namespace {

/// Blocks (on a pool thread, while the loop runs) until n calls said they stopped.
uvexec::task<void> wait_stopped(uvexec::loop& lp, gate& stopped, int n) {
    co_await uvexec::to_thread(lp, [&] { stopped.wait_started(n); });
}

bool has_signal(gate& g) {
    // A non-blocking look at g's ".started" FIFO: has anything said it?
    int fd = ::open((g.path() + ".started").c_str(), O_RDONLY | O_NONBLOCK);
    pollfd p{fd, POLLIN, 0};
    bool ready = ::poll(&p, 1, 0) == 1;
    ::close(fd);
    return ready;
}

}  // namespace

TEST_CASE("thread pool: a lambda taking a std::stop_token sees its stop requested when wait_for times out") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    gate g, stopped;
    auto f = lp.run_in_executor(
        ex, [](std::stop_token st, std::string a, std::string b) { return work::stoppable(st, a, b); }, g.path(),
        stopped.path());
    g.wait_started(1);  // it is running: the timeout below cancels a running call
    CHECK_THROWS_AS(lp.run_until_complete(uvexec::wait_for(f, std::chrono::milliseconds(1))), uvexec::timeout_error);
    CHECK(f.cancelled());
    lp.run_until_complete(wait_stopped(lp, stopped, 1));  // fails (hang guard) if no stop was requested
    // Its thread is free again.
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, [] { return 7; })) == 7);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("thread pool: fn<&f> with a std::stop_token first is given one; the caller passes the rest") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    CHECK_FALSE(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::stop_requested>, 5)));
    gate g, stopped;
    auto f = lp.run_in_executor(ex, fn<&work::stoppable>, g.path(), stopped.path());
    g.wait_started(1);
    CHECK(f.cancel());
    lp.run_until_complete(wait_stopped(lp, stopped, 1));
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("thread pool: a call cancelled before it starts never runs; an uncancelled one returns normally") {
    uvexec::loop lp;
    thread_pool_executor ex{{.max_workers = 1}};
    gate g, stopped, never, never_stopped;
    auto running = lp.run_in_executor(ex, fn<&work::stoppable>, g.path(), stopped.path());
    auto queued = lp.run_in_executor(ex, fn<&work::stoppable>, never.path(), never_stopped.path());
    g.wait_started(1);
    CHECK(queued.cancel());
    g.release();
    CHECK(lp.run_until_complete(running) == ::getpid());
    lp.run_until_complete(ex.shutdown());
    CHECK_FALSE(has_signal(never));          // it never started
    CHECK_FALSE(has_signal(never_stopped));
    CHECK_FALSE(has_signal(stopped));        // the first was not asked to stop
}

TEST_CASE("process pool: a call that watches its token stops without a kill; the same worker serves the next call") {
    uvexec::loop lp;
    for (bool with_grace : {false, true}) {
        CAPTURE(with_grace);
        uvexec::process_pool_options opts{.max_workers = 1};
        if (with_grace) opts.cancel_grace = std::chrono::hours(1);  // it stops long before
        process_pool_executor ex{opts};
        int worker = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
        gate g, stopped;
        auto f = lp.run_in_executor(ex, fn<&work::stoppable>, g.path(), stopped.path());
        g.wait_started(1);
        CHECK_THROWS_AS(lp.run_until_complete(uvexec::wait_for(f, std::chrono::milliseconds(1))),
                        uvexec::timeout_error);
        lp.run_until_complete(wait_stopped(lp, stopped, 1));  // the worker requested the stop
        CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) == worker);
        CHECK(ex.worker_pids() == std::vector<int>{worker});
        lp.run_until_complete(ex.shutdown());
    }
}

TEST_CASE("process pool: a call that ignores its token is killed after cancel_grace; the pool serves the next call") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .cancel_grace = std::chrono::milliseconds(50)}};
    int worker = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    gate g;
    auto f = lp.run_in_executor(ex, fn<&work::ignores_its_token>, g.path());
    g.wait_started(1);
    CHECK(f.cancel());
    int next = lp.run_until_complete(uvexec::wait_for(lp.run_in_executor(ex, fn<&work::pid>), 60s));
    CHECK(next != worker);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("process pool: a stoppable call cancelled while it waited in the worker starts with its stop requested") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .max_in_flight_per_worker = 2,
                              .pipeline_below = std::chrono::microseconds::max()}};  // the second waits in the worker
    gate g1, s1, g2, s2;
    auto first = lp.run_in_executor(ex, fn<&work::stoppable>, g1.path(), s1.path());
    auto second = lp.run_in_executor(ex, fn<&work::stoppable>, g2.path(), s2.path());
    CHECK(ex.queued() == 0);  // both sent
    int worker = ex.worker_pids().at(0);
    g1.wait_started(1);       // the first runs; the worker's watcher reads what comes
    CHECK(second.cancel());   // the watcher keeps this cancel for the second,
    CHECK(first.cancel());    // which it reads before this one (the channel keeps order)
    lp.run_until_complete(wait_stopped(lp, s1, 1));
    // The second's cancel was read before the first stopped: the second
    // starts with its stop requested (a lost cancel would leave it blocked
    // until the hang guard).
    lp.run_until_complete(wait_stopped(lp, s2, 1));
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) == worker);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("process pool: a stoppable call behind a plain one sees the cancel that came while the plain one ran") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .max_in_flight_per_worker = 2,
                              .pipeline_below = std::chrono::microseconds::max()}};
    gate plain, g, stopped;
    auto first = lp.run_in_executor(ex, fn<&test::held>, plain.path());
    auto second = lp.run_in_executor(ex, fn<&work::stoppable>, g.path(), stopped.path());
    plain.wait_started(1);
    CHECK(second.cancel());  // its cancel frame follows its call frame in the channel
    plain.release();
    int worker = lp.run_until_complete(first);
    lp.run_until_complete(wait_stopped(lp, stopped, 1));
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>)) == worker);
    lp.run_until_complete(ex.shutdown());
}

/// Runs a stoppable call and a plain one on ex, then shutdown(true): the
/// first is asked to stop and returns -1, the second runs to its end.
template <class Executor>
void check_shutdown_stops(uvexec::loop& lp, Executor& ex) {
    gate g, stopped, plain;
    auto stoppable = lp.run_in_executor(ex, fn<&work::stoppable>, g.path(), stopped.path());
    auto other = lp.run_in_executor(ex, fn<&test::held>, plain.path());
    g.wait_started(1);
    plain.wait_started(1);
    auto done = ex.shutdown(true);
    lp.run_until_complete(wait_stopped(lp, stopped, 1));
    plain.release();  // a call without a token runs to its end
    lp.run_until_complete(std::move(done));
    CHECK(stoppable.result() == -1);  // not cancelled: it returned what it returns when stopped
    CHECK(other.result() > 0);
}

TEST_CASE("shutdown(cancel_futures=true) asks running calls that take a token to stop; their futures get what they return") {
    uvexec::loop lp;
    SUBCASE("thread pool") {
        thread_pool_executor ex{{.max_workers = 2}};
        check_shutdown_stops(lp, ex);
    }
    SUBCASE("process pool") {
        process_pool_executor ex{{.max_workers = 2}};
        check_shutdown_stops(lp, ex);
    }
}

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
