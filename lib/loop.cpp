// uvexec — loop and its core: the inbox, spawned coroutines, teardown.
#include "uvexec/loop.hpp"

#include <cstdio>
#include <utility>

#include "uvexec/detail/handle.hpp"
#include "uvexec/detail/worker.hpp"
#include "uvexec/error.hpp"
#include "uvexec/thread_pool_executor.hpp"

namespace uvexec::inline v0 {
namespace detail {

loop_core::loop_core(uv_loop_t* host) : uv_(host), owned_(host == nullptr), thread_(std::this_thread::get_id()) {
    refuse_unserved_worker();
    if (owned_) {
        uv_ = new uv_loop_t;
        if (int r = uv_loop_init(uv_); r != 0) {
            delete uv_;
            throw uv_error(r, "uv_loop_init");
        }
    }
    wakeup_ = new uv_async_t;
    if (int r = uv_async_init(uv_, wakeup_, &loop_core::on_wakeup); r != 0) {
        delete wakeup_;
        if (owned_) {
            uv_loop_close(uv_);
            delete uv_;
        }
        throw uv_error(r, "uv_async_init");
    }
    wakeup_->data = this;
    // The wakeup handle alone must not keep uv_run alive: the host's loop
    // exits when the host is done. hold() references it while results are due.
    uv_unref(reinterpret_cast<uv_handle_t*>(wakeup_));
}

loop_core::~loop_core() { close(); }

void loop_core::post(unique_function fn) {
    std::lock_guard lock(inbox_mutex_);
    if (inbox_closed_) throw loop_closed_error("uvexec: the loop is closed");
    inbox_.push_back(std::move(fn));
    // Sent under the lock so that close() cannot free the handle between the
    // check above and this call.
    uv_async_send(wakeup_);
}

void loop_core::on_wakeup(uv_async_t* h) noexcept { static_cast<loop_core*>(h->data)->drain(); }

void loop_core::drain() noexcept {
    std::vector<unique_function> batch;
    {
        std::lock_guard lock(inbox_mutex_);
        batch.swap(inbox_);
    }
    for (auto& fn : batch) {
        try {
            fn();
        } catch (...) {
            report_callback_exception(std::current_exception());
        }
    }
}

void loop_core::hold() noexcept {
    if (holds_++ == 0 && !closing_) uv_ref(reinterpret_cast<uv_handle_t*>(wakeup_));
}

void loop_core::unhold() noexcept {
    if (--holds_ == 0 && !closing_) uv_unref(reinterpret_cast<uv_handle_t*>(wakeup_));
}

namespace {
// The loop's two intrusive lists (spawned coroutines, clients) differ only in
// their link members.
template <class N, N* N::*Prev, N* N::*Next>
void push_front(N*& head, N& n) noexcept {
    n.*Prev = nullptr;
    n.*Next = head;
    if (head) head->*Prev = &n;
    head = &n;
}

template <class N, N* N::*Prev, N* N::*Next>
void unlink(N*& head, N& n) noexcept {
    if (n.*Prev) (n.*Prev)->*Next = n.*Next; else head = n.*Next;
    if (n.*Next) (n.*Next)->*Prev = n.*Prev;
    n.*Prev = n.*Next = nullptr;
}
}  // namespace

void loop_core::track(spawned_node& n) noexcept {
    push_front<spawned_node, &spawned_node::prev, &spawned_node::next>(spawned_, n);
}

void loop_core::untrack(spawned_node& n) noexcept {
    unlink<spawned_node, &spawned_node::prev, &spawned_node::next>(spawned_, n);
}

void loop_core::attach(loop_client& c) noexcept {
    push_front<loop_client, &loop_client::prev_, &loop_client::next_>(clients_, c);
}

void loop_core::detach(loop_client& c) noexcept {
    unlink<loop_client, &loop_client::prev_, &loop_client::next_>(clients_, c);
}

bool loop_core::clients_busy() const noexcept {
    for (auto* c = clients_; c; c = c->next_)
        if (c->busy()) return true;
    return false;
}

loop_core::run_guard::run_guard(loop_core& l) : l_(l) {
    if (l.closing_) throw loop_closed_error("uvexec: run_until_complete on a closed loop");
    if (l.running_) throw invalid_state_error("uvexec: run_until_complete called while the loop is already running it");
    l.running_ = true;
}

void loop_core::no_more_work() const {
    throw error(
        "uvexec: run_until_complete: the loop ran out of work (no active handle, request or pending "
        "promise) but the awaited future is not done, so nothing can ever complete it");
}

void loop_core::close() noexcept {
    if (closing_) return;
    closing_ = true;
    // A host that closed our wakeup handle has shut its loop down (and maybe
    // closed it) under us: we must not run it again. The documented order is
    // the other way round; say so instead of crashing.
    const bool host_closed_loop = uv_is_closing(reinterpret_cast<uv_handle_t*>(wakeup_)) != 0;
    if (host_closed_loop)
        std::fprintf(stderr,
                     "uvexec: the host closed uvexec's handles before destroying uvexec::loop; destroy uvexec's "
                     "loop and executors before closing the uv_loop_t. Work still running is abandoned.\n");

    // (1) Coroutines still suspended are destroyed; their futures are cancelled
    // by the runner's guard. That may resume other coroutines, which then
    // finish or suspend again and are destroyed in a later round.
    while (spawned_) spawned_->frame.destroy();

    // (2) Executors drop queued work and ask libuv to cancel what has not started.
    // A client's callback may complete futures whose done-callbacks destroy
    // other executors (which detach, and may free, themselves): walk from the
    // head again after each call, to the first client not yet told.
    for (;;) {
        loop_client* c = clients_;
        while (c && c->told_closing_) c = c->next_;
        if (!c) break;
        c->told_closing_ = true;
        c->on_loop_closing();
    }

    // The inbox refuses new posts from here on; what is in it is dropped.
    std::vector<unique_function> dropped;
    {
        std::lock_guard lock(inbox_mutex_);
        inbox_closed_ = true;
        dropped.swap(inbox_);
    }
    dropped.clear();
    close_handle(reinterpret_cast<uv_handle_t*>(wakeup_), [](uv_handle_t* h) noexcept { delete reinterpret_cast<uv_async_t*>(h); });

    // (3) Work already running on pool threads cannot be stopped, and its
    // completion (like a killed worker's exit) needs the loop: run it until
    // every executor is done, then once more for the close callbacks, so that
    // no handle of ours is left open or half-closed on a borrowed loop either.
    if (!host_closed_loop) {
        while (clients_busy()) uv_run(uv_, UV_RUN_ONCE);
        uv_run(uv_, UV_RUN_NOWAIT);
    }
    while (auto* c = clients_) {
        detach(*c);
        c->told_closing_ = false;
        c->on_loop_closed();
    }

    // (4) An owned loop is closed; if the user left a handle of their own open
    // on it, say so instead of freeing memory libuv still uses.
    if (owned_) {
        if (int r = uv_loop_close(uv_); r == 0) {
            delete uv_;
        } else {
            std::fprintf(stderr,
                         "uvexec: ~loop: uv_loop_close failed (%s): a handle created on loop::native() is still "
                         "open; close it before the loop is destroyed. The uv_loop_t is leaked on purpose.\n",
                         uv_err_name(r));
        }
    }
    uv_ = nullptr;
}

}  // namespace detail

loop::loop() : core_(std::make_shared<detail::loop_core>(nullptr)) {}

loop::loop(uv_loop_t* host) : core_(nullptr) {
    if (host == nullptr) throw std::invalid_argument("uvexec::loop: the borrowed uv_loop_t* is null");
    core_ = std::make_shared<detail::loop_core>(host);
}

loop::~loop() {
    core_->close();
    default_executor_.reset();
}

void loop::check_open() const {
    if (core_->closing()) throw loop_closed_error("uvexec: the loop is closed");
}

thread_pool_executor& loop::default_executor() {
    check_open();
    if (!default_executor_) default_executor_ = std::make_unique<thread_pool_executor>();
    return *default_executor_;
}

}  // namespace uvexec
