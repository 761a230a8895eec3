// uvexec — room_queue: the waiters for room in a bounded queue.
#include "room.hpp"

namespace uvexec::inline v0::detail {

future<void> room_queue::wait(loop_core& lp, bool has_room) {
    auto n = state_ptr<node>::adopt(new node(&lp));
    auto f = make_future(state_ptr<future_state<void>>::share(n.get()));
    if (closed_) {
        n->set_exception(why_);
    } else if (has_room && head_ == nullptr) {
        n->set_value();
    } else {
        n->queue = this;
        n->in_list = true;
        n->prev = tail_;
        if (tail_) tail_->next = n.get(); else head_ = n.get();
        tail_ = n.get();
        n.detach();  // the list's reference
    }
    return f;
}

void room_queue::unlink(node& n) noexcept {
    if (n.prev) n.prev->next = n.next; else head_ = n.next;
    if (n.next) n.next->prev = n.prev; else tail_ = n.prev;
    n.prev = n.next = nullptr;
    n.in_list = false;
}

void room_queue::node::on_cancel() noexcept {
    // In the list: it leaves without a slot. In a batch: wake() skips it.
    if (!in_list) return;
    queue->unlink(*this);
    release();  // the list's reference; the canceller holds its own
}

void room_queue::wake(node* batch, bool fail, const std::exception_ptr& why) noexcept {
    while (node* w = batch) {
        batch = w->next;
        w->prev = w->next = nullptr;
        // Each resumes here, and may cancel the ones after it (done: skipped)
        // or close the queue (the rest get its error).
        if (!w->done()) {
            if (!fail && closed_) w->resolve_exception(why_);
            else if (!fail) w->resolve_value();
            else if (why) w->resolve_exception(why);
            else w->resolve_cancelled();
            w->notify_waiters();
        }
        w->release();
    }
}

room_queue::node* room_queue::take_all() noexcept {
    node* list = head_;
    head_ = tail_ = nullptr;
    for (node* w = list; w; w = w->next) w->in_list = false;
    return list;
}

void room_queue::close(std::exception_ptr why) noexcept {
    if (!closed_) {
        closed_ = true;
        why_ = std::move(why);
    }
    wake(take_all(), true, why_);
}

void room_queue::cancel_all() noexcept { wake(take_all(), true, nullptr); }

}  // namespace uvexec::detail
