// uvexec — closing uvexec's own libuv handles safely on a borrowed loop (internal).
#pragma once

#include "uvexec/detail/config.hpp"

#include <uv.h>

namespace uvexec::inline v0::detail {

/// Closes h; cb frees its memory once libuv is done with it. Call it once per
/// handle. If the host closed h already (it shut its loop down, uv_walk +
/// uv_close, while uvexec's objects were alive), h is not closed twice, and
/// its memory is not freed either: libuv may still hold it.
void close_handle(uv_handle_t* h, uv_close_cb cb) noexcept;

}  // namespace uvexec::detail
