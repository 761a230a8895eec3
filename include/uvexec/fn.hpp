// uvexec — fn<&f>: a function named at compile time, callable on any executor.
//
//     loop.run_in_executor(threads,   uvexec::fn<&blocks>, i);
//     loop.run_in_executor(processes, uvexec::fn<&blocks>, i);
//
// On a thread pool fn<&f> is just a callable, and this header is all it
// takes (no serialization code). On a process pool it is what lets a worker
// process run f: submitting fn<&f> to a process pool registers f with the
// worker-side machinery (uvexec/detail/remote.hpp, which says how functions
// are named across processes).
//
// A function whose first parameter is a std::stop_token is given one by the
// executor and the caller passes only the other arguments; its stop is
// requested when the call's future is cancelled while it runs
// (docs/cancellation.md).
#pragma once

#include "uvexec/detail/config.hpp"

#include <concepts>
#include <functional>
#include <stop_token>
#include <tuple>
#include <type_traits>
#include <utility>

namespace uvexec::inline v0 {

namespace detail {

/// A signature's result and the arguments a caller passes: a first parameter
/// of type std::stop_token is the executor's to give, not the caller's.
template <class R, class... A>
struct signature_traits {
    using result = R;
    using args = std::tuple<std::decay_t<A>...>;
    static constexpr bool takes_stop_token = false;
};
template <class R, class T, class... A>
    requires std::same_as<std::remove_cvref_t<T>, std::stop_token>
struct signature_traits<R, T, A...> {
    static_assert(!std::is_lvalue_reference_v<T> || std::is_const_v<std::remove_reference_t<T>>,
                  "uvexec: take the std::stop_token by value or by const reference (the executor gives a temporary)");
    using result = R;
    using args = std::tuple<std::decay_t<A>...>;
    static constexpr bool takes_stop_token = true;
};

template <class T>
struct function_traits;
template <class R, class... A>
struct function_traits<R (*)(A...)> : signature_traits<R, A...> {};
template <class R, class... A>
struct function_traits<R (*)(A...) noexcept> : signature_traits<R, A...> {};

template <auto F>
struct is_function_pointer
    : std::bool_constant<std::is_pointer_v<decltype(F)> && std::is_function_v<std::remove_pointer_t<decltype(F)>>> {};

}  // namespace detail

/// The type of uvexec::fn<F>.
template <auto F>
struct fn_t {
    static_assert(detail::is_function_pointer<F>::value,
                  "uvexec::fn<F>: F must be the address of a function, e.g. uvexec::fn<&blocks> "
                  "(a lambda with captures or a pointer known only at run time cannot be named)");

    using traits = detail::function_traits<decltype(F)>;
    using result_type = std::decay_t<typename traits::result>;
    /// The arguments a caller passes (without F's std::stop_token, if it takes one).
    using args_tuple = typename traits::args;
    /// F's first parameter is a std::stop_token, which the executor gives it.
    static constexpr bool takes_stop_token = traits::takes_stop_token;

    template <class... A>
        requires std::is_invocable_v<decltype(F), A...>
    decltype(auto) operator()(A&&... a) const {
        return std::invoke(F, std::forward<A>(a)...);
    }
};

/// A function named at compile time: `uvexec::fn<&blocks>`. See this header's comment.
template <auto F>
inline constexpr fn_t<F> fn{};

}  // namespace uvexec::inline v0
