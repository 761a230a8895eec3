// uvexec — the fork server, pool side: starting it, asking it for workers,
// watching its workers through pidfds.
#include "fork_server.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <uv.h>

#include "../error_ptr.hpp"
#include "spawn.hpp"
#include "uvexec/detail/handle.hpp"
#include "uvexec/detail/worker.hpp"
#include "uvexec/error.hpp"

namespace uvexec::inline v0::detail {

/// A worker watched through its pidfd.
struct forked_watch {
    uv_poll_t poll{};
    int pidfd = -1;
    fork_server* server = nullptr;
    child_watch* w = nullptr;
    forked_watch* next = nullptr;
    bool dead = false;  // its pidfd was readable: it has exited
    bool held = false;
};

/// A worker asked of a fork server whose answer has not come yet. The server
/// answers its requests in order: they wait in a FIFO.
struct fork_request {
    child_watch* w = nullptr;  // null once the pool let go of it: a forked worker is then killed
    fork_server* server = nullptr;
    fork_request* next = nullptr;
    bool held = false;  // what the worker asked of hold_child meanwhile, applied to its pidfd watch
};

class fork_server final : public loop_client {
public:
    explicit fork_server(loop_core& lp) noexcept : lp_(lp) {}

    std::exception_ptr start(std::vector<std::string>& args, std::vector<std::string>& env) noexcept;
    std::exception_ptr fork(const std::string& name, int child_end, child_watch& w) noexcept;
    bool usable() const noexcept { return alive_ && control_ >= 0 && !timed_out_; }
    bool unserved() const noexcept { return unserved_; }
    void release() noexcept {
        close_control();
        hold_child(self_, true);  // its exit is due
        unpin();
    }

    void unwatch(forked_watch& fw) noexcept {
        unlink(fw);
        close_watch(fw);
    }
    void hold(forked_watch& fw, bool on) noexcept {
        if (fw.held == on) return;
        fw.held = on;
        auto* h = reinterpret_cast<uv_handle_t*>(&fw.poll);
        if (on) uv_ref(h); else uv_unref(h);
        held_ += on ? 1 : -1;
        if (report_open_) {
            if (held_ > 0) uv_ref(report_handle()); else uv_unref(report_handle());
        }
    }

    void on_loop_closing() noexcept override {
        if (alive_) ::kill(self_.pid, SIGKILL);  // reaped while the loop drains; its workers are the pool's to kill
    }
    bool busy() const noexcept override { return alive_ || watches_ != nullptr || requests_ != nullptr; }

    /// w's request is dropped (w no longer waits for it): if a worker is
    /// forked for it, it is killed.
    void cancel(child_watch& w) noexcept {
        w.request->w = nullptr;
        w.request = nullptr;
    }
    /// A worker is killed before its server answered: the server is killed
    /// (its answer may never come), which fails its pending requests.
    void kill_for(child_watch&) noexcept { kill_server(); }
    /// The start-up deadline of w passed before its server answered.
    void timed_out(std::chrono::milliseconds timeout) noexcept {
        if (!alive_) return;
        if (!timed_out_) timeout_ = timeout;
        timed_out_ = true;
        kill_server();
    }
    void on_loop_closed() noexcept override { attached_ = false; }

private:
    uv_handle_t* report_handle() noexcept { return reinterpret_cast<uv_handle_t*>(&report_poll_); }
    void pin() noexcept { ++pins_; }
    void unpin(int n = 1) noexcept {
        pins_ -= n;
        if (pins_ != 0) return;
        if (attached_) lp_.detach(*this);
        delete this;
    }
    void kill_server() noexcept {
        if (!alive_) return;
        ::kill(self_.pid, SIGKILL);  // not reaped yet: its pid is its own
        hold_child(self_, true);     // its exit is due (it fails the pending requests)
    }
    uv_handle_t* control_handle() noexcept { return reinterpret_cast<uv_handle_t*>(&control_poll_); }
    /// No more requests, nor answers, on the control socket; requests still
    /// pending fail when the server is reaped (it exits at its socket's EOF).
    void close_control() noexcept {
        if (control_ < 0) return;
        uv_poll_stop(&control_poll_);
        ::close(control_);
        control_ = -1;
        close_handle(control_handle(), [](uv_handle_t* h) noexcept { static_cast<fork_server*>(h->data)->unpin(); });
    }
    /// The control poll holds the loop while an answer is due.
    void hold_control() noexcept {
        if (control_ < 0) return;
        if (requests_ != nullptr) uv_ref(control_handle()); else uv_unref(control_handle());
    }
    void read_answers() noexcept;
    void answered(const fork_message& m, int pidfd) noexcept;
    /// Fails every pending request with why (its server is gone).
    void fail_requests(const std::string& why) noexcept;
    static void on_control(uv_poll_t* h, int, int) noexcept { static_cast<fork_server*>(h->data)->read_answers(); }
    void unlink(forked_watch& fw) noexcept {
        for (forked_watch** p = &watches_; *p; p = &(*p)->next)
            if (*p == &fw) {
                *p = fw.next;
                break;
            }
        fw.next = nullptr;
        if (fw.held) hold(fw, false);
        fw.w->forked = nullptr;
    }
    static void close_watch(forked_watch& fw) noexcept {
        close_handle(reinterpret_cast<uv_handle_t*>(&fw.poll), [](uv_handle_t* h) noexcept {
            auto* f = static_cast<forked_watch*>(h->data);
            ::close(f->pidfd);
            fork_server* s = f->server;
            delete f;
            s->unpin();
        });
    }
    /// Reports w's exit to its owner; fw is gone after.
    void deliver(forked_watch& fw, int status, bool lost) noexcept {
        child_watch& w = *fw.w;
        unlink(fw);
        close_watch(fw);
        w.on_exit(w, status, lost);
    }
    /// Delivers, status lost, the exits of dead workers nobody can report any more.
    void deliver_unreported() noexcept {
        for (bool again = true; again;) {
            again = false;
            for (forked_watch* fw = watches_; fw; fw = fw->next)
                if (fw->dead) {
                    deliver(*fw, 0, true);
                    again = true;
                    break;
                }
        }
    }
    bool reports_due() const noexcept { return alive_ && report_open_; }
    void read_reports() noexcept;
    void close_reports() noexcept {
        if (!report_open_) return;
        report_open_ = false;
        uv_poll_stop(&report_poll_);
        close_handle(report_handle(), [](uv_handle_t* h) noexcept {
            auto* s = static_cast<fork_server*>(h->data);
            ::close(s->report_);
            s->unpin();
        });
    }
    std::string describe_exit() const;
    std::string describe_status(int status, bool lost) const;

    static void on_report(uv_poll_t* h, int, int) noexcept { static_cast<fork_server*>(h->data)->read_reports(); }
    static void on_worker_exit(uv_poll_t* h, int, int) noexcept {
        auto& fw = *static_cast<forked_watch*>(h->data);
        uv_poll_stop(&fw.poll);
        fw.dead = true;
        fork_server& s = *fw.server;
        if (!s.reports_due()) s.deliver(fw, 0, true);  // else its report is on its way
    }
    std::string timeout_message() const {
        return fmt::format("it did not answer within {} ms (startup_timeout); it was killed (does the worker "
                           "program's main() begin with uvexec::worker_main(argc, argv)?)",
                           timeout_.count());
    }
    static void on_server_exit(child_watch& w, int status, bool lost) noexcept {
        auto& s = *static_cast<fork_server*>(w.data);
        s.pin();
        s.read_reports();  // what it answered and reported before it died
        s.alive_ = false;
        if (s.pidfd_ >= 0) ::close(s.pidfd_);
        s.pidfd_ = -1;
        s.close_control();
        s.close_reports();
        s.deliver_unreported();
        if (s.requests_ != nullptr) {
            std::string why;
            try {
                why = s.timed_out_ ? s.timeout_message() : s.describe_status(status, lost);
            } catch (...) {
                why.clear();
            }
            s.fail_requests(why);
        }
        s.unpin(2);  // this callback's, and its process's
    }

    loop_core& lp_;
    child_watch self_;
    int control_ = -1;  // non-blocking: requests out, answers in (polled while one is due)
    int report_ = -1;
    int pidfd_ = -1;    // of the server: its exit status when it ends during a request
    uv_poll_t report_poll_{};
    uv_poll_t control_poll_{};
    fork_request* requests_ = nullptr;  // pending, oldest first
    fork_request* last_request_ = nullptr;
    std::chrono::milliseconds timeout_{0};
    bool timed_out_ = false;  // a start-up deadline passed while it had not answered: it was killed
    forked_watch* watches_ = nullptr;
    int held_ = 0;
    int pins_ = 0;      // the pool's, its process's, the report and control handles', one per watch
    bool alive_ = false;
    bool report_open_ = false;
    bool attached_ = false;
    mutable bool unserved_ = false;  // it exited 121: its main() did not call worker_main first
};

fd_message::fd_message(void* data, std::size_t size) noexcept : iov{data, size} {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
}

void fd_message::attach(int fd) noexcept {
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
}

int fd_message::received() noexcept {
    int fd = -1;
    if ((msg.msg_flags & MSG_CTRUNC) != 0) return -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
            std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
    return fd;
}

namespace {

/// A socketpair's end for the server, moved above descriptor 4 (its targets).
int above_four(int fd) noexcept {
    if (fd > 4) return fd;
    int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 5);
    ::close(fd);
    return moved;
}

}  // namespace

std::exception_ptr fork_server::start(std::vector<std::string>& args, std::vector<std::string>& env) noexcept {
    // Pinned by the pool until release(); failures below release() it.
    pins_ = 1;
    int ctl[2], rep[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0) {
        int err = errno;
        delete this;
        return error_ptr([&] { return uv_error(-err, "socketpair for the fork server"); });
    }
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rep) != 0) {
        int err = errno;
        ::close(ctl[0]);
        ::close(ctl[1]);
        delete this;
        return error_ptr([&] { return uv_error(-err, "socketpair for the fork server"); });
    }
    ctl[1] = above_four(ctl[1]);
    rep[1] = above_four(rep[1]);
    control_ = ctl[0];
    report_ = rep[0];
    auto fail = [&](int err, const char* what) {
        if (ctl[1] >= 0) ::close(ctl[1]);
        if (rep[1] >= 0) ::close(rep[1]);
        ::close(control_);
        ::close(report_);
        delete this;
        return error_ptr([&] { return uv_error(-err, what); });
    };
    if (ctl[1] < 0 || rep[1] < 0) return fail(errno, "fcntl(F_DUPFD_CLOEXEC) for the fork server");
    ::fcntl(report_, F_SETFL, ::fcntl(report_, F_GETFL) | O_NONBLOCK);
    ::fcntl(control_, F_SETFL, ::fcntl(control_, F_GETFL) | O_NONBLOCK);
    self_.on_exit = &on_server_exit;
    self_.data = this;
    // Watched before it exists: no exit goes unseen.
    if (int r = watch_child(lp_, self_); r != 0) return fail(-r, "uv_signal_start(SIGCHLD) to watch the fork server");
    int pid = 0;
    auto e = spawn_fork_server_process(args, env, ctl[1], rep[1], pid);
    ::close(ctl[1]);
    ::close(rep[1]);
    if (e) {
        unwatch_child(self_);
        ::close(control_);
        ::close(report_);
        delete this;
        return e;
    }
    self_.pid = pid;
    alive_ = true;
    pin();  // its process, until reaped
    // Opened before the reaper can reap it (on a later loop turn).
    pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd_ >= 0) ::fcntl(pidfd_, F_SETFD, FD_CLOEXEC);
    uv_poll_init(lp_.uv(), &report_poll_, report_);  // a socket: cannot fail
    report_poll_.data = this;
    uv_poll_start(&report_poll_, UV_READABLE | UV_DISCONNECT, &on_report);
    uv_unref(report_handle());
    report_open_ = true;
    pin();  // the report handle, until closed
    uv_poll_init(lp_.uv(), &control_poll_, control_);  // a socket: cannot fail
    control_poll_.data = this;
    uv_poll_start(&control_poll_, UV_READABLE | UV_DISCONNECT, &on_control);
    uv_unref(control_handle());  // held while an answer is due
    pin();  // the control handle, until closed
    lp_.attach(*this);
    attached_ = true;
    return nullptr;
}

void fork_server::read_reports() noexcept {
    pin();
    read_answers();  // a report may follow the answer that made its worker known
    while (report_open_) {
        fork_message m{};
        ssize_t n = ::recv(report_, &m, sizeof m, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n != static_cast<ssize_t>(sizeof m) || m.kind != fork_message::exited) {
            // It ended (or broke): no report comes from here on.
            close_reports();
            deliver_unreported();
            break;
        }
        for (forked_watch* fw = watches_; fw; fw = fw->next)
            if (fw->w->pid == m.pid) {
                deliver(*fw, m.value, false);
                break;
            }
    }
    unpin();
}

std::string fork_server::describe_exit() const {
    siginfo_t si{};
    // WNOHANG: the loop never waits for it; WNOWAIT: the reaper still reaps it.
    if (::waitid(P_PID, static_cast<id_t>(self_.pid), &si, WEXITED | WNOWAIT | WNOHANG) != 0 || si.si_pid == 0)
        return "it closed its control socket";
    if (si.si_code == CLD_EXITED) {
        std::string how = fmt::format("it exited with status {}", si.si_status);
        if (si.si_status == unserved_worker_status) unserved_ = true;
        if (si.si_status == unserved_worker_status)
            how += ": it was started as a fork server but its main() did not call uvexec::worker_main(argc, argv) first";
        return how;
    }
    const char* abbrev = sigabbrev_np(si.si_status);
    return fmt::format("it was killed by signal {} (SIG{})", si.si_status, abbrev ? abbrev : "?");
}

std::string fork_server::describe_status(int status, bool lost) const {
    if (lost) return "it exited (its status was taken by another waitpid() in this process)";
    if (WIFSIGNALED(status)) {
        const char* abbrev = sigabbrev_np(WTERMSIG(status));
        return fmt::format("it was killed by signal {} (SIG{})", WTERMSIG(status), abbrev ? abbrev : "?");
    }
    std::string how = fmt::format("it exited with status {}", WEXITSTATUS(status));
    if (WEXITSTATUS(status) == unserved_worker_status) {
        unserved_ = true;
        how += ": it was started as a fork server but its main() did not call uvexec::worker_main(argc, argv) first";
    }
    return how;
}

std::exception_ptr fork_server::fork(const std::string& name, int child_end, child_watch& w) noexcept {
    const int server_pid = self_.pid;
    auto broken = [&](auto&& why) {
        close_control();  // this server forks no more workers; it exits at EOF
        return error_ptr([&] {
            return error(fmt::format("uvexec: the fork server ({}) cannot start a worker: {}", server_pid, why()));
        });
    };
    if (!usable()) return broken([] { return std::string("it is gone"); });
    fork_request* req = nullptr;
    try {
        req = new fork_request;
    } catch (...) {
        return std::current_exception();
    }
    fd_message msg(const_cast<char*>(name.data()), name.size());
    msg.attach(child_end);
    ssize_t sent;
    do sent = ::sendmsg(control_, &msg.msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        const int err = errno;
        delete req;
        if (err == EAGAIN) {
            kill_server();
            return broken([] { return std::string("it stopped reading its requests; it was killed"); });
        }
        return broken([&] { return err == EPIPE ? describe_exit() : std::string(std::strerror(err)); });
    }
    // Its answer comes on the control socket (the first also waits for its
    // exec and start-up); the worker's start-up deadline covers the wait.
    req->w = &w;
    req->server = this;
    if (last_request_) last_request_->next = req; else requests_ = req;
    last_request_ = req;
    w.request = req;
    w.via_fork_server = true;
    hold_control();
    return nullptr;
}

void fork_server::read_answers() noexcept {
    pin();
    while (control_ >= 0) {
        fork_message m{};
        fd_message answer(&m, sizeof m);
        ssize_t n = ::recvmsg(control_, &answer.msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        const int pidfd = n > 0 ? answer.received() : -1;
        if (n != static_cast<ssize_t>(sizeof m) || requests_ == nullptr) {
            if (pidfd >= 0) ::close(pidfd);
            // n <= 0: it ended (ECONNRESET when it exited with a request
            // unread); its pending requests fail once it is reaped, with its
            // exit status. Anything else breaks the protocol: it is killed.
            if (n > 0) kill_server();
            else if (requests_ != nullptr) hold_child(self_, true);  // its exit, which fails them, is due
            close_control();
            break;
        }
        answered(m, pidfd);
    }
    unpin();
}

void fork_server::answered(const fork_message& m, int pidfd) noexcept {
    fork_request* req = requests_;
    requests_ = req->next;
    if (requests_ == nullptr) last_request_ = nullptr;
    hold_control();
    child_watch* w = req->w;
    const bool held = req->held;
    delete req;
    if (w) w->request = nullptr;
    const int server_pid = self_.pid;
    if (m.kind != fork_message::forked || pidfd < 0) {
        if (pidfd >= 0) ::close(pidfd);
        if (w == nullptr) return;
        const int err = m.kind == fork_message::failed && m.value > 0 ? m.value : EPROTO;
        w->on_fork_failed(*w, error_ptr([&] {
            return uv_error(-err, fmt::format("fork in the fork server ({})", server_pid));
        }), false);
        return;
    }
    forked_watch* fw = nullptr;
    if (w != nullptr) {
        try {
            fw = new forked_watch;
        } catch (...) {
            ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);  // reaped by its server; the pool never knew it
            ::close(pidfd);
            w->on_fork_failed(*w, std::current_exception(), false);
            return;
        }
    }
    if (fw == nullptr) {  // the pool let go of it meanwhile
        ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
        ::close(pidfd);
        return;
    }
    fw->pidfd = pidfd;
    fw->server = this;
    fw->w = w;
    uv_poll_init(lp_.uv(), &fw->poll, pidfd);  // a pidfd polls like a socket
    fw->poll.data = fw;
    uv_poll_start(&fw->poll, UV_READABLE, &on_worker_exit);
    uv_unref(reinterpret_cast<uv_handle_t*>(&fw->poll));
    pin();
    fw->next = watches_;
    watches_ = fw;
    w->forked = fw;
    w->pid = m.pid;
    if (held) hold(*fw, true);
    w->on_forked(*w);
}

void fork_server::fail_requests(const std::string& why) noexcept {
    const int server_pid = self_.pid;
    while (fork_request* req = requests_) {
        requests_ = req->next;
        if (requests_ == nullptr) last_request_ = nullptr;
        child_watch* w = req->w;
        delete req;
        if (w == nullptr) continue;
        w->request = nullptr;
        w->on_fork_failed(*w, error_ptr([&] {
            return error(fmt::format("uvexec: the fork server ({}) cannot start a worker: {}", server_pid,
                                     why.empty() ? std::string("it is gone") : why));
        }), unserved_);
    }
}

std::exception_ptr start_fork_server(loop_core& lp, std::vector<std::string>& args, std::vector<std::string>& env,
                                     fork_server*& s) noexcept {
    fork_server* fresh = nullptr;
    try {
        fresh = new fork_server(lp);
    } catch (...) {
        return std::current_exception();
    }
    if (auto e = fresh->start(args, env)) return e;  // fresh is freed
    s = fresh;
    return nullptr;
}

bool fork_server_usable(const fork_server& s) noexcept { return s.usable(); }
bool fork_server_unserved(const fork_server& s) noexcept { return s.unserved(); }

std::exception_ptr fork_worker(fork_server& s, const std::string& name, int child_end, child_watch& w) noexcept {
    return s.fork(name, child_end, w);
}

void fork_timed_out(child_watch& w, std::chrono::milliseconds timeout) noexcept {
    if (w.request) w.request->server->timed_out(timeout);
}

void release_fork_server(fork_server* s) noexcept {
    if (s) s->release();
}

void cancel_fork_request(child_watch& w) noexcept { w.request->server->cancel(w); }
void hold_fork_request(child_watch& w, bool hold) noexcept { w.request->held = hold; }
void signal_fork_request(child_watch& w) noexcept { w.request->server->kill_for(w); }
void unwatch_forked(child_watch& w) noexcept { w.forked->server->unwatch(*w.forked); }
void hold_forked(child_watch& w, bool hold) noexcept { w.forked->server->hold(*w.forked, hold); }
void signal_forked(child_watch& w, int sig) noexcept {
    ::syscall(SYS_pidfd_send_signal, w.forked->pidfd, sig, nullptr, 0);
}

}  // namespace uvexec::detail
