// Memory per pending thread-pool call: resident bytes (/proc/self/statm)
// added by N calls that wait in a thread_pool_executor's admission queue
// because its max_workers slots are held by calls blocked on a gate; against N
// bare uv_work_t requests (one array) waiting in libuv's own queue behind pool
// threads blocked the same way. Each measurement runs in a fresh forked child
// so that one cannot reuse memory the other freed. The futures are kept in a
// vector filled beforehand; its 8 bytes per call are not counted. Calls
// returning void and int are measured (the result's slot is in the call).
//
// Target (issue 5): <= 256 bytes per pending call.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <vector>

#include <uv.h>

#include <uvexec/uvexec.hpp>

#include "bench_common.hpp"

namespace {

constexpr std::string_view usage =
    "memory [--n 1000000] [--reps 5] [--workers 2]\n"
    "  Resident bytes per call pending in a thread_pool_executor's queue, against bare uv_work_t\n"
    "  requests pending in libuv's queue. Each measurement runs in a forked child.";

long resident_bytes() {
    std::ifstream f("/proc/self/statm");
    long size = 0, resident = 0;
    f >> size >> resident;
    return resident * ::sysconf(_SC_PAGESIZE);
}

void noop() noexcept {}
int noop_int() noexcept { return 0; }

template <auto Fn>
double measure_uvexec(long n, long workers) {
    using R = decltype(Fn());
    std::atomic<bool> gate{false};
    std::atomic<long> blocked{0};
    uvexec::thread_pool_executor ex{{.max_workers = static_cast<int>(workers)}};
    uvexec::loop lp;
    std::vector<uvexec::future<void>> gates;
    for (long i = 0; i < workers; ++i)
        gates.push_back(lp.run_in_executor(ex, [&] {
            ++blocked;
            gate.wait(false);
        }));
    while (blocked.load() < workers) std::this_thread::yield();
    std::vector<uvexec::future<R>> fs(static_cast<std::size_t>(n));  // touched now: not counted
    long before = resident_bytes();
    for (auto& f : fs) f = lp.run_in_executor(ex, Fn);
    long after = resident_bytes();
    if (ex.queued() != static_cast<std::size_t>(n)) std::fprintf(stderr, "uvexec: %zu queued, not %ld\n", ex.queued(), n);
    // Let the gate calls finish: the loop's destructor then cancels the queued
    // calls and waits for the running ones.
    gate = true;
    gate.notify_all();
    return static_cast<double>(after - before) / static_cast<double>(n);
}

struct gate_req {
    uv_work_t req;
    std::atomic<bool>* gate;
    std::atomic<long>* blocked;
};

double measure_bare(long n) {
    static std::atomic<bool> gate{false};
    static std::atomic<long> blocked{0};
    uv_loop_t uv;
    uv_loop_init(&uv);
    // Hold every libuv pool thread (UV_THREADPOOL_SIZE, default 4).
    long threads = static_cast<long>(uvexec::libuv_pool_size());
    std::vector<uv_work_t> gates(static_cast<std::size_t>(threads));
    for (auto& g : gates)
        uv_queue_work(&uv, &g, [](uv_work_t*) { ++blocked; gate.wait(false); }, [](uv_work_t*, int) {});
    while (blocked.load() < threads) std::this_thread::yield();
    long before = resident_bytes();
    std::vector<uv_work_t> reqs(static_cast<std::size_t>(n));
    for (auto& r : reqs) uv_queue_work(&uv, &r, [](uv_work_t*) {}, [](uv_work_t*, int) {});
    long after = resident_bytes();
    // The caller _exits with the pool threads still held: nothing frees them.
    return static_cast<double>(after - before) / static_cast<double>(n);
}

/// Runs fn in a forked child and returns what it measured.
template <class Fn>
double in_child(Fn fn) {
    int p[2];
    if (::pipe(p) != 0) return -1;
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(p[0]);
        double v = fn();
        if (::write(p[1], &v, sizeof(v)) != sizeof(v)) ::_exit(1);
        ::_exit(0);  // pool threads are still blocked on the gate: no orderly teardown
    }
    ::close(p[1]);
    double v = -1;
    if (::read(p[0], &v, sizeof(v)) != sizeof(v)) v = -1;
    ::close(p[0]);
    int st = 0;
    ::waitpid(pid, &st, 0);
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    bench::options opt(argc, argv, usage);
    long n = opt.get("n", 1'000'000);
    long reps = opt.get("reps", 5);
    long workers = opt.get("workers", 2);
    opt.done();
    fmt::print("memory: N={} pending calls, reps={}, max_workers={}; sizeof: uv_work_t {}, detail::pool_item {}, "
               "detail::future_state<void> {}, <int> {}\n",
               n, reps, workers, sizeof(uv_work_t), sizeof(uvexec::detail::pool_item),
               sizeof(uvexec::detail::future_state<void>), sizeof(uvexec::detail::future_state<int>));

    std::vector<double> u, ui, b;
    for (long i = 0; i < reps; ++i) {
        u.push_back(in_child([&] { return measure_uvexec<&noop>(n, workers); }));
        ui.push_back(in_child([&] { return measure_uvexec<&noop_int>(n, workers); }));
        b.push_back(in_child([&] { return measure_bare(n); }));
    }
    fmt::print("  uvexec, void() bytes/pending call: {}\n  uvexec, int()  bytes/pending call: {}\n"
               "  bare uv_work_t bytes/pending call: {}\n",
               bench::join(u, "{:.1f}"), bench::join(ui, "{:.1f}"), bench::join(b, "{:.1f}"));
    bench::report("memory_pending_void_call", "bytes", bench::median(u), bench::median(b), "bare uv_work_t array",
                  "(target: uvexec <= 256 bytes)");
    bench::report("memory_pending_int_call", "bytes", bench::median(ui), bench::median(b), "bare uv_work_t array",
                  "(target: uvexec <= 256 bytes)");
}
