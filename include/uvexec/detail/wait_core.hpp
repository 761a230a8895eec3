// uvexec — the waiting machinery under wait(), gather() and wait_for() (internal).
//
// A wait_core watches a set of future states through one waiter node each and
// an optional deadline timer, records the order in which they complete, and
// resumes its coroutine once its condition holds. await_ready reads each state
// once: it records those already done and links a node into the others in the
// same pass (unlinking them again if the condition already holds), so a
// million-future gather does not sweep its futures twice before suspending.
// It is untyped so that heterogeneous gather(f1, f2, ...) shares it with wait().
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
    /// Rethrows the first failure (exception or cancellation) in completed()
    /// order, if any: gather's result, without reading every state again.
    void rethrow_first_failure() const {
        if (first_failure_ != npos) states_[first_failure_]->rethrow_if_not_value();
    }
    std::size_t size() const noexcept { return states_.size(); }
    future_state_base& state(std::size_t i) const noexcept { return *states_[i]; }

private:
    struct node final : waiter {
        node() noexcept : waiter(&node::on_fire) {}
        static void on_fire(waiter* w, future_state_base& s) noexcept;
        wait_core* core = nullptr;
        std::size_t index = 0;
    };

    static constexpr std::size_t npos = static_cast<std::size_t>(-1);

    bool suspend(std::coroutine_handle<> h, cancel_slot* slot);
    void record(std::size_t i) noexcept;  // i completed: into order_, and first_failure_
    void unwatch() noexcept;              // unlinks every node
    bool satisfied_by(std::size_t i) const noexcept;
    void stop() noexcept;
    void finish() noexcept;
    static void on_interrupt(interrupt_point* self) noexcept;
    static void on_timeout(void* self) noexcept;

    std::vector<future_state_base*> states_;
    until condition_;
    std::optional<std::chrono::nanoseconds> timeout_;
    /// The nodes, one per state: from the heap, or for a large wait mapped
    /// with its pages populated in one system call (see wait.cpp).
    struct node_array {
        node* p = nullptr;
        std::size_t n = 0;
        std::size_t mapped = 0;  // bytes mapped, 0 if from the heap
        explicit node_array(std::size_t count);
        node_array(const node_array&) = delete;
        node_array& operator=(const node_array&) = delete;
        ~node_array();
        node& operator[](std::size_t i) const noexcept { return p[i]; }
    };
    std::optional<node_array> nodes_;  // allocated by await_ready at the first pending future
    std::vector<std::size_t> order_;
    std::size_t first_failure_ = npos;  // the first index in order_ whose state is not a value
    loop_core* loop_ = nullptr;         // of the first pending future: where the timer runs
    std::optional<timer> timer_;
    std::coroutine_handle<> h_;
    bool finished_ = false;
    bool interrupted_ = false;
    bool cancel_pending_ = false;
};

}  // namespace uvexec::detail
