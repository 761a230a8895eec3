// uvexec — as_completed(): futures in the order they finish.
//
// Python: `for f in asyncio.as_completed(fs): r = await f` (3.13: `async for
// f in as_completed(fs)`). Here, as a loop:
//
//     auto ac = uvexec::as_completed(futures);
//     while (auto f = co_await ac) {          // std::optional<future<T>>
//         use(f->result());                   // done; the result is ready
//     }
//
// or counted, with next():
//
//     while (ac.remaining() > 0) {
//         future<T> f = co_await ac.next();   // done; f.result() is ready
//     }
//
// Each input future gets a completion callback that appends it to a ready
// queue; both forms hand them out in completion order. No polling.
#pragma once

#include "uvexec/detail/config.hpp"

#include <coroutine>
#include <cstddef>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "uvexec/detail/cancel_slot.hpp"
#include "uvexec/detail/future_state.hpp"
#include "uvexec/error.hpp"
#include "uvexec/future.hpp"

namespace uvexec::inline v0 {

template <class T>
class as_completed_range {
public:
    explicit as_completed_range(std::vector<future<T>> fs)
        : fs_(std::move(fs)), nodes_(std::make_unique<node[]>(fs_.size())) {
        ready_.reserve(fs_.size());
        for (std::size_t i = 0; i < fs_.size(); ++i) {
            if (!fs_[i].valid()) throw invalid_state_error("uvexec: an empty future was passed to as_completed");
            if (fs_[i].done()) {
                ready_.push_back(i);
            } else {
                nodes_[i].owner_range = this;
                nodes_[i].index = i;
                fs_[i].state()->link(nodes_[i]);
            }
        }
    }
    as_completed_range(const as_completed_range&) = delete;
    as_completed_range& operator=(const as_completed_range&) = delete;

    /// Futures not yet handed out by next().
    std::size_t remaining() const noexcept { return fs_.size() - handed_out_; }
    std::size_t size() const noexcept { return fs_.size(); }

    /// Waits for the next future to complete. Inside a task group a
    /// cancellation ends the wait with cancelled_error; the futures are left
    /// alone, as Python's as_completed leaves them.
    template <bool Optional>
    struct basic_awaiter : detail::interrupt_point {
        explicit basic_awaiter(as_completed_range* range) noexcept
            : detail::interrupt_point(&basic_awaiter::on_interrupt), r(range) {}
        bool await_ready() const noexcept { return r->next_ready_ < r->ready_.size() || (Optional && r->remaining() == 0); }
        template <class P>
        bool await_suspend(std::coroutine_handle<P> h) noexcept {
            if (!arm(detail::slot_of(h))) {
                interrupted = true;
                return false;
            }
            r->waiting_ = h;
            r->waiting_point_ = this;
            return true;
        }
        std::conditional_t<Optional, std::optional<future<T>>, future<T>> await_resume() {
            if (interrupted) throw cancelled_error();
            auto& self = *r;
            if constexpr (Optional) {
                if (self.remaining() == 0) return std::nullopt;
            }
            if (self.next_ready_ >= self.ready_.size())
                throw invalid_state_error("uvexec: as_completed: next() awaited after every future was handed out");
            ++self.handed_out_;
            return self.fs_[self.ready_[self.next_ready_++]];
        }
        static void on_interrupt(detail::interrupt_point* p) noexcept {
            auto* a = static_cast<basic_awaiter*>(p);
            a->interrupted = true;
            a->r->waiting_point_ = nullptr;
            std::exchange(a->r->waiting_, {}).resume();
        }
        as_completed_range* r;
        bool interrupted = false;
    };
    using next_awaiter = basic_awaiter<false>;

    /// The next future to complete (already done when this resumes). Awaiting
    /// it with remaining() == 0 throws invalid_state_error.
    next_awaiter next() {
        if (remaining() == 0)
            throw invalid_state_error("uvexec: as_completed: next() called after every future was handed out");
        if (waiting_) throw invalid_state_error("uvexec: as_completed: next() is already being awaited");
        return next_awaiter{this};
    }

    /// Python: one step of `async for f in as_completed(fs)`. `co_await ac`
    /// gives the next future to complete, or an empty optional once every
    /// future was handed out, so `while (auto f = co_await ac)` visits each
    /// future once, in completion order.
    basic_awaiter<true> operator co_await() & {
        if (waiting_) throw invalid_state_error("uvexec: as_completed: next() is already being awaited");
        return basic_awaiter<true>{this};
    }

private:
    struct node final : detail::waiter {
        node() noexcept : detail::waiter(&node::on_fire) {}
        static void on_fire(detail::waiter* w, detail::future_state_base&) noexcept {
            auto* n = static_cast<node*>(w);
            auto& r = *n->owner_range;
            r.ready_.push_back(n->index);
            if (auto h = std::exchange(r.waiting_, {})) {
                std::exchange(r.waiting_point_, nullptr)->disarm();
                h.resume();
            }
        }
        as_completed_range* owner_range = nullptr;
        std::size_t index = 0;
    };

    std::vector<future<T>> fs_;
    std::unique_ptr<node[]> nodes_;
    std::vector<std::size_t> ready_;
    std::size_t next_ready_ = 0;
    std::size_t handed_out_ = 0;
    std::coroutine_handle<> waiting_;
    detail::interrupt_point* waiting_point_ = nullptr;
};

/// Python: asyncio.as_completed(fs). See as_completed_range.
template <class T>
as_completed_range<T> as_completed(std::vector<future<T>> fs) {
    return as_completed_range<T>(std::move(fs));
}

}  // namespace uvexec
