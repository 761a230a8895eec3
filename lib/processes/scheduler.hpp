// uvexec — which call goes to which worker, and when (internal).
//
// The rule: a call is never committed to a busy worker while another worker
// is idle or can be started. An idle worker that has said hello comes first,
// then an idle one still starting, then a new worker (up to max_workers).
// Only when every worker is busy may a call be pipelined (sent before the
// worker has answered the ones it holds), and only to a worker whose calls
// are all known to be short: each one's function has taken less than
// pipeline_below in its recent calls, and the one running has not yet run
// that long. Among those, the worker expected to be free first gets it.
// Otherwise the call waits in the pool's queue for the first worker to answer,
// so a short call never waits behind a long one that another worker could
// have spared it (a mispredicted long call, the first of its kind to be slow,
// can still hold at most max_in_flight_per_worker - 1 calls behind it).
//
// What a function costs is learned from its answers (call_costs): an estimate
// per function that jumps up to a slower call at once and decays towards
// faster ones by an eighth per call, so one slow call stops pipelining behind
// that function for a while. Unknown costs count as long.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace uvexec::inline v0::detail {

struct worker_process;
struct process_call;

/// Estimated running time of each function the pool has run.
class call_costs {
public:
    static constexpr std::int64_t unknown = -1;
    /// The estimate of the function with this key, created unknown; null if
    /// memory ran out (the call's cost is then unknown). Stable while the
    /// table lives.
    std::int64_t* slot(std::uint64_t key) noexcept;
    /// A call of the function whose estimate is *slot ran for ns nanoseconds.
    static void learn(std::int64_t* slot, std::uint64_t ns) noexcept;

private:
    std::unordered_map<std::uint64_t, std::int64_t> by_key_;
};

struct schedule_policy {
    std::size_t max_in_flight = 2;   // per worker
    std::size_t max_tasks = 0;       // per worker before it retires; 0: no limit
    std::uint64_t pipeline_below = 0;  // ns; UINT64_MAX pipelines whatever the costs
};

struct schedule_choice {
    enum class action : std::uint8_t { send, spawn, wait } what = action::wait;
    worker_process* to = nullptr;  // with send
};

/// c was sent to w: w's backlog counts it, at its function's estimate now.
void count_sent(worker_process& w, process_call& c, const schedule_policy& policy) noexcept;
/// c left w (answered, or taken back): w's backlog no longer counts it.
void count_left(worker_process& w, const process_call& c) noexcept;

/// Where the next call goes: a worker, a new worker, or nowhere yet. now is
/// uv_hrtime(); live counts the workers in slots.
schedule_choice choose_worker(const std::vector<worker_process*>& slots, std::size_t live, std::size_t max_workers,
                              const schedule_policy& policy, std::uint64_t now) noexcept;

}  // namespace uvexec::detail
