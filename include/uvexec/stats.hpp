// uvexec — what an executor has done and is doing: counters, gauges and
// latency histograms, as a snapshot (ex.stats()), and their Prometheus text.
//
// Python has no equivalent in concurrent.futures; folly's
// ThreadPoolExecutor::getPoolStats() and piscina's histograms are the models.
// See docs/server.md, "Reading the metrics".
#pragma once

#include "uvexec/detail/config.hpp"

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace uvexec::inline v0 {

/// A histogram of durations in log-linear buckets, as HdrHistogram keeps
/// them: each power of two is split into 8 equal buckets, so quantile()
/// is within 6.25% of the true value; fixed memory (4 KiB), no allocation
/// per record. Python: none (piscina's runTime/waitTime histograms).
class latency_histogram {
public:
    /// Linear buckets per power of two.
    static constexpr std::size_t sub_buckets = 8;
    /// Buckets in all: values 0-7 ns exactly, then 8 per power of two up to 2^64 ns.
    static constexpr std::size_t bucket_count = (64 - 3 + 1) * sub_buckets;

    /// Adds one duration (negative ones count as 0).
    void record(std::chrono::nanoseconds d) noexcept;
    /// Durations recorded.
    std::uint64_t count() const noexcept { return count_; }
    /// Their total.
    std::chrono::nanoseconds sum() const noexcept { return std::chrono::nanoseconds(sum_); }
    /// The q-quantile (0 <= q <= 1; 0.5 is the median), as the middle of the
    /// bucket holding it, clamped to the largest value recorded; 0 when empty.
    std::chrono::nanoseconds quantile(double q) const noexcept;
    /// Durations recorded below bound (exact when bound is a power of two
    /// nanoseconds: every bucket lies wholly below or above it).
    std::uint64_t count_below(std::chrono::nanoseconds bound) const noexcept;
    /// The largest duration recorded.
    std::chrono::nanoseconds max() const noexcept { return std::chrono::nanoseconds(max_); }

    /// The bucket of a value in nanoseconds, and the first value of a bucket.
    static std::size_t bucket_of(std::uint64_t ns) noexcept;
    static std::uint64_t bucket_start(std::size_t bucket) noexcept;

private:
    std::array<std::uint64_t, bucket_count> buckets_{};
    std::uint64_t count_ = 0;
    std::uint64_t sum_ = 0;
    std::uint64_t max_ = 0;
};

/// Why worker processes ended other than by being retired
/// (process_pool_executor only).
struct worker_deaths {
    /// Killed by a signal uvexec did not send (a crash, the OOM killer).
    std::uint64_t crashed = 0;
    /// Exited on their own, while the pool still wanted them.
    std::uint64_t exited = 0;
    /// Killed by uvexec: cancel_grace, terminate_workers()/kill_workers(), a
    /// corrupt message, a missed startup_timeout, the loop closing.
    std::uint64_t killed = 0;
};

/// A snapshot of an executor's counters, gauges and histograms, taken on its
/// loop's thread by ex.stats(). Python: none (folly's getPoolStats()).
struct executor_stats {
    /// Which kind of executor it describes (the worker fields below are the
    /// process pool's only).
    enum class kind : std::uint8_t { threads, processes };
    kind of = kind::threads;

    // Counters since the executor was created. Every call submitted ends in
    // exactly one of completed, failed and cancelled.
    std::uint64_t submitted = 0;  ///< calls accepted by submit()
    std::uint64_t completed = 0;  ///< calls whose future got a value
    std::uint64_t failed = 0;     ///< calls whose future got an exception
    std::uint64_t cancelled = 0;  ///< calls whose future was cancelled
    std::uint64_t rejected = 0;   ///< submit()s refused with queue_full_error

    // Gauges: now.
    std::size_t queued = 0;   ///< calls accepted and not yet started (what max_queue bounds)
    std::size_t running = 0;  ///< calls started and not yet finished
    std::size_t workers = 0;  ///< threads holding a slot, or worker processes alive
    std::size_t max_workers = 0;
    std::size_t max_queue = 0;  ///< 0: unbounded

    // Worker processes (process_pool_executor only).
    std::uint64_t starts = 0;    ///< worker processes started
    worker_deaths deaths{};      ///< worker processes that ended, by cause
    std::uint64_t recycles = 0;  ///< workers retired after max_tasks_per_child calls
    std::uint64_t memory_recycles = 0;  ///< workers retired above max_worker_memory
    std::uint64_t idle_exits = 0;       ///< workers retired after idle_timeout without a call

    /// Accepted → started, for each call that started.
    latency_histogram wait_time;
    /// Started → finished, for each call that ran to its end (a value or an
    /// exception of its own).
    latency_histogram run_time;
    /// run_time's sum / (max_workers × time since the executor's first
    /// submission): how much of its capacity it used, 0 to 1.
    double utilisation = 0.0;
    /// Time since the executor's first submission.
    std::chrono::nanoseconds uptime{0};
};

/// The snapshot in Prometheus' text exposition format 0.0.4, every sample
/// labelled pool="name": counters (uvexec_calls_submitted_total, ...),
/// gauges (uvexec_calls_queued, ...) and the two histograms in seconds
/// (uvexec_call_wait_seconds, uvexec_call_run_seconds). Serve it at /metrics
/// with Content-Type "text/plain; version=0.0.4". Python:
/// prometheus_client.generate_latest().
std::string prometheus_text(const executor_stats& stats, std::string_view name);
/// Several executors in one exposition (each metric's HELP and TYPE once, a
/// sample per pool): `prometheus_text({{"cpu", &a}, {"io", &b}})`.
std::string prometheus_text(std::initializer_list<std::pair<std::string_view, const executor_stats*>> pools);

}  // namespace uvexec
