// uvexec — one worker process as its pool sees it: its frames, its death.
#include "worker_process.hpp"

#include <csignal>
#include <cstring>
#include <utility>

#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include "../error_ptr.hpp"
#include "fork_server.hpp"
#include "pool.hpp"
#include "uvexec/detail/handle.hpp"
#include "uvexec/detail/worker.hpp"

namespace uvexec::inline v0::detail {

namespace {

using guard = process_pool_core::entry_guard;

constexpr auto retire_grace = std::chrono::seconds(5);
constexpr unsigned pipe_bit = 1, timer_bit = 2;

std::string signal_name(int sig) {
    const char* abbrev = sigabbrev_np(sig);
    return abbrev ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

std::string exit_description(const worker_process& w) {
    std::string how = w.term_signal != 0
                          ? fmt::format("killed by signal {} ({})", w.term_signal, signal_name(w.term_signal))
                      : w.exit_status == -2 ? std::string("its exit status is unknown: the fork server that started it is gone")
                      : w.exit_status < 0 ? std::string("reaped by another waitpid() in this process, status unknown")
                                          : fmt::format("exited with status {}", w.exit_status);
    if (w.term_signal == 0 && w.exit_status == unserved_worker_status)
        how += ": it was started as a worker but its main() did not call uvexec::worker_main(argc, argv) first";
    if (const auto& cpu = w.pool->options().limits.cpu_time; w.term_signal == SIGXCPU && cpu)
        how += fmt::format(": the call used more CPU time than limits.cpu_time ({} s) allows", cpu->count());
    if (!w.fault.empty())  // "...; it was killed by ...", "...; it exited with ...", "...; its exit status is ..."
        how = w.fault + (w.term_signal != 0 ? "; it was " : w.exit_status >= 0 ? "; it " : "; ") + how;
    return how;
}

/// "pid (name)" of the process the pool started and, when that is a launcher
/// (the worker said another pid, or runs on another host), the worker's own
/// pid and host as its hello gave them.
std::string describe_worker(const worker_process& w) {
    if (w.said_hello && (w.worker_pid != w.pid || w.pool->options().launcher.remote))
        return fmt::format("{} ({}; the worker itself is pid {} on host {})", w.pid, w.name, w.worker_pid,
                           w.host.empty() ? std::string("(unnamed)") : w.host);
    return fmt::format("{} ({})", w.pid, w.name);
}

worker_process& worker_of(uv_handle_t* h) noexcept {
    if (h->type == UV_TIMER) return *static_cast<worker_process*>(h->data);
    return static_cast<worker_process&>(*static_cast<channel*>(h->data)->owner);
}

void on_handle_closed(uv_handle_t* h) noexcept {
    worker_process& w = worker_of(h);
    if (--w.open_handles == 0) delete &w;
}

/// Closes one of w's handles, once: the pipe, for one, is closed both when a
/// worker retires and when it has exited.
void close_once(worker_process& w, unsigned bit) noexcept {
    if (w.closed_by_us & bit) return;
    w.closed_by_us |= bit;
    close_handle(bit == pipe_bit ? w.ch.handle() : reinterpret_cast<uv_handle_t*>(&w.timer), &on_handle_closed);
}

void start_timer(worker_process& w, std::chrono::milliseconds after, uv_timer_cb cb) noexcept {
    uv_timer_stop(&w.timer);
    w.idle_timer = false;
    uv_ref(reinterpret_cast<uv_handle_t*>(&w.timer));  // an idle timer does not hold the loop; the others do
    uv_timer_start(&w.timer, cb, static_cast<std::uint64_t>(after.count()), 0);
}

void on_idle_over(uv_timer_t* t) noexcept {
    auto& w = *static_cast<worker_process*>(t->data);
    w.idle_timer = false;
    guard g(*w.pool);
    w.pool->on_worker_idle(w);
}

void on_grace_over(uv_timer_t* t) noexcept { kill_worker(*static_cast<worker_process*>(t->data), ""); }

void on_cancel_grace_over(uv_timer_t* t) noexcept {
    auto& w = *static_cast<worker_process*>(t->data);
    w.cancel_timer = false;
    guard g(*w.pool);
    kill_worker(w, [&] {
        return fmt::format("its call was cancelled and had not returned {} ms later (cancel_grace)",
                           w.pool->options().cancel_grace->count());
    });
}

void on_startup_deadline(uv_timer_t* t) noexcept {
    auto& w = *static_cast<worker_process*>(t->data);
    if (w.said_hello) return;
    guard g(*w.pool);
    if (w.watch.request) {
        // Its fork server has not answered: it is killed, and this start
        // fails (on_fork_failed) once it is reaped.
        fork_timed_out(w.watch, w.pool->options().startup_timeout);
        return;
    }
    kill_worker(w, [&] {
        return fmt::format("it did not start serving within {} ms (does its main() begin with "
                           "uvexec::worker_main(argc, argv)?)",
                           w.pool->options().startup_timeout.count());
    });
}

/// The (type name, what()) an error frame's payload carries; a payload that
/// does not decode is reported as such.
std::pair<std::string, std::string> remote_report(std::string_view payload) {
    std::string type, what;
    try {
        decode_from(payload, type, what);
    } catch (const std::exception& e) {
        type = "uvexec::error";
        what = std::string("an undecodable error report: ") + e.what();
    }
    return {std::move(type), std::move(what)};
}

std::exception_ptr remote_exception(std::string_view payload) noexcept {
    return error_ptr([&] {
        auto [type, what] = remote_report(payload);
        return remote_error(std::move(type), std::move(what));
    });
}

template <class What>
void protocol_violation(worker_process& w, What&& what) noexcept {
    kill_worker(w, [&] { return "it sent a corrupt message (" + std::string(what()) + ")"; });
    w.ch.decoder = frame_decoder(0);  // ignore anything else it sends
}

void on_hello(worker_process& w, const frame& f) noexcept {
    std::uint32_t version = 0;
    std::string host;
    bool whole = false;
    try {
        // The version first: a worker of another version may say the rest otherwise.
        decode_from(f.payload.substr(0, sizeof version), version);
        if (version == protocol_version) {
            decode_from(f.payload, version, host);
            whole = true;
        }
    } catch (...) {  // uvexec::error (malformed), std::bad_alloc (the host name)
        whole = false;
    }
    if (w.said_hello || !whole) {
        protocol_violation(w, [&] {
            return w.said_hello || version != protocol_version
                       ? fmt::format("a hello for protocol {} (expected {})", version, protocol_version)
                       : std::string("a malformed hello");
        });
        return;
    }
    w.said_hello = true;
    w.worker_pid = static_cast<int>(f.id);
    w.host = std::move(host);
    w.pool->on_worker_ready();
    if (w.st == worker_process::state::starting) {
        w.st = worker_process::state::ready;
        uv_timer_stop(&w.timer);
        if (w.in_flight == 0) {
            hold_loop(w, false);
            watch_idle(w);
        }
    }
    // Its first call begins now.
    w.head_started = uv_hrtime();
    watch_cancelled_head(w);
}

bool on_answer(worker_process& w, const frame& f) noexcept {
    if (w.head == nullptr || get_u64(w.head->frame.data() + 5) != f.id) {
        protocol_violation(w, [&] { return fmt::format("an answer to call #{}, which it was not running", f.id); });
        return false;
    }
    const std::uint64_t now = uv_hrtime();
    process_call* c = pop_head(w);
    call_costs::learn(c->cost, now - std::min(now, w.head_started));
    w.pool->record_run(*c, w.head_started, now);
    if (w.cancel_timer) {  // it returned within its cancel_grace
        w.cancel_timer = false;
        uv_timer_stop(&w.timer);
    }
    if (w.head != nullptr) {
        w.head_started = std::max(now, w.head->sent_at);
        watch_cancelled_head(w);
    }
    if (f.kind == frame_kind::result) c->deliver(c, f.payload);
    else if (!c->state->done()) c->state->resolve_exception(remote_exception(f.payload));
    w.pool->ready(*c);
    w.pool->on_call_done(w);
    return true;
}

/// Before answering call f.id (its head), w found its resident memory above
/// max_worker_memory: it takes no more calls and retires once they are answered.
bool on_over_memory(worker_process& w, const frame& f) noexcept {
    if (!w.pool->options().max_worker_memory || f.payload.size() != 8 || w.head == nullptr ||
        get_u64(w.head->frame.data() + 5) != f.id) {
        protocol_violation(w, [&] { return fmt::format("a memory report for call #{} the pool did not ask for", f.id); });
        return false;
    }
    w.over_memory = true;
    w.pool->on_call_done(w);  // retires it now if it holds no call
    return true;
}

void on_init_failed(worker_process& w, const frame& f) noexcept {
    process_pool_core& pool = *w.pool;
    if (!pool.options().initializer) {
        // Only a worker that was asked to run an initializer can fail one.
        protocol_violation(w, [] { return "an initializer failure, but the pool has no initializer"; });
        return;
    }
    try {
        auto [type, what] = remote_report(f.payload);
        pool.break_pool(fmt::format("the initializer failed in worker {}: {}: {}", describe_worker(w), type, what));
    } catch (...) {
        pool.break_pool("the initializer failed in worker (its report was lost: out of memory)");
    }
}

/// Takes the calls w holds but has not started, last first, and hands each to
/// f (which must put it in the pool's queue or ready list). The head is left
/// when w is running it (has said hello) and running_head_taken is false.
template <class F>
void take_unstarted(worker_process& w, bool running_head_taken, F&& f) noexcept {
    process_call* running = w.said_hello && !running_head_taken ? w.head : nullptr;
    while (w.tail != nullptr && w.tail != running) {
        process_call* c = w.tail;
        w.tail = c->prev;
        if (w.tail) w.tail->next = nullptr; else w.head = nullptr;
        c->prev = c->next = nullptr;
        c->worker = nullptr;
        c->at = process_call::where::nowhere;
        --w.in_flight;
        count_left(w, *c);
        w.pool->left_worker();
        f(*c);
    }
}

/// w has exited and been reaped: it leaves the pool, the calls it never
/// started go back to the front of the queue, and the one it was running
/// fails. Runs inside the caller's entry_guard.
void finalize_exit(worker_process& w) noexcept {
    process_pool_core& pool = *w.pool;
    close_once(w, pipe_bit);
    close_once(w, timer_bit);
    pool.forget(w);  // first: nothing can be sent to it from here on

    // A worker that never said hello never read a call: none of its calls
    // started. One that did runs its calls in order and answers each before
    // reading the next, so (its channel drained) the head is the one it was
    // running and the calls behind it were never started.
    const bool started = w.said_hello;
    process_call* running = started && w.head != nullptr ? pop_head(w) : nullptr;
    take_unstarted(w, true, [&](process_call& c) {
        if (c.state->done()) pool.ready(c);  // cancelled while it waited in the worker: it never runs
        else pool.requeue_front(c);
    });

    if (!started && w.st != worker_process::state::retiring && !pool.ending()) {
        // It died on its own (or missed its start-up deadline). That may be
        // passing (an OOM kill, a stray signal), so a replacement is tried; a
        // worker that forgot worker_main, or max_failed_starts in a row, will
        // fail the same way every time: the pool is broken (which fails the
        // calls it would have run, queued again above).
        const bool forgot_worker_main = w.term_signal == 0 && w.exit_status == unserved_worker_status;
        if (pool.count_failed_start() || forgot_worker_main) {
            try {
                std::string how = exit_description(w);
                pool.break_pool(forgot_worker_main
                                    ? fmt::format("a worker process ({}) failed to start: {}", w.pid, how)
                                    : fmt::format("{} worker processes in a row failed to start; the last ({}): {}",
                                                  pool.failed_starts(), w.pid, how));
            } catch (...) {
                pool.break_pool("worker processes failed to start");
            }
        }
    }
    if (running != nullptr) {
        running->state->resolve_exception(error_ptr([&] {
            return worker_died_error(fmt::format("uvexec: worker process {} died while running this call: {}",
                                                 describe_worker(w), exit_description(w)),
                                     w.pid, static_cast<int>(w.exit_status), w.term_signal);
        }));
        pool.ready(*running);
    }
    pool.pump();  // the calls queued again, on a replacement or another worker
}

// The fork server answered: w's child exists, watched through its pidfd.
void on_forked(child_watch& watch) noexcept {
    auto& w = *static_cast<worker_process*>(watch.data);
    guard g(*w.pool);
    w.pid = watch.pid;
    hold_child(w.watch, true);  // its hello (or its exit) is due
    if (w.st == worker_process::state::dying) {
        signal_child(w.watch, SIGKILL);  // killed while it was being forked
        return;
    }
    if (w.st == worker_process::state::starting && !uv_is_active(reinterpret_cast<uv_handle_t*>(&w.timer))) {
        // Answered as its deadline passed (its server is being killed).
        kill_worker(w, [&] {
            return fmt::format("its fork server did not answer within {} ms (startup_timeout)",
                               w.pool->options().startup_timeout.count());
        });
        return;
    }
    if ((w.closed_by_us & pipe_bit) != 0) return;  // retiring: its channel's end tells it to exit
    if (start_reading(w.ch) != 0) kill_worker(w, "its channel could not be read");  // reaped as usual
}

// The fork server did not fork w's child: w leaves the pool as a worker that
// never started, its calls go back to the queue.
void on_fork_failed(child_watch& watch, std::exception_ptr why, bool unserved) noexcept {
    auto& w = *static_cast<worker_process*>(watch.data);
    process_pool_core& pool = *w.pool;
    guard g(pool);
    // The pool ended it (retired, killed, broken, its loop closing): no failure.
    const bool meant = w.st == worker_process::state::retiring || w.st == worker_process::state::dying ||
                       pool.ending();
    w.exited = true;  // nothing to reap
    w.exit_status = -2;
    close_once(w, pipe_bit);
    close_once(w, timer_bit);
    pool.forget(w);
    take_unstarted(w, true, [&](process_call& c) {
        if (c.state->done()) pool.ready(c);  // cancelled while it waited: it never runs
        else pool.requeue_front(c);
    });
    if (!meant) pool.fork_failed(why, unserved);
    pool.pump();
}

// The reaper reaped w's child.
void on_exit(child_watch& watch, int status, bool status_lost) noexcept {
    auto& w = *static_cast<worker_process*>(watch.data);
    guard g(*w.pool);
    w.exited = true;
    if (status_lost) {
        w.exit_status = watch.via_fork_server ? -2 : -1;
    } else if (WIFSIGNALED(status)) {
        w.term_signal = WTERMSIG(status);
    } else {
        w.exit_status = WEXITSTATUS(status);
    }
    w.pool->count_exit(w);
    if (!drain_channel(w.ch)) set_fault(w, [] { return std::string("the parent ran out of memory for its last message"); });
    finalize_exit(w);
}

}  // namespace

// --- the channel's events --------------------------------------------------------

/// Handles the complete frames the decoder holds. Answers resolve their calls
/// (their waiters run when the outermost entry_guard ends).
void worker_process::on_channel_data() noexcept {
    guard g(*pool);
    frame f{};
    while (st != state::dying) {
        frame_decoder::status s;
        try {
            s = ch.decoder.next(f);
        } catch (...) {  // growing the buffer for a large frame: std::bad_alloc
            kill_worker(*this, "the parent ran out of memory for its message");
            break;
        }
        if (s == frame_decoder::status::need_more) break;
        if (s == frame_decoder::status::corrupt) {
            protocol_violation(*this, [&]() -> const std::string& { return ch.decoder.error(); });
            break;
        }
        switch (f.kind) {
            case frame_kind::hello: on_hello(*this, f); break;
            case frame_kind::result:
            case frame_kind::error:
                if (!on_answer(*this, f)) return;
                break;
            case frame_kind::init_failed: on_init_failed(*this, f); break;
            case frame_kind::over_memory:
                if (!on_over_memory(*this, f)) return;
                break;
            default:
                protocol_violation(*this,
                                   [&] { return fmt::format("a frame of unknown kind {}", static_cast<int>(f.kind)); });
                return;
        }
    }
}

void worker_process::on_channel_end() noexcept {
    // EOF or an error: the worker is exiting (its exit follows) or closed its
    // channel while alive, which it may not do. Either way it takes no more calls.
    // Behind a remote launcher the end comes first whenever the far side ends
    // (ssh closes its stdout, then exits): the pool cannot tell which.
    if (exited) return;
    guard g(*pool);
    set_fault(*this, [&] {
        return std::string(pool->options().launcher.remote
                               ? "its launcher ended the channel (the remote worker exited or closed it, or the "
                                 "connection was lost)"
                               : "it closed its channel while alive");
    });
    st = state::dying;
    hold_loop(*this, true);
    start_timer(*this, std::chrono::milliseconds(1000), &on_grace_over);
}

void worker_process::on_channel_no_memory() noexcept {
    guard g(*pool);
    kill_worker(*this, "the parent ran out of memory for its message");
}

void worker_process::on_channel_write_failed() noexcept { kill_worker(*this, "its channel could not be written to"); }

// --- its life ----------------------------------------------------------------------

std::exception_ptr open_worker(worker_process& w, loop_core& lp, int fd, bool forked) noexcept {
    uv_loop_t* uv = lp.uv();
    bool opened = false;
    int r = open_channel(uv, w.ch, fd, w, opened);
    if (opened) w.open_handles = 1;
    if (r != 0) {
        ::close(fd);  // not the pipe's: opening it failed
        if (opened) close_once(w, pipe_bit);
        else delete &w;
        return error_ptr([&] { return uv_error(r, "opening a worker's channel"); });
    }
    uv_timer_init(uv, &w.timer);  // cannot fail
    w.timer.data = &w;
    ++w.open_handles;
    // Watching SIGCHLD before the child exists: no exit can go unseen. A
    // worker forked by a fork server is watched by fork_worker instead.
    w.watch.on_exit = &on_exit;
    w.watch.data = &w;
    w.watch.on_forked = &on_forked;
    w.watch.on_fork_failed = &on_fork_failed;
    if (forked) return nullptr;
    if (r = watch_child(lp, w.watch); r != 0) {
        close_once(w, pipe_bit);
        close_once(w, timer_bit);
        return error_ptr([&] { return uv_error(r, "uv_signal_start(SIGCHLD) to watch a worker"); });
    }
    hold_child(w.watch, true);  // its hello is due
    return nullptr;
}

void abandon_worker(worker_process& w) noexcept {
    unwatch_child(w.watch);
    close_once(w, pipe_bit);
    close_once(w, timer_bit);
}

void worker_requested(worker_process& w) noexcept {
    start_timer(w, w.pool->options().startup_timeout, &on_startup_deadline);
}

void worker_started(worker_process& w, int pid) noexcept {
    w.pid = pid;
    w.watch.pid = pid;
    start_timer(w, w.pool->options().startup_timeout, &on_startup_deadline);
    if (start_reading(w.ch) != 0) kill_worker(w, "its channel could not be read");  // reaped as usual
}

void push_call(worker_process& w, process_call& c) noexcept {
    c.at = process_call::where::sent;
    c.worker = &w;
    c.prev = w.tail;
    c.next = nullptr;
    if (w.tail) w.tail->next = &c; else w.head = &c;
    w.tail = &c;
    if (w.in_flight++ == 0) {
        hold_loop(w, true);
        w.head_started = c.sent_at;
        if (w.idle_timer) {
            w.idle_timer = false;
            uv_timer_stop(&w.timer);
        }
    }
    ++w.calls_sent;
}

process_call* pop_head(worker_process& w) noexcept {
    process_call* c = w.head;
    w.head = c->next;
    if (w.head) w.head->prev = nullptr; else w.tail = nullptr;
    c->prev = c->next = nullptr;
    c->at = process_call::where::nowhere;
    c->worker = nullptr;
    --w.in_flight;
    count_left(w, *c);
    w.pool->left_worker();
    return c;
}

void hold_loop(worker_process& w, bool hold) noexcept {
    hold_child(w.watch, hold);
    if (uv_is_closing(w.ch.handle())) return;
    if (hold) uv_ref(w.ch.handle()); else uv_unref(w.ch.handle());
}

void watch_idle(worker_process& w) noexcept {
    const auto& timeout = w.pool->options().idle_timeout;
    if (!timeout || w.idle_timer || w.in_flight != 0 || w.st != worker_process::state::ready) return;
    start_timer(w, *timeout, &on_idle_over);
    w.idle_timer = true;
    uv_unref(reinterpret_cast<uv_handle_t*>(&w.timer));
}

void kill_worker(worker_process& w, const char* why) noexcept {
    kill_worker(w, [why] { return std::string(why); });
}

void kill_worker_now(worker_process& w) noexcept {
    w.st = worker_process::state::dying;
    if (w.exited) return;
    w.killed = true;
    hold_loop(w, true);  // its exit is due
    // Safe from pid reuse: only the reaper reaps it, and it has not
    // (w.exited is false), so the pid is still this worker's, even as a
    // zombie (unless a waitpid(-1) in the host took it: docs/process-pool.md, Signals).
    signal_child(w.watch, SIGKILL);
}

void ask_to_stop(worker_process& w, const process_call& c) noexcept {
    // A worker that is going (its channel closed, or killed) ends its calls anyway.
    if (w.exited || (w.closed_by_us & pipe_bit) != 0 || w.st == worker_process::state::dying) return;
    try {
        append_frame(w.ch.out_pending, frame_kind::cancel, get_u64(c.frame.data() + 5), {});
    } catch (...) {
        return;  // std::bad_alloc: no stop is asked for; cancel_grace still applies
    }
    flush(w.ch);
}

void watch_cancelled_head(worker_process& w) noexcept {
    const auto& grace = w.pool->options().cancel_grace;
    if (!grace || w.cancel_timer || !w.said_hello || w.st != worker_process::state::ready || w.head == nullptr ||
        !w.head->state->done())
        return;
    w.cancel_timer = true;
    start_timer(w, *grace, &on_cancel_grace_over);
}

void stop_worker(worker_process& w, int sig, const char* who) noexcept {
    if (w.exited) return;
    set_fault(w, [&] { return fmt::format("{} sent it {}", who, signal_name(sig)); });
    take_unstarted(w, false, [&](process_call& c) {
        c.state->resolve_cancelled();
        w.pool->ready(c);
    });
    w.st = worker_process::state::dying;  // what it sends from here on is not read
    w.cancel_timer = false;
    w.killed = true;
    hold_loop(w, true);                   // its exit is due
    signal_child(w.watch, sig);
    if (sig != SIGKILL) {
        // A worker may handle SIGTERM: its channel's end tells it to exit too,
        // and past the grace period it is killed.
        close_once(w, pipe_bit);
        start_timer(w, retire_grace, &on_grace_over);
    }
}

void retire_worker(worker_process& w) noexcept {
    if (w.st == worker_process::state::retiring || w.st == worker_process::state::dying || w.exited) return;
    w.st = worker_process::state::retiring;
    w.cancel_timer = false;
    hold_loop(w, true);  // its exit is due
    // Closing our end is the worker's signal to exit; the reaper reaps it.
    close_once(w, pipe_bit);
    start_timer(w, retire_grace, &on_grace_over);
}

}  // namespace uvexec::detail
