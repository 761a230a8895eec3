// Process-pool round trip: N sequential `co_await lp.run_in_executor(ex,
// uvexec::fn<&noop>)` on one worker, against N blocking write/read round trips
// with a bare echo child over a socketpair (see bare_pipe.hpp). Reports the
// median microseconds per round trip.
//
// Target (issue 5): uvexec <= 2x the bare pipe round trip.
#include <vector>

#include <uvexec/uvexec.hpp>

#include "bare_pipe.hpp"
#include "bench_common.hpp"

namespace {

constexpr std::string_view usage =
    "process_latency [--n 20000] [--reps 5]\n"
    "  N sequential no-op round trips to a one-worker process_pool_executor, against blocking\n"
    "  ping-pong with a bare socketpair echo child. Prints the median microseconds per round trip.";

void noop() {}

uvexec::task<void> round_trips(uvexec::loop& lp, uvexec::process_pool_executor& ex, long n) {
    for (long i = 0; i < n; ++i) co_await lp.run_in_executor(ex, uvexec::fn<&noop>);
}

double run_uvexec(uvexec::loop& lp, uvexec::process_pool_executor& ex, long n) {
    auto t0 = bench::clock::now();
    lp.run_until_complete(round_trips(lp, ex, n));
    return bench::seconds_since(t0) / static_cast<double>(n) * 1e6;
}

double run_bare(bare::child& c, long n) {
    auto t0 = bench::clock::now();
    for (long i = 0; i < n; ++i) bare::ping(c, static_cast<std::uint64_t>(i));
    return bench::seconds_since(t0) / static_cast<double>(n) * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    if (bare::child_requested(argc, argv)) bare::child_main();
    bench::options opt(argc, argv, usage);
    long n = opt.get("n", 20'000);
    long reps = opt.get("reps", 5);
    opt.done();
    fmt::print("process_latency: N={} reps={} (one worker, one bare child)\n", n, reps);

    uvexec::process_pool_executor ex{{.max_workers = 1}};
    uvexec::loop lp;
    bare::child c = bare::spawn();

    (void)run_uvexec(lp, ex, std::min(n, 2000L));  // starts the worker
    (void)run_bare(c, std::min(n, 2000L));
    std::vector<double> u, b;
    for (long i = 0; i < reps; ++i) {
        u.push_back(run_uvexec(lp, ex, n));
        b.push_back(run_bare(c, n));
    }
    bare::stop(c);
    lp.run_until_complete(ex.shutdown());
    fmt::print("  uvexec    us/round trip: {}\n  bare pipe us/round trip: {}\n", bench::join(u, "{:.2f}"),
               bench::join(b, "{:.2f}"));
    bench::report("process_latency", "us", bench::median(u), bench::median(b), "bare socketpair",
                  "(target: ratio <= 2)");
}
