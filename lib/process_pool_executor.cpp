// uvexec — process_pool_executor: workers started with posix_spawn and reaped on
// SIGCHLD through libuv, frames over a socketpair.
//
// Invariants (all on the loop thread):
//  - a call is in exactly one of: the pool's queue, one worker's in-flight
//    FIFO (sent, unanswered), or neither; the pool holds one reference to its
//    state while it is in the first two;
//  - a worker answers its calls in the order it received them, one at a time,
//    and writes each answer before it reads the next call, so the head of its
//    FIFO is the call it is running;
//  - a worker's memory is freed by the last of its handles' close callbacks,
//    which touch nothing else; the pool frees itself in settle() once
//    orphaned and no worker or call is left.
#include "uvexec/process_pool_executor.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include "error_ptr.hpp"
#include "uvexec/detail/handle.hpp"
#include "uvexec/detail/worker.hpp"

extern char** environ;

namespace uvexec::inline v0 {
namespace detail {

struct worker_process {
    enum class state : std::uint8_t { starting, ready, retiring, dying };

    process_pool_core* pool = nullptr;
    std::size_t slot = 0;
    std::string name;
    uv_signal_t child_watch{};  // SIGCHLD: reaps this worker (waitpid of its own pid only)
    uv_pipe_t pipe{};
    uv_timer_t timer{};  // start-up deadline, then the grace period of a retiring worker
    uv_write_t write_req{};
    int pid = 0;
    state st = state::starting;
    bool said_hello = false;
    bool writing = false;
    bool exited = false;
    std::int64_t exit_status = 0;  // -1: reaped by another waitpid() in the process, status lost
    int term_signal = 0;
    std::string fault;  // why the pool killed it, if it did
    int open_handles = 0;
    unsigned closed_by_us = 0;  // bits: child_watch, pipe, timer

    process_call* head = nullptr;  // in-flight FIFO
    process_call* tail = nullptr;
    std::size_t in_flight = 0;
    std::size_t calls_sent = 0;

    std::string out_pending, out_writing;
    frame_decoder decoder;

    explicit worker_process(std::size_t max_frame) : decoder(max_frame) {}

    bool accepting(std::size_t max_tasks) const noexcept {
        return !exited && (st == state::starting || st == state::ready) && (max_tasks == 0 || calls_sent < max_tasks);
    }
};

namespace {

constexpr auto retire_grace = std::chrono::seconds(5);

/// Every entry into the pool (a libuv callback, a user's call) holds one for
/// its whole length: the pool stays alive and settles nothing while its state
/// is mid-update, and at the end the waiters of the calls resolved meanwhile
/// run (they may submit, cancel, shut down or destroy the executor), then the
/// pool settles, which may free it. Nothing may touch the pool after the
/// guard's scope.
class entry_guard {
public:
    explicit entry_guard(process_pool_core& p) noexcept : p_(p) { ++p_.busy_; }
    ~entry_guard() {
        --p_.busy_;
        p_.notify_ready();
        p_.settle();
    }
    entry_guard(const entry_guard&) = delete;
    entry_guard& operator=(const entry_guard&) = delete;

private:
    process_pool_core& p_;
};

std::string signal_name(int sig) {
    const char* abbrev = sigabbrev_np(sig);
    return abbrev ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

std::string exit_description(const worker_process& w) {
    std::string how = w.term_signal != 0
                          ? fmt::format("killed by signal {} ({})", w.term_signal, signal_name(w.term_signal))
                      : w.exit_status < 0 ? std::string("reaped by another waitpid() in this process, status unknown")
                                          : fmt::format("exited with status {}", w.exit_status);
    if (w.term_signal == 0 && w.exit_status == unserved_worker_status)
        how += ": it was started as a worker but its main() did not call uvexec::worker_main(argc, argv) first";
    if (!w.fault.empty()) how = w.fault + "; it was " + how;
    return how;
}

void on_handle_closed(uv_handle_t* h) noexcept {
    auto* w = static_cast<worker_process*>(h->data);
    if (--w->open_handles == 0) delete w;
}

/// Closes one of w's handles, once: the pipe, for one, is closed both when a
/// worker retires and when it has exited.
void close_handle(worker_process& w, uv_handle_t* h) noexcept {
    auto bit = h == reinterpret_cast<uv_handle_t*>(&w.child_watch) ? 1u
               : h == reinterpret_cast<uv_handle_t*>(&w.pipe) ? 2u
                                                                : 4u;
    if (w.closed_by_us & bit) return;
    w.closed_by_us |= bit;
    detail::close_handle(h, &on_handle_closed);
}

/// An idle worker must not keep the host's uv_run(UV_RUN_DEFAULT) alive; a
/// busy, starting or exiting one must (its answer or exit is still due).
void hold_loop(worker_process& w, bool hold) noexcept {
    for (auto* h : {reinterpret_cast<uv_handle_t*>(&w.child_watch), reinterpret_cast<uv_handle_t*>(&w.pipe)}) {
        if (uv_is_closing(h)) continue;
        if (hold) uv_ref(h); else uv_unref(h);
    }
}

/// Records why the pool ends w (the first reason given is kept); fault() may
/// fail to build the text (std::bad_alloc): the reason is then left out.
template <class Fault>
void set_fault(worker_process& w, Fault&& fault) noexcept {
    if (!w.fault.empty()) return;
    try {
        w.fault = fault();
    } catch (...) {
        w.fault.clear();
    }
}

void set_fault(worker_process& w, const char* fault) noexcept {
    set_fault(w, [fault] { return std::string(fault); });
}

/// Kills w; fault() says why (the first reason given is kept). Building the
/// reason may fail (std::bad_alloc): the worker is killed all the same.
template <class Fault>
void kill_worker(worker_process& w, Fault&& fault) noexcept {
    set_fault(w, std::forward<Fault>(fault));
    w.st = worker_process::state::dying;
    if (w.exited) return;
    hold_loop(w, true);  // its exit is due
    // Safe from pid reuse: only this worker's child_watch reaps it, and it
    // has not (w.exited is false), so the pid is still this worker's, even as
    // a zombie (unless a waitpid(-1) in the host took it: docs/process-pool.md, Signals).
    ::kill(w.pid, SIGKILL);
}

void kill_worker(worker_process& w, const char* fault) noexcept {
    kill_worker(w, [fault] { return std::string(fault); });
}

void start_timer(worker_process& w, std::chrono::milliseconds after, uv_timer_cb cb) noexcept {
    uv_timer_stop(&w.timer);
    uv_timer_start(&w.timer, cb, static_cast<std::uint64_t>(after.count()), 0);
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

/// The remote_error that an error frame's payload describes.
std::exception_ptr remote_exception(std::string_view payload) noexcept {
    return error_ptr([&] {
        auto [type, what] = remote_report(payload);
        return remote_error(std::move(type), std::move(what));
    });
}

/// The text of a remote error payload (an initializer's failure).
std::string remote_text(std::string_view payload) {
    auto [type, what] = remote_report(payload);
    return type + ": " + what;
}

}  // namespace

// --- one worker's channel ----------------------------------------------------

namespace {

void handle_frames(worker_process& w) noexcept;
void finalize_exit(worker_process& w) noexcept;

void flush(worker_process& w) noexcept;

void on_written(uv_write_t* req, int status) noexcept {
    auto& w = *static_cast<worker_process*>(req->data);
    w.writing = false;
    w.out_writing.clear();
    if (status < 0) return;  // the worker is gone; its exit callback settles its calls
    flush(w);
}

void flush(worker_process& w) noexcept {
    if (w.writing || w.out_pending.empty() || uv_is_closing(reinterpret_cast<uv_handle_t*>(&w.pipe))) return;
    w.out_writing.swap(w.out_pending);
    uv_buf_t buf = uv_buf_init(w.out_writing.data(), static_cast<unsigned>(w.out_writing.size()));
    w.write_req.data = &w;
    if (uv_write(&w.write_req, reinterpret_cast<uv_stream_t*>(&w.pipe), &buf, 1, &on_written) == 0) {
        w.writing = true;
    } else {
        w.out_writing.clear();
        kill_worker(w, "its channel could not be written to");
    }
}

void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
    auto& w = *static_cast<worker_process*>(h->data);
    try {
        std::size_t room = 0;
        char* p = w.decoder.prepare(room);
        *buf = uv_buf_init(p, static_cast<unsigned>(std::min<std::size_t>(room, 1u << 30)));
    } catch (...) {
        *buf = uv_buf_init(nullptr, 0);  // libuv reports UV_ENOBUFS to on_read
    }
}

void on_grace_over(uv_timer_t* t) noexcept {
    auto& w = *static_cast<worker_process*>(t->data);
    kill_worker(w, "");
}

void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) noexcept {
    auto& w = *static_cast<worker_process*>(s->data);
    entry_guard guard(*w.pool);
    if (nread > 0) {
        w.decoder.commit(static_cast<std::size_t>(nread));
        handle_frames(w);
    } else if (nread == UV_ENOBUFS) {
        uv_read_stop(s);
        kill_worker(w, "the parent ran out of memory for its message");
    } else if (nread < 0) {
        // EOF or an error: the worker is exiting (its exit callback follows)
        // or closed its channel while alive, which it may not do. Either way
        // it takes no more calls.
        uv_read_stop(s);
        if (!w.exited) {
            set_fault(w, "it closed its channel while alive");
            w.st = worker_process::state::dying;
            hold_loop(w, true);
            start_timer(w, std::chrono::milliseconds(1000), &on_grace_over);
        }
    }
}

/// Reads what the worker wrote before it died; libuv may report the exit
/// before the last bytes on the channel.
void drain_channel(worker_process& w) noexcept {
    auto* h = reinterpret_cast<uv_handle_t*>(&w.pipe);
    if (uv_is_closing(h)) return;
    uv_os_fd_t fd = -1;
    if (uv_fileno(h, &fd) != 0) return;
    for (;;) {
        std::size_t room = 0;
        char* p = nullptr;
        try {
            p = w.decoder.prepare(room);
        } catch (...) {
            set_fault(w, "the parent ran out of memory for its last message");
            break;
        }
        ssize_t n = ::read(fd, p, room);
        if (n > 0) {
            w.decoder.commit(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        break;  // EOF, EAGAIN (a grandchild holds the other end) or an error
    }
    handle_frames(w);
}

// Any child of the process changed state: if it was this worker, reap it.
void on_sigchld(uv_signal_t* h, int) noexcept {
    auto& w = *static_cast<worker_process*>(h->data);
    if (w.exited) return;
    int status = 0;
    pid_t r;
    do r = ::waitpid(w.pid, &status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) return;  // another child, or this one only stopped
    entry_guard guard(*w.pool);
    w.exited = true;
    if (r < 0) {
        // ECHILD: someone else reaped it, which only a waitpid(-1) in the
        // host can do (see docs/process-pool.md, Signals). Its status is lost, not its death.
        w.exit_status = -1;
    } else if (WIFSIGNALED(status)) {
        w.term_signal = WTERMSIG(status);
    } else {
        w.exit_status = WEXITSTATUS(status);
    }
    uv_signal_stop(h);
    drain_channel(w);
    finalize_exit(w);
}

void on_startup_deadline(uv_timer_t* t) noexcept {
    auto& w = *static_cast<worker_process*>(t->data);
    if (w.said_hello) return;
    entry_guard guard(*w.pool);
    kill_worker(w, [&] {
        return fmt::format("it did not start serving within {} ms (does its main() begin with "
                           "uvexec::worker_main(argc, argv)?)",
                           w.pool->opts_.startup_timeout.count());
    });
}

process_call* pop_head(worker_process& w) noexcept {
    process_call* c = w.head;
    w.head = c->next;
    if (w.head) w.head->prev = nullptr; else w.tail = nullptr;
    c->prev = c->next = nullptr;
    c->at = process_call::where::nowhere;
    c->worker = nullptr;
    --w.in_flight;
    --w.pool->in_flight_;
    return c;
}

template <class What>
void protocol_violation(worker_process& w, What&& what) noexcept {
    kill_worker(w, [&] { return "it sent a corrupt message (" + std::string(what()) + ")"; });
    w.decoder = frame_decoder(0);  // ignore anything else it sends
}

/// Handles the complete frames the decoder holds. Answers resolve their calls
/// (their waiters run when the caller's entry_guard ends).
void handle_frames(worker_process& w) noexcept {
    process_pool_core& pool = *w.pool;
    frame f{};
    while (w.st != worker_process::state::dying) {
        frame_decoder::status st;
        try {
            st = w.decoder.next(f);
        } catch (...) {  // growing the buffer for a large frame: std::bad_alloc
            kill_worker(w, "the parent ran out of memory for its message");
            break;
        }
        if (st == frame_decoder::status::need_more) break;
        if (st == frame_decoder::status::corrupt) {
            protocol_violation(w, [&]() -> const std::string& { return w.decoder.error(); });
            break;
        }
        if (f.kind == frame_kind::hello) {
            std::uint32_t version = 0;
            try {
                decode_from(f.payload, version);
            } catch (const std::exception&) {
                version = 0;
            }
            if (w.said_hello || version != protocol_version) {
                protocol_violation(w, [&] {
                    return fmt::format("a hello for protocol {} (expected {})", version, protocol_version);
                });
                break;
            }
            w.said_hello = true;
            pool.failed_starts_ = 0;
            if (w.st == worker_process::state::starting) {
                w.st = worker_process::state::ready;
                uv_timer_stop(&w.timer);
                if (w.in_flight == 0) hold_loop(w, false);
            }
        } else if (f.kind == frame_kind::result || f.kind == frame_kind::error) {
            if (w.head == nullptr || get_u64(w.head->frame.data() + 5) != f.id) {
                protocol_violation(w, [&] { return fmt::format("an answer to call #{}, which it was not running", f.id); });
                break;
            }
            process_call* c = pop_head(w);
            if (f.kind == frame_kind::result) c->deliver(c, f.payload);
            else if (!c->state->done()) c->state->resolve_exception(remote_exception(f.payload));
            pool.ready(*c);
            pool.on_call_done(w);
        } else if (f.kind == frame_kind::init_failed) {
            if (!pool.opts_.initializer) {
                // Only a worker that was asked to run an initializer can fail one.
                protocol_violation(w, [] { return "an initializer failure, but the pool has no initializer"; });
                break;
            }
            try {
                pool.break_pool(fmt::format("the initializer failed in worker {}: {}", w.pid, remote_text(f.payload)));
            } catch (...) {
                pool.break_pool("the initializer failed in worker (its report was lost: out of memory)");
            }
        } else {
            protocol_violation(w, [&] { return fmt::format("a frame of unknown kind {}", static_cast<int>(f.kind)); });
            break;
        }
    }
}

/// w has exited and been reaped: it leaves the pool, the calls it never
/// started go back to the front of the queue, and the one it was running
/// fails. Runs inside the caller's entry_guard.
void finalize_exit(worker_process& w) noexcept {
    process_pool_core& pool = *w.pool;
    close_handle(w, reinterpret_cast<uv_handle_t*>(&w.pipe));
    close_handle(w, reinterpret_cast<uv_handle_t*>(&w.timer));
    close_handle(w, reinterpret_cast<uv_handle_t*>(&w.child_watch));
    pool.forget(w);  // first: nothing can be sent to it from here on

    // A worker that never said hello never read a call: none of its calls
    // started. One that did runs its calls in order and answers each before
    // reading the next, so (its channel drained) the head is the one it was
    // running and the calls behind it were never started.
    const bool started = w.said_hello;
    process_call* running = started && w.head != nullptr ? pop_head(w) : nullptr;
    while (w.tail != nullptr) {
        process_call* c = w.tail;
        w.tail = c->prev;
        if (w.tail) w.tail->next = nullptr; else w.head = nullptr;
        c->prev = c->next = nullptr;
        c->worker = nullptr;
        c->at = process_call::where::nowhere;
        --w.in_flight;
        --pool.in_flight_;
        if (c->state->done()) pool.ready(*c);  // cancelled while it waited in the worker: it never runs
        else pool.requeue_front(*c);
    }

    if (!started && w.st != worker_process::state::retiring && !pool.broken_ && !pool.closing_) {
        // It died on its own (or missed its start-up deadline). That may be
        // passing (an OOM kill, a stray signal), so a replacement is tried; a
        // worker that forgot worker_main, or max_failed_starts in a row, will
        // fail the same way every time: the pool is broken (which fails the
        // calls it would have run, queued again above).
        const bool forgot_worker_main = w.term_signal == 0 && w.exit_status == unserved_worker_status;
        if (forgot_worker_main || ++pool.failed_starts_ >= process_pool_core::max_failed_starts) {
            try {
                std::string how = exit_description(w);
                pool.break_pool(forgot_worker_main
                                    ? fmt::format("a worker process ({}) failed to start: {}", w.pid, how)
                                    : fmt::format("{} worker processes in a row failed to start; the last ({}): {}",
                                                  pool.failed_starts_, w.pid, how));
            } catch (...) {
                pool.break_pool("worker processes failed to start");
            }
        }
    }
    if (running != nullptr) {
        running->state->resolve_exception(error_ptr([&] {
            return worker_died_error(fmt::format("uvexec: worker process {} ({}) died while running this call: {}",
                                                 w.pid, w.name, exit_description(w)),
                                     w.pid, static_cast<int>(w.exit_status), w.term_signal);
        }));
        pool.ready(*running);
    }
    pool.pump();  // the calls queued again, on a replacement or another worker
}

}  // namespace

// --- the pool ------------------------------------------------------------------

namespace {

std::size_t checked(const std::optional<int>& v, std::size_t fallback, const char* what) {
    if (!v) return fallback;
    if (*v < 1)
        throw std::invalid_argument(fmt::format("uvexec::process_pool_executor: {} must be at least 1, got {}", what, *v));
    return static_cast<std::size_t>(*v);
}

std::atomic<std::uint64_t> process_executor_counter{0};

/// True when a and b name the same file (a worker path given as this executable's).
bool same_file(const std::string& a, const std::string& b) {
    if (a == b) return true;
    struct stat sa{}, sb{};
    return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

std::string this_executable() {
    char buf[4096];
    std::size_t n = sizeof(buf);
    if (int r = uv_exepath(buf, &n); r != 0) throw uv_error(r, "uv_exepath");
    return std::string(buf, n);
}

}  // namespace

void ignore_sigpipe_by_default() {
    // Writing to a worker that just died raises SIGPIPE, whose default action
    // would kill the parent. As Python does at startup, ignore it, unless the
    // program has chosen a disposition of its own.
    struct sigaction current{};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
}

process_pool_core::process_pool_core(process_pool_options opts) : opts_(std::move(opts)) {
    refuse_unserved_worker();
    ignore_sigpipe_by_default();
    max_workers_ = checked(opts_.max_workers, std::max(1u, std::thread::hardware_concurrency()), "max_workers");
    checked(opts_.max_tasks_per_child, 1, "max_tasks_per_child");
    if (opts_.max_in_flight_per_worker < 1)
        throw std::invalid_argument("uvexec::process_pool_executor: max_in_flight_per_worker must be at least 1");
    if (opts_.max_frame_size < 1024 || opts_.max_frame_size > 0xffffffffu)
        throw std::invalid_argument("uvexec::process_pool_executor: max_frame_size must be between 1 KiB and 4 GiB - 1");
    if (opts_.startup_timeout.count() <= 0)
        throw std::invalid_argument("uvexec::process_pool_executor: startup_timeout must be positive");
    prefix_ = opts_.name_prefix.empty() ? fmt::format("ProcessPoolExecutor-{}", process_executor_counter++)
                                        : opts_.name_prefix;
    std::string self = this_executable();
    std::string exe = opts_.worker_executable.empty() ? self : opts_.worker_executable;
    names_only_ = !same_file(exe, self);
    if (opts_.initializer) check_identity(opts_.initializer->id, opts_.initializer->name);
    spawn_args_ = opts_.launcher;
    spawn_args_.push_back(exe);
    spawn_args_.push_back(worker_flag);
    spawn_args_.push_back(std::to_string(opts_.max_frame_size));
    // Worker name and parent pid are appended per worker.
    // The workers' environment is a copy of ours, taken now; ours is never
    // changed (other threads of the host may be reading it). A worker knows it
    // is one from its command line.
    for (char** e = environ; e && *e; ++e) spawn_env_.emplace_back(*e);
    slots_.assign(max_workers_, nullptr);
}

process_pool_core::~process_pool_core() = default;

void process_pool_core::accept(loop_core& lp) {
    if (broken_) throw broken_executor_error("uvexec: the process_pool_executor is broken: " + broken_why_);
    if (shut_down_) throw executor_shutdown_error("uvexec: cannot submit to a process_pool_executor after shutdown()");
    if (lp.closing()) throw loop_closed_error("uvexec: the loop is closed");
    if (loop_ == nullptr) {
        loop_ = &lp;
        lp.attach(*this);
    } else if (loop_ != &lp) {
        throw invalid_state_error("uvexec: this process_pool_executor is bound to another loop; use one executor per loop");
    }
}

void process_pool_core::check_identity(const function_identity& id, std::string_view name) const {
    if (!id.ambiguous) return;
    if (names_only_ || id.offset == 0)
        throw ambiguous_function_error(fmt::format(
            "uvexec: '{}' cannot be sent to a worker: this program has several functions of that qualified name "
            "and type (file-local functions of one name in several translation units, or in anonymous "
            "namespaces), and {} can tell them apart only by name. Give one of them another name or external "
            "linkage",
            name, names_only_ ? "a worker that is another executable" : "this platform's workers"));
}

std::vector<int> process_pool_core::worker_pids() const {
    std::vector<int> v;
    for (auto* w : slots_)
        if (w) v.push_back(w->pid);
    return v;
}

void process_pool_core::submit(process_call& call) noexcept {
    entry_guard guard(*this);
    call.at = process_call::where::queued;
    call.prev = queue_tail_;
    call.next = nullptr;
    if (queue_tail_) queue_tail_->next = &call; else queue_head_ = &call;
    queue_tail_ = &call;
    ++queued_count_;
    pump();
}

void process_pool_core::requeue_front(process_call& call) noexcept {
    call.at = process_call::where::queued;
    call.prev = nullptr;
    call.next = queue_head_;
    if (queue_head_) queue_head_->prev = &call; else queue_tail_ = &call;
    queue_head_ = &call;
    ++queued_count_;
}

void process_pool_core::ready(process_call& call) noexcept {
    call.at = process_call::where::nowhere;
    call.prev = nullptr;
    call.next = nullptr;
    if (ready_tail_) ready_tail_->next = &call; else ready_head_ = &call;
    ready_tail_ = &call;
    ++ready_count_;
}

void process_pool_core::notify_ready() noexcept {
    if (notifying_) return;  // the outer drain below takes what is added meanwhile
    notifying_ = true;
    ++busy_;
    while (process_call* c = ready_head_) {
        ready_head_ = c->next;
        if (ready_head_ == nullptr) ready_tail_ = nullptr;
        c->next = nullptr;
        --ready_count_;
        future_state_base* st = c->state;
        st->notify_waiters();
        st->release();
    }
    --busy_;
    notifying_ = false;
}

void process_pool_core::cancel(process_call& call) noexcept {
    if (call.at != process_call::where::queued) return;  // a sent call runs on; its answer is dropped
    entry_guard guard(*this);
    if (call.prev) call.prev->next = call.next; else queue_head_ = call.next;
    if (call.next) call.next->prev = call.prev; else queue_tail_ = call.prev;
    call.prev = call.next = nullptr;
    call.at = process_call::where::nowhere;
    --queued_count_;
    call.state->release();  // the canceller holds its own reference
}

worker_process* process_pool_core::spawn_worker(std::size_t slot) {
    // Everything that allocates comes first: if it throws, nothing is open yet.
    auto owned = std::make_unique<worker_process>(opts_.max_frame_size);
    worker_process* w = owned.get();
    w->pool = this;
    w->slot = slot;
    w->name = fmt::format("{}_{}", prefix_, slot);
    std::vector<std::string> args = spawn_args_;
    args.push_back(w->name);
    args.push_back(opts_.launcher.empty() ? std::to_string(::getpid()) : "0");
    args.push_back(opts_.stdio_channel ? "stdio" : std::to_string(channel_fd));
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    envp.reserve(spawn_env_.size() + 1);
    for (auto& e : spawn_env_) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string spawn_what = fmt::format("posix_spawn of worker '{}'", argv[0]);
    if (opts_.initializer) {
        std::string key;
        put_u64(key, opts_.initializer->id.key);
        put_u64(key, opts_.initializer->id.offset);
        append_frame(w->out_pending, frame_kind::init, 0, key);
    }
    owned.release();  // from here on, the handles' close callbacks free it

    // The channel is a socketpair we make ourselves, so the worker's end can
    // be put on descriptor 3, or on 0 and 1 for launchers that forward only
    // stdio. Both ends are close-on-exec; the child's dup2 copies are not.
    uv_os_sock_t ends[2];
    if (int r = uv_socketpair(SOCK_STREAM, 0, ends, UV_NONBLOCK_PIPE, 0); r != 0) {
        spawn_error_ = error_ptr([&] { return uv_error(r, "uv_socketpair for a worker's channel"); });
        delete w;  // no handle is open yet
        return nullptr;
    }
    if (ends[1] <= channel_fd) {
        // dup2 onto itself would leave it close-on-exec: move it above 3 first.
        int moved = ::fcntl(ends[1], F_DUPFD_CLOEXEC, channel_fd + 1);
        int err = errno;
        ::close(ends[1]);
        if (moved < 0) {
            spawn_error_ = error_ptr([&] { return uv_error(-err, "fcntl(F_DUPFD_CLOEXEC) for a worker's channel"); });
            ::close(ends[0]);
            delete w;
            return nullptr;
        }
        ends[1] = moved;
    }
    w->child_watch.data = w->pipe.data = w->timer.data = w;
    int r = uv_pipe_init(loop_->uv(), &w->pipe, 0);  // cannot fail in libuv 1.x; checked all the same
    if (r != 0) {
        spawn_error_ = error_ptr([&] { return uv_error(r, "uv_pipe_init for a worker's channel"); });
        ::close(ends[0]);
        ::close(ends[1]);
        delete w;  // no handle is open yet
        return nullptr;
    }
    w->open_handles = 1;
    if (r = uv_pipe_open(&w->pipe, ends[0]); r != 0) {
        spawn_error_ = error_ptr([&] { return uv_error(r, "uv_pipe_open of a worker's channel"); });
        ::close(ends[0]);
        ::close(ends[1]);
        close_handle(*w, reinterpret_cast<uv_handle_t*>(&w->pipe));
        return nullptr;
    }
    // Watching SIGCHLD before the child exists: no exit can go unseen.
    // (uv_signal_init can fail: the loop's first one makes a pipe.)
    r = uv_signal_init(loop_->uv(), &w->child_watch);
    if (r == 0) {
        ++w->open_handles;
        r = uv_signal_start(&w->child_watch, &on_sigchld, SIGCHLD);
        if (r != 0) close_handle(*w, reinterpret_cast<uv_handle_t*>(&w->child_watch));
    }
    if (r != 0) {
        spawn_error_ = error_ptr([&] { return uv_error(r, "uv_signal_start(SIGCHLD) to watch a worker"); });
        ::close(ends[1]);
        close_handle(*w, reinterpret_cast<uv_handle_t*>(&w->pipe));
        return nullptr;
    }

    // posix_spawn, not uv_spawn: glibc's clones the parent without copying
    // its page tables (CLONE_VM | CLONE_VFORK), where libuv 1.44's fork()
    // holds the loop thread for a time that grows with the parent's resident
    // memory (about 120 ms per worker from a 4 GiB heap; bench_process_startup
    // --heap-mb). Like libuv, the child gets default signal dispositions, an
    // empty signal mask, and /dev/null as stdin.
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    if (opts_.stdio_channel) {
        posix_spawn_file_actions_adddup2(&actions, ends[1], 0);
        posix_spawn_file_actions_adddup2(&actions, ends[1], 1);
    } else {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&actions, ends[1], channel_fd);
    }
    pid_t pid = 0;
    r = ::posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    ::close(ends[1]);
    if (r != 0) {
        spawn_error_ = error_ptr([&] { return uv_error(-r, spawn_what); });
        close_handle(*w, reinterpret_cast<uv_handle_t*>(&w->pipe));
        close_handle(*w, reinterpret_cast<uv_handle_t*>(&w->child_watch));
        return nullptr;
    }
    w->pid = pid;
    uv_timer_init(loop_->uv(), &w->timer);
    w->timer.data = w;
    ++w->open_handles;
    start_timer(*w, opts_.startup_timeout, &on_startup_deadline);
    if (r = uv_read_start(reinterpret_cast<uv_stream_t*>(&w->pipe), &on_alloc, &on_read); r != 0)
        kill_worker(*w, "its channel could not be read");  // reaped as usual; its calls go elsewhere
    slots_[slot] = w;
    ++live_workers_;
    return w;
}

void process_pool_core::pump() noexcept {
    if (broken_ || loop_ == nullptr || busy_pumping_) return;
    busy_pumping_ = true;
    const auto depth = static_cast<std::size_t>(opts_.max_in_flight_per_worker);
    const auto max_tasks = static_cast<std::size_t>(opts_.max_tasks_per_child.value_or(0));
    bool spawn_failed = false;
    while (queue_head_ != nullptr) {
        worker_process* best = nullptr;
        for (auto* w : slots_)
            if (w && w->accepting(max_tasks) && w->in_flight < depth && (!best || w->in_flight < best->in_flight))
                best = w;
        if (best == nullptr || best->in_flight > 0) {
            // An idle new worker beats queueing behind a busy one.
            if (live_workers_ < max_workers_ && !spawn_failed) {
                std::size_t slot = 0;
                while (slots_[slot] != nullptr) ++slot;
                worker_process* w = nullptr;
                try {
                    w = spawn_worker(slot);
                } catch (...) {
                    spawn_error_ = std::current_exception();
                }
                if (w != nullptr) {
                    best = w;
                } else {
                    spawn_failed = true;
                    if (live_workers_ == 0) {
                        fail_queued(false, spawn_error_);
                        break;
                    }
                }
            }
        }
        if (best == nullptr) break;
        process_call& c = *queue_head_;
        // Patch the call's id and length in, then queue its bytes for writing.
        std::uint64_t id = next_id_;
        char header[frame_header_size];
        put_frame_header(header, frame_kind::call, id, c.frame.size() - frame_header_size);
        std::memcpy(c.frame.data(), header, frame_header_size);  // NOLINT: sizes checked at submit
        queue_head_ = c.next;
        if (queue_head_) queue_head_->prev = nullptr; else queue_tail_ = nullptr;
        --queued_count_;
        try {
            best->out_pending.append(c.frame);
        } catch (...) {  // std::bad_alloc: this call fails, the pool carries on
            c.state->resolve_exception(std::current_exception());
            ready(c);
            continue;
        }
        ++next_id_;
        c.at = process_call::where::sent;
        c.worker = best;
        c.prev = best->tail;
        c.next = nullptr;
        if (best->tail) best->tail->next = &c; else best->head = &c;
        best->tail = &c;
        if (best->in_flight++ == 0) hold_loop(*best, true);
        ++best->calls_sent;
        ++in_flight_;
    }
    for (auto* w : slots_)
        if (w) flush(*w);
    busy_pumping_ = false;
}

void process_pool_core::on_call_done(worker_process& w) noexcept {
    const auto max_tasks = static_cast<std::size_t>(opts_.max_tasks_per_child.value_or(0));
    if (max_tasks != 0 && w.calls_sent >= max_tasks && w.in_flight == 0) retire(w);
    pump();
    if (w.in_flight == 0 && w.st == worker_process::state::ready) hold_loop(w, false);
}

void process_pool_core::retire(worker_process& w) noexcept {
    if (w.st == worker_process::state::retiring || w.st == worker_process::state::dying || w.exited) return;
    w.st = worker_process::state::retiring;
    hold_loop(w, true);  // its exit is due
    // Closing our end is the worker's signal to exit; it is reaped in on_sigchld.
    close_handle(w, reinterpret_cast<uv_handle_t*>(&w.pipe));
    start_timer(w, retire_grace, &on_grace_over);
}

void process_pool_core::forget(worker_process& w) noexcept {
    if (slots_[w.slot] != &w) return;
    slots_[w.slot] = nullptr;
    --live_workers_;
}

void process_pool_core::break_pool(std::string_view why) noexcept {
    if (broken_) return;
    broken_ = true;
    auto error = error_ptr([&] {
        broken_why_ = why;
        return broken_executor_error("uvexec: the process_pool_executor is broken: " + std::string(why));
    });
    fail_queued(false, error);
    for (auto* w : slots_) {
        if (!w) continue;
        while (w->head) {
            process_call* c = pop_head(*w);
            c->state->resolve_exception(error);
            ready(*c);
        }
        kill_worker(*w, "the pool is broken");
    }
}

void process_pool_core::fail_queued(bool cancel, const std::exception_ptr& why) noexcept {
    // The whole queue is taken first: what the waiters submit when they run
    // (later, in notify_ready) is not failed with it.
    process_call* list = queue_head_;
    queue_head_ = queue_tail_ = nullptr;
    queued_count_ = 0;
    while (process_call* c = list) {
        list = c->next;
        c->at = process_call::where::nowhere;
        if (cancel) c->state->resolve_cancelled();
        else c->state->resolve_exception(why);
        ready(*c);
    }
}

future<void> process_pool_core::shutdown(bool cancel_futures) {
    auto w = state_ptr<future_state<void>>::adopt(new future_state<void>(loop_));
    shutdown_waiters_.reserve(shutdown_waiters_.size() + 1);
    entry_guard guard(*this);
    shut_down_ = true;
    if (cancel_futures) fail_queued(true, {});
    w->add_ref();
    shutdown_waiters_.push_back(w.get());
    return make_future(std::move(w));
}

void process_pool_core::settle() noexcept {
    if (busy_ != 0 || ready_count_ != 0) return;
    if ((shut_down_ || broken_) && queued_count_ == 0 && in_flight_ == 0)
        for (auto* w : slots_)
            if (w) retire(*w);
    if (live_workers_ != 0 || in_flight_ != 0 || queued_count_ != 0) return;
    // A waiter that runs here may call shutdown() again (its future joins the
    // list) or submit (then the pool is no longer idle): look again.
    while (!shutdown_waiters_.empty() && live_workers_ == 0 && in_flight_ == 0 && queued_count_ == 0 &&
           ready_count_ == 0) {
        ++busy_;
        complete_and_release(shutdown_waiters_);
        --busy_;
    }
    if (orphaned_ && live_workers_ == 0 && in_flight_ == 0 && queued_count_ == 0 && ready_count_ == 0) {
        if (loop_) loop_->detach(*this);
        delete this;
    }
}

void process_pool_core::orphan() noexcept {
    entry_guard guard(*this);
    shut_down_ = true;
    orphaned_ = true;
    fail_queued(true, {});
}

void process_pool_core::on_loop_closing() noexcept {
    // Nobody can receive answers any more: queued calls are cancelled, sent
    // ones too, and the workers are killed (and reaped while the loop drains).
    // Their waiters run later, from the reaping callbacks or on_loop_closed:
    // the loop is walking its list of clients now, which they might change.
    ++busy_;
    closing_ = true;
    fail_queued(true, {});
    for (auto* w : slots_) {
        if (!w) continue;
        while (w->head) {
            process_call* c = pop_head(*w);
            c->state->resolve_cancelled();
            ready(*c);
        }
        kill_worker(*w, "its loop was closed");
    }
    --busy_;
}

void process_pool_core::on_loop_closed() noexcept {
    entry_guard guard(*this);
    loop_ = nullptr;
    closing_ = false;
}

}  // namespace detail

process_pool_executor::process_pool_executor(process_pool_options opts)
    : core_(new detail::process_pool_core(std::move(opts))) {}

process_pool_executor::~process_pool_executor() { core_->orphan(); }

}  // namespace uvexec
