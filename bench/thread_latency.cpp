// Thread-pool round trip: N sequential `co_await lp.run_in_executor(ex, noop)`
// against bare uv_queue_work round trips (the next request is queued from the
// previous one's after_work_cb). Reports the median time per round trip.
//
// Target (issue 5): uvexec <= 1.2x the bare libuv round trip.
#include <cstdio>

#include <uv.h>

#include <uvexec/uvexec.hpp>

#include "bench_common.hpp"

namespace {

constexpr std::string_view usage =
    "thread_latency [--n 100000] [--reps 5] [--workers W]\n"
    "  N sequential no-op round trips through a thread_pool_executor against bare uv_queue_work\n"
    "  round trips. Prints the median microseconds per round trip.";

void noop() noexcept {}

uvexec::task<void> round_trips(uvexec::loop& lp, uvexec::thread_pool_executor& ex, long n) {
    for (long i = 0; i < n; ++i) co_await lp.run_in_executor(ex, &noop);
}

double run_uvexec(uvexec::loop& lp, uvexec::thread_pool_executor& ex, long n) {
    auto t0 = bench::clock::now();
    lp.run_until_complete(round_trips(lp, ex, n));
    return bench::seconds_since(t0) / static_cast<double>(n) * 1e6;
}

struct chain {
    uv_loop_t* uv;
    uv_work_t req;
    long left;
};
void bare_work(uv_work_t*) {}
void bare_after(uv_work_t* req, int) {
    auto& c = *static_cast<chain*>(req->data);
    if (--c.left > 0) uv_queue_work(c.uv, &c.req, &bare_work, &bare_after);
}

double run_bare(long n) {
    uv_loop_t uv;
    uv_loop_init(&uv);
    chain c{&uv, {}, n};
    c.req.data = &c;
    auto t0 = bench::clock::now();
    uv_queue_work(&uv, &c.req, &bare_work, &bare_after);
    uv_run(&uv, UV_RUN_DEFAULT);
    double us = bench::seconds_since(t0) / static_cast<double>(n) * 1e6;
    uv_loop_close(&uv);
    return us;
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    bench::options opt(argc, argv, usage);
    long n = opt.get("n", 100'000);
    long reps = opt.get("reps", 5);
    long workers = opt.get("workers", static_cast<long>(uvexec::thread_pool_executor::default_max_workers()));
    opt.done();

    uvexec::thread_pool_executor ex{{.max_workers = static_cast<int>(workers)}};
    uvexec::loop lp;
    fmt::print("thread_latency: N={} reps={} max_workers={} libuv pool={} threads\n", n, reps, workers,
               uvexec::libuv_pool_size());

    (void)run_uvexec(lp, ex, std::min(n, 5000L));
    (void)run_bare(std::min(n, 5000L));
    std::vector<double> u, b;
    for (long i = 0; i < reps; ++i) {
        u.push_back(run_uvexec(lp, ex, n));
        b.push_back(run_bare(n));
    }
    fmt::print("  uvexec us/round trip: {}\n  bare   us/round trip: {}\n", bench::join(u, "{:.2f}"),
               bench::join(b, "{:.2f}"));
    bench::report("thread_latency", "us", bench::median(u), bench::median(b), "bare uv_queue_work",
                  "(target: ratio <= 1.2)");
}
