// uvexec — task_group: structured concurrency.
//
// Python: `async with asyncio.TaskGroup() as g: g.create_task(...)` (3.11).
//
//     co_await uvexec::task_group::run(lp, [&](uvexec::task_group& g) -> uvexec::task<void> {
//         auto a = g.spawn(fetch(lp, 1));           // future<int>
//         g.spawn([&]() -> uvexec::task<void> {      // a callable: kept alive with its child
//             co_await lp.run_in_executor(pool, work);
//         });
//         co_return;
//     });
//
// The body runs as the group's first child. The first child (or body) that
// fails cancels every other one, the body included; a cancellation of the
// coroutine awaiting run() does the same. run() completes only when every
// child's frame has finished, and then rethrows the first failure unchanged.
//
// Cancelling a child interrupts the awaiter its innermost task is suspended
// in: an awaited future is cancelled (so is the executor call behind it), a
// sleep, wait, gather, wait_for or as_completed step ends, and the child
// resumes with cancelled_error. A child suspended in anything else (an
// awaitable of its own) sees the cancellation at its next such suspension.
// Each cancellation is delivered once, as in asyncio: a child that catches
// cancelled_error and carries on runs to its end, and the group waits for it.
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "uvexec/detail/cancel_slot.hpp"
#include "uvexec/detail/future_state.hpp"
#include "uvexec/detail/take.hpp"
#include "uvexec/error.hpp"
#include "uvexec/future.hpp"
#include "uvexec/loop.hpp"
#include "uvexec/task.hpp"
#include "uvexec/wait.hpp"

namespace uvexec::inline v0 {

class task_group;

namespace detail {

/// One child of a task group (the body is one too). Owned by the group; freed
/// once the child's frame has finished and no group code is on the stack.
struct group_child {
    group_child* prev = nullptr;
    group_child* next = nullptr;
    group_child* next_finished = nullptr;
    cancel_slot slot;
    std::coroutine_handle<> frame;
    future_state_base* state = nullptr;  // one reference, released with the record
    cancel_slot** state_slot = nullptr;  // the state's pointer back to slot
    bool body = false;
    bool finished = false;
    bool cancel_sent = false;
};

/// The state of the future spawn() returns: cancelling it cancels the child.
template <class T>
class group_child_state final : public future_state<T> {
public:
    using future_state<T>::future_state;
    cancel_slot* slot = nullptr;

private:
    void on_cancel() noexcept override {
        if (cancel_slot* s = std::exchange(slot, nullptr)) s->cancel();
    }
};

/// The coroutine that runs one child and reports to its group when it ends.
struct group_runner {
    struct promise_type : cancellable_promise {
        task_group* group = nullptr;
        group_child* child = nullptr;
        group_runner get_return_object() noexcept {
            return {std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_always initial_suspend() const noexcept { return {}; }
        struct final_awaiter {
            bool await_ready() const noexcept { return false; }
            std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept;
            void await_resume() const noexcept {}
        };
        final_awaiter final_suspend() const noexcept { return {}; }
        void return_void() const noexcept {}
        void unhandled_exception() const noexcept { std::terminate(); }  // run_child catches everything
    };
    std::coroutine_handle<promise_type> h;
};

template <class T, class Start>
group_runner run_child(Start start, state_ptr<group_child_state<T>> s, task_group* g, group_child* c);

/// Starts a child from a task (moved into the child's frame).
template <class T>
struct start_task {
    task<T> t;
    task<T> operator()() { return std::move(t); }
};

/// Starts a child from a callable kept in the child's frame, so the captures
/// of a coroutine lambda live as long as its coroutine.
template <class F>
struct start_callable {
    F f;
    auto operator()() { return std::invoke(f); }
};

template <class F>
using spawned_value_t = typename std::invoke_result_t<F&>::value_type;

}  // namespace detail

/// Python: asyncio.TaskGroup. A scope of child coroutines that cannot outlive
/// it; created only by run(), which hands it to the body by reference.
class task_group {
public:
    task_group(const task_group&) = delete;
    task_group& operator=(const task_group&) = delete;

    /// Python: `async with asyncio.TaskGroup() as g: <body>`. Runs body(g) as
    /// the group's first child and completes when it and every child spawned
    /// into g have finished, returning the body's result. The first failure
    /// (an exception other than cancelled_error) cancels all the others and
    /// is rethrown unchanged. If the awaiting coroutine is cancelled (it is
    /// itself in a group, or under wait_for(lp, task, d)), every child is
    /// cancelled, waited for, and run() throws cancelled_error.
    template <class Body>
        requires std::is_invocable_v<Body&, task_group&>
    static auto run(loop& lp, Body body) -> task<typename std::invoke_result_t<Body&, task_group&>::value_type> {
        using R = typename std::invoke_result_t<Body&, task_group&>::value_type;
        task_group g(lp);
        auto invoke_body = [&body, &g] { return std::invoke(body, g); };
        future<R> result = g.start<R>(detail::start_callable<decltype(invoke_body)>{invoke_body}, true);
        co_await join_awaiter{&g};
        g.rethrow();
        if constexpr (!std::is_void_v<R>) {
            co_return detail::take_value(result);  // cancelled_error if g.cancel() stopped the body
        }
    }

    /// Python: TaskGroup.create_task(coro). Starts t now (until its first
    /// suspension) as a child and returns its future, which holds the child's
    /// own outcome; cancelling that future cancels this child only (not a
    /// failure of the group). Spawning into a group that is being cancelled
    /// starts the child already cancelled. Throws invalid_state_error once the
    /// group has completed, loop_closed_error on a closed loop.
    template <class T>
    future<T> spawn(task<T> t) {
        if (!t.valid()) throw invalid_state_error("uvexec: task_group::spawn of an empty task");
        return start<T>(detail::start_task<T>{std::move(t)}, false);
    }

    /// The same for a callable returning a task (typically a coroutine
    /// lambda): the callable is moved into the child and lives until it ends,
    /// so its captures outlive the coroutine (`g.spawn([&] -> task<> {...})`,
    /// not `g.spawn([&] -> task<> {...}())`, whose lambda dies at once).
    template <class F>
        requires std::is_invocable_v<std::decay_t<F>&>
    future<detail::spawned_value_t<std::decay_t<F>>> spawn(F&& fn) {
        using T = detail::spawned_value_t<std::decay_t<F>>;
        return start<T>(detail::start_callable<std::decay_t<F>>{std::forward<F>(fn)}, false);
    }

    /// Trio: `nursery.cancel_scope.cancel()` (asyncio has no such method).
    /// Cancels every child and the body; unlike a failure this is not an
    /// error: run() then returns normally once all have finished (for a body
    /// returning a value that it could not produce, run() throws
    /// cancelled_error).
    void cancel() noexcept {
        if (closing_) return;
        enter();
        cancel_children();
        leave();
    }

    /// True once a failure, cancel(), or an outside cancellation has cancelled
    /// the group's children.
    bool cancelling() const noexcept { return cancelling_; }

    /// Children (not counting the body) that have not finished yet.
    std::size_t size() const noexcept { return children_; }

    /// The loop the group's children run on.
    loop& get_loop() const noexcept { return lp_; }

    /// Destroyed with run()'s frame: normally empty by then. If that frame is
    /// destroyed while children are suspended (their loop closed under them),
    /// their frames are destroyed first, then their futures cancelled.
    ~task_group() {
        closing_ = true;
        ++depth_;
        for (auto* c = head_; c; c = c->next) {
            *c->state_slot = nullptr;
            c->frame.destroy();
        }
        while (auto* c = head_) {
            head_ = c->next;
            c->state->cancel();
            c->state->release();
            delete c;
        }
    }

private:
    friend struct detail::group_runner::promise_type::final_awaiter;
    template <class T, class Start>
    friend detail::group_runner detail::run_child(Start, detail::state_ptr<detail::group_child_state<T>>, task_group*,
                                                  detail::group_child*);

    explicit task_group(loop& lp) noexcept : lp_(lp) {}

    /// run()'s wait for the last child; a cancellation of the coroutine
    /// awaiting run() arrives here and cancels the group instead of resuming.
    struct join_awaiter : detail::interrupt_point {
        explicit join_awaiter(task_group* group) noexcept
            : detail::interrupt_point(&join_awaiter::on_interrupt), g(group) {}
        bool await_ready() const noexcept { return g->live_ == 0; }
        template <class P>
        bool await_suspend(std::coroutine_handle<P> h) noexcept {
            if (!arm(detail::slot_of(h))) {
                g->cancel_from_outside();
                if (g->live_ == 0) return false;
            }
            g->waiting_ = h;
            return true;
        }
        void await_resume() noexcept { disarm(); }
        static void on_interrupt(detail::interrupt_point* p) noexcept {
            static_cast<join_awaiter*>(p)->g->cancel_from_outside();
        }
        task_group* g;
    };

    template <class T, class Start>
    future<T> start(Start&& how, bool body) {
        if (closing_ || (live_ == 0 && started_))
            throw invalid_state_error("uvexec: task_group::spawn after the group has completed");
        if (lp_.core().closing()) throw loop_closed_error("uvexec: task_group::spawn on a closed loop");
        auto s = detail::state_ptr<detail::group_child_state<T>>::adopt(new detail::group_child_state<T>(&lp_.core()));
        auto c = std::make_unique<detail::group_child>();
        auto runner = detail::run_child<T>(std::forward<Start>(how), s, this, c.get());
        c->frame = runner.h;
        c->body = body;
        c->state = s.get();
        c->state->add_ref();
        c->state_slot = &s->slot;
        s->slot = &c->slot;
        runner.h.promise().group = this;
        runner.h.promise().child = c.get();
        runner.h.promise().cancel_slot_ = &c->slot;
        if (cancelling_) {
            c->cancel_sent = true;
            c->slot.cancel();  // pending: delivered at the child's first suspension
        }
        link(c.release());
        started_ = true;
        ++live_;
        if (!body) ++children_;
        auto f = detail::make_future(detail::state_ptr<detail::future_state<T>>::adopt(s.detach()));
        runner.h.resume();  // the group may be gone now if this was its last child
        return f;
    }

    void link(detail::group_child* c) noexcept {
        c->prev = tail_;
        if (tail_) tail_->next = c; else head_ = c;
        tail_ = c;
    }

    void unlink(detail::group_child* c) noexcept {
        if (c->prev) c->prev->next = c->next; else head_ = c->next;
        if (c->next) c->next->prev = c->prev; else tail_ = c->prev;
    }

    // Group code may resume children (cancelling one resumes it), and they
    // may re-enter the group (spawn, fail, finish, cancel). While depth_ > 0
    // no record is freed and run() is not resumed; the outermost leave()
    // frees finished records and, as its very last action, resumes run() if
    // every child has finished (the group may be destroyed by that).
    void enter() noexcept { ++depth_; }
    void leave() noexcept {
        if (--depth_ > 0) return;
        sweep();
        if (live_ == 0 && waiting_) std::exchange(waiting_, {}).resume();
    }

    void sweep() noexcept {
        ++depth_;
        while (auto* c = finished_) {
            finished_ = c->next_finished;
            unlink(c);
            c->frame.destroy();
            c->state->release();
            delete c;
        }
        --depth_;
    }

    void cancel_children() noexcept {
        cancelling_ = true;
        // Records stay allocated while depth_ > 0; children spawned meanwhile
        // are appended and start cancelled.
        for (auto* c = head_; c; c = c->next) {
            if (c->finished || c->cancel_sent) continue;
            c->cancel_sent = true;
            c->slot.cancel();
        }
    }

    void cancel_from_outside() noexcept {
        enter();
        cancelled_ = true;
        cancel_children();
        leave();
    }

    /// A child's coroutine has ended (its future is already complete).
    void settle(detail::group_child& c, std::exception_ptr failure, bool was_cancelled) noexcept {
        enter();
        if (failure) {
            if (!error_) error_ = std::move(failure);
            cancel_children();
        } else if (c.body && was_cancelled) {
            // The body stopped on a cancellation the group did not send (a
            // future it awaited was cancelled by someone else): the group is
            // cancelled, as leaving `async with` by CancelledError is.
            if (!c.cancel_sent) cancelled_ = true;
            cancel_children();
        }
        leave();
    }

    /// The child's frame is at its final suspension point.
    std::coroutine_handle<> finished(detail::group_child& c) noexcept {
        c.finished = true;
        c.slot.clear();
        c.next_finished = finished_;
        finished_ = &c;
        --live_;
        if (!c.body) --children_;
        if (depth_ > 0) return std::noop_coroutine();
        sweep();  // destroys c's frame too: it is suspended, so that is allowed
        if (live_ == 0 && waiting_) return std::exchange(waiting_, {});
        return std::noop_coroutine();
    }

    void rethrow() const {
        if (error_) std::rethrow_exception(error_);
        if (cancelled_) throw cancelled_error();
    }

    loop& lp_;
    detail::group_child* head_ = nullptr;
    detail::group_child* tail_ = nullptr;
    detail::group_child* finished_ = nullptr;  // waiting for sweep()
    std::size_t live_ = 0;                     // children and body not finished
    std::size_t children_ = 0;                 // the same without the body
    std::size_t depth_ = 0;
    std::coroutine_handle<> waiting_;  // run(), once only children are left
    std::exception_ptr error_;         // the first failure
    bool started_ = false;
    bool cancelling_ = false;
    bool cancelled_ = false;  // run() throws cancelled_error (when no failure)
    bool closing_ = false;
};

namespace detail {

inline std::coroutine_handle<> group_runner::promise_type::final_awaiter::await_suspend(
    std::coroutine_handle<promise_type> h) noexcept {
    return h.promise().group->finished(*h.promise().child);
}

template <class T, class Start>
group_runner run_child(Start start, state_ptr<group_child_state<T>> s, task_group* g, group_child* c) {
    std::exception_ptr failure;
    bool was_cancelled = false;
    try {
        if constexpr (std::is_void_v<T>) {
            co_await start();
        } else {
            auto v = co_await start();
            if (!s->done()) s->emplace(std::move(v));
        }
    } catch (const cancelled_error&) {
        was_cancelled = true;
    } catch (...) {
        failure = std::current_exception();
    }
    // The future first (whoever awaits it may run now), then the group.
    s->slot = nullptr;
    if (failure) {
        if (!s->done()) s->set_exception(failure);
    } else if (was_cancelled) {
        s->cancel();
    } else {
        s->publish_value();
    }
    g->settle(*c, std::move(failure), was_cancelled);
}

}  // namespace detail

/// Python: `await asyncio.wait_for(coro, timeout)` (3.12 semantics, built on
/// asyncio.timeout): runs t; when the timeout passes first, t is cancelled and
/// waited for, then timeout_error is thrown. Unlike wait_for(future, d), t has
/// finished whenever this returns, and a cancellation of the awaiting
/// coroutine reaches t.
template <class T>
task<T> wait_for(loop& lp, task<T> t, std::chrono::nanoseconds timeout) {
    bool timed_out = false;
    co_return co_await task_group::run(lp, [&t, &timed_out, timeout](task_group& g) -> task<T> {
        auto f = g.spawn(std::move(t));
        {
            std::vector<future<T>> one{f};
            auto r = co_await wait(std::move(one), return_when::first_completed, timeout);
            timed_out = r.done.empty();
        }
        if (timed_out) {
            f.cancel();
            throw timeout_error();
        }
        if constexpr (std::is_void_v<T>) {
            f.result();
        } else {
            co_return detail::take_value(f);
        }
    });
}

}  // namespace uvexec
