// uvexec — the fork server, pool side: starting it, asking it for workers,
// watching its workers through pidfds.
#include "fork_server.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>

#include <fcntl.h>
#include <poll.h>
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

class fork_server final : public loop_client {
public:
    explicit fork_server(loop_core& lp) noexcept : lp_(lp) {}

    std::exception_ptr start(std::vector<std::string>& args, std::vector<std::string>& env) noexcept;
    std::exception_ptr fork(const std::string& name, int child_end, std::chrono::milliseconds timeout, child_watch& w,
                            int& pid) noexcept;
    bool usable() const noexcept { return alive_ && control_ >= 0; }
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
    bool busy() const noexcept override { return alive_ || watches_ != nullptr; }
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
    void close_control() noexcept {
        if (control_ >= 0) ::close(control_);
        control_ = -1;
    }
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

    static void on_report(uv_poll_t* h, int, int) noexcept { static_cast<fork_server*>(h->data)->read_reports(); }
    static void on_worker_exit(uv_poll_t* h, int, int) noexcept {
        auto& fw = *static_cast<forked_watch*>(h->data);
        uv_poll_stop(&fw.poll);
        fw.dead = true;
        fork_server& s = *fw.server;
        if (!s.reports_due()) s.deliver(fw, 0, true);  // else its report is on its way
    }
    static void on_server_exit(child_watch& w, int, bool) noexcept {
        auto& s = *static_cast<fork_server*>(w.data);
        s.pin();
        s.read_reports();  // what it reported before it died
        s.alive_ = false;
        if (s.pidfd_ >= 0) ::close(s.pidfd_);
        s.pidfd_ = -1;
        s.close_control();
        s.close_reports();
        s.deliver_unreported();
        s.unpin(2);  // this callback's, and its process's
    }

    loop_core& lp_;
    child_watch self_;
    int control_ = -1;  // blocking; used only while asking for a worker
    int report_ = -1;
    int pidfd_ = -1;    // of the server: its exit status when it ends during a request
    uv_poll_t report_poll_{};
    forked_watch* watches_ = nullptr;
    int held_ = 0;
    int pins_ = 0;      // the pool's, its process's, the report handle's, one per watch
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
    lp_.attach(*this);
    attached_ = true;
    return nullptr;
}

void fork_server::read_reports() noexcept {
    pin();
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
    if (pidfd_ >= 0) {
        pollfd p{pidfd_, POLLIN, 0};
        ::poll(&p, 1, 1000);  // it closed its socket: its exit follows at once
    }
    // WNOWAIT: the reaper still reaps it.
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

std::exception_ptr fork_server::fork(const std::string& name, int child_end, std::chrono::milliseconds timeout,
                                     child_watch& w, int& pid) noexcept {
    const int server_pid = self_.pid;
    auto broken = [&](auto&& why) {
        close_control();  // this server forks no more workers; it exits at EOF
        return error_ptr([&] {
            return error(fmt::format("uvexec: the fork server ({}) cannot start a worker: {}", server_pid, why()));
        });
    };
    if (!usable()) return broken([] { return std::string("it is gone"); });
    fd_message req(const_cast<char*>(name.data()), name.size());
    req.attach(child_end);
    ssize_t sent;
    do sent = ::sendmsg(control_, &req.msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        const int err = errno;
        if (err == EAGAIN) {
            ::kill(server_pid, SIGKILL);
            return broken([] { return std::string("it stopped reading its requests; it was killed"); });
        }
        return broken([&] { return err == EPIPE ? describe_exit() : std::string(std::strerror(err)); });
    }
    // Its answer: the first request also waits for its exec and start-up.
    pollfd p{control_, POLLIN, 0};
    const auto deadline = uv_hrtime() + static_cast<std::uint64_t>(timeout.count()) * 1000000u;
    for (;;) {
        const std::uint64_t now = uv_hrtime();
        const int left = now >= deadline ? 0 : static_cast<int>((deadline - now) / 1000000u) + 1;
        int r = ::poll(&p, 1, left);
        if (r > 0) break;
        if (r < 0 && errno == EINTR) continue;
        ::kill(server_pid, SIGKILL);
        return broken([&] {
            return fmt::format("it did not answer within {} ms (startup_timeout); it was killed (does the worker "
                               "program's main() begin with uvexec::worker_main(argc, argv)?)",
                               timeout.count());
        });
    }
    fork_message m{};
    fd_message answer(&m, sizeof m);
    ssize_t n;
    do n = ::recvmsg(control_, &answer.msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    const int pidfd = answer.received();
    if (n != static_cast<ssize_t>(sizeof m)) {
        if (pidfd >= 0) ::close(pidfd);
        // n < 0: ECONNRESET when it exited with a request unread.
        return broken([&] { return n <= 0 ? describe_exit() : std::string("it sent a malformed answer"); });
    }
    if (m.kind != fork_message::forked || pidfd < 0) {
        if (pidfd >= 0) ::close(pidfd);
        const int err = m.kind == fork_message::failed && m.value > 0 ? m.value : EPROTO;
        return error_ptr([&] { return uv_error(-err, fmt::format("fork in the fork server ({})", server_pid)); });
    }
    forked_watch* fw = nullptr;
    try {
        fw = new forked_watch;
    } catch (...) {
        ::close(pidfd);
        ::kill(m.pid, SIGKILL);  // reaped by its server; the pool never knew it
        return std::current_exception();
    }
    fw->pidfd = pidfd;
    fw->server = this;
    fw->w = &w;
    uv_poll_init(lp_.uv(), &fw->poll, pidfd);  // a pidfd polls like a socket
    fw->poll.data = fw;
    uv_poll_start(&fw->poll, UV_READABLE, &on_worker_exit);
    uv_unref(reinterpret_cast<uv_handle_t*>(&fw->poll));
    pin();
    fw->next = watches_;
    watches_ = fw;
    w.forked = fw;
    w.via_fork_server = true;
    w.pid = m.pid;
    pid = m.pid;
    return nullptr;
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

std::exception_ptr fork_worker(fork_server& s, const std::string& name, int child_end, std::chrono::milliseconds timeout,
                               child_watch& w, int& pid) noexcept {
    return s.fork(name, child_end, timeout, w, pid);
}

void release_fork_server(fork_server* s) noexcept {
    if (s) s->release();
}

void unwatch_forked(child_watch& w) noexcept { w.forked->server->unwatch(*w.forked); }
void hold_forked(child_watch& w, bool hold) noexcept { w.forked->server->hold(*w.forked, hold); }
void signal_forked(child_watch& w, int sig) noexcept {
    ::syscall(SYS_pidfd_send_signal, w.forked->pidfd, sig, nullptr, 0);
}

}  // namespace uvexec::detail
