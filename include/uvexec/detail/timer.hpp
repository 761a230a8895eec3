// uvexec — a one-shot uv_timer_t owned by an awaiter (internal).
//
// The handle lives on the heap and is freed by its close callback, so the
// owner may go away at any time (a coroutine frame destroyed mid-sleep): the
// destructor stops and closes the handle and libuv frees it later.
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <cstdint>

#include <uv.h>

namespace uvexec::inline v0::detail {

class timer {
public:
    using callback = void (*)(void* ctx) noexcept;

    explicit timer(uv_loop_t* uv);
    ~timer();
    timer(const timer&) = delete;
    timer& operator=(const timer&) = delete;

    void start(std::uint64_t ms, callback cb, void* ctx) noexcept;
    void stop() noexcept;

    /// Rounds a duration up to libuv's millisecond resolution; negative is 0.
    static std::uint64_t to_ms(std::chrono::nanoseconds d) noexcept {
        if (d <= d.zero()) return 0;
        return static_cast<std::uint64_t>(std::chrono::ceil<std::chrono::milliseconds>(d).count());
    }

private:
    struct handle {
        uv_timer_t uv;
        callback cb = nullptr;
        void* ctx = nullptr;
    };
    static void on_timeout(uv_timer_t* t) noexcept;
    handle* h_;
};

}  // namespace uvexec::detail
