// Process-pool head-of-line blocking: on 2 workers, one long call (500 ms)
// and then ten short ones (1 ms each) submitted at once, as a server mixing
// slow and fast requests does. Reports when the last short call finished
// (ms after submission), against the same ten short calls alone on the same
// pool in the same run (the baseline: about 10 x 1 ms, since one worker runs
// them while the other is busy with the long one).
//
// Target (issue 13): worst short call <= 15 ms; the old dispatcher finished
// one of them after the long call, at ~502 ms.
#include <chrono>
#include <thread>
#include <vector>

#include <uvexec/uvexec.hpp>

#include "bench_common.hpp"

namespace {

constexpr std::string_view usage =
    "process_head_of_line [--reps 5] [--long-ms 500] [--short-ms 1] [--shorts 10]\n"
    "  One long call, then N short ones at once, on a 2-worker process_pool_executor. Prints the\n"
    "  median time to the last short call's result, against the short calls alone on one worker.";

void nap(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

/// ms from submission to the last short call's result; the long call (if
/// any) is awaited afterwards, outside the measurement.
uvexec::task<double> mixed(uvexec::loop& lp, uvexec::process_pool_executor& ex, long long_ms, long short_ms,
                           long shorts) {
    std::vector<uvexec::future<void>> fs;
    uvexec::future<void> slow;
    auto t0 = bench::clock::now();
    if (long_ms > 0) slow = lp.run_in_executor(ex, uvexec::fn<&nap>, static_cast<int>(long_ms));
    for (long i = 0; i < shorts; ++i) fs.push_back(lp.run_in_executor(ex, uvexec::fn<&nap>, static_cast<int>(short_ms)));
    co_await uvexec::gather(std::move(fs));
    double ms = bench::seconds_since(t0) * 1e3;
    if (slow.valid()) co_await slow;
    co_return ms;
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    bench::options opt(argc, argv, usage);
    long reps = opt.get("reps", 5);
    long long_ms = opt.get("long-ms", 500);
    long short_ms = opt.get("short-ms", 1);
    long shorts = opt.get("shorts", 10);
    opt.done();
    fmt::print("process_head_of_line: 2 workers, one {} ms call then {} calls of {} ms, reps={}\n", long_ms, shorts,
               short_ms, reps);

    uvexec::loop lp;
    uvexec::process_pool_executor ex{{.max_workers = 2}};
    uvexec::process_pool_executor one{{.max_workers = 1}};
    (void)lp.run_until_complete(mixed(lp, ex, 0, short_ms, 4));  // starts the workers
    (void)lp.run_until_complete(mixed(lp, one, 0, short_ms, 4));
    std::vector<double> u, b;
    for (long i = 0; i < reps; ++i) {
        u.push_back(lp.run_until_complete(mixed(lp, ex, long_ms, short_ms, shorts)));
        b.push_back(lp.run_until_complete(mixed(lp, one, 0, short_ms, shorts)));
    }
    lp.run_until_complete(ex.shutdown());
    lp.run_until_complete(one.shutdown());
    fmt::print("  behind a long call ms: {}\n  short calls alone ms:  {}\n", bench::join(u, "{:.2f}"),
               bench::join(b, "{:.2f}"));
    bench::report("process_head_of_line", "ms", bench::median(u), bench::median(b), "alone on one worker",
                  "(target: uvexec <= 15 ms; ideal ~11 ms)");
}
