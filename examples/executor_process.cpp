// The seed's second program (asyncio_executor_process.py) in C++: six calls of
// blocks(n) on 3 worker processes, awaited with wait() from a coroutine. Each log
// line starts with the PID of the process that wrote it, as Python's
// 'PID %(process)5s %(name)18s: %(message)s' does.
//
// executor_thread.cpp is the same program on a thread pool; `diff` the two.
#include <chrono>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <uvexec/uvexec.hpp>

namespace {

void log(std::string_view name, std::string_view message) {
    fmt::print(stderr, "PID {:>5} {:>18}: {}\n", getpid(), name, message);
}

int blocks(int n) {
    auto name = fmt::format("blocks({})", n);
    log(name, "running");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    log(name, "done");
    return n * n;
}

template <class Executor>
uvexec::task<void> run_blocking_tasks(uvexec::loop& loop, Executor& executor) {
    log("run_blocking_tasks", "starting");
    log("run_blocking_tasks", "creating executor tasks");
    std::vector<uvexec::future<int>> blocking_tasks;
    for (int i = 0; i < 6; ++i) blocking_tasks.push_back(loop.run_in_executor(executor, uvexec::fn<&blocks>, i));
    log("run_blocking_tasks", "waiting for executor tasks");
    auto [completed, pending] = co_await uvexec::wait(std::move(blocking_tasks));
    std::vector<int> results;
    for (auto& t : completed) results.push_back(t.result());
    log("run_blocking_tasks", fmt::format("results: {}", results));
    log("run_blocking_tasks", "exiting");
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);  // serves as a worker when started as one
    // Create a limited process pool. `executor_process --forkserver` forks its
    // workers from a fork server (Python: mp_context=get_context("forkserver")).
    const bool forkserver = argc > 1 && std::string_view(argv[1]) == "--forkserver";
    uvexec::process_pool_executor executor{
        {.max_workers = 3,
         .start_method = forkserver ? uvexec::process_start_method::forkserver : uvexec::process_start_method::spawn}};
    uvexec::loop event_loop;
    event_loop.run_until_complete(run_blocking_tasks(event_loop, executor));
}
