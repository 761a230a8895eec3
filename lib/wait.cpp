// uvexec — wait_core: completion callbacks plus one deadline timer, no polling.
#include "uvexec/detail/wait_core.hpp"

#include <new>

#include "uvexec/detail/loop_core.hpp"
#include "uvexec/detail/pages.hpp"

namespace uvexec::inline v0::detail {

wait_core::wait_core(std::vector<future_state_base*> states, until condition,
                     std::optional<std::chrono::nanoseconds> timeout)
    : interrupt_point(&wait_core::on_interrupt),
      states_(std::move(states)), condition_(condition), timeout_(timeout) {
    // Every future lands in order_ at most once: one allocation instead of a
    // doubling vector (a million-future gather otherwise copies and frees
    // megabytes while completions arrive).
    order_.reserve(states_.size());
    advise_huge_pages(order_.data(), order_.capacity() * sizeof(std::size_t));
}

// A node array this large (a wait on some 18,000 futures or more) is mapped
// on its own and asked for transparent huge pages before its nodes are
// written: a page fault per 4 KiB costs a million-future gather a sixth of its
// time on a VM, where a fault per 2 MiB costs next to nothing (see
// docs/performance.md, "Page faults"). Without huge pages it is populated in
// one system call, which still beats a fault per page.
constexpr std::size_t populate_threshold = std::size_t{1} << 20;

wait_core::node_array::node_array(std::size_t count) : n(count) {
    const std::size_t bytes = count * sizeof(node);
    if (bytes >= populate_threshold) {
        void* m = map_fresh(bytes);
        if (m != nullptr) {
            mapped = bytes;
            p = static_cast<node*>(m);
            for (std::size_t i = 0; i < count; ++i) ::new (static_cast<void*>(p + i)) node();
            return;
        }
    }
    p = new node[count];
}

wait_core::node_array::~node_array() {
    if (mapped == 0) {
        delete[] p;
        return;
    }
    for (std::size_t i = 0; i < n; ++i) p[i].~node();
    unmap_fresh(p, mapped);
}

wait_core::~wait_core() = default;  // nodes unlink themselves; the timer closes itself

bool wait_core::satisfied_by(std::size_t i) const noexcept {
    if (order_.size() == states_.size()) return true;
    switch (condition_) {
        case until::first_completed: return true;
        case until::first_exception: return states_[i]->state() == status::exception;
        case until::first_failure: return states_[i]->state() != status::value;
        case until::all_completed: return false;
    }
    return false;
}

void wait_core::record(std::size_t i) noexcept {
    order_.push_back(i);
    if (first_failure_ == npos && states_[i]->state() != status::value) first_failure_ = i;
}

// One pass over the states: those already done are recorded (by index), the
// others are watched at once, so a wait on a million futures reads each
// state once here instead of once to test and once more to link.
bool wait_core::await_ready() {
    bool ready = states_.empty() || (timeout_ && *timeout_ <= std::chrono::nanoseconds::zero());
    for (std::size_t i = 0; i < states_.size(); ++i) {
        future_state_base* s = states_[i];
        if (s->done()) {
            record(i);
            ready = ready || satisfied_by(i);
        } else if (!ready) {  // once ready, nothing more is watched (but every done one is recorded)
            if (!nodes_) nodes_.emplace(states_.size());
            node& w = (*nodes_)[i];
            w.core = this;
            w.index = i;
            s->link(w);
            if (!loop_) loop_ = s->loop();
        }
    }
    if (ready) {
        unwatch();
        finished_ = true;
        return true;
    }
    return false;
}

bool wait_core::suspend(std::coroutine_handle<> h, cancel_slot* slot) {
    if (!arm(slot)) {
        // A cancellation was waiting for this suspension: end at once. The
        // nodes go first, so cancelling the futures does not re-enter this wait.
        unwatch();
        interrupted_ = true;
        finished_ = true;
        if (cancel_pending_)
            for (auto* s : states_) s->cancel();
        return false;
    }
    h_ = h;
    if (timeout_ && loop_) {
        timer_.emplace(loop_->uv());
        timer_->start(timer::to_ms(*timeout_), &wait_core::on_timeout, this);
    }
    return true;
}

void wait_core::unwatch() noexcept {
    if (nodes_)
        for (std::size_t i = 0; i < states_.size(); ++i) (*nodes_)[i].unlink();
}

void wait_core::node::on_fire(waiter* w, future_state_base&) noexcept {
    auto* n = static_cast<node*>(w);
    wait_core& c = *n->core;
    c.record(n->index);
    if (!c.finished_ && c.satisfied_by(n->index)) c.finish();
}

void wait_core::stop() noexcept {
    finished_ = true;
    disarm();
    unwatch();
    if (timer_) timer_->stop();
}

void wait_core::finish() noexcept {
    stop();
    h_.resume();
}

void wait_core::on_interrupt(interrupt_point* self) noexcept {
    auto& c = *static_cast<wait_core*>(self);
    c.interrupted_ = true;
    c.stop();
    // The nodes are unlinked first, so cancelling the futures does not
    // re-enter this wait.
    if (c.cancel_pending_)
        for (auto* s : c.states_) s->cancel();
    c.h_.resume();
}

void wait_core::on_timeout(void* self) noexcept {
    auto& c = *static_cast<wait_core*>(self);
    if (!c.finished_) c.finish();
}

}  // namespace uvexec::detail
