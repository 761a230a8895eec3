// uvexec — the process pool: its calls' lifecycle (internal).
//
// The pool accepts calls, keeps them in its queue until the scheduler
// (scheduler.hpp) names a worker for them, and settles: it completes
// shutdown() once every call is answered and every worker reaped, and frees
// itself once the executor object is gone (orphaned) and nothing is left.
// Workers (worker_process.hpp) report back through the members below.
//
// Invariants (all on the loop thread):
//  - a call is in exactly one of: the pool's queue, one worker's in-flight
//    FIFO (sent, unanswered), the ready list (resolved, waiters not yet run),
//    or none; the pool holds one reference to its state while it is in one
//    of the first three;
//  - every entry into the pool (a libuv callback, a user's call) holds an
//    entry_guard for its whole length: waiters of resolved calls run only
//    when the outermost guard ends, once the pool's state is consistent, and
//    nothing may touch the pool after it (settle() may have freed it).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../room.hpp"
#include "../stats/recorder.hpp"
#include "scheduler.hpp"
#include "uvexec/detail/loop_core.hpp"
#include "uvexec/process_pool_executor.hpp"

namespace uvexec::inline v0::detail {

struct worker_process;
class fork_server;

class process_pool_core final : public loop_client {
public:
    explicit process_pool_core(process_pool_options opts);

    void accept(loop_core& lp);
    /// ex.start(lp): binds the pool to lp and starts min_workers workers.
    void start(loop_core& lp);
    /// Throws ambiguous_function_error when this pool's workers cannot tell
    /// the function apart from another of the same key (see fn.hpp).
    void check_identity(const function_identity& id, std::string_view name) const;
    std::size_t max_frame_size() const noexcept { return opts_.max_frame_size; }
    /// Takes one reference to call.state.
    void submit(process_call& call) noexcept;
    void cancel(process_call& call) noexcept;
    future<void> shutdown(bool cancel_futures);
    /// terminate_workers() (SIGTERM) and kill_workers() (SIGKILL).
    future<void> stop_workers(int sig, const char* who);
    void orphan() noexcept;

    std::size_t max_workers() const noexcept { return max_workers_; }
    std::size_t live_workers() const noexcept { return live_workers_; }
    std::size_t queued() const noexcept { return queued_count_; }
    std::vector<int> worker_pids() const;
    future<void> room(loop_core& lp);
    executor_stats stats() const noexcept;

    void on_loop_closing() noexcept override;
    bool busy() const noexcept override { return live_workers_ != 0 || in_flight_ != 0; }
    void on_loop_closed() noexcept override;

    // --- what workers report (worker_process.cpp) ---------------------------
    const process_pool_options& options() const noexcept { return opts_; }
    /// w answered a call: it may retire, and queued calls may go out.
    void on_call_done(worker_process& w) noexcept;
    /// w's idle_timeout is over: it is retired if the pool keeps more than
    /// min_workers serving.
    void on_worker_idle(worker_process& w) noexcept;
    /// w said hello: a start succeeded.
    void on_worker_ready() noexcept { failed_starts_ = 0; }
    /// w exited before its hello on its own; true if the pool must give up
    /// on starting workers (max_failed_starts in a row).
    bool count_failed_start() noexcept { return ++failed_starts_ >= max_failed_starts; }
    std::size_t failed_starts() const noexcept { return failed_starts_; }
    /// A worker's death is not a failure when the pool ends it (broken, or
    /// its loop closing).
    bool ending() const noexcept { return broken_ || closing_; }
    void break_pool(std::string_view why) noexcept;
    /// A worker asked of the fork server did not start (why: the server's
    /// error, its death, or its start-up timeout), and the pool did not mean
    /// to end it: as a failed spawn, the queued calls fail if no worker is
    /// left to run them; a server that forgot worker_main, or
    /// max_failed_starts in a row, break the pool.
    void fork_failed(const std::exception_ptr& why, bool unserved) noexcept;
    void requeue_front(process_call& call) noexcept;
    /// Takes over the pool's reference to a call whose future was resolved
    /// (or that ends unanswered): notify_ready() runs its waiters later.
    void ready(process_call& call) noexcept;
    /// The worker has exited: it leaves its slot before anything else happens.
    void forget(worker_process& w) noexcept;
    /// One fewer call in a worker (answered, failed, or queued again).
    void left_worker() noexcept { --in_flight_; }
    /// Sends queued calls to workers, starting workers as needed (and up to
    /// min_workers).
    void pump() noexcept;
    /// Call c started at `started` (see docs/process-pool.md, "Metrics") and
    /// was answered at now.
    void record_run(const process_call& c, std::uint64_t started, std::uint64_t now) noexcept {
        recorder_.ran(started - std::min(started, c.accepted_at), now - std::min(now, started));
    }
    /// w has exited: counted by cause (retired workers are not deaths).
    void count_exit(const worker_process& w) noexcept;

    /// Holds the pool for one entry (see the file comment).
    class entry_guard {
    public:
        explicit entry_guard(process_pool_core& p) noexcept : p_(p) { ++p_.busy_; }
        ~entry_guard() {
            --p_.busy_;
            p_.notify_ready();
            p_.offer_room();
            p_.settle();
        }
        entry_guard(const entry_guard&) = delete;
        entry_guard& operator=(const entry_guard&) = delete;

    private:
        process_pool_core& p_;
    };

    /// Consecutive failed starts after which the pool is broken (a worker that
    /// exits 121, having forgotten worker_main, breaks it at once).
    static constexpr std::size_t max_failed_starts = 3;

private:
    ~process_pool_core();
    /// Starts a worker in slot; null (spawn_error_ says why) if it fails.
    worker_process* spawn_worker(std::size_t slot) noexcept;
    /// Asks the fork server (started now if there is none that works) for w's process.
    std::exception_ptr fork_from_server(worker_process& w, int child_end) noexcept;
    /// Sends the head of the queue to w.
    void send_head(worker_process& w, std::uint64_t now) noexcept;
    void fail_queued(bool cancel, const std::exception_ptr& why) noexcept;
    /// Breaks the pool with e's message.
    void break_with(const std::exception_ptr& e) noexcept;
    /// Binds the pool to lp (the checks of accept() but the queue's bound).
    void bind(loop_core& lp);
    /// Starts workers until min_workers serve; false if a start failed.
    bool keep_min_workers() noexcept;
    /// Workers serving or starting (not retiring, not dying).
    std::size_t serving_workers() const noexcept;
    /// Runs the waiters of the ready calls; every entry ends with it.
    void notify_ready() noexcept;
    void settle() noexcept;
    void offer_room() noexcept;
    void close_room(std::exception_ptr why) noexcept;
    process_call* pop_queue() noexcept;
    future<void> shutdown_future();

    process_pool_options opts_;
    std::size_t max_workers_;
    std::size_t min_workers_ = 0;
    schedule_policy policy_;
    call_costs costs_;
    std::string prefix_;
    std::vector<std::string> spawn_args_;  // exe, worker flags (name added per worker, launcher put in front)
    std::vector<std::string> spawn_env_;
    std::vector<std::string> fork_server_args_;  // launcher..., exe, fork server flags (start_method forkserver)
    fork_server* fork_server_ = nullptr;          // the pool's current fork server, if it has one
    std::string limits_word_;             // the workers' limits (worker_limits.hpp); empty: none
    bool names_only_ = false;             // the workers are another executable: only names match
    loop_core* loop_ = nullptr;
    std::vector<worker_process*> slots_;  // by slot; null when free
    std::size_t live_workers_ = 0;
    std::size_t in_flight_ = 0;           // calls sent and not answered
    process_call* queue_head_ = nullptr;
    process_call* queue_tail_ = nullptr;
    std::size_t queued_count_ = 0;
    process_call* ready_head_ = nullptr;  // resolved calls whose waiters have not run yet
    process_call* ready_tail_ = nullptr;
    std::size_t ready_count_ = 0;
    std::uint64_t next_id_ = 1;
    std::size_t busy_ = 0;
    bool shut_down_ = false;
    bool broken_ = false;
    bool orphaned_ = false;
    bool notifying_ = false;
    bool pumping_ = false;
    bool closing_ = false;               // the loop is closing: deaths are ours, not failures
    std::string broken_why_;
    std::vector<future_state<void>*> shutdown_waiters_;
    std::exception_ptr spawn_error_;
    std::size_t failed_starts_ = 0;      // workers in a row that died before their hello
    std::size_t max_queue_ = 0;          // 0: unbounded
    room_queue room_;                    // room() waiters
    call_recorder recorder_{executor_stats::kind::processes};
};

}  // namespace uvexec::detail
