// Process-pool throughput: N no-op calls (uvexec::fn<&noop>, void()) submitted
// from one coroutine to a process_pool_executor of W workers with up to D calls
// in flight per worker, gathered; against the same number of bare echo
// children (see bare_pipe.hpp) fed over socketpairs with up to D frames in
// flight each, the parent batching its writes and polling with poll(2).
// Workers and children are started before the clock starts.
//
// Target (issue 5): uvexec >= 200k calls/s (2 workers, 200k calls).
#include <vector>

#include <uvexec/uvexec.hpp>

#include "bare_pipe.hpp"
#include "bench_common.hpp"

namespace {

constexpr std::string_view usage =
    "process_throughput [--n 200000] [--reps 5] [--workers 2] [--depth 64]\n"
    "  N no-op calls on a process_pool_executor (W workers, max_in_flight_per_worker D) gathered\n"
    "  from one coroutine, against W bare socketpair echo children with D frames in flight each.";

void noop() {}

uvexec::task<void> submit_all(uvexec::loop& lp, uvexec::process_pool_executor& ex, long n) {
    std::vector<uvexec::future<void>> fs;
    fs.reserve(static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) fs.push_back(lp.run_in_executor(ex, uvexec::fn<&noop>));
    co_await uvexec::gather(std::move(fs));
}

double run_uvexec(uvexec::loop& lp, uvexec::process_pool_executor& ex, long n) {
    auto t0 = bench::clock::now();
    lp.run_until_complete(submit_all(lp, ex, n));
    return static_cast<double>(n) / bench::seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    if (bare::child_requested(argc, argv)) bare::child_main();
    bench::options opt(argc, argv, usage);
    long n = opt.get("n", 200'000);
    long reps = opt.get("reps", 5);
    long workers = opt.get("workers", 2);
    long depth = opt.get("depth", 64);
    opt.done();
    fmt::print("process_throughput: N={} reps={} workers={} in flight per worker={}\n", n, reps, workers, depth);

    uvexec::process_pool_executor ex{
        {.max_workers = static_cast<int>(workers), .max_in_flight_per_worker = static_cast<int>(depth)}};
    uvexec::loop lp;
    std::vector<bare::child> cs;
    for (long i = 0; i < workers; ++i) cs.push_back(bare::spawn());

    (void)run_uvexec(lp, ex, std::min(n, 20000L));  // starts the workers
    (void)bare::throughput(cs, std::min(n, 20000L), depth);
    std::vector<double> u, b;
    for (long i = 0; i < reps; ++i) {
        u.push_back(run_uvexec(lp, ex, n));
        b.push_back(bare::throughput(cs, n, depth));
    }
    for (auto& c : cs) bare::stop(c);
    lp.run_until_complete(ex.shutdown());
    fmt::print("  uvexec    calls/s: {}\n  bare pipe calls/s: {}\n", bench::join(u, "{:.0f}"), bench::join(b, "{:.0f}"));
    bench::report("process_throughput", "calls/s", bench::median(u), bench::median(b), "bare socketpair",
                  "(target: uvexec >= 200000 calls/s)");
}
