// uvexec — process_pool_executor: run calls in worker processes.
//
// Python: concurrent.futures.ProcessPoolExecutor. A worker is the running
// executable started again with posix_spawn (or a dedicated worker executable,
// optionally behind a launcher such as `taskset -c 1`, ssh or srun); `main`
// begins with uvexec::worker_main(argc, argv), which serves the pool when the
// process is a worker and returns at once when it is not. Each worker gets a
// private duplex channel on descriptor 3; its stdout and stderr stay the
// parent's. Calls are named at compile time (uvexec::fn<&f>) and their
// arguments, results and exceptions cross as cereal binary archives.
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <uv.h>

#include "uvexec/codec.hpp"
#include "uvexec/detail/frame.hpp"
#include "uvexec/detail/future_state.hpp"
#include "uvexec/detail/loop_core.hpp"
#include "uvexec/detail/remote.hpp"
#include "uvexec/error.hpp"
#include "uvexec/fn.hpp"
#include "uvexec/launchers.hpp"
#include "uvexec/future.hpp"
#include "uvexec/loop.hpp"
#include "uvexec/map.hpp"
#include "uvexec/stats.hpp"
#include "uvexec/this_worker.hpp"

namespace uvexec::inline v0 {

/// Call first thing in main: `uvexec::worker_main(argc, argv);`. In a process
/// started by a process_pool_executor it serves calls until the parent closes
/// the channel (or dies) and then exits the process; anywhere else it returns
/// at once. A worker whose main forgot this call exits with status 121 as soon
/// as it creates a uvexec::loop or executor, and the parent reports it.
void worker_main(int argc, char** argv);

/// In a dedicated worker executable (process_pool_options::worker_executable),
/// registers the functions it serves: `uvexec::expose<&blocks, &other>();`
/// before `uvexec::worker_main(argc, argv)`. (A program that submits a
/// function registers it by doing so.)
template <auto... F>
void expose() noexcept {
    ((void)detail::remote<F>::key(), ...);
}

/// A no-argument function named at compile time, for process-pool initializers.
struct remote_function {
    template <auto F>
    remote_function(fn_t<F>) noexcept  // NOLINT(google-explicit-constructor): fn<&f> reads as a function
        : id(detail::remote<F>::identity()), name(detail::remote<F>::name()) {
        static_assert(std::tuple_size_v<typename fn_t<F>::args_tuple> == 0 && !fn_t<F>::takes_stop_token,
                      "uvexec: a process-pool initializer takes no arguments (and no std::stop_token)");
    }
    detail::function_identity id;
    std::string_view name;
};

/// Limits the kernel sets on each worker process (setrlimit, in the worker
/// before its first call). Python: none (resource.setrlimit in an initializer).
struct worker_limits {
    /// RLIMIT_AS, in bytes: the worker's whole address space, its code and
    /// libraries included. An allocation past it fails: a call gets
    /// std::bad_alloc, which reaches the caller as remote_error. Unset: none.
    std::optional<std::size_t> address_space{};
    /// CPU time one call may use: before each call the worker sets its
    /// RLIMIT_CPU soft limit this far beyond what it has used, so a call gets
    /// this much CPU time to one second more. Past it the kernel sends
    /// SIGXCPU, the worker dies, and the call fails with worker_died_error
    /// naming SIGXCPU. Unset: none.
    std::optional<std::chrono::seconds> cpu_time{};
};

/// How a process pool starts its workers (Python: the multiprocessing start
/// method, `mp_context=multiprocessing.get_context(...)`).
enum class process_start_method {
    /// Each worker is a posix_spawn (an exec) of the worker program, which
    /// runs the program's static initializers and then worker_main. Python: "spawn".
    spawn,
    /// The pool spawns the worker program once, as a small single-threaded
    /// fork server that has run nothing of main but worker_main, and each
    /// worker is a fork of it: no exec, no dynamic linking per worker. Workers
    /// are the fork server's children; the pool watches each through a pidfd
    /// and learns its wait status from the fork server. A killed fork server is
    /// replaced at the next worker start; its workers serve on. Python:
    /// "forkserver". Not with stdio_channel (std::invalid_argument); a
    /// launcher applies to the fork server's one exec and must exec the
    /// program on this machine (taskset, nice, numactl). See
    /// docs/process-pool.md, "Start methods".
    forkserver,
};

/// Options of a process_pool_executor.
struct process_pool_options {
    /// Worker processes at most; unset means the number of CPUs. Below 1 throws
    /// std::invalid_argument.
    std::optional<int> max_workers{};
    /// Prefix of the workers' names; default "ProcessPoolExecutor-N".
    std::string name_prefix{};
    /// Runs once in each worker before its first call. If it throws, the
    /// executor is broken (broken_executor_error), as in Python.
    std::optional<remote_function> initializer{};
    /// Replace a worker after it has run this many calls (Python's
    /// max_tasks_per_child); unset means never. Below 1 throws.
    std::optional<int> max_tasks_per_child{};
    /// The worker program; empty means this executable (uv_exepath). It must
    /// call uvexec::worker_main first and name the same functions.
    std::string worker_executable{};
    /// What is put in front of the worker's command line: plain words such as
    /// {"taskset", "-c", "1"} (the launcher must pass descriptor 3 through to
    /// the worker, as exec does, or set stdio_channel), or a launcher value:
    /// uvexec::ssh_launcher("host"), uvexec::srun_launcher(), which set the
    /// stdio channel and quote the command line as their launcher needs (see
    /// launchers.hpp and docs/remote-workers.md).
    launcher_spec launcher{};
    /// Put the worker's channel on its stdin and stdout instead of descriptor
    /// 3, for launchers that forward only stdio (set by ssh_launcher and
    /// srun_launcher). worker_main then points the worker's stdout at its
    /// stderr, so its prints still reach the terminal.
    bool stdio_channel = false;
    /// How workers are started: posix_spawn each (the default), or fork each
    /// from a fork server (process_start_method::forkserver). Python:
    /// mp_context=multiprocessing.get_context("forkserver").
    process_start_method start_method{process_start_method::spawn};
    /// The largest frame either side accepts (a call's arguments or a result,
    /// plus 21 bytes). A larger message fails with message_too_large_error; a
    /// corrupt length never makes either side allocate more.
    std::size_t max_frame_size = 256u << 20;
    /// Calls sent to one worker before earlier ones are answered. 1 is
    /// strictly one call per worker; 2 (the default) hides the round trip
    /// behind the running call; more helps floods of tiny calls. A call is
    /// pipelined only when every worker is busy, and only behind calls known
    /// to be short (pipeline_below), so it never waits behind a long call
    /// while another worker is free.
    int max_in_flight_per_worker = 2;
    /// Pipeline a call to a busy worker only if each call that worker holds
    /// is expected to take less than this (learned per function from its
    /// recent calls; unknown counts as long) and the running one has not yet
    /// run that long. Past about a millisecond a call hides little of the
    /// round trip (about 20 µs) and risks waiting behind a long one.
    /// microseconds::max() pipelines whatever the cost (uvexec 0.1's rule);
    /// 0 never pipelines. Negative throws std::invalid_argument.
    std::chrono::microseconds pipeline_below{1000};
    /// How long a call that was cancelled while it ran (wait_for's timeout, a
    /// task group, future::cancel) may go on before its worker is killed
    /// (SIGKILL), reaped and replaced; the calls pipelined behind it run on
    /// another worker. Unset (the default) keeps Python's behaviour: the call
    /// runs to its end and its result is dropped. Negative throws.
    std::optional<std::chrono::milliseconds> cancel_grace{};
    /// A worker that has not said hello by then is killed and the executor
    /// reports it broken (a worker that does not run worker_main, say).
    std::chrono::milliseconds startup_timeout{10000};
    /// At most this many calls accepted and not yet sent to a worker (the
    /// pool's own queue; calls pipelined to a busy worker have left it);
    /// submit() beyond it throws queue_full_error. The calls a dead worker
    /// had not started go back to the queue even if that passes the bound.
    /// Unset means unbounded; 0 throws std::invalid_argument. Python: none
    /// (piscina's maxQueue).
    std::optional<std::size_t> max_queue{};
    /// Workers kept started at all times from ex.start(lp) or the first
    /// submission on: one that exits (retired, crashed) is replaced at once.
    /// Unset means 0: workers start as calls need them (Python's way). Above
    /// max_workers or negative throws std::invalid_argument.
    std::optional<int> min_workers{};
    /// A worker above min_workers that has had no call for this long is
    /// retired (it exits). Unset: idle workers stay (Python's way). Zero or
    /// negative throws.
    std::optional<std::chrono::milliseconds> idle_timeout{};
    /// After each call, a worker whose resident memory (VmRSS, measured by the
    /// worker itself) is above this many bytes is retired once the calls
    /// already sent to it are answered, and replaced as calls need. Unset:
    /// never. Zero throws.
    std::optional<std::size_t> max_worker_memory{};
    /// setrlimit limits of each worker; see worker_limits.
    worker_limits limits{};
};

namespace detail {

class process_pool_core;  // lib/processes/pool.hpp
struct worker_process;

/// The executor-managed part of a process-pool call; lives inside the item,
/// which is also the future's state.
struct process_call {
    enum class where : std::uint8_t { nowhere, queued, sent };

    process_call* prev = nullptr;
    process_call* next = nullptr;
    process_pool_core* pool = nullptr;
    future_state_base* state = nullptr;
    worker_process* worker = nullptr;
    std::string frame;  // the complete CALL frame, id patched in at dispatch
    void (*deliver)(process_call*, std::string_view result) noexcept = nullptr;
    std::int64_t* cost = nullptr;  // what its function is expected to take (the scheduler's)
    std::int64_t expected = 0;     // that estimate when it was sent; -1: not known to be short
    std::uint64_t sent_at = 0;     // uv_hrtime() when it was sent
    std::uint64_t accepted_at = 0; // uv_hrtime() when it was submitted
    where at = where::nowhere;
    bool stoppable = false;        // its function takes a std::stop_token: a cancel is sent to the worker
};

/// Cancels a call still queued in its pool; a sent call runs on and its
/// answer is dropped (a stoppable one is asked to stop).
void cancel_call(process_call& call) noexcept;

template <class R>
class process_item final : public future_state<R> {
public:
    process_item(loop_core* lp, process_pool_core* pool) : future_state<R>(lp) {
        call_.pool = pool;
        call_.state = this;
        call_.deliver = &process_item::deliver;
    }
    process_call& call() noexcept { return call_; }

private:
    /// Resolves the future with the result's bytes (waiters run later, see
    /// process_pool_core::ready). A result that cannot be decoded is its error.
    static void deliver(process_call* c, std::string_view bytes) noexcept {
        auto& self = *static_cast<process_item*>(c->state);
        if (self.done()) return;  // cancelled meanwhile: the result is dropped
        try {
            if constexpr (std::is_void_v<R>) {
                decode_from(bytes);
            } else {
                R r{};
                decode_from(bytes, r);
                self.emplace(std::move(r));
            }
            self.resolve_value();
        } catch (...) {
            self.resolve_exception(std::current_exception());
        }
    }
    void on_cancel() noexcept override { cancel_call(call_); }

    process_call call_;
};

template <class T>
inline constexpr bool always_false = false;

/// A map chunk's answer from a worker process: the results of its first
/// items and, when the item after them threw, that exception as the worker
/// reports a call's (its type name and what()).
template <class R>
struct remote_chunk {
    std::vector<R> values;
    bool failed = false;
    std::string type, what;

    template <class Archive>
    void serialize(Archive& ar) {
        ar(values, failed, type, what);
    }
};

template <auto F>
using map_arg_t = std::tuple_element_t<0, typename fn_t<F>::args_tuple>;

/// One chunk of a process pool's map: an ordinary remote function (a worker
/// finds it as it finds F), run once per chunk, calling F on each item.
template <auto F>
remote_chunk<typename fn_t<F>::result_type> run_map_chunk(std::vector<map_arg_t<F>> items) {
    using R = typename fn_t<F>::result_type;
    auto f = fn<F>;
    map_chunk<R> c = run_map_items<R>(f, items);
    remote_chunk<R> out{std::move(c.values), false, {}, {}};
    if (c.error) {
        out.failed = true;
        std::tie(out.type, out.what) = describe_exception(c.error);
    }
    return out;
}

template <auto F>
struct process_map_backend;  // defined below the executor

}  // namespace detail

/// Python: concurrent.futures.ProcessPoolExecutor(max_workers, initializer,
/// max_tasks_per_child). Bound to the first loop that submits to it.
class process_pool_executor {
public:
    /// Throws std::invalid_argument for bad options, uvexec::error if this
    /// process is an unserved worker (see worker_main).
    explicit process_pool_executor(process_pool_options opts = {});
    /// Queued calls are cancelled; calls already sent finish in their workers,
    /// which then exit and are reaped. To let everything finish first,
    /// `co_await ex.shutdown()`.
    ~process_pool_executor();
    process_pool_executor(const process_pool_executor&) = delete;
    process_pool_executor& operator=(const process_pool_executor&) = delete;

    /// Python: executor.submit(fn, *args). F is named at compile time:
    /// `ex.submit(lp, uvexec::fn<&blocks>, i)`. Arguments are converted to F's
    /// parameter types and serialized now; the result comes back as F's return type.
    /// When F's first parameter is a std::stop_token, the worker gives it one
    /// (the caller passes only the other arguments); cancelling the future
    /// while the call is in its worker sends the worker a cancel, which
    /// requests that stop.
    /// Throws queue_full_error when max_queue calls wait already, before the
    /// arguments are touched (an rvalue passed is not moved from).
    template <auto F, class... A>
    future<typename fn_t<F>::result_type> submit(loop& lp, fn_t<F>, A&&... args) {
        using R = typename fn_t<F>::result_type;
        using args_tuple = typename fn_t<F>::args_tuple;
        static_assert(sizeof...(A) == std::tuple_size_v<args_tuple>,
                      "uvexec: wrong number of arguments for this function");
        check_serializable<R>(static_cast<args_tuple*>(nullptr));
        const detail::function_identity& id = detail::remote<F>::identity();
        const std::size_t max_frame = admit(lp, id, detail::remote<F>::name());

        auto* item = new detail::process_item<R>(&lp.core(), core_);
        auto f = detail::make_future(detail::state_ptr<detail::future_state<R>>::adopt(item));
        item->call().stoppable = fn_t<F>::takes_stop_token;
        std::string& frame = item->call().frame;
        detail::reserve_large(frame, detail::frame_header_size + 16 +
                                         (std::size_t{0} + ... + detail::encoded_size_hint(args)));
        detail::append_frame_header(frame, detail::frame_kind::call, 0, 0);  // length and id patched later
        detail::put_u64(frame, id.key);
        detail::put_u64(frame, id.offset);
        if constexpr (std::is_same_v<args_tuple, std::tuple<std::remove_cvref_t<A>...>>) {
            detail::encode_into(frame, args...);  // already the parameters' types: encoded where they are
        } else {
            args_tuple converted(std::forward<A>(args)...);
            std::apply([&](const auto&... a) { detail::encode_into(frame, a...); }, converted);
        }
        if (frame.size() - 4 > max_frame)
            throw message_too_large_error("uvexec: the call's arguments take " + std::to_string(frame.size()) +
                                          " bytes, more than max_frame_size (" + std::to_string(max_frame) + ")");
        item->add_ref();  // the executor's reference
        enqueue(item->call());
        return f;
    }

    /// Anything but uvexec::fn<&function> is refused at compile time.
    template <class F, class... A>
    auto submit(loop&, F&&, A&&...) -> future<int> {
        static_assert(detail::always_false<F>,
                      "uvexec: a process_pool_executor runs only functions named at compile time: pass "
                      "uvexec::fn<&your_function>, not a lambda, std::function or function pointer variable");
        return {};
    }

    /// Python 3.14: executor.map(fn, iterable, chunksize=, buffersize=), from a
    /// coroutine on lp (uvexec/map.hpp): the results of F (which takes one
    /// argument) over input, in order, lazily. Each chunk of opts.chunksize
    /// items is one call, one frame each way, whose worker runs F on its items
    /// in turn; an item that throws comes back as remote_error at its place.
    /// An rvalue input range is kept by the map, an lvalue one must outlive
    /// it. Throws std::invalid_argument for bad options; a full queue
    /// (max_queue) makes the map wait for room(), never fail. A dedicated
    /// worker executable serves it after uvexec::expose_map<&f>().
    template <auto F, std::ranges::input_range Rg>
    map_stream<typename fn_t<F>::result_type> map(loop& lp, fn_t<F>, Rg&& input, map_options opts = {}) {
        using R = typename fn_t<F>::result_type;
        static_assert(std::tuple_size_v<typename fn_t<F>::args_tuple> == 1 && !fn_t<F>::takes_stop_token,
                      "uvexec: map's function takes exactly one argument (and no std::stop_token)");
        static_assert(!std::is_void_v<R>, "uvexec: map's function must return a value");
        check_serializable<R>(static_cast<typename fn_t<F>::args_tuple*>(nullptr));
        return detail::map_access<R>::template make<detail::map_arg_t<F>>(std::forward<Rg>(input), opts,
                                                                        max_workers(),
                                                                        detail::process_map_backend<F>{this, &lp});
    }

    /// Anything but uvexec::fn<&function> is refused at compile time.
    template <class F, class Rg>
    void map(loop&, F&&, Rg&&, map_options = {}) {
        static_assert(detail::always_false<F>,
                      "uvexec: a process_pool_executor maps only functions named at compile time: pass "
                      "uvexec::fn<&your_function>, not a lambda, std::function or function pointer variable");
    }

    /// Python: executor.shutdown(wait, cancel_futures); see
    /// thread_pool_executor::shutdown. The future completes once every
    /// accepted call has finished and every worker has exited and been reaped.
    future<void> shutdown(bool cancel_futures = false);
    /// Python 3.14: executor.terminate_workers(). Sends SIGTERM to every
    /// worker: queued calls and calls not yet started are cancelled, running
    /// ones fail with worker_died_error, and new submissions throw
    /// executor_shutdown_error. A worker still alive 5 s later is killed. The
    /// future completes once every worker is reaped.
    future<void> terminate_workers();
    /// Python 3.14: executor.kill_workers(). As terminate_workers(), with SIGKILL.
    future<void> kill_workers();

    /// Binds the executor to lp (as a first submission does) and starts
    /// min_workers workers now, so that the first calls do not wait for a
    /// start. Throws what submit throws before a call is made, and the spawn
    /// error if no worker can be started. Python: none (workers start on
    /// demand).
    void start(loop& lp);

    /// Python: executor._max_workers.
    std::size_t max_workers() const noexcept;
    /// Worker processes alive now (started lazily, up to max_workers()).
    std::size_t live_workers() const noexcept;
    /// Calls accepted but not yet sent to a worker.
    std::size_t queued() const noexcept;
    /// The pids of the live workers.
    std::vector<int> worker_pids() const;
    /// Completes when the queue has room for one more call; see
    /// thread_pool_executor::room. Fails with broken_executor_error once the
    /// pool is broken.
    future<void> room(loop& lp);
    /// A snapshot of the executor's counters, gauges and histograms, worker
    /// starts, deaths and recycles included; on the loop's thread. Python:
    /// none (folly's getPoolStats()).
    executor_stats stats() const noexcept;

private:
    /// Checks that this pool takes a call of the function id names from lp
    /// (throws as submit documents); returns max_frame_size.
    std::size_t admit(loop& lp, const detail::function_identity& id, std::string_view name);
    /// Hands a complete call to the pool, which takes one reference to its state.
    void enqueue(detail::process_call& call) noexcept;

    template <class R, class... Args>
    static void check_serializable(std::tuple<Args...>*) {
        static_assert((require_serializable<Args>::value && ...) && require_serializable<R>::value);
        static_assert((require_default_constructible<Args>::value && ...) &&
                      require_default_constructible<R>::value);
    }

    detail::process_pool_core* core_;
};

namespace detail {

/// How a process pool's map sends a chunk: one call of run_map_chunk<F>.
template <auto F>
struct process_map_backend {
    using R = typename fn_t<F>::result_type;
    using chunk = remote_chunk<R>;

    future<chunk> submit(std::vector<map_arg_t<F>>& items) {
        return ex->submit(*lp, fn<&run_map_chunk<F>>, std::move(items));
    }
    future<void> room() { return ex->room(*lp); }
    static map_chunk<R> to_chunk(chunk c) {
        map_chunk<R> m{std::move(c.values), nullptr};
        if (c.failed) m.error = std::make_exception_ptr(remote_error(std::move(c.type), std::move(c.what)));
        return m;
    }

    process_pool_executor* ex;
    loop* lp;
};

}  // namespace detail

/// In a dedicated worker executable, registers what a process pool's map over
/// each F runs (one call per chunk): `uvexec::expose_map<&twice>();`.
template <auto... F>
void expose_map() noexcept {
    ((void)detail::remote<&detail::run_map_chunk<F>>::key(), ...);
}

}  // namespace uvexec
