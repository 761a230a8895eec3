// uvexec — reaping worker processes: one SIGCHLD watcher per loop.
#include "reaper.hpp"

#include <cerrno>
#include <csignal>

#include <sys/wait.h>

#include "fork_server.hpp"
#include "uvexec/detail/handle.hpp"

namespace uvexec::inline v0::detail {

class reaper {
public:
    explicit reaper(loop_core& lp) noexcept : lp_(lp) { signal_.data = this; }

    /// 0, or a libuv error; then the reaper has freed itself (or will, once
    /// its handle is closed).
    int start() noexcept {
        if (int r = uv_signal_init(lp_.uv(), &signal_); r != 0) {
            delete this;  // no handle was opened
            return r;
        }
        if (int r = uv_signal_start(&signal_, &reaper::on_sigchld, SIGCHLD); r != 0) {
            close();
            return r;
        }
        uv_unref(handle());
        return 0;
    }

    void add(child_watch& w) noexcept {
        w.owner = this;
        w.prev = nullptr;
        w.next = head_;
        if (head_) head_->prev = &w;
        head_ = &w;
        ++count_;
    }

    /// Removes w; the last one closes the handle, which frees the reaper.
    void remove(child_watch& w) noexcept {
        hold(w, false);
        if (w.prev) w.prev->next = w.next; else head_ = w.next;
        if (w.next) w.next->prev = w.prev;
        w.prev = w.next = nullptr;
        w.owner = nullptr;
        if (--count_ == 0) {
            lp_.child_reaper() = nullptr;
            close();
        }
    }

    void hold(child_watch& w, bool on) noexcept {
        if (w.held == on) return;
        w.held = on;
        if (on) {
            if (held_++ == 0) uv_ref(handle());
        } else {
            if (--held_ == 0) uv_unref(handle());
        }
    }

private:
    uv_handle_t* handle() noexcept { return reinterpret_cast<uv_handle_t*>(&signal_); }

    void close() noexcept {
        close_handle(handle(), [](uv_handle_t* h) noexcept { delete static_cast<reaper*>(h->data); });
    }

    // Any child of the process changed state: reap those of ours that exited.
    // Each is removed before its owner hears of it, and the owner may unwatch
    // or free others meanwhile: the walk restarts after every report.
    static void on_sigchld(uv_signal_t* h, int) noexcept {
        auto* self = static_cast<reaper*>(h->data);
        for (bool again = true; again;) {
            again = false;
            for (child_watch* w = self->head_; w != nullptr; w = w->next) {
                if (w->pid <= 0) continue;  // being spawned
                int status = 0;
                pid_t r;
                do r = ::waitpid(w->pid, &status, WNOHANG);
                while (r < 0 && errno == EINTR);
                if (r == 0) continue;  // still running, or only stopped
                // r < 0 (ECHILD): someone else reaped it, which only a
                // waitpid(-1) in the host can do. Its status is lost, not its death.
                auto* on_exit = w->on_exit;
                const bool last = self->count_ == 1;
                self->remove(*w);  // may free self (the handle's close is deferred by libuv)
                on_exit(*w, status, r < 0);
                if (last) return;
                again = true;
                break;
            }
        }
    }

    loop_core& lp_;
    uv_signal_t signal_{};
    child_watch* head_ = nullptr;
    std::size_t count_ = 0;
    std::size_t held_ = 0;
};

int watch_child(loop_core& lp, child_watch& w) noexcept {
    reaper*& r = lp.child_reaper();
    if (r == nullptr) {
        // Plain new, not new(nothrow): a program that replaces operator new
        // and delete only (as test_process_correctness does) pairs them.
        reaper* fresh = nullptr;
        try {
            fresh = new reaper(lp);
        } catch (...) {
            return UV_ENOMEM;
        }
        if (int e = fresh->start(); e != 0) return e;  // fresh is freed
        r = fresh;
    }
    r->add(w);
    return 0;
}

void unwatch_child(child_watch& w) noexcept {
    if (w.request) cancel_fork_request(w);
    else if (w.forked) unwatch_forked(w);
    else if (w.owner) w.owner->remove(w);
}

void hold_child(child_watch& w, bool hold) noexcept {
    if (w.request) hold_fork_request(w, hold);
    else if (w.forked) hold_forked(w, hold);
    else if (w.owner) w.owner->hold(w, hold);
}

void signal_child(child_watch& w, int sig) noexcept {
    if (w.request) signal_fork_request(w);
    else if (w.forked) signal_forked(w, sig);
    else if (w.pid > 0) ::kill(w.pid, sig);
}

}  // namespace uvexec::detail
