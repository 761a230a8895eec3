// uvexec — sleep(): suspend a coroutine for a while.
//
// Python: `await asyncio.sleep(delay)`. One uv_timer_t per sleep; a zero or
// negative delay still yields to the loop once.
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <coroutine>
#include <cstdint>

#include "uvexec/detail/cancel_slot.hpp"
#include "uvexec/detail/timer.hpp"
#include "uvexec/error.hpp"
#include "uvexec/loop.hpp"

namespace uvexec::inline v0 {

namespace detail {
/// Inside a task group, a cancellation ends the sleep early with
/// cancelled_error (Python: a cancelled task's sleep raises CancelledError).
class sleep_awaiter : interrupt_point {
public:
    sleep_awaiter(uv_loop_t* uv, std::uint64_t ms)
        : interrupt_point(&sleep_awaiter::on_interrupt), timer_(uv), ms_(ms) {}
    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
        if (!arm(slot_of(h))) {
            interrupted_ = true;
            return false;
        }
        h_ = h;
        timer_.start(ms_, &sleep_awaiter::fire, this);
        return true;
    }
    void await_resume() const {
        if (interrupted_) throw cancelled_error();
    }

private:
    static void fire(void* self) noexcept {
        auto* s = static_cast<sleep_awaiter*>(self);
        s->disarm();
        s->h_.resume();
    }
    static void on_interrupt(interrupt_point* p) noexcept {
        auto* s = static_cast<sleep_awaiter*>(p);
        s->interrupted_ = true;
        s->timer_.stop();
        s->h_.resume();
    }
    timer timer_;
    std::uint64_t ms_;
    std::coroutine_handle<> h_;
    bool interrupted_ = false;
};
}  // namespace detail

/// Python: `await asyncio.sleep(d)` on loop lp. Resolution is libuv's: 1 ms,
/// rounded up. Throws loop_closed_error on a closed loop.
inline detail::sleep_awaiter sleep(loop& lp, std::chrono::nanoseconds d) {
    if (lp.core().closing()) throw loop_closed_error("uvexec: sleep on a closed loop");
    return detail::sleep_awaiter(lp.native(), detail::timer::to_ms(d));
}

}  // namespace uvexec
