// uvexec — map: a lazy, ordered, chunked map over either executor.
//
//     auto m = ex.map(lp, uvexec::fn<&twice>, std::views::iota(0, 400000),
//                     uvexec::map_options{.chunksize = 256, .buffersize = 4});
//     while (auto r = co_await m.next()) use(*r);
//
// Python 3.14: Executor.map(fn, *iterables, chunksize, buffersize). The input
// is pulled lazily, chunksize items at a time; each chunk is one call on the
// executor (one frame to a worker process, one queued call on a thread pool),
// which runs fn once per item. At most buffersize chunks are in flight
// (submitted, or holding results not yet taken by next()), so at most
// chunksize × buffersize items have been pulled ahead of the consumer. Results
// come back in input order.
//
// This header knows no executor: thread_pool_executor::map and
// process_pool_executor::map build a map_stream on the machinery below.
#pragma once

#include "uvexec/detail/config.hpp"

#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "uvexec/error.hpp"
#include "uvexec/future.hpp"
#include "uvexec/task.hpp"

namespace uvexec::inline v0 {

/// Options of an executor's map(). Python 3.14: Executor.map's chunksize and
/// buffersize arguments (chunksize is honoured by both executors here, not
/// only by ProcessPoolExecutor).
struct map_options {
    /// Items per chunk: one call (one message to a worker process) runs fn on
    /// each of them. 0 makes map() throw std::invalid_argument.
    std::size_t chunksize = 1;
    /// Chunks in flight at most; unset means 2 × the executor's max_workers.
    /// 0 makes map() throw std::invalid_argument.
    std::optional<std::size_t> buffersize{};
};

namespace detail {

/// What one chunk gave: the results of its first items, in order, and the
/// exception of the item after them (null if every item succeeded).
template <class T>
struct map_chunk {
    std::vector<T> values;
    std::exception_ptr error;
};

/// Runs f on each item in order, moving it in; stops at the first item that
/// throws (the items after it do not run).
template <class T, class F, class In>
map_chunk<T> run_map_items(F& f, std::vector<In>& items) {
    map_chunk<T> out;
    out.values.reserve(items.size());
    try {
        for (In& x : items) out.values.push_back(std::invoke(f, std::move(x)));
    } catch (...) {
        out.error = std::current_exception();
    }
    return out;
}

/// The executor-independent part of a map: the chunk being read, the order,
/// the end. An executor's range_map (below) says how chunks are pulled and sent.
template <class T>
class map_engine {
public:
    explicit map_engine(std::size_t buffersize) noexcept : buffersize_(buffersize) {}
    virtual ~map_engine() = default;
    map_engine(const map_engine&) = delete;
    map_engine& operator=(const map_engine&) = delete;

    /// A result is at hand (or the map is over): next() need not suspend.
    bool ready() const noexcept { return finished_ || pos_ < current_.size(); }
    /// The result at hand; only when ready().
    std::optional<T> take_ready() {
        if (finished_) return std::nullopt;
        return std::move(current_[pos_++]);
    }

    /// The next result, fetching chunks as needed (the slow path of map_stream::next).
    task<std::optional<T>> next() {
        for (;;) {
            if (finished_) co_return std::nullopt;
            if (pos_ < current_.size()) co_return std::move(current_[pos_++]);
            if (error_) {
                finish();
                std::rethrow_exception(std::exchange(error_, {}));
            }
            // The current chunk is used up: it no longer counts as in flight.
            current_.clear();
            pos_ = 0;
            try {
                co_await fill();
            } catch (...) {
                finish();  // the input failed (or room() did): nothing more comes
                throw;
            }
            if (in_flight() == 0) {
                finish();
                co_return std::nullopt;
            }
            try {
                map_chunk<T> c = co_await take_head();
                current_ = std::move(c.values);
                error_ = std::move(c.error);
            } catch (...) {
                error_ = std::current_exception();  // the whole chunk failed: at its first item
            }
        }
    }

protected:
    /// Pulls the next chunk of input unless one is held; false when none is left.
    virtual bool pull() = 0;
    /// Submits the held chunk; throws queue_full_error without taking it.
    virtual void submit_held() = 0;
    /// Chunks submitted and not yet taken.
    virtual std::size_t in_flight() const noexcept = 0;
    /// Awaits the oldest submitted chunk and takes it out.
    virtual task<map_chunk<T>> take_head() = 0;
    virtual future<void> room() = 0;
    /// Cancels every submitted chunk (queued ones never run) and drops them.
    virtual void cancel_all() noexcept = 0;

private:
    /// Tops the chunks in flight up to buffersize. A full executor queue
    /// (max_queue) makes it wait for room only when nothing is in flight;
    /// otherwise it tries again at the next chunk.
    task<void> fill() {
        while (in_flight() < buffersize_ && pull()) {
            bool full = false;
            try {
                submit_held();
            } catch (const queue_full_error&) {
                full = true;
            }
            if (!full) continue;
            if (in_flight() > 0) break;
            co_await room();
        }
    }

    void finish() noexcept {
        finished_ = true;
        current_.clear();
        pos_ = 0;
        cancel_all();
    }

    std::size_t buffersize_;
    std::vector<T> current_;  // the chunk being read
    std::size_t pos_ = 0;     // next item of current_
    std::exception_ptr error_;  // thrown once current_ is read
    bool finished_ = false;
};

/// A map over a range held as R (a value it owns, or an lvalue reference):
/// pulls chunks of In from it and sends each through Backend, whose
/// submit(std::vector<In>&) returns a future<Backend::chunk> (throwing
/// queue_full_error without taking the items), whose room() is the
/// executor's, and whose static to_chunk turns its chunk into a map_chunk<T>.
/// (No std::views here: clang 14 cannot instantiate libstdc++ 12's views.)
template <class T, class R, class In, class Backend>
class range_map final : public map_engine<T> {
public:
    template <class Rg>
    range_map(Rg&& range, std::size_t chunksize, std::size_t buffersize, Backend backend)
        : map_engine<T>(buffersize),
          range_(std::forward<Rg>(range)),
          it_(std::ranges::begin(range_)),
          chunksize_(chunksize),
          backend_(std::move(backend)) {}
    ~range_map() override { cancel_all(); }

private:
    bool pull() override {
        if (!held_.empty()) return true;
        held_.reserve(chunksize_);
        for (; held_.size() < chunksize_ && it_ != std::ranges::end(range_); ++it_) held_.emplace_back(*it_);
        return !held_.empty();
    }
    void submit_held() override {
        in_flight_.push_back(backend_.submit(held_));
        held_.clear();  // moved from: emptied for the next pull
    }
    std::size_t in_flight() const noexcept override { return in_flight_.size(); }
    task<map_chunk<T>> take_head() override {
        future<typename Backend::chunk> f = std::move(in_flight_.front());
        in_flight_.pop_front();
        co_return Backend::to_chunk(co_await std::move(f));
    }
    future<void> room() override { return backend_.room(); }
    void cancel_all() noexcept override {
        for (auto& f : in_flight_) f.cancel();
        in_flight_.clear();
    }

    R range_;
    std::ranges::iterator_t<std::remove_reference_t<R>> it_;
    std::size_t chunksize_;
    Backend backend_;
    std::vector<In> held_;  // pulled, not yet submitted (the queue was full)
    std::deque<future<typename Backend::chunk>> in_flight_;
};

/// How a map holds its input range, passed as Rg&&: an rvalue is moved in and
/// owned, an lvalue is referred to.
template <class Rg>
using map_input_t = std::conditional_t<std::is_lvalue_reference_v<Rg>, Rg, std::remove_cvref_t<Rg>>;

/// The items a map over Rg pulls.
template <class Rg>
using map_item_t = std::ranges::range_value_t<std::remove_reference_t<Rg>>;

/// Checks map_options; returns the buffersize to use.
inline std::size_t checked_buffersize(const map_options& opts, std::size_t max_workers) {
    if (opts.chunksize == 0) throw std::invalid_argument("uvexec: map_options::chunksize must be at least 1");
    if (opts.buffersize && *opts.buffersize == 0)
        throw std::invalid_argument("uvexec: map_options::buffersize must be at least 1");
    return opts.buffersize ? *opts.buffersize : 2 * max_workers;
}

template <class T>
class map_access;

}  // namespace detail

/// The results of an executor's map(), in input order. Python 3.14: the
/// iterator Executor.map returns. Move-only; destroying it cancels the chunks
/// in flight (queued ones never run; a running one finishes and is dropped).
template <class T>
class map_stream {
public:
    map_stream(map_stream&&) noexcept = default;
    map_stream& operator=(map_stream&&) noexcept = default;

    class next_awaiter;

    /// The next result, std::nullopt at the end: `while (auto r = co_await
    /// m.next())`. An item whose fn threw rethrows its exception here, after
    /// the results of the items before it; the map is then finished (what
    /// was in flight is cancelled, the input is not pulled further) and
    /// next() returns std::nullopt. A chunk that failed as a whole (its
    /// worker died: worker_died_error) throws at its first item. Await each
    /// next() before calling it again, and keep the map_stream alive meanwhile.
    /// A result already fetched is returned without suspending or allocating;
    /// next().as_task() is the same as a task (for run_until_complete, wait_for).
    /// Python: next(iterator).
    next_awaiter next() noexcept { return next_awaiter(*engine_); }

private:
    friend class detail::map_access<T>;
    explicit map_stream(std::unique_ptr<detail::map_engine<T>> e) noexcept : engine_(std::move(e)) {}
    std::unique_ptr<detail::map_engine<T>> engine_;
};

/// What map_stream::next() returns: ready at once when a result is at hand,
/// otherwise it runs the engine's next() task (which fetches a chunk).
template <class T>
class map_stream<T>::next_awaiter {
public:
    explicit next_awaiter(detail::map_engine<T>& e) noexcept : engine_(&e) {}

    bool await_ready() const noexcept { return engine_->ready(); }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> caller) {
        slow_ = engine_->next();
        awaiter_.emplace(std::move(slow_).operator co_await());
        return awaiter_->await_suspend(caller);
    }
    std::optional<T> await_resume() { return awaiter_ ? awaiter_->await_resume() : engine_->take_ready(); }

    /// The same as a task<std::optional<T>> (which outlives this awaiter).
    task<std::optional<T>> as_task() && { return engine_->next(); }

private:
    detail::map_engine<T>* engine_;
    task<std::optional<T>> slow_;
    std::optional<typename task<std::optional<T>>::awaiter> awaiter_;
};

namespace detail {

template <class T>
class map_access {
public:
    template <class In, class Rg, class Backend>
    static map_stream<T> make(Rg&& input, const map_options& opts, std::size_t max_workers, Backend backend) {
        const std::size_t buffersize = checked_buffersize(opts, max_workers);
        return map_stream<T>(std::make_unique<range_map<T, map_input_t<Rg>, In, Backend>>(
            std::forward<Rg>(input), opts.chunksize, buffersize, std::move(backend)));
    }
};

}  // namespace detail

}  // namespace uvexec::inline v0
