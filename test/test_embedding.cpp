// Embedding in a host's libuv loop: borrowed-loop guarantees and the
// thread-safe entry points.
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

/// What a host server typically does at shutdown: close every handle still
/// open, run the loop so the closes finish, close the loop.
void host_close_everything(uv_loop_t* uv) {
    uv_walk(
        uv,
        [](uv_handle_t* h, void*) {
            if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    uv_run(uv, UV_RUN_DEFAULT);
}

bool reaped(int pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}

int walk_count(uv_loop_t* uv) {
    int n = 0;
    uv_walk(uv, [](uv_handle_t*, void* arg) { ++*static_cast<int*>(arg); }, &n);
    return n;
}

}  // namespace

TEST_SUITE("embedding") {

TEST_CASE("uvexec closes its own handles when its objects go away; the host's walk-and-close then finds none") {
    uv_loop_t uv;
    REQUIRE(uv_loop_init(&uv) == 0);
    uv_timer_t host_timer;  // a handle of the host's own, open throughout
    uv_timer_init(&uv, &host_timer);
    std::vector<int> pids;
    {
        uvexec::loop lp(&uv);
        uvexec::thread_pool_executor threads{{.max_workers = 2}};
        uvexec::process_pool_executor processes{{.max_workers = 2}};
        auto t = [&]() -> task<int> {
            int a = co_await lp.run_in_executor(threads, fn<&remote::square>, 3);
            int b = co_await lp.run_in_executor(processes, fn<&remote::square>, 4);
            co_return a + b;
        };
        auto f = lp.spawn(t());
        uv_run(&uv, UV_RUN_DEFAULT);
        REQUIRE(f.done());
        CHECK(f.result() == 25);
        pids = processes.worker_pids();
        CHECK(pids.size() == 1);
        // Objects go away here, executors first: their workers and handles are
        // closed and reaped before ~loop returns.
    }
    CHECK(walk_count(&uv) == 1);  // only the host's timer is left
    for (int pid : pids) CHECK(reaped(pid));
    host_close_everything(&uv);
    CHECK(uv_loop_close(&uv) == 0);
}

TEST_CASE("a host that closes every handle while uvexec's loop is still alive causes no double close") {
    uv_loop_t uv;
    REQUIRE(uv_loop_init(&uv) == 0);
    {
        uvexec::loop lp(&uv);
        uvexec::thread_pool_executor threads{{.max_workers = 1}};
        auto f = lp.spawn([](uvexec::loop& lp, uvexec::thread_pool_executor& ex) -> task<int> {
            co_return co_await lp.run_in_executor(ex, fn<&remote::square>, 5);
        }(lp, threads));
        uv_run(&uv, UV_RUN_DEFAULT);
        CHECK(f.result() == 25);
        // The host shuts down first (its usual code), closing uvexec's wakeup handle too...
        host_close_everything(&uv);
        CHECK(uv_loop_close(&uv) == 0);
        // ...and then uvexec's objects go away: they must not close it again (libuv would abort).
    }
}

TEST_CASE("idle executors do not keep the host's uv_run alive") {
    host_loop host;
    uvexec::loop lp(&host.uv);
    uvexec::process_pool_executor processes{{.max_workers = 2}};
    uvexec::thread_pool_executor threads{{.max_workers = 2}};
    auto f = lp.spawn([](uvexec::loop& lp, uvexec::process_pool_executor& ex) -> task<int> {
        co_return co_await lp.run_in_executor(ex, fn<&remote::square>, 6);
    }(lp, processes));
    // Returns once the answer is in, although a worker process is alive.
    uv_run(&host.uv, UV_RUN_DEFAULT);
    REQUIRE(f.done());
    CHECK(f.result() == 36);
    CHECK(processes.live_workers() == 1);
    CHECK(uv_run(&host.uv, UV_RUN_DEFAULT) == 0);
}

TEST_CASE("run_coroutine_threadsafe runs a coroutine on the loop from other threads and hands back the result") {
    uvexec::loop lp;
    uvexec::thread_pool_executor ex{{.max_workers = 2}};
    const auto loop_thread = std::this_thread::get_id();
    uvexec::promise<void> all_done(lp);
    auto done = all_done.get_future();
    std::atomic<int> correct{0}, on_loop{0};
    constexpr int threads = 4, per_thread = 50;
    std::atomic<int> finished_threads{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < threads; ++t) {
        clients.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                int n = t * 1000 + i;
                std::future<int> r = lp.run_coroutine_threadsafe(
                    [](uvexec::loop& lp, uvexec::thread_pool_executor& ex, int n, std::thread::id loop_thread,
                       std::atomic<int>& on_loop) -> task<int> {
                        if (std::this_thread::get_id() == loop_thread) ++on_loop;
                        co_return co_await lp.run_in_executor(ex, fn<&remote::square>, n) + 1;
                    }(lp, ex, n, loop_thread, on_loop));
                if (r.get() == n * n + 1) ++correct;
                // Straight to an executor, from this thread.
                if (lp.run_in_executor_threadsafe(ex, fn<&remote::square>, n).get() == n * n) ++correct;
            }
            if (++finished_threads == threads) {
                lp.call_soon_threadsafe([&] { all_done.set_value(); });
            }
        });
    }
    lp.run_until_complete(done);
    for (auto& c : clients) c.join();
    CHECK(correct == 2 * threads * per_thread);
    CHECK(on_loop == threads * per_thread);
}

TEST_CASE("run_coroutine_threadsafe reports the coroutine's exception through the std::future") {
    uvexec::loop lp;
    uvexec::promise<void> finished(lp);
    auto done = finished.get_future();
    std::thread other([&] {
        auto r = lp.run_coroutine_threadsafe([]() -> task<int> {
            throw custom_error("thrown on the loop", 4);
            co_return 0;
        }());
        CHECK_THROWS_AS(r.get(), custom_error);
        lp.call_soon_threadsafe([&] { finished.set_value(); });
    });
    lp.run_until_complete(done);
    other.join();
}

}  // TEST_SUITE
