// uvexec — shield(): keep work going when its awaiter is cancelled.
//
// Python: `await asyncio.shield(f)`. shield(f) returns a new future that
// completes with f's outcome; cancelling it (wait_for's timeout, a task
// group's cancellation of the awaiting child, an explicit cancel()) leaves f
// and the work behind it running, so f's result can still be collected.
#pragma once

#include "uvexec/detail/config.hpp"

#include <memory>
#include <type_traits>
#include <utility>

#include "uvexec/detail/future_state.hpp"
#include "uvexec/error.hpp"
#include "uvexec/future.hpp"

namespace uvexec::inline v0 {

namespace detail {

/// Carries the inner future's outcome to the shield's future, unless that
/// was cancelled meanwhile. It holds the shield's state; the inner state holds
/// it (as a waiter that owns itself), so an inner future that never completes
/// frees it when it goes, with no cycle between the two.
template <class T>
struct shield_link final : waiter {
    explicit shield_link(state_ptr<future_state<T>> o)
        : waiter(&shield_link::on_fire, &shield_link::on_drop), outer(std::move(o)) {}

    static void on_drop(waiter* w) noexcept { delete static_cast<shield_link*>(w); }

    static void on_fire(waiter* w, future_state_base& s) noexcept {
        std::unique_ptr<shield_link> self(static_cast<shield_link*>(w));
        auto& out = *self->outer;
        auto& in = static_cast<future_state<T>&>(s);
        if (out.done()) return;  // the shield was cancelled; the result stays in the inner future
        switch (in.state()) {
            case status::value: break;
            case status::exception: out.set_exception(in.exception()); return;
            case status::cancelled: out.cancel(); return;
            case status::pending: return;  // not reached: waiters fire on completion
        }
        try {
            if constexpr (std::is_void_v<T>) {
                out.set_value();
            } else if constexpr (std::is_copy_constructible_v<T>) {
                out.set_value(in.value());  // the inner future keeps its value
            } else {
                out.set_value(std::move(in.value()));
            }
        } catch (...) {
            out.set_exception(std::current_exception());  // T's copy threw
        }
    }

    state_ptr<future_state<T>> outer;
};

}  // namespace detail

/// Python: asyncio.shield(f). A future with f's outcome whose cancellation
/// does not reach f. A done f is returned as it is; a value is copied (moved
/// when T cannot be copied, which leaves f's value moved-from).
template <class T>
future<T> shield(future<T> f) {
    if (!f.valid()) throw invalid_state_error("uvexec: shield of an empty future");
    if (f.done()) return f;
    auto outer = detail::state_ptr<detail::future_state<T>>::adopt(new detail::future_state<T>(f.loop_core()));
    auto* link = new detail::shield_link<T>(outer);
    f.state()->link(*link);
    return detail::make_future(std::move(outer));
}

}  // namespace uvexec
