// uvexec — the fork server, as its pool sees it (internal).
//
// With process_start_method::forkserver the pool posix_spawns the worker
// program once, with fork_server_flag (fork_server_main.cpp), and asks that
// server for each worker: it sends the worker's name with the child's end of
// the worker's channel (SCM_RIGHTS) on the control socket (a non-blocking
// send of a few bytes) and returns at once; the answer, the worker's pid and
// a pidfd for it, is read later from a uv_poll_t on that socket. The loop
// never waits for the server: not for its exec and start-up (the first
// answer), nor for a fork. Meanwhile the worker is starting, without a pid;
// its start-up deadline (startup_timeout, armed when it was asked for)
// covers the wait: past it, the server is killed and the start fails.
//
// The workers are the server's children, not the pool's: the server reaps
// them and reports each wait status on its report socket, and the pool
// watches each through its pidfd (on a uv_poll_t), so that a death is seen
// even when the server is gone. A worker's exit is delivered to its
// child_watch (reaper.hpp) once: with the server's report, or, when the
// server is gone (killed, or its report socket ended), with the status lost.
// The server itself is the pool's child, watched by the loop's reaper.
//
// Invariants (all on the loop thread):
//  - the server answers its requests in order (it is single-threaded): the
//    pending requests are a FIFO, and each answer is its head's;
//  - a pending request ends once: answered (the worker's on_forked, its
//    watch set up first), or failed (its on_fork_failed) when the server
//    answers an error or is reaped (with its exit status, or the start-up
//    timeout that killed it) -- never while the server may still answer;
//    one the pool let go of (unwatch_child) is answered by killing the
//    worker forked for it, and a signal for a pending worker kills the
//    server (its answer may never come), which fails the pending requests;
//  - the control handle holds the loop while a request is pending;
//  - a worker is watched (its pidfd polled) before the pool hears of it:
//    the pidfd comes with the pid, opened by the server before it can reap;
//  - a worker's exit is delivered once, after its pidfd is readable or its
//    report came, and never while the server may still report it unless the
//    report came; after delivery it is no longer watched;
//  - a fork server record is a loop client: it stays busy while its process
//    is unreaped, a request is pending or one of its workers is watched, is
//    killed when its loop closes, and frees itself once the pool has let go
//    of it, its process is reaped and every handle of it is closed.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include <sys/socket.h>

#include "reaper.hpp"
#include "uvexec/detail/loop_core.hpp"

namespace uvexec::inline v0::detail {

/// One message from the fork server: on the control socket the answer to a
/// request (forked, with the pidfd attached; or failed, value an errno), on
/// the report socket a worker's exit (value: its wait status).
struct fork_message {
    enum kind_t : std::int32_t { forked = 1, failed = 2, exited = 3 };
    std::int32_t kind;
    std::int32_t pid;
    std::int32_t value;
};

/// One buffer and at most one descriptor (SCM_RIGHTS) for sendmsg or
/// recvmsg on the fork server's sockets.
struct fd_message {
    fd_message(void* data, std::size_t size) noexcept;
    fd_message(const fd_message&) = delete;
    fd_message& operator=(const fd_message&) = delete;
    /// Sends fd along (before sendmsg).
    void attach(int fd) noexcept;
    /// After recvmsg: the descriptor that came along, or -1.
    int received() noexcept;

    iovec iov;
    msghdr msg{};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))]{};
};

/// The fork server's loop (fork_server_main.cpp): returns only in a forked
/// worker, with the command line that worker_main serves it with.
std::vector<std::string> serve_forks(int argc, char** argv);

class fork_server;

/// Starts a fork server (args: launcher..., exe, fork_server_flag, its
/// arguments); null and s set, or the error.
std::exception_ptr start_fork_server(loop_core& lp, std::vector<std::string>& args, std::vector<std::string>& env,
                                     fork_server*& s) noexcept;
/// Whether s can fork workers (its process runs, answers, and has not
/// missed a start-up deadline).
bool fork_server_usable(const fork_server& s) noexcept;
/// Whether s exited with status 121 (its main() did not call worker_main
/// first): every fork server of the program would.
bool fork_server_unserved(const fork_server& s) noexcept;
/// Asks s for a worker named name whose channel end is child_end (sent at
/// once, then left open for the caller to close), without waiting: w is
/// pending; once the answer came, w is watched through the worker's pidfd,
/// its pid set, and w.on_forked runs; or w.on_fork_failed, with the reason.
/// Null (w pending), or the error of the send (w not pending).
std::exception_ptr fork_worker(fork_server& s, const std::string& name, int child_end, child_watch& w) noexcept;
/// w's start-up deadline passed while its request was pending: its server
/// is killed, and its pending requests fail saying so. Nothing if w is not
/// pending.
void fork_timed_out(child_watch& w, std::chrono::milliseconds timeout) noexcept;
/// The pool lets go of s: its control socket closes, so the server kills
/// the workers it still has and exits. s frees itself once reaped.
void release_fork_server(fork_server* s) noexcept;

// What reaper.cpp's watch functions do for a pending worker.
void cancel_fork_request(child_watch& w) noexcept;
void hold_fork_request(child_watch& w, bool hold) noexcept;
void signal_fork_request(child_watch& w) noexcept;
// What reaper.cpp's watch functions do for a worker watched through a pidfd.
void unwatch_forked(child_watch& w) noexcept;
void hold_forked(child_watch& w, bool hold) noexcept;
/// Sends sig through the worker's pidfd (never to a reused pid).
void signal_forked(child_watch& w, int sig) noexcept;

}  // namespace uvexec::detail
