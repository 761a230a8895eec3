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
#pragma once

#include "uvexec/detail/config.hpp"

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace uvexec::inline v0 {

namespace detail {

template <class T>
struct function_traits;
template <class R, class... A>
struct function_traits<R (*)(A...)> {
    using result = R;
    using args = std::tuple<std::decay_t<A>...>;
};
template <class R, class... A>
struct function_traits<R (*)(A...) noexcept> : function_traits<R (*)(A...)> {};

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
    using args_tuple = typename traits::args;

    template <class... A>
    decltype(auto) operator()(A&&... a) const {
        return std::invoke(F, std::forward<A>(a)...);
    }
};

/// A function named at compile time: `uvexec::fn<&blocks>`. See this header's comment.
template <auto F>
inline constexpr fn_t<F> fn{};

}  // namespace uvexec::inline v0
