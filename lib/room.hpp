// uvexec — the waiters for room in a bounded queue (internal); both pools
// use this one FIFO.
//
// Invariants (loop thread only):
//  - each waiter is in the list, in a batch being woken, or done; the list
//    holds one reference to each of its waiters;
//  - a pass of offer() takes exactly as many waiters off the list as the
//    queue has free slots, then completes them in order; a woken waiter
//    resumes at once (uvexec resumes awaiting coroutines inline), so the
//    submission it makes is counted before the next pass looks again;
//  - a waiter cancelled in the list leaves it without taking a slot; one
//    cancelled in a batch is skipped, and its slot goes to the next pass.
#pragma once

#include <cstddef>
#include <exception>

#include "uvexec/detail/future_state.hpp"
#include "uvexec/future.hpp"

namespace uvexec::inline v0::detail {

class room_queue {
public:
    room_queue() = default;
    room_queue(const room_queue&) = delete;
    room_queue& operator=(const room_queue&) = delete;
    ~room_queue() { cancel_all(); }

    bool empty() const noexcept { return head_ == nullptr; }

    /// A future that completes when there is room for one more call: at once
    /// when has_room and nobody waits ahead (or the queue is closed: then
    /// with its error).
    future<void> wait(loop_core& lp, bool has_room);

    /// Wakes waiters, first come first served, while free() > 0: each pass
    /// wakes exactly free() of them (fewer if fewer wait).
    template <class Free>
    void offer(Free&& free) noexcept {
        if (waking_ || head_ == nullptr) return;
        waking_ = true;
        while (head_ != nullptr) {
            std::size_t n = free();
            if (n == 0) break;
            node* batch = head_;
            node* last = head_;
            for (; --n > 0 && last->next != nullptr;) last = last->next;
            head_ = last->next;
            if (head_) head_->prev = nullptr; else tail_ = nullptr;
            last->next = nullptr;
            for (node* w = batch; w; w = w->next) w->in_list = false;
            wake(batch, false, nullptr);
        }
        waking_ = false;
    }

    /// Completes every waiter, now and to come, with why: the executor was
    /// shut down or is broken.
    void close(std::exception_ptr why) noexcept;
    /// Cancels the waiters there are (their loop is closing).
    void cancel_all() noexcept;

private:
    struct node final : future_state<void> {
        using future_state<void>::future_state;
        room_queue* queue = nullptr;
        node* prev = nullptr;
        node* next = nullptr;
        bool in_list = false;
        void on_cancel() noexcept override;
    };

    /// Completes each waiter of batch: with a value, or when fail with why
    /// (cancelled when null). Closing the queue meanwhile fails the rest.
    void wake(node* batch, bool fail, const std::exception_ptr& why) noexcept;
    node* take_all() noexcept;
    void unlink(node& n) noexcept;

    node* head_ = nullptr;
    node* tail_ = nullptr;
    bool waking_ = false;
    bool closed_ = false;
    std::exception_ptr why_;  // why closed
};

}  // namespace uvexec::detail
