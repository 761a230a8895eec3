// uvexec — as_completed(): futures in the order they finish.
//
// Python: `for f in asyncio.as_completed(fs): r = await f`. Here:
//
//     auto ac = uvexec::as_completed(futures);
//     while (ac.remaining() > 0) {
//         future<T> f = co_await ac.next();   // done; f.result() is ready
//     }
//
// Each input future gets a completion callback that appends it to a ready
// queue; next() hands them out in completion order. No polling.
#pragma once

#include "uvexec/detail/config.hpp"

#include <coroutine>
#include <cstddef>
#include <memory>
#include <vector>

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

    struct next_awaiter {
        as_completed_range* r;
        bool await_ready() const noexcept { return r->next_ready_ < r->ready_.size(); }
        void await_suspend(std::coroutine_handle<> h) noexcept { r->waiting_ = h; }
        future<T> await_resume() {
            auto& self = *r;
            if (self.next_ready_ >= self.ready_.size())
                throw invalid_state_error("uvexec: as_completed: next() awaited after every future was handed out");
            ++self.handed_out_;
            return self.fs_[self.ready_[self.next_ready_++]];
        }
    };

    /// The next future to complete (already done when this resumes). Awaiting
    /// it with remaining() == 0 throws invalid_state_error.
    next_awaiter next() {
        if (remaining() == 0)
            throw invalid_state_error("uvexec: as_completed: next() called after every future was handed out");
        if (waiting_) throw invalid_state_error("uvexec: as_completed: next() is already being awaited");
        return next_awaiter{this};
    }

private:
    struct node final : detail::waiter {
        node() noexcept : detail::waiter(&node::on_fire) {}
        static void on_fire(detail::waiter* w, detail::future_state_base&) noexcept {
            auto* n = static_cast<node*>(w);
            auto& r = *n->owner_range;
            r.ready_.push_back(n->index);
            if (auto h = std::exchange(r.waiting_, {})) h.resume();
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
};

/// Python: asyncio.as_completed(fs). See as_completed_range.
template <class T>
as_completed_range<T> as_completed(std::vector<future<T>> fs) {
    return as_completed_range<T>(std::move(fs));
}

}  // namespace uvexec
