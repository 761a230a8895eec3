// uvexec — building an error where nothing may throw (internal to lib/).
#pragma once

#include <exception>
#include <utility>

namespace uvexec::inline v0::detail {

/// make() as an exception_ptr; if building it throws (std::bad_alloc while
/// formatting its message), that exception instead. For code that runs inside
/// libuv callbacks, where nothing may unwind.
template <class Make>
std::exception_ptr error_ptr(Make&& make) noexcept {
    try {
        return std::make_exception_ptr(std::forward<Make>(make)());
    } catch (...) {
        return std::current_exception();
    }
}

}  // namespace uvexec::detail
