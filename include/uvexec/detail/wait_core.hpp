// uvexec — the waiting machinery under wait(), gather() and wait_for() (internal).
//
// A wait_core watches a set of future states through one waiter node each and
// an optional deadline timer, records the order in which they complete, and
// resumes its coroutine once its condition holds. It is untyped so that
// heterogeneous gather(f1, f2, ...) shares it with wait().
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "uvexec/detail/cancel_slot.hpp"
#include "uvexec/detail/future_state.hpp"
#include "uvexec/detail/timer.hpp"
#include "uvexec/error.hpp"

namespace uvexec::inline v0::detail {

enum class until : std::uint8_t {
    first_completed,  // any future done
    first_exception,  // any future failed with an exception (not cancelled), or all done
    first_failure,    // any future failed or was cancelled, or all done (gather)
    all_completed,    // all done
};

/// Inside a task group a wait is an interrupt point: a cancellation ends it
/// with cancelled_error from await_resume (and, for gather, cancels the
/// futures still pending first, as Python's gather does).
class wait_core : interrupt_point {
public:
    wait_core(std::vector<future_state_base*> states, until condition, std::optional<std::chrono::nanoseconds> timeout);
    wait_core(const wait_core&) = delete;
    wait_core& operator=(const wait_core&) = delete;
    ~wait_core();

    bool await_ready();
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        return suspend(h, slot_of(h));
    }
    /// Throws cancelled_error if a cancellation ended the wait.
    void await_resume() const {
        if (interrupted_) throw cancelled_error();
    }

    /// When a cancellation ends the wait, cancel the futures still pending
    /// (gather's and wait_for's rule; wait() leaves them alone).
    void cancel_pending_on_interrupt() noexcept { cancel_pending_ = true; }

    /// Indices of the futures that were done when the wait ended, in the order
    /// they completed (those already done at the start first, by index).
    const std::vector<std::size_t>& completed() const noexcept { return order_; }
    std::size_t size() const noexcept { return states_.size(); }
    future_state_base& state(std::size_t i) const noexcept { return *states_[i]; }

private:
    struct node final : waiter {
        node() noexcept : waiter(&node::on_fire) {}
        static void on_fire(waiter* w, future_state_base& s) noexcept;
        wait_core* core = nullptr;
        std::size_t index = 0;
    };

    bool suspend(std::coroutine_handle<> h, cancel_slot* slot);
    bool satisfied_by(std::size_t i) const noexcept;
    void stop() noexcept;
    void finish() noexcept;
    static void on_interrupt(interrupt_point* self) noexcept;
    static void on_timeout(void* self) noexcept;

    std::vector<future_state_base*> states_;
    until condition_;
    std::optional<std::chrono::nanoseconds> timeout_;
    std::unique_ptr<node[]> nodes_;
    std::vector<std::size_t> order_;
    std::optional<timer> timer_;
    std::coroutine_handle<> h_;
    bool finished_ = false;
    bool interrupted_ = false;
    bool cancel_pending_ = false;
};

}  // namespace uvexec::detail
