// uvexec — how a worker process finds the function a call names (internal).
//
// Instantiating remote<F> (which process_pool_executor::submit, expose<F>
// and an initializer do) registers a trampoline for F at static
// initialisation under a key computed from F's qualified name and type, so a
// worker executable that names the same function finds it. Two functions the
// key cannot tell apart (file-local `static int scale(int)` in two
// translation units, or the same name in two anonymous namespaces) are told
// apart by their offset in their module, which is the same in a worker that
// is this executable (lib/registry.cpp); a dedicated worker executable can
// match names only, so such a call is refused at submit with
// ambiguous_function_error. A worker that cannot find the function replies
// with an error; it never jumps to an address it was sent.
#pragma once

#include "uvexec/detail/config.hpp"

#include <cstdint>
#include <exception>
#include <functional>
#include <stop_token>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "uvexec/codec.hpp"
#include "uvexec/detail/frame.hpp"
#include "uvexec/fn.hpp"

namespace uvexec::inline v0::detail {

/// What a worker knows of the call it runs (lib/processes/worker_main.cpp).
class call_context;

/// The stop token of the call ctx describes; from here until the call
/// returns, the worker also listens for the parent's cancel frame.
std::stop_token watch_for_stop(call_context& ctx);

/// Where the trampoline moves a large std::string result: the worker writes
/// the answer's other bytes, then the string from where it lies (no copy).
std::string& answer_tail(call_context& ctx) noexcept;

/// A std::string result at least this large is written from where it lies.
inline constexpr std::size_t answer_tail_threshold = 64 * 1024;

/// Runs a registered function: decodes the arguments, calls, appends the
/// result's archive to result (the worker's answer frame, behind its header).
using trampoline_fn = void (*)(std::string_view args, std::string& result, call_context& ctx);

/// Any function's address, for identity only (never called as this type).
using any_function = void (*)();

/// What a call frame names a function by: its key (name and type) and, only
/// where functions of this program share a key, its offset in its module (0
/// otherwise, or when unknown). The ambiguity is computed at the first call:
/// a library loaded later that adds a function of the same key is not seen.
struct function_identity {
    std::uint64_t key = 0;
    std::uint64_t offset = 0;
    bool ambiguous = false;  // another function of this program has the same key
};

/// An exception as a worker reports it: (demangled type name, what()), or
/// ("unknown exception type", a sentence) for a throw of a non-std::exception.
std::pair<std::string, std::string> describe_exception(const std::exception_ptr& e);

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

/// F as a worker process sees it.
template <auto F>
struct remote {
    using args_tuple = typename fn_t<F>::args_tuple;
    using result_type = typename fn_t<F>::result_type;

    /// The key under which worker processes find F.
    static std::uint64_t key() noexcept { return registered; }
    /// How a call names F to a worker process (computed once).
    static const function_identity& identity() noexcept {
        static const function_identity id = identify(key(), reinterpret_cast<any_function>(F));
        return id;
    }
    static std::string_view name() noexcept { return pretty_name<F>(); }

private:
    static void trampoline(std::string_view in, std::string& out, call_context& ctx) {
        args_tuple args;
        if constexpr (std::tuple_size_v<args_tuple> > 0) {
            std::apply([&](auto&... a) { decode_from(in, a...); }, args);
        } else {
            decode_from(in);
        }
        // The arguments are decoded (in is not read again): only now may the
        // worker read the channel while F runs.
        auto call = [&](auto&... a) -> decltype(auto) {
            if constexpr (fn_t<F>::takes_stop_token) return std::invoke(F, watch_for_stop(ctx), std::move(a)...);
            else return std::invoke(F, std::move(a)...);
        };
        if constexpr (std::is_void_v<result_type>) {
            std::apply(call, args);
        } else {
            result_type r = std::apply(call, args);
            if constexpr (std::is_same_v<result_type, std::string>) {
                if (r.size() >= answer_tail_threshold) {
                    // cereal's archive of a string is its u64 length, then its bytes.
                    encode_into(out, static_cast<std::uint64_t>(r.size()));
                    answer_tail(ctx) = std::move(r);
                    return;
                }
            }
            reserve_large(out, out.size() + encoded_size_hint(r));
            encode_into(out, r);
        }
    }

    static inline const std::uint64_t registered =
        register_function(fnv1a(typeid(decltype(F)).name(), fnv1a(pretty_name<F>())), pretty_name<F>(),
                          reinterpret_cast<any_function>(F), &remote::trampoline);
};

}  // namespace uvexec::inline v0::detail
