// uvexec — taking a result out of a future without surprising other holders (internal).
#pragma once

#include "uvexec/detail/config.hpp"

#include <type_traits>
#include <utility>

#include "uvexec/future.hpp"

namespace uvexec::inline v0::detail {

/// The value of a done future, for combinators that return values: moved out
/// when nobody else can see the future (or T cannot be copied), copied when
/// another copy of the future is still alive, so its result() stays intact.
template <class T>
T take_value(future<T>& f) {
    if constexpr (std::is_copy_constructible_v<T>) {
        if (!f.state()->unique()) return f.result();
    }
    return std::move(f).result();
}

}  // namespace uvexec::detail
