// uvexec — the shared state behind future<T> (internal).
//
// A future_state is created on its loop's thread and is only ever read or
// completed there; other threads reach it through the loop's inbox. The only
// field touched from several threads is the reference count. Executors derive
// their work items from future_state<T> so that a submission costs one
// allocation: the item *is* the future's state.
#pragma once

#include "uvexec/detail/config.hpp"

#include <atomic>
#include <cassert>
#include <cstdint>
#include <exception>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "uvexec/error.hpp"

namespace uvexec::inline v0::detail {

class loop_core;
class future_state_base;

/// Reports an exception thrown by a done-callback or a fire-and-forget
/// callback, which has no caller to receive it (stderr, like asyncio's
/// default exception handler).
void report_callback_exception(std::exception_ptr e) noexcept;

/// A node that waits for a future to complete. It lives wherever its owner
/// lives (an awaiter in a coroutine frame, a combinator's array, a heap
/// callback) and unlinks itself if its owner goes away first.
struct waiter {
    using fire_fn = void (*)(waiter* self, future_state_base& state) noexcept;
    using drop_fn = void (*)(waiter* self) noexcept;

    /// drop, if given, frees a waiter that owns itself (a heap callback) when
    /// its future goes away without completing (its loop closed first).
    explicit waiter(fire_fn f, drop_fn d = nullptr) noexcept : fire(f), drop(d) {}
    waiter(const waiter&) = delete;
    waiter& operator=(const waiter&) = delete;
    ~waiter();

    bool linked() const noexcept { return owner != nullptr; }
    void unlink() noexcept;

    fire_fn fire;
    drop_fn drop;
    future_state_base* owner = nullptr;
    waiter* prev = nullptr;
    waiter* next = nullptr;
};

enum class status : std::uint8_t { pending, value, exception, cancelled };

class future_state_base {
public:
    explicit future_state_base(loop_core* loop) noexcept : loop_(loop) {}
    future_state_base(const future_state_base&) = delete;
    future_state_base& operator=(const future_state_base&) = delete;

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// True when the caller's reference is the only one (nobody else can
    /// observe the value).
    bool unique() const noexcept { return refs_.load(std::memory_order_acquire) == 1; }

    loop_core* loop() const noexcept { return loop_; }
    status state() const noexcept { return status_; }
    bool done() const noexcept { return status_ != status::pending; }

    /// Python's Future.cancel(): a pending future becomes cancelled, its
    /// producer is told (on_cancel) so work not yet started is dropped, and
    /// its waiters fire. Returns false if the future was already done.
    bool cancel() noexcept {
        if (done()) return false;
        status_ = status::cancelled;
        on_cancel();
        notify();
        return true;
    }

    void set_exception(std::exception_ptr e) {
        ensure_pending();
        exception_ = std::move(e);
        status_ = status::exception;
        notify();
    }

    // Executors complete a future in two steps. Completing runs its waiters
    // (resumed coroutines, done-callbacks), which may call back into the
    // executor: submit, cancel, shut down, destroy it. So an executor whose
    // own state is mid-update only resolves (the future is done from then on,
    // nothing runs) and calls notify_waiters() once its state is consistent.

    /// Resolves a pending future with e; a no-op if it is already done.
    void resolve_exception(std::exception_ptr e) noexcept {
        if (done()) return;
        exception_ = std::move(e);
        status_ = status::exception;
    }
    /// Resolves a pending future as cancelled (telling its producer, as
    /// cancel() does); a no-op if it is already done.
    void resolve_cancelled() noexcept {
        if (done()) return;
        status_ = status::cancelled;
        on_cancel();
    }
    /// Runs the waiters of a resolved future.
    void notify_waiters() noexcept { notify(); }

    /// Stores an exception without completing, as future_state::emplace()
    /// stores a value: executors store from a worker thread (nothing else
    /// touches it while the call runs) and publish on the loop thread.
    void stash_exception(std::exception_ptr e) noexcept { exception_ = std::move(e); }
    /// The stashed exception, or null.
    const std::exception_ptr& stashed_exception() const noexcept { return exception_; }
    /// Completes with the stashed exception, unless the future was cancelled
    /// meanwhile (then it is simply destroyed with the state).
    void publish_exception() noexcept {
        if (done()) return;
        status_ = status::exception;
        notify();
    }

    /// Throws the stored exception, cancelled_error, or invalid_state_error.
    void rethrow_if_not_value() const {
        switch (status_) {
            case status::value: return;
            case status::exception: std::rethrow_exception(exception_);
            case status::cancelled: throw cancelled_error();
            case status::pending: throw invalid_state_error("uvexec: result() of a future that is not done yet");
        }
    }

    /// Python's Future.exception(): the exception, or null for a value.
    std::exception_ptr exception() const {
        if (status_ == status::cancelled) throw cancelled_error();
        if (status_ == status::pending) throw invalid_state_error("uvexec: exception() of a future that is not done yet");
        return exception_;
    }

    void link(waiter& w) noexcept {
        assert(!w.linked());
        w.owner = this;
        w.prev = tail_;
        w.next = nullptr;
        if (tail_) tail_->next = &w; else head_ = &w;
        tail_ = &w;
    }

    void unlink(waiter& w) noexcept {
        assert(w.owner == this);
        if (w.prev) w.prev->next = w.next; else head_ = w.next;
        if (w.next) w.next->prev = w.prev; else tail_ = w.prev;
        w.owner = nullptr;
        w.prev = w.next = nullptr;
    }

protected:
    /// A future that never completed may still hold self-owned waiters
    /// (add_done_callback): they are freed, not fired.
    virtual ~future_state_base() {
        while (waiter* w = head_) {
            unlink(*w);
            if (w->drop) w->drop(w);
        }
    }

    /// Called once, on the loop thread, when a pending future is cancelled.
    virtual void on_cancel() noexcept {}

    void ensure_pending() const {
        if (done()) throw invalid_state_error("uvexec: the future already has a result");
    }

    /// Fires every waiter. Each is unlinked before it fires, so a waiter may
    /// unlink others, link new ones, or drop the last reference to its owner.
    void notify() noexcept {
        if (!head_) return;
        add_ref();
        while (waiter* w = head_) {
            unlink(*w);
            w->fire(w, *this);
        }
        release();
    }

    status status_ = status::pending;

private:
    std::atomic<std::uint32_t> refs_{1};
    loop_core* loop_;
    std::exception_ptr exception_;
    waiter* head_ = nullptr;
    waiter* tail_ = nullptr;
};

inline void waiter::unlink() noexcept {
    if (owner) owner->unlink(*this);
}

inline waiter::~waiter() { unlink(); }

template <class T>
class future_state : public future_state_base {
public:
    using future_state_base::future_state_base;

    template <class... A>
    void set_value(A&&... a) {
        ensure_pending();
        emplace(std::forward<A>(a)...);
        publish_value();
    }

    /// Stores a value without completing; publish_value() completes later.
    /// Executors store from a worker thread and publish on the loop thread.
    template <class... A>
    void emplace(A&&... a) {
        ::new (static_cast<void*>(&storage_)) T(std::forward<A>(a)...);
        has_value_ = true;
    }

    /// Completes with the emplaced value, unless the future was cancelled
    /// meanwhile (then the value is simply destroyed with the state).
    void publish_value() noexcept {
        if (done()) return;
        status_ = status::value;
        notify();
    }
    /// publish_value() without running the waiters (see resolve_exception).
    void resolve_value() noexcept {
        if (!done()) status_ = status::value;
    }

    T& value() & {
        rethrow_if_not_value();
        return *std::launder(reinterpret_cast<T*>(&storage_));
    }

protected:
    ~future_state() override {
        if (has_value_) std::launder(reinterpret_cast<T*>(&storage_))->~T();
    }

private:
    alignas(T) unsigned char storage_[sizeof(T)];
    bool has_value_ = false;
};

template <>
class future_state<void> : public future_state_base {
public:
    using future_state_base::future_state_base;

    void set_value() {
        ensure_pending();
        publish_value();
    }
    void emplace() noexcept {}
    void publish_value() noexcept {
        if (done()) return;
        status_ = status::value;
        notify();
    }
    void resolve_value() noexcept {
        if (!done()) status_ = status::value;
    }
    void value() { rethrow_if_not_value(); }
};

/// Completes every state in waiters (a no-op for one already done, e.g.
/// cancelled) and drops the reference held on it. The list is emptied first,
/// so a completion that resumes code adding new waiters is safe. Executors
/// use it for their shutdown() futures.
inline void complete_and_release(std::vector<future_state<void>*>& waiters) noexcept {
    auto batch = std::move(waiters);
    waiters.clear();
    for (auto* w : batch) {
        w->publish_value();
        w->release();
    }
}

/// An owning pointer to a future state (intrusive reference count).
template <class S>
class state_ptr {
public:
    state_ptr() noexcept = default;
    /// Adopts a reference the caller already holds.
    static state_ptr adopt(S* s) noexcept { state_ptr p; p.s_ = s; return p; }
    /// Takes a new reference.
    static state_ptr share(S* s) noexcept { if (s) s->add_ref(); return adopt(s); }

    state_ptr(const state_ptr& o) noexcept : s_(o.s_) { if (s_) s_->add_ref(); }
    state_ptr(state_ptr&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    state_ptr& operator=(state_ptr o) noexcept { std::swap(s_, o.s_); return *this; }
    ~state_ptr() { if (s_) s_->release(); }

    S* get() const noexcept { return s_; }
    S* operator->() const noexcept { return s_; }
    S& operator*() const noexcept { return *s_; }
    explicit operator bool() const noexcept { return s_ != nullptr; }
    S* detach() noexcept { return std::exchange(s_, nullptr); }

private:
    S* s_ = nullptr;
};

}  // namespace uvexec::detail
