// uvexec — loop: a libuv event loop that runs coroutines.
//
// Python: asyncio's event loop. A uvexec::loop either owns a uv_loop_t or
// borrows one that the host program already runs; with a borrowed loop it
// never calls uv_run unless asked (run_until_complete). A loop is used on the
// thread that created it; only call_soon_threadsafe() and promise fulfilment
// may come from other threads.
#pragma once

#include "uvexec/detail/config.hpp"

#include <cstddef>
#include <future>
#include <memory>
#include <type_traits>
#include <utility>

#include <uv.h>

#include "uvexec/detail/loop_core.hpp"
#include "uvexec/future.hpp"
#include "uvexec/task.hpp"

namespace uvexec::inline v0 {

class thread_pool_executor;

namespace detail {

/// The fire-and-forget coroutine that runs a spawned task and completes its
/// future. Its frame is tracked by the loop so a closing loop can destroy it.
struct spawned_runner {
    struct promise_type {
        spawned_node node;
        loop_core* loop = nullptr;
        spawned_runner get_return_object() noexcept {
            return {std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_always initial_suspend() const noexcept { return {}; }
        std::suspend_never final_suspend() const noexcept { return {}; }
        void return_void() const noexcept {}
        void unhandled_exception() const noexcept { std::terminate(); }  // run_spawned catches everything
        ~promise_type() {
            if (loop) loop->untrack(node);
        }
    };
    std::coroutine_handle<promise_type> h;
};

/// Cancels the future if the runner's frame is destroyed before it finished
/// (the loop closed under it).
template <class T>
struct cancel_on_exit {
    state_ptr<future_state<T>> s;
    ~cancel_on_exit() {
        if (s) s->cancel();
    }
};

template <class T>
spawned_runner run_spawned(task<T> t, state_ptr<future_state<T>> s) {
    cancel_on_exit<T> guard{s};
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(t);
            if (!s->done()) s->set_value();
        } else {
            auto v = co_await std::move(t);
            if (!s->done()) s->set_value(std::move(v));
        }
    } catch (...) {
        if (!s->done()) s->set_exception(std::current_exception());
    }
}

/// T, spelled so that it depends on Dep (defers name lookup to instantiation).
template <class Dep, class T>
struct dependent {
    using type = T;
};

}  // namespace detail

/// An event loop running coroutines and receiving the results of executors.
class loop {
public:
    /// Creates and owns a new uv_loop_t.
    loop();
    /// Borrows the host's loop. uvexec adds one unreferenced uv_async_t to it
    /// and closes it when this object goes away.
    explicit loop(uv_loop_t* host);
    /// Closing a loop with work outstanding, in this order: (1) coroutines
    /// still suspended in spawned tasks are destroyed and their futures
    /// cancelled; (2) every executor bound to the loop drops its queued work
    /// (futures cancelled), libuv cancels thread work not yet started, and
    /// worker processes are killed; (3) the loop (owned or borrowed) runs until
    /// thread work already running has finished, because it cannot be stopped,
    /// and every killed worker is reaped; (4) uvexec's handles are closed and
    /// their close callbacks run; an owned loop is closed with uv_loop_close.
    /// Nothing leaks, no zombie is left, and no callback touches freed memory.
    /// Destroy a loop outside uv_run, never from one of its own callbacks.
    ~loop();
    loop(const loop&) = delete;
    loop& operator=(const loop&) = delete;

    /// The libuv loop, for the host's own handles.
    uv_loop_t* native() const noexcept { return core_->uv(); }

    /// Python: loop.create_task(coro). Starts the task now (eagerly, until its
    /// first suspension) and returns its future. The loop keeps the coroutine
    /// alive until it finishes. Cancelling the future does not stop the
    /// coroutine; its result is dropped when it finishes.
    template <class T>
    future<T> spawn(task<T> t) {
        if (!t.valid()) throw invalid_state_error("uvexec: spawn of an empty task");
        check_open();
        auto s = detail::state_ptr<detail::future_state<T>>::adopt(new detail::future_state<T>(core_.get()));
        auto runner = detail::run_spawned<T>(std::move(t), s);
        runner.h.promise().loop = core_.get();
        runner.h.promise().node.frame = runner.h;
        core_->track(runner.h.promise().node);
        runner.h.resume();
        return detail::make_future(std::move(s));
    }

    /// Python: loop.run_until_complete(coro). Runs the loop until the task is
    /// done and returns its result (or rethrows). Throws uvexec::error if the
    /// loop runs out of work before the task can finish, or if the loop is
    /// already running.
    template <class T>
    T run_until_complete(task<T> t) {
        return run_until_complete(spawn(std::move(t)));
    }

    template <class T>
    T run_until_complete(future<T> f) {
        core_->run_until([&] { return f.done(); });
        return std::move(f).result();
    }

    /// Python: loop.call_soon_threadsafe(fn). Any thread; fn runs on the loop
    /// thread in submission order. Throws loop_closed_error after close.
    /// An exception escaping fn is reported on stderr and does not stop the loop.
    void call_soon_threadsafe(detail::unique_function fn) { core_->post(std::move(fn)); }

    /// Python: loop.run_in_executor(executor, fn, *args). Runs fn(args...) on
    /// the executor and returns a future of its result.
    template <class Executor, class F, class... A>
        requires(!std::is_same_v<std::decay_t<Executor>, std::nullptr_t>)
    auto run_in_executor(Executor& ex, F&& fn, A&&... args) {
        return ex.submit(*this, std::forward<F>(fn), std::forward<A>(args)...);
    }

    /// Python: loop.run_in_executor(None, fn, *args): the loop's default
    /// thread pool (created on first use, see default_executor()).
    template <class F, class... A>
    auto run_in_executor(std::nullptr_t, F&& fn, A&&... args) {
        typename detail::dependent<F, thread_pool_executor>::type& ex = default_executor();
        return ex.submit(*this, std::forward<F>(fn), std::forward<A>(args)...);
    }

    /// Python: asyncio.run_coroutine_threadsafe(coro, loop). From a thread
    /// other than the loop's: runs the task on this loop and returns a
    /// std::future for its result, to wait for on the calling thread. The loop
    /// must be running (the host's uv_run, or run_until_complete on its
    /// thread). Throws loop_closed_error if the loop is closed; if it closes
    /// before the task ran, the std::future reports a broken promise.
    template <class T>
    std::future<T> run_coroutine_threadsafe(task<T> t) {
        auto result = std::make_shared<std::promise<T>>();
        auto f = result->get_future();
        call_soon_threadsafe([this, t = std::move(t), result]() mutable {
            try {
                spawn(std::move(t)).add_done_callback([result](future<T> done) {
                    try {
                        if constexpr (std::is_void_v<T>) {
                            done.result();
                            result->set_value();
                        } else {
                            result->set_value(std::move(done).result());
                        }
                    } catch (...) {
                        result->set_exception(std::current_exception());
                    }
                });
            } catch (...) {
                result->set_exception(std::current_exception());
            }
        });
        return f;
    }

    /// run_in_executor from a thread other than the loop's: the call is
    /// submitted on the loop thread and its result arrives in a std::future.
    /// Same conditions as run_coroutine_threadsafe.
    template <class Executor, class F, class... A>
    auto run_in_executor_threadsafe(Executor& ex, F fn, A... args) {
        return run_coroutine_threadsafe(call_in_executor(*this, ex, std::move(fn), std::move(args)...));
    }

    /// The executor used for run_in_executor(nullptr, ...): a
    /// thread_pool_executor with default options, created on first use and
    /// destroyed with the loop.
    thread_pool_executor& default_executor();

    /// Internal: the shared state.
    detail::loop_core& core() const noexcept { return *core_; }
    const std::shared_ptr<detail::loop_core>& shared_core() const noexcept { return core_; }

private:
    void check_open() const;

    template <class Executor, class F, class... A>
    static auto call_in_executor(loop& lp, Executor& ex, F fn, A... args)
        -> task<typename decltype(lp.run_in_executor(ex, std::move(fn), std::move(args)...))::value_type> {
        co_return co_await lp.run_in_executor(ex, std::move(fn), std::move(args)...);
    }

    std::shared_ptr<detail::loop_core> core_;
    std::unique_ptr<thread_pool_executor> default_executor_;
};

}  // namespace uvexec

#include "uvexec/thread_pool_executor.hpp"
