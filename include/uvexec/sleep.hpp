// uvexec — sleep(): suspend a coroutine for a while.
//
// Python: `await asyncio.sleep(delay)`. One uv_timer_t per sleep; a zero or
// negative delay still yields to the loop once.
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <coroutine>
#include <cstdint>

#include "uvexec/detail/timer.hpp"
#include "uvexec/loop.hpp"

namespace uvexec::inline v0 {

namespace detail {
class sleep_awaiter {
public:
    sleep_awaiter(uv_loop_t* uv, std::uint64_t ms) : timer_(uv), ms_(ms) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept {
        h_ = h;
        timer_.start(ms_, &sleep_awaiter::fire, this);
    }
    void await_resume() const noexcept {}

private:
    static void fire(void* self) noexcept { static_cast<sleep_awaiter*>(self)->h_.resume(); }
    timer timer_;
    std::uint64_t ms_;
    std::coroutine_handle<> h_;
};
}  // namespace detail

/// Python: `await asyncio.sleep(d)` on loop lp. Resolution is libuv's: 1 ms,
/// rounded up. Throws loop_closed_error on a closed loop.
inline detail::sleep_awaiter sleep(loop& lp, std::chrono::nanoseconds d) {
    if (lp.core().closing()) throw loop_closed_error("uvexec: sleep on a closed loop");
    return detail::sleep_awaiter(lp.native(), detail::timer::to_ms(d));
}

}  // namespace uvexec
