// uvexec — reaping worker processes: one SIGCHLD watcher per loop (internal).
//
// Every process pool on a loop shares that loop's reaper: one uv_signal_t on
// SIGCHLD and the list of the children it watches. On each SIGCHLD it calls
// waitpid(pid, WNOHANG) for each watched pid, never waitpid(-1): the host's
// own children are never reaped by uvexec.
//
// Invariants (all on the loop thread):
//  - a child is watched from before it exists: watch() starts the loop's
//    SIGCHLD handle, then the caller spawns and sets the pid, so no exit goes
//    unseen (libuv delivers the signal on a later loop turn);
//  - a watch is reported once, then it is no longer watched; unwatch() of a
//    watch not (or no longer) watched does nothing;
//  - the loop's handle exists while one child is watched, and keeps uv_run
//    alive while one watched child is held (its exit is due);
//  - on_exit runs with the watch already removed, so it may free the watch.
#pragma once

#include <cstddef>
#include <exception>

#include "uvexec/detail/loop_core.hpp"

namespace uvexec::inline v0::detail {

class reaper;
struct forked_watch;
struct fork_request;

/// One child as its reaper sees it; embedded in its owner (a worker).
struct child_watch {
    /// The child's pid, set by the owner right after spawning it; 0 until then.
    int pid = 0;
    /// Called once the child has been reaped: wait_status as from waitpid, or
    /// status_lost when another waitpid() in the process reaped it first.
    void (*on_exit)(child_watch& w, int wait_status, bool status_lost) noexcept = nullptr;
    /// The owner's, as libuv's handle.data.
    void* data = nullptr;

    /// For a worker asked of a fork server (fork_server.hpp): called once the
    /// server's answer came (pid and the pidfd watch set), or, instead, when
    /// its start failed (the server answered an error, died, or did not
    /// answer within the start-up deadline; unserved: it exited 121, its
    /// main() did not call worker_main first); the watch is then not watched.
    void (*on_forked)(child_watch& w) noexcept = nullptr;
    void (*on_fork_failed)(child_watch& w, std::exception_ptr why, bool unserved) noexcept = nullptr;

    // The reaper's; or, for a worker forked by a fork server, its pending
    // request and then its pidfd watch (fork_server.hpp), which the
    // functions below defer to.
    fork_request* request = nullptr;
    forked_watch* forked = nullptr;
    bool via_fork_server = false;  // it was forked by a fork server (kept after its exit)
    reaper* owner = nullptr;
    child_watch* prev = nullptr;
    child_watch* next = nullptr;
    bool held = false;
};

/// Watches w on lp's reaper (creating it on first use); returns 0 or a libuv
/// error (the loop's first uv_signal_t makes a pipe, which can fail).
int watch_child(loop_core& lp, child_watch& w) noexcept;
/// Stops watching w (its child is not reaped by uvexec from here on).
void unwatch_child(child_watch& w) noexcept;
/// Whether w's exit keeps the loop running (a busy, starting or exiting worker).
void hold_child(child_watch& w, bool hold) noexcept;
/// Sends sig to w's child, which must not have been reported (through its
/// pidfd for a worker forked by a fork server).
void signal_child(child_watch& w, int sig) noexcept;

}  // namespace uvexec::detail
