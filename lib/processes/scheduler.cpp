// uvexec — which call goes to which worker, and when.
#include "scheduler.hpp"

#include <limits>

#include "worker_process.hpp"

namespace uvexec::inline v0::detail {

std::int64_t* call_costs::slot(std::uint64_t key) noexcept {
    try {
        return &by_key_.try_emplace(key, unknown).first->second;
    } catch (...) {
        return nullptr;
    }
}

void call_costs::learn(std::int64_t* slot, std::uint64_t ns) noexcept {
    if (slot == nullptr) return;
    const auto sample = static_cast<std::int64_t>(std::min<std::uint64_t>(ns, std::numeric_limits<std::int64_t>::max()));
    if (*slot < sample) *slot = sample;    // slower: believe it at once
    else *slot -= (*slot - sample) / 8;    // faster: decay towards it
}

namespace {

/// When w is expected to have answered every call it holds (from now, in
/// ns), or nothing if one of them is not known to be short.
bool expected_free_in(const worker_process& w, const schedule_policy& policy, std::uint64_t now,
                      std::uint64_t& backlog) noexcept {
    if (policy.pipeline_below == std::numeric_limits<std::uint64_t>::max()) {
        backlog = w.in_flight;  // no estimates: the shortest FIFO
        return true;
    }
    if (w.long_calls != 0) return false;  // one of its calls is not known to be short
    const std::uint64_t running_for = now > w.head_started ? now - w.head_started : 0;
    if (running_for >= policy.pipeline_below) return false;  // longer than it should be
    backlog = w.backlog_ns > running_for ? w.backlog_ns - running_for : 0;
    return true;
}

}  // namespace

void count_sent(worker_process& w, process_call& c, const schedule_policy& policy) noexcept {
    const std::int64_t cost = c.cost != nullptr ? *c.cost : call_costs::unknown;
    if (cost == call_costs::unknown || static_cast<std::uint64_t>(cost) >= policy.pipeline_below) {
        c.expected = -1;
        ++w.long_calls;
    } else {
        c.expected = cost;
        w.backlog_ns += static_cast<std::uint64_t>(cost);
    }
}

void count_left(worker_process& w, const process_call& c) noexcept {
    if (c.expected < 0) --w.long_calls;
    else w.backlog_ns -= static_cast<std::uint64_t>(c.expected);
}

schedule_choice choose_worker(const std::vector<worker_process*>& slots, std::size_t live, std::size_t max_workers,
                              const schedule_policy& policy, std::uint64_t now) noexcept {
    worker_process* idle_starting = nullptr;
    worker_process* pipelined = nullptr;
    std::uint64_t best_backlog = 0;
    for (worker_process* w : slots) {
        if (w == nullptr || !w->accepting(policy.max_tasks)) continue;
        if (w->in_flight == 0) {
            if (w->said_hello) return {schedule_choice::action::send, w};
            if (idle_starting == nullptr) idle_starting = w;
            continue;
        }
        if (w->in_flight >= policy.max_in_flight) continue;
        std::uint64_t backlog = 0;
        if (!expected_free_in(*w, policy, now, backlog)) continue;
        if (pipelined == nullptr || backlog < best_backlog) {
            pipelined = w;
            best_backlog = backlog;
        }
    }
    if (idle_starting != nullptr) return {schedule_choice::action::send, idle_starting};
    if (live < max_workers) return {schedule_choice::action::spawn, nullptr};
    if (pipelined != nullptr) return {schedule_choice::action::send, pipelined};
    return {};
}

}  // namespace uvexec::detail
