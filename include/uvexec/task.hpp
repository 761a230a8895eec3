// uvexec — task<T>: a lazy coroutine.
//
// Python: an `async def` coroutine object. A task does nothing until it is
// awaited (or handed to loop::spawn / loop::run_until_complete); its result or
// exception goes to whoever awaits it. Awaiting uses symmetric transfer, so
// long chains of tasks do not grow the stack.
#pragma once

#include "uvexec/detail/config.hpp"

#include <coroutine>
#include <exception>
#include <type_traits>
#include <utility>
#include <variant>

#include "uvexec/detail/cancel_slot.hpp"
#include "uvexec/error.hpp"

namespace uvexec::inline v0 {

template <class T = void>
class [[nodiscard]] task;

namespace detail {

struct task_promise_base : cancellable_promise {
    struct final_awaiter {
        bool await_ready() const noexcept { return false; }
        template <class P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
            auto c = h.promise().continuation_;
            return c ? c : std::noop_coroutine();
        }
        void await_resume() const noexcept {}
    };

    std::suspend_always initial_suspend() const noexcept { return {}; }
    final_awaiter final_suspend() const noexcept { return {}; }

    std::coroutine_handle<> continuation_;
};

template <class T>
struct task_promise final : task_promise_base {
    task<T> get_return_object() noexcept;
    template <class U = T>
        requires std::is_convertible_v<U&&, T>
    void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
        result_.template emplace<1>(std::forward<U>(v));
    }
    void unhandled_exception() noexcept { result_.template emplace<2>(std::current_exception()); }

    T take() {
        if (result_.index() == 2) std::rethrow_exception(std::get<2>(result_));
        return std::move(std::get<1>(result_));
    }

    std::variant<std::monostate, T, std::exception_ptr> result_;
};

template <>
struct task_promise<void> final : task_promise_base {
    task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void unhandled_exception() noexcept { exception_ = std::current_exception(); }
    void take() {
        if (exception_) std::rethrow_exception(exception_);
    }
    std::exception_ptr exception_;
};

}  // namespace detail

/// A lazy coroutine returning T. Move-only; owns its coroutine frame.
template <class T>
class [[nodiscard]] task {
public:
    using promise_type = detail::task_promise<T>;
    using handle_type = std::coroutine_handle<promise_type>;
    using value_type = T;

    task() noexcept = default;
    explicit task(handle_type h) noexcept : h_(h) {}
    task(task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    task& operator=(task&& o) noexcept {
        if (this != &o) {
            if (h_) h_.destroy();
            h_ = std::exchange(o.h_, {});
        }
        return *this;
    }
    ~task() {
        if (h_) h_.destroy();
    }

    bool valid() const noexcept { return bool(h_); }

    struct awaiter {
        handle_type h_;
        bool await_ready() const noexcept { return false; }
        /// The task joins the caller's cancel slot (if any): a task group's
        /// cancellation reaches whatever the innermost awaited task waits on.
        template <class P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> caller) noexcept {
            h_.promise().continuation_ = caller;
            h_.promise().cancel_slot_ = detail::slot_of(caller);
            return h_;
        }
        T await_resume() { return h_.promise().take(); }
    };

    /// Starts the task and resumes the caller when it finishes; returns its
    /// result or rethrows its exception. Awaiting an empty task is an error.
    awaiter operator co_await() && {
        if (!h_) throw invalid_state_error("uvexec: co_await of an empty task");
        return awaiter{h_};
    }

private:
    handle_type h_;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
}  // namespace detail

}  // namespace uvexec
