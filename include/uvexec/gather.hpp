// uvexec — gather(): all results at once.
//
// Python: asyncio.gather(*fs, return_exceptions=False). Built on the same
// waiting core as wait(): it waits for the first failure (an exception or a
// cancellation) or for all futures, then rethrows that failure or returns the
// results in input order. Futures still running when gather throws keep
// running, as in Python.
#pragma once

#include "uvexec/detail/config.hpp"

#include <exception>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "uvexec/detail/take.hpp"
#include "uvexec/detail/wait_core.hpp"
#include "uvexec/error.hpp"
#include "uvexec/future.hpp"
#include "uvexec/task.hpp"
#include "uvexec/wait.hpp"

namespace uvexec::inline v0 {

/// Tag: gather(return_exceptions, ...) puts each failure in place instead of
/// throwing the first. Python: gather(..., return_exceptions=True).
struct return_exceptions_t {
    explicit return_exceptions_t() = default;
};
inline constexpr return_exceptions_t return_exceptions{};

/// A value or the exception that took its place (cancellation is a
/// cancelled_error). What gather(return_exceptions, ...) returns per future.
template <class T>
class outcome {
public:
    explicit outcome(std::exception_ptr e) noexcept : v_(std::move(e)) {}
    template <class... A>
    explicit outcome(std::in_place_t, A&&... a) : v_(std::in_place_index<0>, std::forward<A>(a)...) {}

    bool has_value() const noexcept { return v_.index() == 0; }
    /// The value, or rethrows the exception.
    T& value() & {
        if (!has_value()) std::rethrow_exception(std::get<1>(v_));
        return std::get<0>(v_);
    }
    T&& value() && { return std::move(value()); }
    /// Null when there is a value.
    std::exception_ptr exception() const noexcept { return has_value() ? nullptr : std::get<1>(v_); }

private:
    std::variant<T, std::exception_ptr> v_;
};

template <>
class outcome<void> {
public:
    outcome() noexcept = default;
    explicit outcome(std::exception_ptr e) noexcept : e_(std::move(e)) {}
    bool has_value() const noexcept { return !e_; }
    void value() const {
        if (e_) std::rethrow_exception(e_);
    }
    std::exception_ptr exception() const noexcept { return e_; }

private:
    std::exception_ptr e_;
};

namespace detail {

/// gather's element type for future<T>: T, or std::monostate for void.
template <class T>
using gathered_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class T>
gathered_t<T> take_gathered(future<T>& f) {
    if constexpr (std::is_void_v<T>) {
        f.result();
        return {};
    } else {
        return take_value(f);
    }
}

template <class T>
outcome<T> take_outcome(future<T>& f) {
    if (f.cancelled()) return outcome<T>(std::make_exception_ptr(cancelled_error()));
    if (auto e = f.exception()) return outcome<T>(std::move(e));
    if constexpr (std::is_void_v<T>) return outcome<void>();
    else return outcome<T>(std::in_place, take_value(f));
}

/// The failure that ends a gather: the first to complete, in completion order.
inline void rethrow_first_failure(const wait_core& c) { c.rethrow_first_failure(); }

template <class... T>
std::vector<future_state_base*> states_of_pack(const future<T>&... fs) {
    if (!(fs.valid() && ...)) throw invalid_state_error("uvexec: an empty future was passed to gather");
    return {fs.state()...};
}

}  // namespace detail

/// Python: `results = await asyncio.gather(*fs)`. Results in input order; the
/// first failure (by completion) is rethrown as soon as it happens. Values are
/// moved out of futures nobody else holds and copied from shared ones.
template <class T>
task<std::conditional_t<std::is_void_v<T>, void, std::vector<T>>> gather(std::vector<future<T>> fs) {
    detail::wait_core c(detail::states_of(fs), detail::until::first_failure, std::nullopt);
    c.cancel_pending_on_interrupt();  // Python: cancelling gather cancels its futures
    co_await c;
    detail::rethrow_first_failure(c);
    if constexpr (!std::is_void_v<T>) {
        std::vector<T> out;
        out.reserve(fs.size());
        for (auto& f : fs) out.push_back(detail::take_value(f));
        co_return out;
    }
}

/// Python: `await asyncio.gather(*fs, return_exceptions=True)`: waits for all
/// and returns each value or exception in input order; never throws for them.
template <class T>
task<std::vector<outcome<T>>> gather(return_exceptions_t, std::vector<future<T>> fs) {
    detail::wait_core c(detail::states_of(fs), detail::until::all_completed, std::nullopt);
    c.cancel_pending_on_interrupt();  // Python: cancelling gather cancels its futures
    co_await c;
    std::vector<outcome<T>> out;
    out.reserve(fs.size());
    for (auto& f : fs) out.push_back(detail::take_outcome(f));
    co_return out;
}

/// Python: `a, b = await asyncio.gather(fa, fb)` for futures of different
/// types; a void future contributes std::monostate.
template <class... T>
    requires(sizeof...(T) > 0)
task<std::tuple<detail::gathered_t<T>...>> gather(future<T>... fs) {
    detail::wait_core c(detail::states_of_pack(fs...), detail::until::first_failure, std::nullopt);
    c.cancel_pending_on_interrupt();  // Python: cancelling gather cancels its futures
    co_await c;
    detail::rethrow_first_failure(c);
    co_return std::tuple<detail::gathered_t<T>...>(detail::take_gathered(fs)...);
}

/// Variadic gather with exceptions returned in place.
template <class... T>
    requires(sizeof...(T) > 0)
task<std::tuple<outcome<T>...>> gather(return_exceptions_t, future<T>... fs) {
    detail::wait_core c(detail::states_of_pack(fs...), detail::until::all_completed, std::nullopt);
    c.cancel_pending_on_interrupt();  // Python: cancelling gather cancels its futures
    co_await c;
    co_return std::tuple<outcome<T>...>(detail::take_outcome(fs)...);
}

}  // namespace uvexec
