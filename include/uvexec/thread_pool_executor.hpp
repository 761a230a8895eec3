// uvexec — thread_pool_executor: run blocking calls on libuv's thread pool.
//
// Python: concurrent.futures.ThreadPoolExecutor. Work goes to libuv's own
// pool through uv_queue_work. That pool is shared by the whole process (and by
// libuv's file-system and DNS requests), so at most max_workers of the
// executor's long-lived "runner" requests wait for or hold one of its threads
// at once; each runs the executor's
// queued calls one after another until the queue is empty. The host's fs/dns
// requests are never starved by more than max_workers threads.
#pragma once

#include "uvexec/detail/config.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <uv.h>

#include "uvexec/detail/future_state.hpp"
#include "uvexec/detail/loop_core.hpp"
#include "uvexec/future.hpp"
#include "uvexec/loop.hpp"
#include "uvexec/map.hpp"
#include "uvexec/stats.hpp"
#include "uvexec/this_worker.hpp"

namespace uvexec::inline v0 {

/// Options of a thread_pool_executor (designated initializers read well:
/// `thread_pool_executor ex{{.max_workers = 3}}`).
struct thread_pool_options {
    /// How many of this executor's calls may run at once; unset means
    /// Python's default, min(32, CPUs + 4). Below 1 or above 1024 (libuv's
    /// limit) the constructor throws std::invalid_argument.
    std::optional<int> max_workers{};
    /// Prefix of the worker slot names; default "ThreadPoolExecutor-N" with N
    /// counting executors from 0, so slot names read "ThreadPoolExecutor-0_1".
    std::string name_prefix{};
    /// Runs once on each libuv pool thread before that thread's first call of
    /// this executor (libuv's threads are shared, so this is per thread, not
    /// per slot). If it throws, the executor is broken: that call and all queued
    /// ones fail with broken_executor_error and new submissions throw it.
    std::function<void()> initializer{};
    /// At most this many calls accepted and not yet started by a pool thread
    /// (staged or pending); submit() beyond it throws queue_full_error. Unset
    /// means unbounded; 0 throws std::invalid_argument. Python: none
    /// (piscina's maxQueue).
    std::optional<std::size_t> max_queue{};
    /// Time each call for stats()' wait_time and run_time: one clock read
    /// on the loop thread as it is submitted and one on the pool thread as
    /// it ends (about 2 × 30-80 ns, against a no-op call's 500 ns). false
    /// leaves those histograms and utilisation empty; the counters stay.
    bool time_calls = true;
};

namespace detail {

class thread_pool_core;
class room_queue;
class call_recorder;

struct pool_item;

/// What the executor needs to know about an item's concrete type: one shared
/// table per type instead of three pointers in every item (16 bytes less per
/// call, which keeps a pending call within 256 bytes of heap; see bench/memory.cpp).
struct pool_item_ops {
    void (*run)(pool_item*) noexcept;                  // worker thread
    void (*publish)(pool_item*) noexcept;              // loop thread
    future_state_base* (*state)(pool_item*) noexcept;  // the future's state
    void (*request_stop)(pool_item*) noexcept;         // null unless the call takes a std::stop_token
};

/// The part of a thread-pool work item that the executor manages. It is a
/// base of the item, which is also the future's state: one allocation per call.
/// prev/next link it into the executor's staged queue (loop thread only) or
/// its pending queue, and `at` says which; once an item has left the staged
/// queue, its links and `at` are guarded by the core's mutex until a runner
/// takes it. A running call that takes a std::stop_token is linked into the
/// core's list of them (under the mutex) until it returns. A finished call's
/// `next` links it into the core's done stack (lock-free); it stays `running`
/// until the loop thread completes it.
struct pool_item {
    enum class where : std::uint8_t { nowhere, staged, pending, running };

    future_state_base* shared_state() noexcept { return ops->state(this); }

    pool_item* prev = nullptr;
    pool_item* next = nullptr;
    thread_pool_core* pool = nullptr;
    const pool_item_ops* ops = nullptr;
    // With time_calls: uv_hrtime() at submit, which the runner replaces with
    // the call's wait (start - submit) and run (finish - start) as two floats
    // of nanoseconds (24 bits of precision, beyond the histograms' 6.25%), so
    // that timing costs a pending call no memory of its own.
    std::uint64_t times = 0;
    where at = where::nowhere;
    bool initializer_failed = false;      // written by the runner
};

/// A long-lived request inside libuv that runs an executor's calls one after
/// another on a pool thread until the pending queue is empty. While active it
/// holds a slot (0 … max_workers-1), its worker name. A retired runner's
/// request may still be on its way back from libuv (its after_work_cb needs
/// the loop), so an executor keeps spare runners: starting one never waits for
/// the loop and never allocates (accept() tops the spares up).
struct pool_runner {
    uv_work_t req;
    thread_pool_core* pool = nullptr;
    pool_runner* prev = nullptr;  // the core's list of runners inside libuv, or of idle ones (loop thread)
    pool_runner* next = nullptr;
    std::uint32_t slot = 0;       // set when started, under the core's mutex
};

class thread_pool_core final : public loop_client {
public:
    explicit thread_pool_core(thread_pool_options opts);

    /// Binds to lp on first use; throws if already bound to another loop,
    /// shut down, or broken, and queue_full_error when max_queue calls wait.
    void accept(loop_core& lp);
    future<void> room(loop_core& lp);
    executor_stats stats() const noexcept;
    /// Takes ownership of one reference to it.state.
    void submit(pool_item& it) noexcept;
    void cancel(pool_item& it) noexcept;
    future<void> shutdown(bool cancel_futures);
    /// The executor object is going away: cancel pending work; the core frees
    /// itself once its runners have come back from libuv.
    void orphan() noexcept;

    std::size_t max_workers() const noexcept { return max_workers_; }
    const std::string& name_prefix() const noexcept { return prefix_; }
    std::size_t queued() const noexcept;
    std::size_t in_flight() const noexcept;

    void on_loop_closing() noexcept override;
    bool busy() const noexcept override { return runners_out_ != 0; }
    void on_loop_closed() noexcept override;

private:
    /// Staged calls are handed to the runners in batches of this many (see submit).
    static constexpr std::size_t stage_batch = 128;

    static void work_cb(uv_work_t* req) noexcept;
    static void after_work_cb(uv_work_t* req, int status) noexcept;
    static void on_done(uv_async_t* h) noexcept;
    static void on_flush(uv_prepare_t* h) noexcept;
    void arm_flush() noexcept;
    void flush() noexcept;
    void publish_staged(std::size_t max_starts) noexcept;
    void enqueue(pool_item* head, pool_item* tail, std::size_t n, std::size_t max_starts) noexcept;
    pool_runner* claim_runners_locked(std::size_t max_starts) noexcept;
    void start_runners(pool_runner* chain) noexcept;
    void restart_runners() noexcept;
    pool_item* take_locked(pool_runner& r) noexcept;
    void retire_locked(pool_runner& r) noexcept;
    void add_spare_runners();
    bool push_done(pool_item* it) noexcept;  // any thread; true if the stack was empty
    void drain_done() noexcept;
    void finish(pool_item& it) noexcept;
    void fail_queued(bool cancel, const std::exception_ptr& why) noexcept;
    void item_gone() noexcept;  // outstanding_ - 1, unreferencing the async handle at 0
    void close_handles() noexcept;
    void settle() noexcept;  // completes shutdown waiters, frees an orphan
    void left_queue(std::size_t n) noexcept;  // n calls left the queue without starting (loop thread)
    void offer_room() noexcept;  // wakes room() waiters for the free slots
    void close_room(std::exception_ptr why) noexcept;  // room() waiters fail: shut down or broken
    ~thread_pool_core();

    // Immutable after construction (read by runners without the lock).
    std::size_t max_workers_;
    std::string prefix_;
    std::function<void()> initializer_;
    std::uint64_t id_;
    std::vector<std::string> slot_names_;
    std::size_t max_queue_;              // 0: unbounded
    bool time_calls_;

    // Guarded by mutex_: shared between the loop thread and the runners.
    mutable std::mutex mutex_;
    pool_item* stoppable_ = nullptr;     // running calls that take a std::stop_token (doubly linked)
    pool_item* pending_head_ = nullptr;  // FIFO of calls not yet taken by a runner
    pool_item* pending_tail_ = nullptr;
    std::size_t pending_count_ = 0;
    std::size_t running_count_ = 0;
    std::size_t active_runners_ = 0;     // runners that may still take calls (<= max_workers_)
    bool stopped_ = false;               // the initializer failed: runners take no more calls
    std::vector<std::thread::id> initialized_threads_;  // libuv threads that ran the initializer (reserved)
    std::vector<std::uint32_t> free_slots_;  // ring buffer of the slots no active runner holds
    std::size_t free_head_ = 0, free_count_ = 0;

    // Lock-free: finished calls not yet completed on the loop, newest first
    // (an intrusive stack through pool_item::next). Runners push one call each
    // with a CAS; the loop thread takes the whole stack with one exchange.
    std::atomic<pool_item*> done_{nullptr};

    // Bounded queues only (max_queue_ != 0): calls accepted and not yet taken
    // by a runner. The loop thread adds (submit) and removes (cancel, fail);
    // runners remove as they take calls and then, when room_wanted_ says a
    // room() waiter is waiting, wake the loop (seq_cst on both sides: either
    // the runner sees the flag or the loop thread sees the new count).
    std::atomic<std::size_t> waiting_{0};
    std::atomic<bool> room_wanted_{false};

    // Loop thread only.
    loop_core* loop_ = nullptr;
    uv_async_t* async_ = nullptr;        // wakes the loop when calls are done; heap, freed by its close callback
    uv_prepare_t* flush_ = nullptr;      // moves staged calls to the pending queue before the loop polls; heap
    pool_item* staged_head_ = nullptr;   // FIFO of calls submitted in this loop iteration, not yet pending
    pool_item* staged_tail_ = nullptr;
    std::size_t staged_count_ = 0;
    std::size_t direct_left_;            // submissions this iteration that may still go straight to pending
    bool flush_armed_ = false;
    std::vector<std::unique_ptr<pool_runner>> runner_store_;  // every runner allocated
    pool_runner* idle_ = nullptr;        // runners outside libuv (singly linked)
    std::size_t idle_count_ = 0;
    pool_runner* out_ = nullptr;         // runners inside libuv, active or on their way back
    std::size_t runners_out_ = 0;
    std::size_t outstanding_ = 0;        // calls accepted and not yet completed (staged, pending, running or done)
    std::size_t busy_ = 0;               // completion frames on the stack
    bool closing_ = false;               // the loop is closing
    bool shut_down_ = false;
    bool broken_ = false;
    bool orphaned_ = false;
    std::vector<future_state<void>*> shutdown_waiters_;
    std::unique_ptr<room_queue> room_;       // room() waiters (lib/room.hpp)
    std::unique_ptr<call_recorder> stats_;   // counters and histograms (lib/stats/recorder.hpp)
};

struct no_stop_source {};

/// A call's state, work item and callable in one allocation. A call whose
/// callable takes a std::stop_token (Fn is invoked with one) also holds the
/// std::stop_source whose stop its cancellation requests.
template <class R, class Fn>
class thread_item final : public future_state<R>, private pool_item {
    static constexpr bool stoppable = std::is_invocable_v<Fn&, std::stop_token>;

public:
    thread_item(loop_core* lp, thread_pool_core* pool, Fn&& fn)
        : future_state<R>(lp), fn_(std::move(fn)) {
        pool_item& it = item();
        it.pool = pool;
        it.ops = &ops_;
    }

    pool_item& item() noexcept { return *this; }

private:
    static thread_item& self(pool_item* it) noexcept { return *static_cast<thread_item*>(it); }
    static future_state_base* state_of(pool_item* it) noexcept { return &self(it); }

    static void run(pool_item* it) noexcept {
        auto& s = self(it);
        try {
            if constexpr (stoppable) {
                if constexpr (std::is_void_v<R>) s.fn_(s.stop_.get_token());
                else s.emplace(s.fn_(s.stop_.get_token()));
            } else if constexpr (std::is_void_v<R>) {
                s.fn_();
            } else {
                s.emplace(s.fn_());
            }
        } catch (...) {
            s.stash_exception(std::current_exception());
        }
    }

    static void request_stop(pool_item* it) noexcept {
        if constexpr (stoppable) self(it).stop_.request_stop();
    }

    static void publish(pool_item* it) noexcept {
        auto& s = self(it);
        if (s.done()) return;  // cancelled while running: the result is dropped
        if (s.stashed_exception()) s.publish_exception();
        else s.publish_value();
    }

    void on_cancel() noexcept override {
        // A running call is asked to stop (request_stop is thread-safe); a
        // queued one is taken out and never runs.
        if constexpr (stoppable) stop_.request_stop();
        item().pool->cancel(item());
    }

    static constexpr pool_item_ops ops_{&thread_item::run, &thread_item::publish, &thread_item::state_of,
                                        stoppable ? &thread_item::request_stop : nullptr};

    Fn fn_;
    [[no_unique_address]] std::conditional_t<stoppable, std::stop_source, no_stop_source> stop_;
};

/// fn is given a std::stop_token before its arguments when it can take one,
/// as std::jthread does.
template <class F, class... A>
inline constexpr bool wants_stop_token = std::is_invocable_v<std::decay_t<F>, std::stop_token, std::decay_t<A>...>;

template <class F, class... A>
struct call_result {
    using type = std::invoke_result_t<std::decay_t<F>, std::decay_t<A>...>;
};
template <class F, class... A>
    requires wants_stop_token<F, A...>
struct call_result<F, A...> {
    using type = std::invoke_result_t<std::decay_t<F>, std::stop_token, std::decay_t<A>...>;
};

template <class F, class... A>
using call_result_t = std::decay_t<typename call_result<F, A...>::type>;

template <class F, class In, class T>
struct thread_map_backend;  // defined below the executor

}  // namespace detail

/// Python: concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix,
/// initializer). Bound to the first loop that submits to it.
class thread_pool_executor {
public:
    /// Throws std::invalid_argument for max_workers below 1 or over 1024.
    explicit thread_pool_executor(thread_pool_options opts = {});
    /// Work not yet running is cancelled (its futures complete with
    /// cancelled_error); running work finishes and completes its futures.
    /// To let everything finish first: co_await ex.shutdown().
    ~thread_pool_executor();
    thread_pool_executor(const thread_pool_executor&) = delete;
    thread_pool_executor& operator=(const thread_pool_executor&) = delete;

    /// Python: executor.submit(fn, *args) from a coroutine on lp. fn and the
    /// arguments are moved (or copied, from lvalues) into the call once, and
    /// fn runs on a pool thread given them as rvalues, as std::async does:
    /// move-only arguments and results work. Throws queue_full_error when
    /// max_queue calls wait already (before touching fn or args: an rvalue
    /// passed is not moved from), executor_shutdown_error after shutdown, broken_executor_error when the
    /// initializer failed, invalid_state_error if the executor is bound to
    /// another loop. When fn can take a std::stop_token before the arguments
    /// (as std::jthread decides), it is given one, whose stop is requested
    /// when the future is cancelled while the call runs.
    template <class F, class... A>
    future<detail::call_result_t<F, A...>> submit(loop& lp, F&& fn, A&&... args) {
        using R = detail::call_result_t<F, A...>;
        // Refused (queue_full_error, shutdown, ...) before anything is moved
        // from fn or args: a caller's rvalues are intact after a throw.
        core_->accept(lp.core());
        // Stored once, then handed to fn as rvalues exactly once (std::async's
        // rule): move-only arguments work and nothing is copied.
        if constexpr (detail::wants_stop_token<F, A...>) {
            auto call = [f = std::forward<F>(fn), ... a = std::forward<A>(args)](std::stop_token t) mutable -> R {
                return std::invoke(std::move(f), std::move(t), std::move(a)...);
            };
            return start<R>(lp, std::move(call));
        } else {
            auto call = [f = std::forward<F>(fn), ... a = std::forward<A>(args)]() mutable -> R {
                return std::invoke(std::move(f), std::move(a)...);
            };
            return start<R>(lp, std::move(call));
        }
    }

    /// Python 3.14: executor.map(fn, iterable, chunksize=, buffersize=), from a
    /// coroutine on lp (uvexec/map.hpp): the results of fn over input, in
    /// order, lazily; each chunk of opts.chunksize items is one call that runs
    /// fn on its items in turn. fn is copied into each chunk's call; an
    /// rvalue input range is kept by the map, an lvalue one must outlive it.
    /// Throws std::invalid_argument for bad options; a full queue (max_queue)
    /// makes the map wait for room(), never fail.
    template <class F, std::ranges::input_range R>
    auto map(loop& lp, F fn, R&& input, map_options opts = {}) {
        using In = detail::map_item_t<R>;
        static_assert(std::is_invocable_v<F&, In&&>, "uvexec: map's function must take the range's items");
        using T = std::decay_t<std::invoke_result_t<F&, In&&>>;
        static_assert(!std::is_void_v<T>, "uvexec: map's function must return a value");
        return detail::map_access<T>::template make<In>(std::forward<R>(input), opts, max_workers(),
                                                        detail::thread_map_backend<F, In, T>{this, &lp, std::move(fn)});
    }

    /// Python: executor.shutdown(wait, cancel_futures). Stops accepting work;
    /// with cancel_futures, queued work is cancelled and running calls that
    /// take a std::stop_token are asked to stop. Returns a future that
    /// completes once all accepted work has finished: `co_await ex.shutdown()`
    /// is Python's wait=True, ignoring the future is wait=False. Idempotent.
    future<void> shutdown(bool cancel_futures = false) { return core_->shutdown(cancel_futures); }

    std::size_t max_workers() const noexcept { return core_->max_workers(); }
    const std::string& name_prefix() const noexcept { return core_->name_prefix(); }
    /// Calls accepted and waiting for a runner (not yet started). On the
    /// loop's thread, like submit().
    std::size_t queued() const noexcept { return core_->queued(); }
    /// Calls running on pool threads now; never above max_workers().
    std::size_t in_flight() const noexcept { return core_->in_flight(); }

    /// Completes when the queue has room for one more call (at once when
    /// unbounded or not full): `co_await ex.room(lp); ex.submit(lp, f);`.
    /// Waiters are woken first come, first served, one per free slot; a
    /// cancelled waiter takes no slot; after shutdown() it fails with
    /// executor_shutdown_error. Python: none (asyncio.Queue.put's wait).
    future<void> room(loop& lp) { return core_->room(lp.core()); }
    /// A snapshot of the executor's counters, gauges and histograms, on the
    /// loop's thread. Python: none (folly's getPoolStats()).
    executor_stats stats() const noexcept { return core_->stats(); }

    /// Python's default: min(32, CPUs + 4).
    static std::size_t default_max_workers() noexcept;

private:
    template <class R, class Call>
    future<R> start(loop& lp, Call&& call) {
        using item_t = detail::thread_item<R, std::decay_t<Call>>;
        auto* it = new item_t(&lp.core(), core_, std::move(call));
        auto f = detail::make_future(detail::state_ptr<detail::future_state<R>>::adopt(it));
        it->add_ref();  // the executor's reference, dropped when the work is over
        core_->submit(it->item());
        return f;
    }

    detail::thread_pool_core* core_;
};

namespace detail {

/// How a thread pool's map sends a chunk: one call running fn over its items.
template <class F, class In, class T>
struct thread_map_backend {
    using chunk = map_chunk<T>;

    future<chunk> submit(std::vector<In>& items) {
        return ex->submit(
            *lp, [f = fn](std::vector<In> v) mutable { return run_map_items<T>(f, v); }, std::move(items));
    }
    future<void> room() { return ex->room(*lp); }
    static chunk to_chunk(chunk c) noexcept { return c; }

    thread_pool_executor* ex;
    loop* lp;
    F fn;
};

}  // namespace detail

/// libuv's thread pool size as uvexec arranged or found it: the value of
/// UV_THREADPOOL_SIZE that libuv reads when its pool starts (default 4).
/// uvexec raises it before the pool starts so every live executor's
/// max_workers fit plus 4 threads for the host's fs/dns requests; it never
/// overrides a value the user set and warns once on stderr if the pool is too
/// small for the executors once it has started.
std::size_t libuv_pool_size() noexcept;

}  // namespace uvexec
