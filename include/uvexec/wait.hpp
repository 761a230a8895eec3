// uvexec — wait() and wait_for().
//
// Python: asyncio.wait(fs, timeout, return_when) and asyncio.wait_for(f, timeout).
// Both are built on future completion callbacks and one libuv timer; nothing
// polls.
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <optional>
#include <ranges>
#include <utility>
#include <vector>

#include "uvexec/detail/take.hpp"
#include "uvexec/detail/wait_core.hpp"
#include "uvexec/error.hpp"
#include "uvexec/future.hpp"
#include "uvexec/task.hpp"

namespace uvexec::inline v0 {

/// Python: asyncio.FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED.
enum class return_when {
    first_completed,
    /// A future that finished with an exception (cancellation does not count,
    /// as in Python), or all of them.
    first_exception,
    all_completed,
};

/// What wait() returns. Python returns two sets; here `done` lists futures in
/// the order they completed (those already done when wait began first, in
/// input order) and `pending` keeps input order.
template <class T>
struct wait_result {
    std::vector<future<T>> done;
    std::vector<future<T>> pending;
};

namespace detail {

template <class T>
std::vector<future_state_base*> states_of(const std::vector<future<T>>& fs) {
    std::vector<future_state_base*> v;
    v.reserve(fs.size());
    for (auto& f : fs) {
        if (!f.valid()) throw invalid_state_error("uvexec: an empty future was passed to a combinator");
        v.push_back(f.state());
    }
    return v;
}

constexpr until to_until(return_when w) noexcept {
    switch (w) {
        case return_when::first_completed: return until::first_completed;
        case return_when::first_exception: return until::first_exception;
        case return_when::all_completed: break;
    }
    return until::all_completed;
}

template <class T>
class wait_op {
public:
    wait_op(std::vector<future<T>> fs, until condition, std::optional<std::chrono::nanoseconds> timeout)
        : fs_(std::move(fs)), core_(states_of(fs_), condition, timeout) {}

    void cancel_pending_on_interrupt() noexcept { core_.cancel_pending_on_interrupt(); }

    bool await_ready() { return core_.await_ready(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        return core_.await_suspend(h);
    }
    wait_result<T> await_resume() {
        core_.await_resume();  // cancelled_error if a task group's cancellation ended the wait
        wait_result<T> r;
        std::vector<bool> is_done(fs_.size(), false);
        r.done.reserve(core_.completed().size());
        for (std::size_t i : core_.completed()) {
            is_done[i] = true;
            r.done.push_back(std::move(fs_[i]));
        }
        r.pending.reserve(fs_.size() - r.done.size());
        for (std::size_t i = 0; i < fs_.size(); ++i)
            if (!is_done[i]) r.pending.push_back(std::move(fs_[i]));
        return r;
    }

private:
    std::vector<future<T>> fs_;
    wait_core core_;
};

}  // namespace detail

/// Python: `done, pending = await asyncio.wait(fs, timeout=..., return_when=...)`.
/// Waits until the condition holds or the timeout passes (no timeout: wait as
/// long as it takes). Never throws for the futures' own exceptions and never
/// cancels anything; inspect `done`. An empty set returns at once.
template <class T>
detail::wait_op<T> wait(std::vector<future<T>> fs, return_when when = return_when::all_completed,
                        std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
    return detail::wait_op<T>(std::move(fs), detail::to_until(when), timeout);
}

/// Python: `await asyncio.wait_for(f, timeout)`. Returns f's result or rethrows
/// its exception; when the timeout passes first, cancels f (so work not yet
/// started is dropped) and throws timeout_error.
template <class T>
task<T> wait_for(future<T> f, std::chrono::nanoseconds timeout) {
    bool in_time = false;
    {
        // (A braced list inside co_await trips GCC 12, hence the named vector.)
        std::vector<future<T>> one{f};
        auto w = wait(std::move(one), return_when::first_completed, timeout);
        w.cancel_pending_on_interrupt();  // Python: cancelling wait_for cancels f
        auto r = co_await w;
        in_time = !r.done.empty();
    }
    if (!in_time) {
        f.cancel();
        throw timeout_error();
    }
    co_return detail::take_value(f);
}

}  // namespace uvexec
