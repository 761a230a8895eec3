// uvexec — thread_pool_executor: runners over uv_queue_work.
//
// At most max_workers "runner" requests of an executor are active (may take
// calls) at once, each holding a slot. A runner's work_cb takes calls from the
// pending queue one after another (one lock per call: a call is never
// committed to a busy runner while another could take it), runs them, and
// pushes each onto the done stack (lock-free), until the queue is empty; then
// it retires, and its after_work_cb makes it idle again once it is back from
// libuv. One uv_async_t per executor wakes the loop, once per batch: only the
// push that finds the stack empty sends. The loop takes the stack whole with
// one exchange and completes it oldest first (on_done); a retiring runner's
// after_work_cb also takes it, so a single call costs no extra wakeup.
// Submissions beyond max_workers between two loop iterations are staged on the
// loop thread and handed to the runners in batches (see submit()).
//
// Invariants:
//  - mutex_ guards the pending queue, the `at` of every item that is not
//    staged, pending_count_, running_count_, active_runners_, stopped_ and
//    the free slots. A runner decides to retire (take_locked)
//    under the same lock as the loop thread decides whether to start runners
//    (claim_runners_locked), so while calls are pending there is always an
//    active runner not running a call (it will take one), or all max_workers_
//    are active; the flush before the loop polls starts as many as there are
//    pending calls (up to max_workers_). No pending call is left without a runner
//    (unless stopped_: the initializer failed, and the loop thread fails the
//    pending calls when that call comes back). This needs idle runners to
//    start: accept() keeps at least max_workers_ of them before every
//    submission, and after_work_cb starts one again for calls that were
//    published when none was idle;
//  - active_runners_ <= max_workers_, and each active runner holds one slot,
//    so running_count_ <= max_workers_; a retired runner's request may still
//    be inside libuv (runners_out_ and out_ count those too, on the loop thread);
//  - the done stack (done_) is lock-free: a runner pushes a finished call
//    with a release CAS after its last write to it (result or exception, both
//    stored in the call's future state, times, initializer_failed) and never touches it again; the loop thread takes
//    the whole stack with an acquire exchange. A finished call stays
//    `running` until the loop thread completes it, so cancel() leaves it be;
//  - an item is staged (loop thread only), pending, running (or finished, on
//    the done stack) or nowhere; the executor holds one reference to its
//    state from submit() until the loop thread completes, cancels or fails it
//    (outstanding_ counts them);
//  - nothing stays staged past the loop's next prepare phase: the flush handle
//    is armed whenever direct_left_ is 0, which it must be for anything to be
//    staged;
//  - async_ is referenced exactly while outstanding_ > 0, so an idle executor
//    does not keep a host's uv_run alive and a busy one keeps run_until going;
//  - async_ stays open while any runner is inside libuv (runners send on it
//    without the lock); it and the flush handle are closed when the core is
//    freed or, when the loop closes, once the last runner is back;
//  - the core outlives its executor object while calls are outstanding or
//    runners are inside libuv (orphaned_), and frees itself in settle().
#include "uvexec/thread_pool_executor.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>

#include <dirent.h>

#include <fmt/format.h>

#include "error_ptr.hpp"
#include "room.hpp"
#include "stats/recorder.hpp"
#include "uvexec/detail/handle.hpp"
#include "uvexec/detail/worker.hpp"
#include "uvexec/error.hpp"

namespace uvexec::inline v0 {
namespace detail {
namespace {

// --- a call's times ----------------------------------------------------------
// pool_item::times: the wait and the run of a finished call, in nanoseconds,
// as two floats in one word (see pool_item).

std::uint64_t pack_times(std::uint64_t waited, std::uint64_t ran) noexcept {
    return std::uint64_t{std::bit_cast<std::uint32_t>(static_cast<float>(waited))} << 32 |
           std::bit_cast<std::uint32_t>(static_cast<float>(ran));
}

std::pair<std::uint64_t, std::uint64_t> unpack_times(std::uint64_t times) noexcept {
    return {static_cast<std::uint64_t>(std::bit_cast<float>(static_cast<std::uint32_t>(times >> 32))),
            static_cast<std::uint64_t>(std::bit_cast<float>(static_cast<std::uint32_t>(times)))};
}

// --- libuv's pool size -------------------------------------------------------
// libuv reads UV_THREADPOOL_SIZE once, when its pool starts (the first
// uv_queue_work, fs or dns request of the process). Before that we may raise
// it; after that we can only tell the user.

constexpr std::size_t libuv_default_pool = 4;
constexpr std::size_t libuv_max_pool = 1024;
constexpr std::size_t reserve_for_host_io = 4;

struct pool_budget {
    std::mutex mutex;
    std::atomic<bool> started{false};
    std::size_t reserved = 0;  // sum of live executors' max_workers
    std::size_t size = 0;      // what libuv read, once started
    bool inspected_env = false;
    bool user_set = false;     // UV_THREADPOOL_SIZE was set before uvexec looked
    bool warned = false;
};

pool_budget& budget() {
    static pool_budget b;
    return b;
}

// The same parsing as libuv 1.44's init_threads(): atoi, 0 means 1, and the
// unsigned result is capped at 1024.
std::size_t env_pool_size() {
    const char* v = std::getenv("UV_THREADPOOL_SIZE");
    if (v == nullptr) return libuv_default_pool;
    auto n = static_cast<unsigned>(std::atoi(v));
    if (n == 0) n = 1;
    return std::min<std::size_t>(n, libuv_max_pool);
}

void warn_small_pool(pool_budget& b, std::size_t size, std::string_view why) {
    if (b.warned) return;
    b.warned = true;
    std::fprintf(stderr,
                 "uvexec: warning: libuv's thread pool has %zu threads, fewer than the %zu that the live "
                 "thread_pool_executors may run at once (%.*s); their calls will queue for a thread. Set "
                 "UV_THREADPOOL_SIZE=%zu in the environment before the process's first libuv work request.\n",
                 size, b.reserved, static_cast<int>(why.size()), why.data(),
                 std::min(libuv_max_pool, b.reserved + reserve_for_host_io));
}

/// True when this process has one thread (Linux: /proc/self/task).
bool single_threaded() noexcept {
    DIR* d = ::opendir("/proc/self/task");
    if (d == nullptr) return false;
    int threads = 0;
    while (const dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++threads;
    ::closedir(d);
    return threads == 1;
}

void reserve_pool_threads(std::size_t n) {
    auto& b = budget();
    std::lock_guard lock(b.mutex);
    b.reserved += n;
    if (b.started.load(std::memory_order_relaxed)) {
        if (b.reserved > b.size) warn_small_pool(b, b.size, "the pool had already started");
        return;
    }
    if (!b.inspected_env) {
        b.inspected_env = true;
        b.user_set = std::getenv("UV_THREADPOOL_SIZE") != nullptr;
    }
    if (b.user_set) {
        if (b.reserved > env_pool_size()) warn_small_pool(b, env_pool_size(), "UV_THREADPOOL_SIZE is set");
        return;
    }
    std::size_t want = std::min(libuv_max_pool, std::max(libuv_default_pool, b.reserved + reserve_for_host_io));
    if (want <= env_pool_size()) return;
    // setenv while another thread reads the environment (getenv in the
    // host's threads, or libuv's) is a data race: change it only while this
    // is the process's one thread, else say what to set.
    if (single_threaded()) ::setenv("UV_THREADPOOL_SIZE", std::to_string(want).c_str(), 1);
    else warn_small_pool(b, env_pool_size(), "uvexec changes the environment only while the process has one thread");
}

void release_pool_threads(std::size_t n) noexcept {
    auto& b = budget();
    std::lock_guard lock(b.mutex);
    b.reserved -= n;
}

void note_pool_started() noexcept {
    auto& b = budget();
    if (b.started.load(std::memory_order_acquire)) return;
    std::lock_guard lock(b.mutex);
    if (b.started.load(std::memory_order_relaxed)) return;
    b.size = env_pool_size();
    b.started.store(true, std::memory_order_release);
    if (b.reserved > b.size) warn_small_pool(b, b.size, "UV_THREADPOOL_SIZE");
}

// --- worker identity ---------------------------------------------------------

thread_local const std::string* current_slot_name = nullptr;

std::atomic<std::uint64_t> executor_counter{0};

std::string describe(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
        return "an exception of unknown type";
    }
}

std::size_t checked_max_workers(const std::optional<int>& requested) {
    if (!requested) return thread_pool_executor::default_max_workers();
    if (*requested < 1)
        throw std::invalid_argument(fmt::format("uvexec::thread_pool_executor: max_workers must be at least 1, got {}", *requested));
    if (static_cast<std::size_t>(*requested) > libuv_max_pool)
        throw std::invalid_argument(fmt::format(
            "uvexec::thread_pool_executor: max_workers must be at most {} (libuv's pool limit), got {}",
            libuv_max_pool, *requested));
    return static_cast<std::size_t>(*requested);
}

}  // namespace

thread_pool_core::thread_pool_core(thread_pool_options opts)
    : max_workers_(checked_max_workers(opts.max_workers)),
      prefix_(std::move(opts.name_prefix)),
      initializer_(std::move(opts.initializer)),
      id_(executor_counter.fetch_add(1)),
      max_queue_(opts.max_queue.value_or(0)),
      time_calls_(opts.time_calls),
      direct_left_(max_workers_),
      room_(std::make_unique<room_queue>()),
      stats_(std::make_unique<call_recorder>(executor_stats::kind::threads)) {
    if (opts.max_queue && *opts.max_queue == 0)
        throw std::invalid_argument("uvexec::thread_pool_executor: max_queue must be at least 1 (unset: unbounded)");
    if (prefix_.empty()) prefix_ = fmt::format("ThreadPoolExecutor-{}", id_);
    slot_names_.reserve(max_workers_);
    free_slots_.resize(max_workers_);
    for (std::uint32_t i = 0; i < max_workers_; ++i) {
        slot_names_.push_back(fmt::format("{}_{}", prefix_, i));
        free_slots_[i] = i;
    }
    free_count_ = max_workers_;
    // libuv's pool has at most libuv_max_pool threads: room for all of them
    // now, so that a runner never allocates to note one.
    if (initializer_) initialized_threads_.reserve(libuv_max_pool);
    add_spare_runners();
    reserve_pool_threads(max_workers_);
}

// Loop thread (or the constructor): at least max_workers_ idle runners, so
// that starting as many as may ever be needed at once takes no allocation.
void thread_pool_core::add_spare_runners() {
    while (idle_count_ < max_workers_) {
        runner_store_.push_back(std::make_unique<pool_runner>());  // may throw; nothing is linked yet
        pool_runner* r = runner_store_.back().get();
        r->pool = this;
        r->req.data = r;
        r->next = idle_;
        idle_ = r;
        ++idle_count_;
    }
}

thread_pool_core::~thread_pool_core() = default;

void thread_pool_core::accept(loop_core& lp) {
    if (broken_)
        throw broken_executor_error(fmt::format(
            "uvexec: thread_pool_executor '{}' is broken: its initializer failed; create a new executor", prefix_));
    if (shut_down_)
        throw executor_shutdown_error(
            fmt::format("uvexec: cannot submit to thread_pool_executor '{}' after shutdown()", prefix_));
    if (lp.closing()) throw loop_closed_error("uvexec: the loop is closed");
    if (max_queue_ != 0 && waiting_.load() >= max_queue_) {
        stats_->rejected();
        throw queue_full_error(fmt::format(
            "uvexec: thread_pool_executor '{}' has max_queue ({}) calls waiting; co_await room() or try later",
            prefix_, max_queue_));
    }
    // Runners retired but not yet back from libuv are not idle: keep enough
    // spares that submit() can start runners without waiting for the loop.
    if (idle_count_ < max_workers_) add_spare_runners();
    if (loop_ == &lp) return;
    if (loop_ != nullptr)
        throw invalid_state_error(fmt::format(
            "uvexec: thread_pool_executor '{}' is bound to another loop; use one executor per loop", prefix_));
    auto* a = new uv_async_t;
    if (int r = uv_async_init(lp.uv(), a, &thread_pool_core::on_done); r != 0) {
        delete a;
        throw uv_error(r, "uv_async_init");
    }
    auto* p = new uv_prepare_t;
    if (int r = uv_prepare_init(lp.uv(), p); r != 0) {  // never fails in libuv 1.x; checked all the same
        delete p;
        close_handle(reinterpret_cast<uv_handle_t*>(a), [](uv_handle_t* h) noexcept { delete reinterpret_cast<uv_async_t*>(h); });
        throw uv_error(r, "uv_prepare_init");
    }
    a->data = this;
    p->data = this;
    // The async handle is referenced only while calls are outstanding (see
    // submit/item_gone): an idle executor must not keep a host's uv_run
    // alive. The prepare handle never keeps it alive on its own.
    uv_unref(reinterpret_cast<uv_handle_t*>(a));
    uv_unref(reinterpret_cast<uv_handle_t*>(p));
    async_ = a;
    flush_ = p;
    flush_armed_ = false;
    direct_left_ = max_workers_;
    loop_ = &lp;
    lp.attach(*this);
}

// Submission. Up to max_workers submissions go straight to the pending queue,
// starting runners at once: a lone call (a round trip) or a first handful
// starts without delay, even before the loop runs. The one that spends that
// budget arms the flush handle; until it runs (in the loop's next prepare
// phase, just before the loop polls) further submissions wait in the staged
// queue, which only the loop thread touches, and move to the pending queue in
// batches of stage_batch; the flush moves the rest and refills the budget. So
// a burst of a million submissions takes the mutex once per batch instead of
// once per call against runners taking calls, and runners that empty the
// queue faster than the loop fills it are not restarted (a uv_queue_work and a
// thread wakeup) per call.
void thread_pool_core::submit(pool_item& it) noexcept {
    it.pool = this;
    it.next = nullptr;
    if (time_calls_) it.times = uv_hrtime();
    stats_->submitted();
    if (max_queue_ != 0) waiting_.fetch_add(1);
    if (outstanding_++ == 0) uv_ref(reinterpret_cast<uv_handle_t*>(async_));
    if (direct_left_ > 0) {  // then nothing is staged: flush() refills it after emptying the staged queue
        if (--direct_left_ == 0) arm_flush();
        it.prev = nullptr;
        it.at = pool_item::where::pending;
        enqueue(&it, &it, 1, 1);
        return;
    }
    it.at = pool_item::where::staged;
    it.prev = staged_tail_;
    if (staged_tail_) staged_tail_->next = &it; else staged_head_ = &it;
    staged_tail_ = &it;
    // A full batch goes to the runners at once: a long burst keeps them busy
    // (and makes progress even if the loop thread does not return to libuv
    // for a while) at one lock per batch.
    if (++staged_count_ == stage_batch) publish_staged(1);
}

void thread_pool_core::arm_flush() noexcept {
    if (flush_armed_ || flush_ == nullptr) return;
    uv_prepare_start(flush_, &thread_pool_core::on_flush);
    flush_armed_ = true;
}

void thread_pool_core::on_flush(uv_prepare_t* h) noexcept { static_cast<thread_pool_core*>(h->data)->flush(); }

void thread_pool_core::flush() noexcept {
    if (flush_armed_) {
        uv_prepare_stop(flush_);
        flush_armed_ = false;
    }
    direct_left_ = max_workers_;
    publish_staged(max_workers_);
}

void thread_pool_core::publish_staged(std::size_t max_starts) noexcept {
    if (staged_head_ == nullptr) return;
    pool_item* head = std::exchange(staged_head_, nullptr);
    pool_item* tail = std::exchange(staged_tail_, nullptr);
    // Written before the lock publishes them to the runners.
    for (pool_item* it = head; it; it = it->next) it->at = pool_item::where::pending;
    enqueue(head, tail, std::exchange(staged_count_, 0), max_starts);
}

void thread_pool_core::enqueue(pool_item* head, pool_item* tail, std::size_t n, std::size_t max_starts) noexcept {
    pool_runner* chain;
    {
        std::lock_guard lock(mutex_);
        head->prev = pending_tail_;
        if (pending_tail_) pending_tail_->next = head; else pending_head_ = head;
        pending_tail_ = tail;
        pending_count_ += n;
        chain = claim_runners_locked(max_starts);
    }
    start_runners(chain);
}

// Under mutex_, loop thread: the idle runners to start so that every pending
// call has an active runner not running a call (it will take one), each with
// a free slot. The decision is made under the same lock as a runner's
// decision to retire (take_locked), so a call is never left pending without
// a runner that will take it: accept() keeps at least max_workers_ runners
// idle, and at most max_workers_ - active_runners_ are needed. A batch handed
// over in the middle of a burst starts at most one (max_starts): the burst
// goes on on the loop thread, the flush that ends it starts the rest, and a
// runner restarted per batch would cost a thread wakeup per 128 calls each.
pool_runner* thread_pool_core::claim_runners_locked(std::size_t max_starts) noexcept {
    pool_runner* chain = nullptr;
    for (; max_starts > 0 && idle_ != nullptr && active_runners_ < max_workers_ && !stopped_ &&
           pending_count_ > active_runners_ - running_count_;
         --max_starts) {
        pool_runner* r = idle_;
        idle_ = r->next;
        --idle_count_;
        r->slot = free_slots_[free_head_];
        free_head_ = (free_head_ + 1) % max_workers_;
        --free_count_;
        ++active_runners_;
        r->next = chain;
        chain = r;
    }
    return chain;
}

void thread_pool_core::start_runners(pool_runner* chain) noexcept {
    while (pool_runner* r = chain) {
        chain = r->next;
        r->prev = nullptr;
        r->next = out_;
        if (out_) out_->prev = r;
        out_ = r;
        ++runners_out_;
        note_pool_started();
        if (int rc = uv_queue_work(loop_->uv(), &r->req, &thread_pool_core::work_cb, &thread_pool_core::after_work_cb);
            rc != 0) {
            // Only a programming error gets here (libuv validates nothing else).
            std::fprintf(stderr, "uvexec: uv_queue_work failed: %s\n", uv_strerror(rc));
            std::abort();
        }
    }
}

void thread_pool_core::restart_runners() noexcept {
    pool_runner* chain;
    {
        std::lock_guard lock(mutex_);
        chain = claim_runners_locked(max_workers_);
    }
    start_runners(chain);
}

void thread_pool_core::retire_locked(pool_runner& r) noexcept {
    --active_runners_;
    free_slots_[(free_head_ + free_count_) % max_workers_] = r.slot;
    ++free_count_;
}

// Under mutex_: the runner's next call, or null after retiring the runner.
pool_item* thread_pool_core::take_locked(pool_runner& r) noexcept {
    pool_item* it = pending_head_;
    if (it == nullptr || stopped_) {
        retire_locked(r);
        return nullptr;
    }
    pending_head_ = it->next;
    if (pending_head_) pending_head_->prev = nullptr; else pending_tail_ = nullptr;
    it->prev = it->next = nullptr;
    it->at = pool_item::where::running;
    --pending_count_;
    ++running_count_;
    if (max_queue_ != 0) waiting_.fetch_sub(1);
    if (it->ops->request_stop != nullptr) {  // shutdown(true) may ask it to stop
        it->next = stoppable_;
        if (stoppable_) stoppable_->prev = it;
        stoppable_ = it;
    }
    return it;
}

void thread_pool_core::work_cb(uv_work_t* req) noexcept {
    auto& r = *static_cast<pool_runner*>(req->data);
    auto& pool = *r.pool;  // mutable fields only under pool.mutex_
    current_slot_name = &pool.slot_names_[r.slot];
    const auto self = std::this_thread::get_id();
    bool initialized = !pool.initializer_;
    bool newly_initialized = false;
    pool_item* it;
    {
        std::lock_guard lock(pool.mutex_);
        if (!initialized)
            initialized = std::find(pool.initialized_threads_.begin(), pool.initialized_threads_.end(), self) !=
                          pool.initialized_threads_.end();
        it = pool.take_locked(r);
    }
    // A slot in a bounded queue was freed: a room() waiter may go on.
    if (it != nullptr && pool.room_wanted_.load()) uv_async_send(pool.async_);
    // One clock read per call: a call starts when the one before it ended.
    std::uint64_t start = pool.time_calls_ && it != nullptr ? uv_hrtime() : 0;
    while (it != nullptr) {
        const std::uint64_t waited = start - std::min(start, it->times);
        if (!initialized) {
            try {
                pool.initializer_();
                initialized = newly_initialized = true;
            } catch (...) {
                it->initializer_failed = true;
                it->shared_state()->stash_exception(std::current_exception());
            }
        }
        if (!it->initializer_failed) it->ops->run(it);
        if (pool.time_calls_) {
            const std::uint64_t end = uv_hrtime();
            it->times = pack_times(waited, end - start);
            start = end;
        }
        pool_item* next;
        {
            std::lock_guard lock(pool.mutex_);
            --pool.running_count_;
            if (it->ops->request_stop != nullptr) {
                if (it->prev) it->prev->next = it->next; else pool.stoppable_ = it->next;
                if (it->next) it->next->prev = it->prev;
                it->prev = it->next = nullptr;
            }
            if (it->initializer_failed) pool.stopped_ = true;
            if (std::exchange(newly_initialized, false)) pool.initialized_threads_.push_back(self);  // reserved
            next = pool.take_locked(r);
        }
        // Wakeups coalesce: only the call that makes the done stack non-empty
        // sends one (on_done takes the whole stack), and a retiring runner
        // sends none: its after_work_cb takes the stack anyway. The handle
        // stays open while any runner is inside libuv (close_handles).
        const bool room = next != nullptr && pool.room_wanted_.load();
        if ((pool.push_done(it) || room) && next != nullptr) uv_async_send(pool.async_);
        it = next;
    }
    current_slot_name = nullptr;
}

void thread_pool_core::after_work_cb(uv_work_t* req, int status) noexcept {
    auto& r = *static_cast<pool_runner*>(req->data);
    auto& pool = *r.pool;
    if (status == UV_ECANCELED) {
        // Cancelled before it reached a thread (only when the loop closes,
        // after the pending queue was emptied): retire it here.
        std::lock_guard lock(pool.mutex_);
        pool.retire_locked(r);
    }
    if (r.prev) r.prev->next = r.next; else pool.out_ = r.next;
    if (r.next) r.next->prev = r.prev;
    r.prev = nullptr;
    r.next = pool.idle_;
    pool.idle_ = &r;
    ++pool.idle_count_;
    --pool.runners_out_;
    pool.drain_done();
    pool.offer_room();
    // Calls published when no runner was idle (a flush after runners retired
    // faster than the loop took them back) get one now.
    if (!pool.closing_) pool.restart_runners();
    if (pool.closing_ && pool.runners_out_ == 0) pool.close_handles();
    pool.settle();  // may free the core
}

void thread_pool_core::on_done(uv_async_t* h) noexcept {
    auto& pool = *static_cast<thread_pool_core*>(h->data);
    pool.drain_done();
    pool.offer_room();
    pool.settle();  // may free the core
}

// Any thread (a runner): pushes a finished call; true if the stack was empty.
// Release: the call's result or exception (in its state) and times are visible to the loop
// thread that takes the stack (acquire).
bool thread_pool_core::push_done(pool_item* it) noexcept {
    pool_item* head = done_.load(std::memory_order_relaxed);
    do {
        it->next = head;
    } while (!done_.compare_exchange_weak(head, it, std::memory_order_release, std::memory_order_relaxed));
    return head == nullptr;
}

void thread_pool_core::drain_done() noexcept {
    pool_item* stack = done_.exchange(nullptr, std::memory_order_acquire);
    if (stack == nullptr) return;
    // The stack is newest first: complete in the order the calls finished.
    pool_item* batch = nullptr;
    while (pool_item* it = stack) {
        stack = it->next;
        it->next = batch;
        batch = it;
    }
    // Completing a future may resume a coroutine that does anything, even
    // destroy the executor; busy_ keeps this core alive until settle().
    ++busy_;
    while (pool_item* it = batch) {
        batch = it->next;
        it->next = nullptr;
        finish(*it);
    }
    --busy_;
}

void thread_pool_core::finish(pool_item& it) noexcept {
    it.at = pool_item::where::nowhere;  // no runner touches it any more
    future_state_base* st = it.shared_state();
    if (it.initializer_failed && !broken_) {
        broken_ = true;
        auto why = error_ptr([&] {
            return broken_executor_error(fmt::format("uvexec: thread_pool_executor '{}' is broken: its initializer failed: {}",
                                                     prefix_, describe(st->stashed_exception())));
        });
        close_room(why);
        fail_queued(false, why);
    }
    if (it.initializer_failed) {
        if (!st->done())
            st->set_exception(error_ptr([&] {
                return broken_executor_error(fmt::format("uvexec: thread_pool_executor '{}' initializer failed: {}",
                                                         prefix_, describe(st->stashed_exception())));
            }));
    } else {
        if (time_calls_) {
            auto [waited, ran] = unpack_times(it.times);
            stats_->ran(waited, ran);
        }
        it.ops->publish(&it);  // drops the result if the future was cancelled while running
    }
    stats_->ended(st->state());
    st->release();
    item_gone();
}

void thread_pool_core::item_gone() noexcept {
    if (--outstanding_ == 0 && async_) uv_unref(reinterpret_cast<uv_handle_t*>(async_));
}

void thread_pool_core::cancel(pool_item& it) noexcept {
    {
        // The lock also covers a staged item (loop thread only) because `at`
        // of an item that has left the staged queue is written by runners.
        std::lock_guard lock(mutex_);
        // A running call is not interrupted (one that takes a std::stop_token
        // was asked to stop by thread_item::on_cancel): its future is already
        // cancelled and publish() drops the result when it comes back.
        if (it.at == pool_item::where::staged) {
            if (it.prev) it.prev->next = it.next; else staged_head_ = it.next;
            if (it.next) it.next->prev = it.prev; else staged_tail_ = it.prev;
            --staged_count_;
        } else if (it.at == pool_item::where::pending) {
            if (it.prev) it.prev->next = it.next; else pending_head_ = it.next;
            if (it.next) it.next->prev = it.prev; else pending_tail_ = it.prev;
            --pending_count_;
        } else {
            return;
        }
        it.prev = it.next = nullptr;
        it.at = pool_item::where::nowhere;
    }
    stats_->ended(status::cancelled);
    left_queue(1);
    it.shared_state()->release();  // the canceller holds its own reference
    item_gone();
    offer_room();
    settle();
}

void thread_pool_core::fail_queued(bool cancel, const std::exception_ptr& why) noexcept {
    pool_item* list;
    {
        std::lock_guard lock(mutex_);
        left_queue(pending_count_ + staged_count_);
        // Staged calls come after the pending ones: fail them in submission order.
        if (staged_head_) {
            staged_head_->prev = pending_tail_;
            if (pending_tail_) pending_tail_->next = staged_head_; else pending_head_ = staged_head_;
            staged_head_ = staged_tail_ = nullptr;
            staged_count_ = 0;
        }
        list = pending_head_;
        pending_head_ = pending_tail_ = nullptr;
        pending_count_ = 0;
        for (pool_item* it = list; it; it = it->next) it->at = pool_item::where::nowhere;
    }
    ++busy_;
    while (pool_item* it = list) {
        list = it->next;
        it->prev = it->next = nullptr;
        future_state_base* st = it->shared_state();
        if (cancel) st->cancel();
        else if (!st->done()) st->set_exception(why);
        stats_->ended(st->state());
        st->release();
        item_gone();
    }
    --busy_;
}

// Room waiters, now and to come, fail with why, or executor_shutdown_error when it is null.
void thread_pool_core::close_room(std::exception_ptr why) noexcept {
    if (!why) why = error_ptr([&] {
        return executor_shutdown_error(fmt::format("uvexec: thread_pool_executor '{}' was shut down", prefix_));
    });
    ++busy_;
    room_->close(std::move(why));
    room_wanted_.store(false);
    --busy_;
}

void thread_pool_core::left_queue(std::size_t n) noexcept {
    if (max_queue_ != 0) waiting_.fetch_sub(n);
}

void thread_pool_core::offer_room() noexcept {
    if (room_->empty()) return;
    ++busy_;  // a woken waiter may destroy the executor
    room_->offer([this]() noexcept -> std::size_t {
        const std::size_t w = waiting_.load();
        return w < max_queue_ ? max_queue_ - w : 0;
    });
    room_wanted_.store(!room_->empty());
    --busy_;
}

future<void> thread_pool_core::room(loop_core& lp) {
    // After shutdown or once broken the queue is closed: the future fails.
    if (max_queue_ == 0 || loop_ == nullptr) return room_->wait(lp, true);  // unbounded, or nothing queued yet
    auto f = room_->wait(lp, waiting_.load() < max_queue_);
    // Published before looking again: a runner that takes a call after this
    // wakes the loop, one that took it before is seen by offer_room().
    room_wanted_.store(!room_->empty());
    offer_room();
    settle();
    return f;
}

executor_stats thread_pool_core::stats() const noexcept {
    std::size_t queued, active;
    {
        std::lock_guard lock(mutex_);
        queued = pending_count_ + staged_count_;
        active = active_runners_;
    }
    // Finished calls stay running until the loop thread completes them.
    return stats_->snapshot(queued, outstanding_ - queued, active, max_workers_, max_queue_, uv_hrtime());
}

std::size_t thread_pool_core::queued() const noexcept {
    std::lock_guard lock(mutex_);
    return pending_count_ + staged_count_;
}

std::size_t thread_pool_core::in_flight() const noexcept {
    std::lock_guard lock(mutex_);
    return running_count_;
}

future<void> thread_pool_core::shutdown(bool cancel_futures) {
    // At most max_workers calls run: reserved before anything changes, so
    // nothing below throws halfway.
    std::vector<pool_item*> running;
    if (cancel_futures) running.reserve(max_workers_);
    shut_down_ = true;
    close_room(nullptr);
    if (cancel_futures) {
        fail_queued(true, {});
        // Running calls that take a std::stop_token are asked to stop (their
        // futures get what they return). Collected under the lock, asked
        // outside it (a stop callback may call back in); they stay alive
        // until this loop thread completes them.
        {
            std::lock_guard lock(mutex_);
            for (pool_item* it = stoppable_; it; it = it->next) running.push_back(it);
        }
        for (pool_item* it : running) it->ops->request_stop(it);
    }
    auto w = state_ptr<future_state<void>>::adopt(new future_state<void>(loop_));
    if (outstanding_ == 0) {
        w->set_value();
    } else {
        w->add_ref();
        shutdown_waiters_.push_back(w.get());
    }
    auto f = make_future(std::move(w));
    settle();
    return f;
}

void thread_pool_core::settle() noexcept {
    if (busy_ != 0 || outstanding_ != 0) return;
    if (!shutdown_waiters_.empty()) {
        ++busy_;
        complete_and_release(shutdown_waiters_);
        --busy_;
    }
    // Runners still inside libuv point at this core: it lives until they are back.
    if (orphaned_ && outstanding_ == 0 && runners_out_ == 0) {
        if (loop_) loop_->detach(*this);
        close_handles();
        delete this;
    }
}

void thread_pool_core::close_handles() noexcept {
    if (flush_ != nullptr) {
        close_handle(reinterpret_cast<uv_handle_t*>(flush_),
                     [](uv_handle_t* h) noexcept { delete reinterpret_cast<uv_prepare_t*>(h); });
        flush_ = nullptr;
        flush_armed_ = false;
    }
    if (async_ != nullptr) {
        close_handle(reinterpret_cast<uv_handle_t*>(async_),
                     [](uv_handle_t* h) noexcept { delete reinterpret_cast<uv_async_t*>(h); });
        async_ = nullptr;
    }
}

void thread_pool_core::orphan() noexcept {
    shut_down_ = true;
    orphaned_ = true;
    close_room(nullptr);
    release_pool_threads(max_workers_);
    fail_queued(true, {});
    settle();
}

void thread_pool_core::on_loop_closing() noexcept {
    closing_ = true;
    ++busy_;
    room_->cancel_all();
    room_wanted_.store(false);
    --busy_;
    fail_queued(true, {});
    // Runners still waiting for a libuv thread are cancelled (after_work_cb
    // sees UV_ECANCELED); running ones find the queue empty and retire.
    for (pool_runner* r = out_; r; r = r->next) uv_cancel(reinterpret_cast<uv_req_t*>(&r->req));
    if (runners_out_ == 0) close_handles();  // else the last runner's after_work_cb closes them
}

void thread_pool_core::on_loop_closed() noexcept {
    loop_ = nullptr;
    closing_ = false;
    // Runners are still out only if the host closed the loop's handles under
    // us; their work is abandoned (loop_core says so) and the handles left alone.
    if (runners_out_ == 0) close_handles();
    settle();
}

}  // namespace detail

thread_pool_executor::thread_pool_executor(thread_pool_options opts)
    : core_(new detail::thread_pool_core(std::move(opts))) {}

thread_pool_executor::~thread_pool_executor() { core_->orphan(); }

std::size_t thread_pool_executor::default_max_workers() noexcept {
    return std::min<std::size_t>(32, std::max(1u, std::thread::hardware_concurrency()) + 4);
}

namespace this_worker {
std::string_view name() noexcept {
    if (detail::current_slot_name) return *detail::current_slot_name;
    return detail::process_worker_name();
}
}  // namespace this_worker

std::size_t libuv_pool_size() noexcept {
    auto& b = detail::budget();
    std::lock_guard lock(b.mutex);
    return b.started.load(std::memory_order_relaxed) ? b.size : detail::env_pool_size();
}

}  // namespace uvexec
