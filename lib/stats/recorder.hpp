// uvexec — the counters and histograms an executor keeps on its loop's
// thread (internal); both pools use this one recorder.
#pragma once

#include <chrono>
#include <cstdint>

#include <uv.h>

#include "uvexec/detail/future_state.hpp"
#include "uvexec/stats.hpp"

namespace uvexec::inline v0::detail {

/// Loop thread only: no lock, no atomic, no allocation per call, no clock
/// read (but at the first submission). Timestamps are uv_hrtime()
/// nanoseconds (CLOCK_MONOTONIC, as steady_clock), which any thread may read.
class call_recorder {
public:
    explicit call_recorder(executor_stats::kind k) noexcept { s_.of = k; }

    void submitted() noexcept {
        if (s_.submitted++ == 0) first_submit_ = uv_hrtime();
    }
    void rejected() noexcept { ++s_.rejected; }
    /// A call's future is done: counted by how it ended.
    void ended(status st) noexcept {
        switch (st) {
            case status::value: ++s_.completed; break;
            case status::exception: ++s_.failed; break;
            case status::cancelled: ++s_.cancelled; break;
            case status::pending: break;
        }
    }
    /// A call started after waiting `wait` and ran for `run` (nanoseconds).
    void ran(std::uint64_t wait, std::uint64_t run) noexcept {
        s_.wait_time.record(std::chrono::nanoseconds(static_cast<std::int64_t>(wait)));
        s_.run_time.record(std::chrono::nanoseconds(static_cast<std::int64_t>(run)));
    }
    /// A call started after waiting `wait`; its run is recorded by finished().
    void started(std::uint64_t wait) noexcept {
        s_.wait_time.record(std::chrono::nanoseconds(static_cast<std::int64_t>(wait)));
    }
    void finished(std::uint64_t run) noexcept {
        s_.run_time.record(std::chrono::nanoseconds(static_cast<std::int64_t>(run)));
    }
    executor_stats& counters() noexcept { return s_; }

    /// The snapshot, with the gauges the pool knows and the utilisation at now.
    executor_stats snapshot(std::size_t queued, std::size_t running, std::size_t workers, std::size_t max_workers,
                            std::size_t max_queue, std::uint64_t now) const noexcept {
        executor_stats s = s_;
        s.queued = queued;
        s.running = running;
        s.workers = workers;
        s.max_workers = max_workers;
        s.max_queue = max_queue;
        if (s.submitted != 0 && now > first_submit_) {
            s.uptime = std::chrono::nanoseconds(static_cast<std::int64_t>(now - first_submit_));
            const double capacity = static_cast<double>(max_workers) * static_cast<double>(now - first_submit_);
            s.utilisation = capacity > 0 ? static_cast<double>(s.run_time.sum().count()) / capacity : 0.0;
            if (s.utilisation > 1.0) s.utilisation = 1.0;
        }
        return s;
    }

private:
    executor_stats s_;
    std::uint64_t first_submit_ = 0;
};

}  // namespace uvexec::detail
