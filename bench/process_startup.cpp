// Process-pool start-up: from constructing a process_pool_executor of 3
// workers to the first result of each worker (three calls returning getpid(),
// submitted at once, so each goes to its own new worker), against starting 3
// bare echo children of the same executable (posix_spawn + socketpair, see
// bare_pipe.hpp) and one round trip with each. Reports the median time until
// the last of the three answers, for each start method (posix_spawn of each
// worker, and forking each from a fork server, whose own start is part of the
// time) in the same run.
//
// --heap-mb N first fills N MiB of the parent's heap, as a large server's would
// be: workers are started from a process that size (fork copies its page
// tables, posix_spawn's vfork does not), and the figures show what that costs.
#include <unistd.h>

#include <cstring>
#include <memory>
#include <set>
#include <vector>

#include <uvexec/uvexec.hpp>

#include "bare_pipe.hpp"
#include "bench_common.hpp"

namespace {

constexpr std::string_view usage =
    "process_startup [--reps 5] [--workers 3] [--heap-mb 0]\n"
    "  Time from constructing a process_pool_executor of W workers to the first result of each\n"
    "  (with each start method, spawn and forkserver),\n"
    "  against spawning W bare echo children and a round trip with each, from a parent\n"
    "  whose heap holds N MiB of touched memory.";

int worker_pid() { return static_cast<int>(::getpid()); }

struct startup_times {
    double first_ms = 0, last_ms = 0;
    std::size_t distinct = 0;
};

uvexec::task<void> first_results(uvexec::loop& lp, uvexec::process_pool_executor& ex, long w,
                                 bench::clock::time_point t0, startup_times& out) {
    std::vector<uvexec::future<int>> fs;
    for (long i = 0; i < w; ++i) fs.push_back(lp.run_in_executor(ex, uvexec::fn<&worker_pid>));
    auto ac = uvexec::as_completed(std::move(fs));
    std::set<int> pids;
    while (ac.remaining() > 0) {
        auto f = co_await ac.next();
        double ms = bench::seconds_since(t0) * 1e3;
        if (pids.empty()) out.first_ms = ms;
        pids.insert(f.result());
        out.last_ms = ms;
    }
    out.distinct = pids.size();
}

startup_times run_uvexec(long w, uvexec::process_start_method method) {
    startup_times t;
    uvexec::loop lp;
    auto t0 = bench::clock::now();
    uvexec::process_pool_executor ex{{.max_workers = static_cast<int>(w), .start_method = method}};
    lp.run_until_complete(first_results(lp, ex, w, t0, t));
    lp.run_until_complete(ex.shutdown());
    if (t.distinct != static_cast<std::size_t>(w))
        fmt::print(stderr, "warning: {} calls were answered by {} distinct workers\n", w, t.distinct);
    return t;
}

double run_bare(long w) {
    auto t0 = bench::clock::now();
    std::vector<bare::child> cs;
    for (long i = 0; i < w; ++i) cs.push_back(bare::spawn());
    char call[bare::call_size], reply[bare::reply_size];
    bare::make_call(call, 1);
    for (auto& c : cs) bare::write_all(c.fd, call, sizeof(call));
    for (auto& c : cs) bare::read_all(c.fd, reply, sizeof(reply));
    double ms = bench::seconds_since(t0) * 1e3;
    for (auto& c : cs) bare::stop(c);
    return ms;
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    if (bare::child_requested(argc, argv)) bare::child_main();
    bench::options opt(argc, argv, usage);
    long reps = opt.get("reps", 5);
    long w = opt.get("workers", 3);
    long heap_mb = opt.get("heap-mb", 0);
    opt.done();
    auto heap_bytes = static_cast<std::size_t>(heap_mb) << 20;
    std::unique_ptr<char[]> heap(new char[heap_bytes]);
    std::memset(heap.get(), 1, heap_bytes);  // resident, not just reserved
    fmt::print("process_startup: workers={} reps={} parent heap={} MiB\n", w, reps, heap_mb);

    using method = uvexec::process_start_method;
    (void)run_uvexec(w, method::spawn);  // warm the page cache and the dynamic loader
    (void)run_uvexec(w, method::forkserver);
    (void)run_bare(w);
    std::vector<double> first, last, ffirst, flast, b;
    for (long i = 0; i < reps; ++i) {
        auto t = run_uvexec(w, method::spawn);
        first.push_back(t.first_ms);
        last.push_back(t.last_ms);
        auto f = run_uvexec(w, method::forkserver);
        ffirst.push_back(f.first_ms);
        flast.push_back(f.last_ms);
        b.push_back(run_bare(w));
    }
    fmt::print("  spawn: uvexec first result ms: {}\n  spawn: uvexec all {} results ms: {}\n"
               "  forkserver: uvexec first result ms: {}\n  forkserver: uvexec all {} results ms: {}\n"
               "  bare all {} pongs ms: {}\n",
               bench::join(first, "{:.2f}"), w, bench::join(last, "{:.2f}"), bench::join(ffirst, "{:.2f}"), w,
               bench::join(flast, "{:.2f}"), w, bench::join(b, "{:.2f}"));
    const std::string name = heap_mb > 0 ? fmt::format("process_startup_{}mib_parent", heap_mb) : "process_startup";
    bench::report(name, "ms", bench::median(last), bench::median(b), "bare spawn + ping",
                  "(start_method spawn: construct pool -> first result of every worker)");
    bench::report(name + "_forkserver", "ms", bench::median(flast), bench::median(b), "bare spawn + ping",
                  "(start_method forkserver: construct pool -> first result of every worker)");
}
