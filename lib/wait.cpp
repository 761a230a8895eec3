// uvexec — wait_core: completion callbacks plus one deadline timer, no polling.
#include "uvexec/detail/wait_core.hpp"

#include "uvexec/detail/loop_core.hpp"

namespace uvexec::inline v0::detail {

wait_core::wait_core(std::vector<future_state_base*> states, until condition,
                     std::optional<std::chrono::nanoseconds> timeout)
    : interrupt_point(&wait_core::on_interrupt),
      states_(std::move(states)), condition_(condition), timeout_(timeout) {
    // Every future lands in order_ at most once: one allocation instead of a
    // doubling vector (a million-future gather otherwise copies and frees
    // megabytes while completions arrive).
    order_.reserve(states_.size());
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

bool wait_core::await_ready() {
    bool ready = states_.empty();
    for (std::size_t i = 0; i < states_.size(); ++i) {
        if (states_[i]->done()) {
            order_.push_back(i);
            ready = ready || satisfied_by(i);
        }
    }
    if (ready || (timeout_ && *timeout_ <= std::chrono::nanoseconds::zero())) {
        finished_ = true;
        return true;
    }
    return false;
}

bool wait_core::suspend(std::coroutine_handle<> h, cancel_slot* slot) {
    if (!arm(slot)) {
        // A cancellation was waiting for this suspension: end at once.
        interrupted_ = true;
        finished_ = true;
        if (cancel_pending_)
            for (auto* s : states_) s->cancel();
        return false;
    }
    h_ = h;
    nodes_ = std::make_unique<node[]>(states_.size());
    loop_core* lp = nullptr;
    for (std::size_t i = 0; i < states_.size(); ++i) {
        if (states_[i]->done()) continue;
        nodes_[i].core = this;
        nodes_[i].index = i;
        states_[i]->link(nodes_[i]);
        if (!lp) lp = states_[i]->loop();
    }
    if (timeout_ && lp) {
        timer_.emplace(lp->uv());
        timer_->start(timer::to_ms(*timeout_), &wait_core::on_timeout, this);
    }
    return true;
}

void wait_core::node::on_fire(waiter* w, future_state_base&) noexcept {
    auto* n = static_cast<node*>(w);
    wait_core& c = *n->core;
    c.order_.push_back(n->index);
    if (!c.finished_ && c.satisfied_by(n->index)) c.finish();
}

void wait_core::stop() noexcept {
    finished_ = true;
    disarm();
    for (std::size_t i = 0; i < states_.size(); ++i) nodes_[i].unlink();
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
