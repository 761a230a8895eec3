// The soak suite (meson test --suite soak; not part of the default run):
// millions of calls through gather in batches while RSS is sampled. After a
// warm-up, RSS must stay within a fixed bound; every result is checked; no
// descriptor is left open. Then the long variant of faults under load.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "fault_load.hpp"

namespace {

using namespace std::chrono_literals;

std::int64_t soak_square(std::int64_t n) { return n * n; }

std::size_t rss_bytes() {
    std::ifstream statm("/proc/self/statm");
    std::size_t size = 0, resident = 0;
    statm >> size >> resident;
    return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// RSS may grow during the first tenth of the batches (allocator pools, the
/// loop's queues, the workers' buffers); after that it must stay within this.
constexpr std::size_t rss_bound = 16u << 20;

struct rss_watch {
    std::size_t after_warmup = 0, peak = 0;
    int batches = 0, warmup_batches = 0;
    void sample(int batch) {
        std::size_t now = rss_bytes();
        if (batch < warmup_batches) return;
        if (batch == warmup_batches) after_warmup = now;
        peak = std::max(peak, now);
    }
    void check(const char* what) const {
        MESSAGE(std::string(what), ": RSS after warm-up ", after_warmup >> 10, " KiB, peak afterwards ", peak >> 10, " KiB (bound +",
                rss_bound >> 10, " KiB)");
        CHECK(peak <= after_warmup + rss_bound);
    }
};

template <class Submit, class Check>
uvexec::task<void> pump(uvexec::loop& lp, std::int64_t total, std::int64_t batch_size, rss_watch& rss, Submit submit,
                        Check check) {
    rss.batches = static_cast<int>(total / batch_size);
    rss.warmup_batches = rss.batches / 10;
    std::int64_t bad = 0;
    for (int b = 0; b < rss.batches; ++b) {
        std::vector<decltype(submit(std::int64_t{}))> fs;
        fs.reserve(static_cast<std::size_t>(batch_size));
        const std::int64_t first = std::int64_t(b) * batch_size;
        for (std::int64_t i = first; i < first + batch_size; ++i) fs.push_back(submit(i));
        auto results = co_await uvexec::gather(std::move(fs));
        for (std::int64_t i = 0; i < batch_size; ++i)
            if (!check(first + i, results[static_cast<std::size_t>(i)])) ++bad;
        rss.sample(b);
    }
    (void)lp;
    CHECK(bad == 0);
}

}  // namespace

TEST_SUITE("soak") {

TEST_CASE("5 M thread-pool calls through gather: every result right, RSS flat, no descriptor left") {
    faults::warm_up();
    const std::size_t fds_before = faults::open_fds();
    rss_watch rss;
    {
        uvexec::loop lp;
        uvexec::thread_pool_executor ex{{.max_workers = 2}};
        lp.run_until_complete(pump(
            lp, 5'000'000, 10'000, rss,
            [&](std::int64_t i) { return lp.run_in_executor(ex, [](std::int64_t n) { return n * 2 + 1; }, i); },
            [](std::int64_t i, std::int64_t r) { return r == i * 2 + 1; }));
        lp.run_until_complete(ex.shutdown());
    }
    rss.check("thread pool");
    CHECK(faults::open_fds() == fds_before);
}

TEST_CASE("1 M process-pool calls through gather: every result right, RSS flat, workers reaped, no descriptor left") {
    faults::warm_up();
    const std::size_t fds_before = faults::open_fds();
    rss_watch rss;
    std::vector<int> pids;
    {
        uvexec::loop lp;
        uvexec::process_pool_executor ex{{.max_workers = 2, .max_in_flight_per_worker = 8}};
        lp.run_until_complete(pump(
            lp, 1'000'000, 10'000, rss,
            [&](std::int64_t i) { return lp.run_in_executor(ex, uvexec::fn<&soak_square>, i); },
            [](std::int64_t i, std::int64_t r) { return r == i * i; }));
        pids = ex.worker_pids();
        CHECK(pids.size() == 2);  // nobody died: the same two workers served everything
        lp.run_until_complete(ex.shutdown());
    }
    rss.check("process pool");
    for (int pid : pids) CHECK(faults::reaped(pid));
    CHECK(faults::open_fds() == fds_before);
}

TEST_CASE("faults under load, long: 100k calls, hundreds of workers killed or exiting") {
    auto rep = faults::run(100000, 300, 50, 7);
    CHECK(rep.failures > 0);
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    doctest::Context context(argc, argv);
    return context.run();
}
