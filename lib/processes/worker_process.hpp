// uvexec — one worker process as its pool sees it (internal).
//
// A worker_process holds a child's channel (channel.hpp), its watch on the
// loop's reaper (reaper.hpp), a timer (start-up deadline, then a retiring
// worker's grace period) and the FIFO of the calls sent to it. The functions
// below are its life: what its frames do, how it is killed or retired, and
// what happens to its calls when it exits.
//
// Invariants (all on the loop thread):
//  - a worker answers its calls in the order it received them, one at a time,
//    and writes each answer before it reads the next call, so the head of its
//    FIFO is the call it is running (once it has said hello);
//  - it leaves its pool's slot when it is reaped, before anything else
//    happens, and takes no call once it has exited or closed its channel;
//  - its memory is freed by the last of its two handles' close callbacks
//    (pipe, timer), which touch nothing else.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>

#include <uv.h>

#include "channel.hpp"
#include "reaper.hpp"
#include "scheduler.hpp"
#include "uvexec/process_pool_executor.hpp"

namespace uvexec::inline v0::detail {

struct worker_process final : channel_owner {
    enum class state : std::uint8_t { starting, ready, retiring, dying };

    worker_process(process_pool_core& p, std::size_t max_frame) : pool(&p), ch(max_frame) {}

    process_pool_core* pool;
    std::size_t slot = 0;
    std::string name;
    channel ch;
    child_watch watch;
    uv_timer_t timer{};  // start-up deadline, then the grace period of a retiring worker
    int pid = 0;                // the process the pool started (behind a launcher: the launcher)
    int worker_pid = 0;         // the worker's own pid, from its hello (0 before it)
    std::string host;           // the worker's host name, from its hello
    state st = state::starting;
    bool said_hello = false;
    bool exited = false;
    bool killed = false;           // uvexec sent it a signal (stats: a death by our hand)
    std::int64_t exit_status = 0;  // -1: reaped by another waitpid() in the process, -2: its fork server is gone; status lost
    int term_signal = 0;
    std::string fault;  // why the pool killed it, if it did
    int open_handles = 0;
    unsigned closed_by_us = 0;  // bits: pipe, timer

    process_call* head = nullptr;  // in-flight FIFO
    process_call* tail = nullptr;
    std::size_t in_flight = 0;
    std::size_t calls_sent = 0;
    std::uint64_t head_started = 0;  // uv_hrtime() when the head call began running, as far as we know
    bool cancel_timer = false;       // the timer counts down a cancelled running call's cancel_grace
    std::uint64_t backlog_ns = 0;    // expected time of its calls known to be short (scheduler.cpp)
    std::size_t long_calls = 0;      // its calls not known to be short
    bool over_memory = false;        // it reported memory above max_worker_memory: it takes no more calls
    bool idle_timer = false;         // the timer counts down its idle_timeout (it holds no call)

    bool accepting(std::size_t max_tasks) const noexcept {
        return !exited && !over_memory && (st == state::starting || st == state::ready) &&
               (max_tasks == 0 || calls_sent < max_tasks);
    }
    /// Serving or about to: neither retiring nor dying.
    bool serving() const noexcept { return !exited && (st == state::starting || st == state::ready); }

    void on_channel_data() noexcept override;
    void on_channel_end() noexcept override;
    void on_channel_no_memory() noexcept override;
    void on_channel_write_failed() noexcept override;
};

/// Opens w's channel on fd and watches its child (before the child exists;
/// unless forked: then its fork server's answer brings the pidfd watch);
/// null, or the error (w is then closing).
std::exception_ptr open_worker(worker_process& w, loop_core& lp, int fd, bool forked = false) noexcept;
/// The child is started: reading begins.
void worker_started(worker_process& w, int pid) noexcept;
/// w's child was asked of a fork server: its start-up deadline runs from
/// now, and covers the wait for the answer; reading begins with the answer.
void worker_requested(worker_process& w) noexcept;
/// Closes what open_worker opened, after a failed spawn.
void abandon_worker(worker_process& w) noexcept;

/// Appends call c to w's FIFO (it has been queued for writing).
void push_call(worker_process& w, process_call& c) noexcept;
/// Takes the head of w's FIFO.
process_call* pop_head(worker_process& w) noexcept;

/// Kills w; why() says why (the first reason given is kept, and building it
/// may fail: the worker is killed all the same).
void kill_worker(worker_process& w, const char* why) noexcept;
template <class Why>
void kill_worker(worker_process& w, Why&& why) noexcept;
/// Closes w's channel, its signal to exit when done; killed if it has not
/// exited within a grace period.
void retire_worker(worker_process& w) noexcept;
/// c, sent to w, was cancelled and its function takes a std::stop_token:
/// sends w a cancel frame, which requests that call's stop in the worker.
void ask_to_stop(worker_process& w, const process_call& c) noexcept;
/// If w is running a call whose future was cancelled, starts its
/// cancel_grace (if the pool has one): past it, w is killed.
void watch_cancelled_head(worker_process& w) noexcept;
/// Sends sig to w for terminate_workers()/kill_workers() (who): the calls it
/// had not started are cancelled, the running one fails when w dies; a
/// worker that survives a SIGTERM is killed after a grace period.
void stop_worker(worker_process& w, int sig, const char* who) noexcept;
/// An idle worker must not keep the host's uv_run alive; a busy, starting or
/// exiting one must (its answer or exit is still due).
void hold_loop(worker_process& w, bool hold) noexcept;
/// w holds no call: if the pool has an idle_timeout, w's timer starts
/// counting it down (without holding the loop); past it the pool may retire w.
void watch_idle(worker_process& w) noexcept;

/// Records why the pool ends w (the first reason is kept); make() may fail
/// (std::bad_alloc): the reason is then left out.
template <class Make>
void set_fault(worker_process& w, Make&& make) noexcept {
    if (!w.fault.empty()) return;
    try {
        w.fault = make();
    } catch (...) {
        w.fault.clear();
    }
}

void kill_worker_now(worker_process& w) noexcept;

template <class Why>
void kill_worker(worker_process& w, Why&& why) noexcept {
    set_fault(w, std::forward<Why>(why));
    kill_worker_now(w);
}

}  // namespace uvexec::detail
