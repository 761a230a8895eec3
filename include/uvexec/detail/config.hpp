// uvexec — what every uvexec header needs first (internal).
//
// The language check, so that a build below C++20 fails with a line that
// says what to add instead of errors from deep inside <coroutine>.
//
// The ABI: every uvexec name lives in the inline namespace uvexec::v0, as
// {fmt} versions its own, so that two incompatible builds of uvexec linked
// into one program fail to link instead of mixing layouts. Code names the
// entities as uvexec::loop, uvexec::detail::..., never with the v0.
#pragma once

#if !defined(__cplusplus) || __cplusplus < 202002L || !defined(__cpp_impl_coroutine)
#error "uvexec needs C++20 with coroutines: compile with -std=c++20 (or later)"
// A missing header is a fatal error: the compiler stops here instead of
// adding pages of errors from the standard library's <coroutine>.
#include <uvexec: stopped, see the line above>
#endif
