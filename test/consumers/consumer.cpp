// The program that test/consumers/check_consumers.sh builds three ways (an
// installed uvexec through pkg-config, through CMake's find_package, and
// uvexec as a meson subproject) and runs: one call on a thread pool, one on a
// process pool. It prints two lines the script compares, so a build that
// compiles but does not work fails too.
#include <cstdio>
#include <string>
#include <utility>

#include <unistd.h>

#include <uvexec/uvexec.hpp>

namespace {

int square(int n) { return n * n; }

// Runs in the worker process: its answer says it was not the parent.
std::string where(int parent_pid) { return getpid() == parent_pid ? "parent" : "worker process"; }

uvexec::task<std::pair<int, std::string>> run(uvexec::loop& loop, uvexec::thread_pool_executor& threads,
                                              uvexec::process_pool_executor& processes) {
    int squared = co_await loop.run_in_executor(threads, uvexec::fn<&square>, 7);
    std::string place = co_await loop.run_in_executor(processes, uvexec::fn<&where>, static_cast<int>(getpid()));
    co_return std::pair{squared, place};
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);  // serves as a worker when started as one
    uvexec::thread_pool_executor threads{{.max_workers = 1}};
    uvexec::process_pool_executor processes{{.max_workers = 1}};
    uvexec::loop loop;
    auto [squared, place] = loop.run_until_complete(run(loop, threads, processes));
    std::printf("thread pool: 7 squared is %d\nprocess pool: ran in the %s\n", squared, place.c_str());
}
