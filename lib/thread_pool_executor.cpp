// uvexec — thread_pool_executor: admission queue over uv_queue_work.
//
// Invariants (all on the loop thread):
//  - an item is in exactly one of: the admission queue, the running list
//    (inside libuv), or neither (finished or cancelled);
//  - in_flight_ == length of the running list <= max_workers_;
//  - the executor holds one reference to each item's state while the item is
//    queued or inside libuv, and drops it when the item leaves both;
//  - the core outlives its executor object while work is inside libuv
//    (orphaned_), and frees itself in settle() once nothing is left.
#include "uvexec/thread_pool_executor.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "uvexec/detail/worker.hpp"
#include "uvexec/error.hpp"

namespace uvexec {
namespace detail {
namespace {

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
    if (want > env_pool_size()) ::setenv("UV_THREADPOOL_SIZE", std::to_string(want).c_str(), 1);
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
thread_local std::vector<std::uint64_t> initialized_executors;  // ids whose initializer ran on this thread

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
      id_(executor_counter.fetch_add(1)) {
    if (prefix_.empty()) prefix_ = fmt::format("ThreadPoolExecutor-{}", id_);
    slot_names_.reserve(max_workers_);
    free_slots_.resize(max_workers_);
    for (std::uint32_t i = 0; i < max_workers_; ++i) {
        slot_names_.push_back(fmt::format("{}_{}", prefix_, i));
        free_slots_[i] = i;
    }
    free_count_ = max_workers_;
    reserve_pool_threads(max_workers_);
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
    if (loop_ == nullptr) {
        loop_ = &lp;
        lp.attach(*this);
    } else if (loop_ != &lp) {
        throw invalid_state_error(fmt::format(
            "uvexec: thread_pool_executor '{}' is bound to another loop; use one executor per loop", prefix_));
    }
}

void thread_pool_core::submit(pool_item& it) noexcept {
    it.pool = this;
    if (in_flight_ < max_workers_ && queue_head_ == nullptr) {
        start(it);
        return;
    }
    it.at = pool_item::where::queued;
    it.prev = queue_tail_;
    it.next = nullptr;
    if (queue_tail_) queue_tail_->next = &it; else queue_head_ = &it;
    queue_tail_ = &it;
    ++queued_count_;
}

void thread_pool_core::start(pool_item& it) noexcept {
    it.slot = free_slots_[free_head_];
    free_head_ = (free_head_ + 1) % max_workers_;
    --free_count_;
    it.at = pool_item::where::in_libuv;
    it.prev = nullptr;
    it.next = running_;
    if (running_) running_->prev = &it;
    running_ = &it;
    ++in_flight_;
    note_pool_started();
    if (int r = uv_queue_work(loop_->uv(), &it.req, &thread_pool_core::work_cb, &thread_pool_core::after_work_cb); r != 0) {
        // Only a programming error gets here (libuv validates nothing else).
        it.worker_exception = std::make_exception_ptr(uv_error(r, "uv_queue_work"));
        finish(it, 0);
    }
}

void thread_pool_core::work_cb(uv_work_t* req) noexcept {
    auto& it = *static_cast<pool_item*>(req->data);
    auto& pool = *it.pool;  // immutable fields only: names, initializer, id
    current_slot_name = &pool.slot_names_[it.slot];
    if (pool.initializer_ &&
        std::find(initialized_executors.begin(), initialized_executors.end(), pool.id_) == initialized_executors.end()) {
        try {
            pool.initializer_();
            initialized_executors.push_back(pool.id_);
        } catch (...) {
            it.initializer_failed = true;
            it.worker_exception = std::current_exception();
        }
    }
    if (!it.initializer_failed) it.ops->run(&it);
    current_slot_name = nullptr;
}

void thread_pool_core::after_work_cb(uv_work_t* req, int status) noexcept {
    auto& it = *static_cast<pool_item*>(req->data);
    it.pool->finish(it, status);
}

void thread_pool_core::finish(pool_item& it, int status) noexcept {
    ++busy_;
    if (it.prev) it.prev->next = it.next; else running_ = it.next;
    if (it.next) it.next->prev = it.prev;
    it.prev = it.next = nullptr;
    it.at = pool_item::where::nowhere;
    --in_flight_;
    free_slots_[(free_head_ + free_count_) % max_workers_] = it.slot;
    ++free_count_;

    if (it.initializer_failed && !broken_) {
        broken_ = true;
        fail_queued(false, std::make_exception_ptr(broken_executor_error(fmt::format(
                               "uvexec: thread_pool_executor '{}' is broken: its initializer failed: {}", prefix_,
                               describe(it.worker_exception)))));
    }
    admit();

    // Completing the future may resume a coroutine that does anything, even
    // destroy the executor; busy_ keeps this core alive until settle().
    future_state_base* st = it.shared_state();
    if (status == UV_ECANCELED) {
        st->cancel();
    } else if (it.initializer_failed) {
        if (!st->done())
            st->set_exception(std::make_exception_ptr(broken_executor_error(fmt::format(
                "uvexec: thread_pool_executor '{}' initializer failed: {}", prefix_, describe(it.worker_exception)))));
    } else {
        it.ops->publish(&it);
    }
    st->release();
    --busy_;
    settle();
}

void thread_pool_core::admit() noexcept {
    while (!broken_ && in_flight_ < max_workers_ && queue_head_ != nullptr) {
        pool_item& it = *queue_head_;
        queue_head_ = it.next;
        if (queue_head_) queue_head_->prev = nullptr; else queue_tail_ = nullptr;
        --queued_count_;
        start(it);
    }
}

void thread_pool_core::cancel(pool_item& it) noexcept {
    switch (it.at) {
        case pool_item::where::queued:
            if (it.prev) it.prev->next = it.next; else queue_head_ = it.next;
            if (it.next) it.next->prev = it.prev; else queue_tail_ = it.prev;
            it.prev = it.next = nullptr;
            it.at = pool_item::where::nowhere;
            --queued_count_;
            it.shared_state()->release();  // the canceller holds its own reference
            settle();
            break;
        case pool_item::where::in_libuv:
            // Succeeds while the work waits for a libuv thread (after_work_cb
            // then sees UV_ECANCELED); fails with EBUSY once it runs, and the
            // result is dropped when it comes back.
            uv_cancel(reinterpret_cast<uv_req_t*>(&it.req));
            break;
        case pool_item::where::nowhere:
            break;
    }
}

void thread_pool_core::fail_queued(bool cancel, const std::exception_ptr& why) noexcept {
    ++busy_;
    while (pool_item* it = queue_head_) {
        queue_head_ = it->next;
        if (queue_head_) queue_head_->prev = nullptr; else queue_tail_ = nullptr;
        it->prev = it->next = nullptr;
        it->at = pool_item::where::nowhere;
        --queued_count_;
        future_state_base* st = it->shared_state();
        if (cancel) st->cancel();
        else if (!st->done()) st->set_exception(why);
        st->release();
    }
    --busy_;
}

future<void> thread_pool_core::shutdown(bool cancel_futures) {
    shut_down_ = true;
    if (cancel_futures) {
        fail_queued(true, {});
    }
    auto w = state_ptr<future_state<void>>::adopt(new future_state<void>(loop_));
    if (queued_count_ == 0 && in_flight_ == 0) {
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
    if (busy_ != 0 || in_flight_ != 0 || queued_count_ != 0) return;
    if (!shutdown_waiters_.empty()) {
        ++busy_;
        auto waiters = std::move(shutdown_waiters_);
        shutdown_waiters_.clear();
        for (auto* w : waiters) {
            if (!w->done()) w->set_value();
            w->release();
        }
        --busy_;
    }
    if (orphaned_ && in_flight_ == 0 && queued_count_ == 0) {
        if (loop_) loop_->detach(*this);
        delete this;
    }
}

void thread_pool_core::orphan() noexcept {
    shut_down_ = true;
    orphaned_ = true;
    release_pool_threads(max_workers_);
    fail_queued(true, {});
    settle();
}

void thread_pool_core::on_loop_closing() noexcept {
    fail_queued(true, {});
    for (pool_item* it = running_; it; it = it->next) uv_cancel(reinterpret_cast<uv_req_t*>(&it->req));
}

void thread_pool_core::on_loop_closed() noexcept {
    loop_ = nullptr;
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
