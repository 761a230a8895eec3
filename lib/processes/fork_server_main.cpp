// uvexec — the fork server's side of process_start_method::forkserver.
//
// worker_main() hands over to serve_forks() when argv[1] is fork_server_flag.
// The fork server is single-threaded and never runs the rest of main: it
// blocks in poll() on its control socket (descriptor 3, SOCK_SEQPACKET) and
// on a signalfd for SIGCHLD, and for each request (a worker's name, with the
// worker's channel end attached by SCM_RIGHTS) it forks. The child leaves
// serve_forks() with the command line of an ordinary worker (channel on
// descriptor 3, the server's limits) and worker_main() continues with it
// exactly as in a spawned worker. The server answers each request with the
// child's pid and a pidfd for it (opened before the server can reap the child,
// so it names that child and no other), and reports every child's wait
// status on its report socket (descriptor 4).
//
// Invariants:
//  - the server is the parent of every worker it forks and reaps each one
//    (waitpid(-1): it has no other children), reporting (pid, status) once;
//  - at EOF on the control socket (the pool let go of it, or the pool's
//    process died) it kills the workers it has not reaped yet (SIGKILL, as
//    PR_SET_PDEATHSIG does for spawned workers) and exits;
//  - a child keeps nothing of the server: control and report sockets, the
//    signalfd and the blocked SIGCHLD are gone before it serves.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fork_server.hpp"
#include "uvexec/detail/worker.hpp"

namespace uvexec::inline v0::detail {

namespace {

constexpr int control_fd = 3, report_fd = 4;

[[noreturn]] void server_exit(int status, const char* why) {
    if (why) std::fprintf(stderr, "uvexec fork server %d: %s\n", static_cast<int>(::getpid()), why);
    std::fflush(nullptr);
    ::_exit(status);
}

void kill_all_and_exit(const std::vector<pid_t>& children) {
    for (pid_t p : children) ::kill(p, SIGKILL);
    server_exit(0, nullptr);
}

void send_message(int fd, const fork_message& m, int pass_fd, const std::vector<pid_t>& children) {
    fork_message copy = m;
    fd_message out(&copy, sizeof copy);
    if (pass_fd >= 0) out.attach(pass_fd);
    else out.msg.msg_controllen = 0;
    for (;;) {
        if (::sendmsg(fd, &out.msg, MSG_NOSIGNAL) >= 0) return;
        if (errno == EINTR) continue;
        kill_all_and_exit(children);  // the pool is gone
    }
}

/// Reaps every exited child and reports it.
void reap(std::vector<pid_t>& children) {
    for (;;) {
        int status = 0;
        pid_t p = ::waitpid(-1, &status, WNOHANG);
        if (p < 0 && errno == EINTR) continue;
        if (p <= 0) return;
        std::erase(children, p);
        send_message(report_fd, {fork_message::exited, p, status}, -1, children);
    }
}

}  // namespace

std::vector<std::string> serve_forks(int argc, char** argv) {
    if (argc < 4) server_exit(2, "malformed fork server command line");
    const long parent = std::strtol(argv[3], nullptr, 10);
    std::signal(SIGPIPE, SIG_IGN);
    for (int fd : {control_fd, report_fd}) {
        int flags = ::fcntl(fd, F_GETFL);
        if (flags < 0) server_exit(2, "its sockets to the pool are not open");
        ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    // The parent may have died already: then nobody is on the control socket
    // either (EOF below); this only saves the first poll.
    if (parent > 0 && ::getppid() != parent) server_exit(0, nullptr);

    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, &old);
    const int sfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) server_exit(2, "signalfd failed");

    std::vector<pid_t> children;
    for (;;) {
        pollfd fds[2] = {{control_fd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            server_exit(3, "poll failed");
        }
        if (fds[1].revents != 0) {
            signalfd_siginfo info[8];
            while (::read(sfd, info, sizeof info) > 0) {
            }
            reap(children);
        }
        if (fds[0].revents == 0) continue;

        char name[1024];
        fd_message in(name, sizeof name - 1);
        ssize_t n = ::recvmsg(control_fd, &in.msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) kill_all_and_exit(children);  // the pool let go of us, or died
        const int channel = in.received();
        if (channel < 0 || (in.msg.msg_flags & MSG_TRUNC) != 0) {
            if (channel >= 0) ::close(channel);
            send_message(control_fd, {fork_message::failed, 0, EINVAL}, -1, children);
            continue;
        }
        name[n] = '\0';
        pid_t child = ::fork();
        if (child == 0) {
            // The worker: nothing of the server's stays open or blocked.
            ::close(sfd);
            ::close(report_fd);
            ::sigprocmask(SIG_SETMASK, &old, nullptr);
            if (::dup2(channel, channel_fd) < 0) server_exit(2, "dup2 of a worker's channel failed");  // closes control_fd
            ::close(channel);
            std::vector<std::string> args{argv[0], worker_flag, argv[2], name, "-1", std::to_string(channel_fd)};
            if (argc > 4) args.emplace_back(argv[4]);
            return args;
        }
        const int err = errno;
        ::close(channel);
        if (child < 0) {
            send_message(control_fd, {fork_message::failed, 0, err}, -1, children);
            continue;
        }
        // Opened before this server can reap the child: it names that child.
        const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));
        if (pidfd < 0) {
            const int perr = errno;
            ::kill(child, SIGKILL);  // reaped and reported as any other; the pool knows no such pid
            children.push_back(child);
            send_message(control_fd, {fork_message::failed, 0, perr}, -1, children);
            continue;
        }
        children.push_back(child);
        send_message(control_fd, {fork_message::forked, child, 0}, pidfd, children);
        ::close(pidfd);
    }
}

}  // namespace uvexec::detail
