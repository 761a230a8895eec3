// uvexec — closing uvexec's own libuv handles safely on a borrowed loop (internal).
#pragma once

#include <uv.h>

namespace uvexec::detail {

/// Closes h; cb frees its memory once libuv is done with it. Call it once per
/// handle. A host may have
/// closed every handle of its loop already (uv_walk + uv_close at shutdown):
/// then h is not closed twice, and cb runs now if libuv has finished closing
/// it. If libuv has not (the host has not run its loop since), h's memory is
/// left alone rather than freed under libuv.
void close_handle(uv_handle_t* h, uv_close_cb cb) noexcept;

}  // namespace uvexec::detail
