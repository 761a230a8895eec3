// Process-pool map throughput (issue 15 part 2): N items of a tiny function
// (int twice(int)) through process_pool_executor::map with chunksize C (one
// frame per chunk each way) on W workers, read in order by one coroutine;
// against the same number of bare echo children (see bare_pipe.hpp) fed one
// message per item over socketpairs, up to D frames in flight each.
// Workers and children are started before the clock starts.
//
// Target (issue 15): uvexec's map >= 3x the bare one-message-per-item rate.
#include <vector>

#include <uvexec/uvexec.hpp>

#include "bare_pipe.hpp"
#include "bench_common.hpp"
#include "map_rate.hpp"

namespace {

constexpr std::string_view usage =
    "process_map [--n 2000000] [--reps 5] [--workers 2] [--chunksize 256] [--buffersize 0] [--depth 64]\n"
    "  N items of int twice(int) through process_pool_executor::map (W workers, chunksize C,\n"
    "  buffersize B, 0: the default 2 x W) read in order, against W bare socketpair echo children\n"
    "  with D one-item frames in flight each.";

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    if (bare::child_requested(argc, argv)) bare::child_main();
    bench::options opt(argc, argv, usage);
    long n = opt.get("n", 2'000'000);
    long reps = opt.get("reps", 5);
    long workers = opt.get("workers", 2);
    long chunksize = opt.get("chunksize", 256);
    long buffersize = opt.get("buffersize", 0);
    long depth = opt.get("depth", 64);
    opt.done();
    uvexec::map_options mo{.chunksize = static_cast<std::size_t>(std::max(chunksize, 1L))};
    if (buffersize > 0) mo.buffersize = static_cast<std::size_t>(buffersize);
    fmt::print("process_map: N={} reps={} workers={} chunksize={} buffersize={} bare in flight per child={}\n", n,
               reps, workers, mo.chunksize, mo.buffersize ? *mo.buffersize : 2 * static_cast<std::size_t>(workers),
               depth);

    uvexec::process_pool_executor ex{{.max_workers = static_cast<int>(workers)}};
    uvexec::loop lp;
    std::vector<bare::child> cs;
    for (long i = 0; i < workers; ++i) cs.push_back(bare::spawn());

    (void)bench::map_rate(lp, ex, uvexec::fn<&bench::twice>, std::min(n, 100000L), mo);  // starts the workers
    (void)bare::throughput(cs, std::min(n, 20000L), depth);
    std::vector<double> u, b;
    for (long i = 0; i < reps; ++i) {  // interleaved, so both see the same noise
        u.push_back(bench::map_rate(lp, ex, uvexec::fn<&bench::twice>, n, mo));
        b.push_back(bare::throughput(cs, std::min(n, 400000L), depth));
    }
    for (auto& c : cs) bare::stop(c);
    lp.run_until_complete(ex.shutdown());
    fmt::print("  uvexec map items/s: {}\n  bare pipe  items/s: {}\n", bench::join(u, "{:.0f}"),
               bench::join(b, "{:.0f}"));
    bench::report("process_map", "items/s", bench::median(u), bench::median(b), "bare socketpair, 1/item",
                  "(target: ratio >= 3)");
}
