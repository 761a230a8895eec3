// uvexec — fn<&f>: a function named at compile time, callable on any executor.
//
//     loop.run_in_executor(threads,   uvexec::fn<&blocks>, i);
//     loop.run_in_executor(processes, uvexec::fn<&blocks>, i);
//
// On a thread pool fn<&f> is just a callable. On a process pool it is what
// lets a worker process run f: instantiating fn<&f> registers a trampoline
// at static initialisation under a key computed from f's qualified name and
// type, so a worker executable that names the same function finds it. Two
// functions the key cannot tell apart (file-local `static int scale(int)` in
// two translation units, or the same name in two anonymous namespaces) are
// told apart by their offset in their module, which is the same in a worker
// that is this executable; a dedicated worker executable can match names
// only, so such a call is refused at submit with ambiguous_function_error. A
// worker that cannot find the function replies with an error; it never jumps
// to an address it was sent.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "uvexec/codec.hpp"

namespace uvexec {

namespace detail {

/// Runs a registered function: decodes the arguments, calls, encodes the result.
using trampoline_fn = void (*)(std::string_view args, std::string& result);

/// Any function's address, for identity only (never called as this type).
using any_function = void (*)();

/// What a call frame names a function by: its key (name and type) and, where
/// functions share a key, its offset in its module (0 when unknown).
struct function_identity {
    std::uint64_t key = 0;
    std::uint64_t offset = 0;
    bool ambiguous = false;  // another function of this program has the same key
};

/// Registers fn (whose trampoline is t) under key at static initialisation; returns key.
std::uint64_t register_function(std::uint64_t key, std::string_view name, any_function fn, trampoline_fn t) noexcept;

/// The identity of the registered function fn.
function_identity identify(std::uint64_t key, any_function fn) noexcept;

/// In a worker: the trampoline of the function a call names, or null with
/// why_not saying why (unknown, or ambiguous here).
trampoline_fn find_function(const function_identity& id, std::string& why_not);

constexpr std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 14695981039346656037ull) noexcept {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

template <auto F>
constexpr std::string_view pretty_name() noexcept {
    return __PRETTY_FUNCTION__;  // contains F's qualified name, e.g. "[with auto F = ns::blocks]"
}

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

    /// The key under which worker processes find F.
    static std::uint64_t key() noexcept { return registered; }
    /// How a call names F to a worker process (computed once).
    static const detail::function_identity& identity() noexcept {
        static const detail::function_identity id = detail::identify(key(), reinterpret_cast<detail::any_function>(F));
        return id;
    }
    static std::string_view name() noexcept { return detail::pretty_name<F>(); }

private:
    static void trampoline(std::string_view in, std::string& out) {
        args_tuple args;
        if constexpr (std::tuple_size_v<args_tuple> > 0) {
            std::apply([&](auto&... a) { detail::decode_from(in, a...); }, args);
        } else {
            detail::decode_from(in);
        }
        if constexpr (std::is_void_v<result_type>) {
            std::apply([](auto&... a) { std::invoke(F, std::move(a)...); }, args);
        } else {
            result_type r = std::apply([](auto&... a) -> result_type { return std::invoke(F, std::move(a)...); }, args);
            detail::encode_into(out, r);
        }
    }

    static inline const std::uint64_t registered = detail::register_function(
        detail::fnv1a(typeid(decltype(F)).name(), detail::fnv1a(detail::pretty_name<F>())), detail::pretty_name<F>(),
        reinterpret_cast<detail::any_function>(F), &fn_t::trampoline);
};

/// A function named at compile time: `uvexec::fn<&blocks>`. See this header's comment.
template <auto F>
inline constexpr fn_t<F> fn{};

}  // namespace uvexec
