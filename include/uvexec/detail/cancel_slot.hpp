// uvexec — cancel slots: how a task group interrupts a suspended child (internal).
//
// Python's Task keeps `_fut_waiter` (the future it is suspended on) and
// `_must_cancel` (a cancellation that found it not suspended); Task.cancel()
// cancels the one or sets the other. A cancel_slot is the same pair for one
// chain of awaiting coroutines (a task-group child and the tasks it awaits):
// every task in the chain points at the slot, and the awaiter the innermost
// one is suspended in (a future's, a sleep's, a wait's) arms itself in it.
// Coroutines outside any group (loop::spawn, run_until_complete) have no slot
// and pay one null check per suspension.
#pragma once

#include "uvexec/detail/config.hpp"

#include <coroutine>
#include <type_traits>
#include <utility>

namespace uvexec::inline v0::detail {

class cancel_slot;

/// An awaiter that a cancellation can end early. interrupt() must resume the
/// suspended coroutine so that its await_resume throws cancelled_error (a
/// future's awaiter cancels the future, which also cancels its executor call).
struct interrupt_point {
    using interrupt_fn = void (*)(interrupt_point* self) noexcept;

    explicit interrupt_point(interrupt_fn f) noexcept : interrupt(f) {}
    interrupt_point(const interrupt_point&) = delete;
    interrupt_point& operator=(const interrupt_point&) = delete;
    ~interrupt_point() { disarm(); }

    /// Registers in s before suspending (s may be null: nothing to do).
    /// Returns false when a cancellation is already pending in s: it is
    /// consumed, and the awaiter must not wait but end as cancelled.
    bool arm(cancel_slot* s) noexcept;
    /// Unregisters (on resumption, or when the frame is destroyed suspended).
    void disarm() noexcept;

    interrupt_fn interrupt;
    cancel_slot* armed_in = nullptr;
};

/// The cancellation state of one chain of awaiting coroutines.
class cancel_slot {
public:
    cancel_slot() noexcept = default;
    cancel_slot(const cancel_slot&) = delete;
    cancel_slot& operator=(const cancel_slot&) = delete;
    ~cancel_slot() {
        if (point_) point_->armed_in = nullptr;
    }

    /// Python's Task.cancel(): interrupts the suspension the chain is in, or,
    /// if it is in none that can be interrupted, the next one. One request is
    /// delivered once (edge-triggered, as in asyncio): a coroutine that
    /// catches cancelled_error and goes on awaiting is not cancelled again.
    /// The interrupted coroutine resumes before this returns; the caller must
    /// not rely on the slot still existing afterwards.
    void cancel() noexcept {
        if (interrupt_point* p = std::exchange(point_, nullptr)) {
            p->armed_in = nullptr;
            p->interrupt(p);
        } else {
            pending_ = true;
        }
    }

    /// A cancellation waits for the chain's next suspension.
    bool pending() const noexcept { return pending_; }
    /// Forgets a pending cancellation (a child that finished without seeing it).
    void clear() noexcept { pending_ = false; }

private:
    friend struct interrupt_point;
    interrupt_point* point_ = nullptr;
    bool pending_ = false;
};

inline bool interrupt_point::arm(cancel_slot* s) noexcept {
    if (!s) return true;
    if (s->pending_) {
        s->pending_ = false;
        return false;
    }
    s->point_ = this;
    armed_in = s;
    return true;
}

inline void interrupt_point::disarm() noexcept {
    if (armed_in) {
        if (armed_in->point_ == this) armed_in->point_ = nullptr;
        armed_in = nullptr;
    }
}

/// Base of the promise types whose chains can carry a cancel slot (task and
/// task-group children). The slot is inherited from the awaiting coroutine.
struct cancellable_promise {
    cancel_slot* cancel_slot_ = nullptr;
};

/// The slot of the coroutine h, or null when it has none.
template <class P>
cancel_slot* slot_of(std::coroutine_handle<P> h) noexcept {
    if constexpr (std::is_base_of_v<cancellable_promise, P>) return h.promise().cancel_slot_;
    else return nullptr;
}

}  // namespace uvexec::detail
