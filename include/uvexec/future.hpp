// uvexec — future<T>: the result of work that finishes later.
//
// Python: asyncio.Future. A future belongs to one loop and is used on that
// loop's thread only; completion that happens on another thread (a worker, a
// promise set elsewhere) is carried to the loop thread first, so a coroutine
// awaiting a future is always resumed on its loop's thread.
#pragma once

#include "uvexec/detail/config.hpp"

#include <coroutine>
#include <exception>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include "uvexec/detail/cancel_slot.hpp"
#include "uvexec/detail/future_state.hpp"

namespace uvexec::inline v0 {

class loop;

template <class T>
class future;

namespace detail {
template <class T>
future<T> make_future(state_ptr<future_state<T>> s) noexcept;

template <class T>
struct callback_waiter final : waiter {
    explicit callback_waiter(std::function<void(future<T>)> f)
        : waiter(&callback_waiter::on_fire, &callback_waiter::on_drop), fn(std::move(f)) {}
    static void on_fire(waiter* w, future_state_base& s) noexcept;
    static void on_drop(waiter* w) noexcept { delete static_cast<callback_waiter*>(w); }
    std::function<void(future<T>)> fn;
};
}  // namespace detail

/// A single-assignment result (a value, an exception, or "cancelled") that a
/// coroutine can co_await. Copies share the same result, like Python futures.
/// T may be void and may be move-only (then take the result with
/// `co_await std::move(f)` or `std::move(f).result()`).
template <class T>
class future {
public:
    using value_type = T;
    using state_type = detail::future_state<T>;

    /// An empty future; valid() is false.
    future() noexcept = default;

    bool valid() const noexcept { return bool(state_); }
    /// Python: Future.done() — a value, an exception, or cancelled. Every
    /// member but valid() throws invalid_state_error on an empty future
    /// (default-constructed or moved from).
    bool done() const { return checked().done(); }
    /// Python: Future.cancelled().
    bool cancelled() const { return checked().state() == detail::status::cancelled; }
    /// Python: Future.cancel(). Work not yet started is dropped; work already
    /// running finishes, but whoever awaits this future gets cancelled_error at
    /// once. Returns false if the future was already done.
    bool cancel() { return checked().cancel(); }

    /// Python: Future.result(). Throws the work's exception, cancelled_error,
    /// or invalid_state_error while pending.
    decltype(auto) result() const& { return checked().value(); }
    /// Moves the value out (for move-only T); other copies of this future see
    /// a moved-from value afterwards.
    decltype(auto) result() && {
        if constexpr (std::is_void_v<T>) return checked().value();
        else return T(std::move(checked().value()));
    }

    /// Python: Future.exception(): null if the future holds a value.
    std::exception_ptr exception() const { return checked().exception(); }

    /// Python: Future.add_done_callback(). fn(future) runs on the loop thread
    /// once the future is done (at once if it already is), also when cancelled.
    void add_done_callback(std::function<void(future)> fn) {
        if (done()) {
            fn(*this);
            return;
        }
        auto* w = new detail::callback_waiter<T>(std::move(fn));
        state_->link(*w);
    }

    /// The loop this future belongs to (internal).
    detail::loop_core* loop_core() const noexcept { return state_->loop(); }
    state_type* state() const noexcept { return state_.get(); }

    /// Inside a task group, the awaiter arms the child's cancel slot: when the
    /// group cancels the child, this future is cancelled (so is its executor
    /// call) and the child resumes with cancelled_error, as Python's
    /// Task.cancel() cancels the future the task waits on.
    template <bool Move>
    struct awaiter : detail::waiter, detail::interrupt_point {
        explicit awaiter(state_type* s) noexcept
            : detail::waiter(&awaiter::on_fire), detail::interrupt_point(&awaiter::on_interrupt), s_(s) {}
        bool await_ready() const noexcept { return s_->done(); }
        template <class P>
        bool await_suspend(std::coroutine_handle<P> h) noexcept {
            h_ = h;
            if (!arm(detail::slot_of(h))) {
                s_->cancel();
                must_cancel_ = true;
                return false;
            }
            s_->link(*this);
            return true;
        }
        decltype(auto) await_resume() {
            if (must_cancel_) throw cancelled_error();
            if constexpr (std::is_void_v<T>) return s_->value();
            else if constexpr (Move) return T(std::move(s_->value()));
            else return static_cast<T&>(s_->value());
        }
        static void on_fire(detail::waiter* w, detail::future_state_base&) noexcept {
            auto* self = static_cast<awaiter*>(w);
            self->disarm();
            self->h_.resume();
        }
        /// The future is cancelled; if it was already resolved (an executor
        /// resolves first and runs its waiters later), the awaiter still ends
        /// as cancelled, as asyncio's _must_cancel does: the request is not lost.
        static void on_interrupt(detail::interrupt_point* p) noexcept {
            auto* self = static_cast<awaiter*>(p);
            self->must_cancel_ = true;
            self->s_->cancel();
        }
        state_type* s_;
        std::coroutine_handle<> h_;
        bool must_cancel_ = false;
    };

    /// co_await f      → T& (the shared value), or throws.
    awaiter<false> operator co_await() & { return awaiter<false>{&checked()}; }
    /// co_await std::move(f) → T (moved out), or throws.
    awaiter<true> operator co_await() && { return awaiter<true>{&checked()}; }

    friend bool operator==(const future& a, const future& b) noexcept { return a.state_.get() == b.state_.get(); }

private:
    state_type& checked() const {
        if (!state_) throw invalid_state_error("uvexec: use of an empty future (default-constructed or moved from)");
        return *state_;
    }

    template <class U>
    friend future<U> detail::make_future(detail::state_ptr<detail::future_state<U>>) noexcept;
    explicit future(detail::state_ptr<state_type> s) noexcept : state_(std::move(s)) {}

    detail::state_ptr<state_type> state_;
};

namespace detail {
template <class T>
future<T> make_future(state_ptr<future_state<T>> s) noexcept {
    return future<T>(std::move(s));
}

template <class T>
void callback_waiter<T>::on_fire(waiter* w, future_state_base& s) noexcept {
    std::unique_ptr<callback_waiter> self(static_cast<callback_waiter*>(w));
    auto f = make_future(state_ptr<future_state<T>>::share(static_cast<future_state<T>*>(&s)));
    try {
        self->fn(std::move(f));
    } catch (...) {
        // A done-callback that throws has nowhere to report to; Python logs
        // and carries on. We do the same rather than terminate the loop.
        report_callback_exception(std::current_exception());
    }
}
}  // namespace detail

}  // namespace uvexec
