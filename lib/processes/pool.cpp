// uvexec — the process pool: accepting, dispatching and settling calls.
#include "pool.hpp"

#include <atomic>
#include <csignal>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>
#include <utility>

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "../error_ptr.hpp"
#include "fork_server.hpp"
#include "spawn.hpp"
#include "uvexec/detail/worker.hpp"
#include "worker_limits.hpp"
#include "worker_process.hpp"

extern char** environ;

namespace uvexec::inline v0 {
namespace detail {

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

void ignore_sigpipe_by_default() {
    // Writing to a worker that just died raises SIGPIPE, whose default action
    // would kill the parent. As Python does at startup, ignore it, unless the
    // program has chosen a disposition of its own.
    struct sigaction current{};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
}

}  // namespace

process_pool_core::process_pool_core(process_pool_options opts) : opts_(std::move(opts)) {
    refuse_unserved_worker();
    ignore_sigpipe_by_default();
    max_workers_ = checked(opts_.max_workers, std::max(1u, std::thread::hardware_concurrency()), "max_workers");
    checked(opts_.max_tasks_per_child, 1, "max_tasks_per_child");
    if (opts_.max_in_flight_per_worker < 1)
        throw std::invalid_argument("uvexec::process_pool_executor: max_in_flight_per_worker must be at least 1");
    if (opts_.pipeline_below.count() < 0)
        throw std::invalid_argument("uvexec::process_pool_executor: pipeline_below must not be negative");
    if (opts_.max_frame_size < 1024 || opts_.max_frame_size > 0xffffffffu)
        throw std::invalid_argument("uvexec::process_pool_executor: max_frame_size must be between 1 KiB and 4 GiB - 1");
    if (opts_.startup_timeout.count() <= 0)
        throw std::invalid_argument("uvexec::process_pool_executor: startup_timeout must be positive");
    if (opts_.cancel_grace && opts_.cancel_grace->count() < 0)
        throw std::invalid_argument("uvexec::process_pool_executor: cancel_grace must not be negative");
    policy_.max_in_flight = static_cast<std::size_t>(opts_.max_in_flight_per_worker);
    policy_.max_tasks = static_cast<std::size_t>(opts_.max_tasks_per_child.value_or(0));
    using us = std::chrono::microseconds;
    policy_.pipeline_below = opts_.pipeline_below == us::max()
                                 ? std::numeric_limits<std::uint64_t>::max()
                                 : static_cast<std::uint64_t>(std::chrono::nanoseconds(opts_.pipeline_below).count());
    prefix_ = opts_.name_prefix.empty() ? fmt::format("ProcessPoolExecutor-{}", process_executor_counter++)
                                        : opts_.name_prefix;
    std::string self = this_executable();
    std::string exe = opts_.worker_executable.empty() ? self : opts_.worker_executable;
    names_only_ = !same_file(exe, self);
    if (opts_.initializer) check_identity(opts_.initializer->id, opts_.initializer->name);
    // A launcher that forwards only stdio (ssh, srun) sets the stdio channel:
    // from here on opts_.stdio_channel says where the channel goes.
    if (opts_.launcher.stdio_channel) opts_.stdio_channel = true;
    spawn_args_ = {exe, worker_flag, std::to_string(opts_.max_frame_size)};
    // Worker name and parent pid are appended per worker, then the launcher
    // put in front (launch_command: quoted for a remote shell if it asks).
    // The workers' environment is a copy of ours, taken now; ours is never
    // changed (other threads of the host may be reading it). A worker knows it
    // is one from its command line.
    for (char** e = environ; e && *e; ++e) spawn_env_.emplace_back(*e);
    slots_.assign(max_workers_, nullptr);
    if (opts_.max_queue && *opts_.max_queue == 0)
        throw std::invalid_argument("uvexec::process_pool_executor: max_queue must be at least 1 (unset: unbounded)");
    max_queue_ = opts_.max_queue.value_or(0);
    if (opts_.min_workers) {
        if (*opts_.min_workers < 0 || static_cast<std::size_t>(*opts_.min_workers) > max_workers_)
            throw std::invalid_argument(fmt::format(
                "uvexec::process_pool_executor: min_workers must be between 0 and max_workers ({}), got {}",
                max_workers_, *opts_.min_workers));
        min_workers_ = static_cast<std::size_t>(*opts_.min_workers);
    }
    if (opts_.idle_timeout && opts_.idle_timeout->count() <= 0)
        throw std::invalid_argument("uvexec::process_pool_executor: idle_timeout must be positive (unset: never)");
    if (opts_.max_worker_memory && *opts_.max_worker_memory == 0)
        throw std::invalid_argument("uvexec::process_pool_executor: max_worker_memory must be positive (unset: none)");
    if (opts_.limits.address_space && *opts_.limits.address_space == 0)
        throw std::invalid_argument("uvexec::process_pool_executor: limits.address_space must be positive (unset: none)");
    if (opts_.limits.cpu_time && opts_.limits.cpu_time->count() <= 0)
        throw std::invalid_argument("uvexec::process_pool_executor: limits.cpu_time must be positive (unset: none)");
    if (auto spec = limits_of(opts_); spec.any()) limits_word_ = limits_word(spec);
    if (opts_.start_method == process_start_method::forkserver) {
        // Its workers' channels cross a Unix socket and its workers are
        // watched through pidfds: it must run on this machine, with the
        // channel on a descriptor.
        if (opts_.launcher.remote)
            throw std::invalid_argument(
                "uvexec::process_pool_executor: start_method forkserver cannot be used with a remote launcher "
                "(ssh_launcher, srun_launcher: the fork server passes descriptors and pidfds, which do not cross "
                "hosts); use start_method spawn");
        if (opts_.stdio_channel)
            throw std::invalid_argument(
                "uvexec::process_pool_executor: start_method forkserver cannot be used with stdio_channel (a fork "
                "server passes each worker's channel as a descriptor, which a launcher that forwards only stdio "
                "cannot carry); use start_method spawn");
        fork_server_args_ = opts_.launcher.words;
        fork_server_args_.push_back(exe);
        fork_server_args_.push_back(fork_server_flag);
        fork_server_args_.push_back(std::to_string(opts_.max_frame_size));
        fork_server_args_.push_back(opts_.launcher.empty() ? std::to_string(::getpid()) : "0");
        if (!limits_word_.empty()) fork_server_args_.push_back(limits_word_);
    }
}

process_pool_core::~process_pool_core() { release_fork_server(std::exchange(fork_server_, nullptr)); }

void process_pool_core::accept(loop_core& lp) {
    bind(lp);
    if (max_queue_ != 0 && queued_count_ >= max_queue_) {
        recorder_.rejected();
        throw queue_full_error(fmt::format(
            "uvexec: process_pool_executor '{}' has max_queue ({}) calls waiting; co_await room() or try later",
            prefix_, max_queue_));
    }
}

void process_pool_core::bind(loop_core& lp) {
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

void process_pool_core::start(loop_core& lp) {
    bind(lp);
    entry_guard guard(*this);
    if (!keep_min_workers() && live_workers_ == 0 && spawn_error_) std::rethrow_exception(spawn_error_);
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
        if (w && w->pid != 0) v.push_back(w->pid);  // not a worker whose fork server has not answered yet
    return v;
}

// --- the queue ---------------------------------------------------------------------

void process_pool_core::submit(process_call& call) noexcept {
    entry_guard guard(*this);
    call.accepted_at = uv_hrtime();
    recorder_.submitted();
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

process_call* process_pool_core::pop_queue() noexcept {
    process_call* c = queue_head_;
    queue_head_ = c->next;
    if (queue_head_) queue_head_->prev = nullptr; else queue_tail_ = nullptr;
    c->prev = c->next = nullptr;
    --queued_count_;
    return c;
}

void process_pool_core::cancel(process_call& call) noexcept {
    if (call.at == process_call::where::sent) {
        // It runs on (its answer will be dropped), asked to stop if it takes
        // a std::stop_token, within its cancel_grace if the pool has one.
        if (call.worker != nullptr && (call.stoppable || opts_.cancel_grace)) {
            entry_guard guard(*this);
            if (call.stoppable) ask_to_stop(*call.worker, call);
            watch_cancelled_head(*call.worker);
        }
        return;
    }
    if (call.at != process_call::where::queued) return;
    entry_guard guard(*this);
    if (call.prev) call.prev->next = call.next; else queue_head_ = call.next;
    if (call.next) call.next->prev = call.prev; else queue_tail_ = call.prev;
    call.prev = call.next = nullptr;
    call.at = process_call::where::nowhere;
    --queued_count_;
    recorder_.ended(status::cancelled);
    call.state->release();  // the canceller holds its own reference
}

void process_pool_core::ready(process_call& call) noexcept {
    recorder_.ended(call.state->state());
    call.at = process_call::where::nowhere;
    call.prev = nullptr;
    call.next = nullptr;
    if (ready_tail_) ready_tail_->next = &call; else ready_head_ = &call;
    ready_tail_ = &call;
    ++ready_count_;
}

void process_pool_core::notify_ready() noexcept {
    // Only the outermost entry runs waiters; the drain below also takes what
    // they add meanwhile.
    if (notifying_ || busy_ != 0) return;
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

// --- dispatch ----------------------------------------------------------------------

worker_process* process_pool_core::spawn_worker(std::size_t slot) noexcept {
    // Everything that allocates comes first: if it throws, nothing is open yet.
    worker_process* w = nullptr;
    std::vector<std::string> args;
    try {
        w = new worker_process(*this, opts_.max_frame_size);
        w->slot = slot;
        w->name = fmt::format("{}_{}", prefix_, slot);
        std::vector<std::string> words = spawn_args_;
        words.push_back(w->name);
        words.push_back(opts_.launcher.empty() ? std::to_string(::getpid()) : "0");
        words.push_back(opts_.stdio_channel ? "stdio" : std::to_string(channel_fd));
        if (!limits_word_.empty()) words.push_back(limits_word_);
        args = launch_command(opts_.launcher, std::move(words));
        if (opts_.initializer) {
            std::string key;
            put_u64(key, opts_.initializer->id.key);
            put_u64(key, opts_.initializer->id.offset);
            append_frame(w->ch.out_pending, frame_kind::init, 0, key);
        }
    } catch (...) {
        delete w;
        spawn_error_ = std::current_exception();
        return nullptr;
    }
    int ends[2];
    if (auto e = make_channel(ends)) {
        delete w;  // no handle is open yet
        spawn_error_ = std::move(e);
        return nullptr;
    }
    const bool forked = opts_.start_method == process_start_method::forkserver;
    if (auto e = open_worker(*w, *loop_, ends[0], forked)) {  // on failure w is closed (or freed) and ends[0] closed
        ::close(ends[1]);
        spawn_error_ = std::move(e);
        return nullptr;
    }
    int pid = 0;
    auto e = forked ? fork_from_server(*w, ends[1])
                    : spawn_worker_process(args, spawn_env_, ends[1], opts_.stdio_channel, pid);
    ::close(ends[1]);
    if (e) {
        abandon_worker(*w);
        spawn_error_ = std::move(e);
        return nullptr;
    }
    if (forked) worker_requested(*w);  // its pid comes with the fork server's answer
    else worker_started(*w, pid);
    ++recorder_.counters().starts;
    slots_[slot] = w;
    ++live_workers_;
    return w;
}

std::exception_ptr process_pool_core::fork_from_server(worker_process& w, int child_end) noexcept {
    // A fork server that died (or stopped answering) is let go of; its
    // workers serve on, watched through their pidfds. A new one starts.
    if (fork_server_ != nullptr && !fork_server_usable(*fork_server_))
        release_fork_server(std::exchange(fork_server_, nullptr));
    if (fork_server_ == nullptr)
        if (auto e = start_fork_server(*loop_, fork_server_args_, spawn_env_, fork_server_)) return e;
    auto e = fork_worker(*fork_server_, w.name, child_end, w.watch);
    if (e && fork_server_unserved(*fork_server_)) break_with(e);
    return e;
}

void process_pool_core::break_with(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        break_pool(x.what());
    } catch (...) {
        break_pool("the fork server failed to start a worker");
    }
}

void process_pool_core::fork_failed(const std::exception_ptr& why, bool unserved) noexcept {
    // As for a spawned worker that forgot worker_main: every start would fail
    // the same way. Else as a failed spawn, but counted: a fork server that
    // fails at once must not be restarted for ever.
    if (unserved || count_failed_start()) {
        break_with(why);
        return;
    }
    spawn_error_ = why;
    if (live_workers_ == 0) fail_queued(false, why);
}

void process_pool_core::send_head(worker_process& w, std::uint64_t now) noexcept {
    process_call& c = *pop_queue();
    // Patch the call's id and length in, then queue its bytes for writing.
    char header[frame_header_size];
    put_frame_header(header, frame_kind::call, next_id_, c.frame.size() - frame_header_size);
    std::memcpy(c.frame.data(), header, frame_header_size);  // NOLINT: sizes checked at submit
    try {
        send_frame(w.ch, c.frame);
    } catch (...) {  // std::bad_alloc: this call fails, the pool carries on
        c.state->resolve_exception(std::current_exception());
        ready(c);
        return;
    }
    ++next_id_;
    if (c.cost == nullptr) c.cost = costs_.slot(get_u64(c.frame.data() + frame_header_size));
    c.sent_at = now;
    count_sent(w, c, policy_);
    push_call(w, c);
    ++in_flight_;
}

void process_pool_core::pump() noexcept {
    if (broken_ || loop_ == nullptr || pumping_) return;
    pumping_ = true;
    bool spawn_failed = false;
    const std::uint64_t now = uv_hrtime();
    while (queue_head_ != nullptr) {
        schedule_choice choice =
            choose_worker(slots_, live_workers_, spawn_failed ? live_workers_ : max_workers_, policy_, now);
        if (choice.what == schedule_choice::action::spawn) {
            std::size_t slot = 0;
            while (slots_[slot] != nullptr) ++slot;
            choice.to = spawn_worker(slot);
            if (choice.to == nullptr) {
                spawn_failed = true;
                if (live_workers_ == 0) {
                    fail_queued(false, spawn_error_);
                    break;
                }
                continue;  // to the workers there are
            }
        }
        if (choice.to == nullptr) break;  // every worker is busy: the first to answer takes the next
        send_head(*choice.to, now);
    }
    if (!spawn_failed) keep_min_workers();
    for (auto* w : slots_)
        if (w) flush(w->ch);
    pumping_ = false;
}

std::size_t process_pool_core::serving_workers() const noexcept {
    return static_cast<std::size_t>(std::count_if(slots_.begin(), slots_.end(),
                                                  [](const worker_process* w) { return w && w->serving(); }));
}

bool process_pool_core::keep_min_workers() noexcept {
    if (min_workers_ == 0 || broken_ || shut_down_ || closing_ || loop_ == nullptr) return true;
    // A retiring worker keeps its slot until it is reaped: its replacement
    // starts then (this runs again from finalize_exit's pump).
    for (std::size_t n = serving_workers(); n < min_workers_ && live_workers_ < max_workers_; ++n) {
        std::size_t slot = 0;
        while (slots_[slot] != nullptr) ++slot;
        if (spawn_worker(slot) == nullptr) return false;
    }
    return true;
}

void process_pool_core::on_call_done(worker_process& w) noexcept {
    if (w.in_flight == 0 && w.st == worker_process::state::ready) {
        if (w.over_memory) {
            ++recorder_.counters().memory_recycles;
            retire_worker(w);
        } else if (policy_.max_tasks != 0 && w.calls_sent >= policy_.max_tasks) {
            ++recorder_.counters().recycles;
            retire_worker(w);
        }
    }
    pump();
    if (w.in_flight == 0 && w.st == worker_process::state::ready) {
        hold_loop(w, false);
        watch_idle(w);
    }
}

void process_pool_core::on_worker_idle(worker_process& w) noexcept {
    if (w.in_flight != 0 || w.st != worker_process::state::ready || w.exited) return;
    if (serving_workers() <= min_workers_) return;  // it stays, idle, until a call comes
    ++recorder_.counters().idle_exits;
    retire_worker(w);
}

void process_pool_core::forget(worker_process& w) noexcept {
    if (slots_[w.slot] != &w) return;
    slots_[w.slot] = nullptr;
    --live_workers_;
}

// --- ending ------------------------------------------------------------------------

void process_pool_core::break_pool(std::string_view why) noexcept {
    if (broken_) return;
    broken_ = true;
    auto error = error_ptr([&] {
        broken_why_ = why;
        return broken_executor_error("uvexec: the process_pool_executor is broken: " + std::string(why));
    });
    close_room(error);
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

/// A future that settle() completes once no call and no worker is left.
future<void> process_pool_core::shutdown_future() {
    auto w = state_ptr<future_state<void>>::adopt(new future_state<void>(loop_));
    shutdown_waiters_.reserve(shutdown_waiters_.size() + 1);
    w->add_ref();
    shutdown_waiters_.push_back(w.get());
    return make_future(std::move(w));
}

future<void> process_pool_core::shutdown(bool cancel_futures) {
    auto f = shutdown_future();
    entry_guard guard(*this);
    shut_down_ = true;
    close_room(nullptr);
    if (cancel_futures) {
        fail_queued(true, {});
        // Sent calls that take a std::stop_token are asked to stop (their
        // futures get what they return), as on the thread pool.
        for (auto* w : slots_)
            if (w)
                for (process_call* c = w->head; c; c = c->next)
                    if (c->stoppable && !c->state->done()) ask_to_stop(*w, *c);  // a cancelled one was asked
    }
    return f;
}

future<void> process_pool_core::stop_workers(int sig, const char* who) {
    auto f = shutdown_future();
    entry_guard guard(*this);
    shut_down_ = true;
    close_room(nullptr);
    fail_queued(true, {});
    for (auto* w : slots_)
        if (w) stop_worker(*w, sig, who);
    return f;
}

void process_pool_core::settle() noexcept {
    if (busy_ != 0 || ready_count_ != 0) return;
    if ((shut_down_ || broken_) && queued_count_ == 0 && in_flight_ == 0)
        for (auto* w : slots_)
            if (w) retire_worker(*w);
    if (live_workers_ != 0 || in_flight_ != 0 || queued_count_ != 0) return;
    // No worker left to fork for a pool that takes no more calls: the fork
    // server exits (it is reaped by the loop's reaper, on its own).
    if (shut_down_ || broken_) release_fork_server(std::exchange(fork_server_, nullptr));
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
    close_room(nullptr);
    fail_queued(true, {});
}

void process_pool_core::on_loop_closing() noexcept {
    // Nobody can receive answers any more: queued calls are cancelled, sent
    // ones too, and the workers are killed (and reaped while the loop drains).
    // Their waiters run later, from the reaping callbacks or on_loop_closed:
    // the loop is walking its list of clients now, which they might change.
    ++busy_;
    closing_ = true;
    room_.cancel_all();
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
    release_fork_server(std::exchange(fork_server_, nullptr));  // killed by its own loop client
    --busy_;
}

void process_pool_core::on_loop_closed() noexcept {
    entry_guard guard(*this);
    loop_ = nullptr;
    closing_ = false;
}

// --- room and metrics ----------------------------------------------------------------

void process_pool_core::offer_room() noexcept {
    if (busy_ != 0 || room_.empty()) return;
    ++busy_;  // what a woken waiter does (submit, shut down, destroy the executor) waits for the end
    room_.offer([this]() noexcept { return queued_count_ < max_queue_ ? max_queue_ - queued_count_ : 0; });
    --busy_;
    notify_ready();
}

/// Room waiters fail with why, or with executor_shutdown_error when it is null.
void process_pool_core::close_room(std::exception_ptr why) noexcept {
    if (!why) why = error_ptr([] { return executor_shutdown_error("uvexec: the process_pool_executor was shut down"); });
    ++busy_;
    room_.close(std::move(why));
    --busy_;
}

future<void> process_pool_core::room(loop_core& lp) {
    // After shutdown or once broken the queue is closed: the future fails.
    return room_.wait(lp, max_queue_ == 0 || queued_count_ < max_queue_);
}

void process_pool_core::count_exit(const worker_process& w) noexcept {
    worker_deaths& d = recorder_.counters().deaths;
    if (w.killed) ++d.killed;
    else if (w.term_signal != 0) ++d.crashed;
    else if (w.st != worker_process::state::retiring) ++d.exited;
}

executor_stats process_pool_core::stats() const noexcept {
    return recorder_.snapshot(queued_count_, in_flight_, live_workers_, max_workers_, max_queue_, uv_hrtime());
}

void cancel_call(process_call& call) noexcept { call.pool->cancel(call); }

}  // namespace detail

// --- the executor ----------------------------------------------------------------

process_pool_executor::process_pool_executor(process_pool_options opts)
    : core_(new detail::process_pool_core(std::move(opts))) {}

process_pool_executor::~process_pool_executor() { core_->orphan(); }

std::size_t process_pool_executor::admit(loop& lp, const detail::function_identity& id, std::string_view name) {
    core_->check_identity(id, name);
    core_->accept(lp.core());
    return core_->max_frame_size();
}

void process_pool_executor::enqueue(detail::process_call& call) noexcept { core_->submit(call); }

future<void> process_pool_executor::shutdown(bool cancel_futures) { return core_->shutdown(cancel_futures); }
future<void> process_pool_executor::terminate_workers() { return core_->stop_workers(SIGTERM, "terminate_workers()"); }
future<void> process_pool_executor::kill_workers() { return core_->stop_workers(SIGKILL, "kill_workers()"); }
std::size_t process_pool_executor::max_workers() const noexcept { return core_->max_workers(); }
std::size_t process_pool_executor::live_workers() const noexcept { return core_->live_workers(); }
std::size_t process_pool_executor::queued() const noexcept { return core_->queued(); }
std::vector<int> process_pool_executor::worker_pids() const { return core_->worker_pids(); }
future<void> process_pool_executor::room(loop& lp) { return core_->room(lp.core()); }
void process_pool_executor::start(loop& lp) { core_->start(lp.core()); }
executor_stats process_pool_executor::stats() const noexcept { return core_->stats(); }

}  // namespace uvexec
