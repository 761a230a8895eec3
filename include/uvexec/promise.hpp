// uvexec — promise<T>: complete a future from any thread.
//
// Python: the producer side of a Future (fut.set_result / set_exception), plus
// what loop.call_soon_threadsafe(fut.set_result, v) does for other threads.
// Create the promise on the loop's thread; set it from any thread. While a
// promise is unfulfilled it keeps uv_run alive (the result is still due).
#pragma once

#include "uvexec/detail/config.hpp"

#include <exception>
#include <memory>
#include <type_traits>
#include <utility>

#include "uvexec/detail/future_state.hpp"
#include "uvexec/detail/loop_core.hpp"
#include "uvexec/error.hpp"
#include "uvexec/future.hpp"
#include "uvexec/loop.hpp"

namespace uvexec::inline v0 {

template <class T = void>
class promise {
public:
    /// On the loop thread.
    explicit promise(loop& lp)
        : loop_(lp.shared_core()), state_(detail::state_ptr<detail::future_state<T>>::adopt(
                                       new detail::future_state<T>(loop_.get()))) {
        if (loop_->closing()) throw loop_closed_error("uvexec: promise on a closed loop");
        loop_->hold();
    }
    promise(promise&& o) noexcept
        : loop_(std::move(o.loop_)), state_(std::move(o.state_)), satisfied_(std::exchange(o.satisfied_, true)) {}
    promise& operator=(promise&& o) noexcept {
        if (this != &o) {
            abandon();
            loop_ = std::move(o.loop_);
            state_ = std::move(o.state_);
            satisfied_ = std::exchange(o.satisfied_, true);
        }
        return *this;
    }
    promise(const promise&) = delete;
    promise& operator=(const promise&) = delete;
    /// An unfulfilled promise fails its future with broken_promise_error.
    ~promise() { abandon(); }

    /// The future this promise completes. Call on the loop thread.
    future<T> get_future() const { return detail::make_future(state_); }

    /// Any thread. Throws invalid_state_error if already fulfilled, and
    /// loop_closed_error if the loop is gone.
    template <class... A>
    void set_value(A&&... a) {
        auto s = claim();
        if constexpr (std::is_void_v<T>) {
            deliver(std::move(s), [](detail::future_state<T>& st) { st.set_value(); });
        } else {
            deliver(std::move(s), [v = T(std::forward<A>(a)...)](detail::future_state<T>& st) mutable {
                st.set_value(std::move(v));
            });
        }
    }

    /// Any thread.
    void set_exception(std::exception_ptr e) {
        auto s = claim();
        deliver(std::move(s), [e = std::move(e)](detail::future_state<T>& st) { st.set_exception(e); });
    }

private:
    detail::state_ptr<detail::future_state<T>> claim() {
        if (satisfied_) throw invalid_state_error("uvexec: the promise was already fulfilled");
        satisfied_ = true;
        return state_;
    }

    // Runs complete(state) on the loop thread: now if this is it, else through
    // the inbox. A cancelled future ignores the result (as in Python).
    template <class F>
    void deliver(detail::state_ptr<detail::future_state<T>> s, F complete) {
        auto lp = loop_;
        auto job = [lp, s = std::move(s), complete = std::move(complete)]() mutable {
            if (!s->done()) complete(*s);
            lp->unhold();
        };
        if (!lp->on_loop_thread()) {
            lp->post(std::move(job));
        } else {
            if (lp->closing()) throw loop_closed_error("uvexec: the promise's loop is closed");
            job();
        }
    }

    void abandon() noexcept {
        if (satisfied_) return;
        try {
            set_exception(std::make_exception_ptr(broken_promise_error()));
        } catch (...) {
            // The loop is closed: nobody is left to tell.
        }
    }

    std::shared_ptr<detail::loop_core> loop_;
    detail::state_ptr<detail::future_state<T>> state_;
    bool satisfied_ = false;  // set_value/set_exception called (or moved from)
};

}  // namespace uvexec
