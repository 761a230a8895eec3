// uvexec — closing handles that a host may have closed already.
#include "uvexec/detail/handle.hpp"

// The one deliberate leak below is marked for LeakSanitizer.
#if defined(__SANITIZE_ADDRESS__)
#define UVEXEC_HAS_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UVEXEC_HAS_LSAN 1
#endif
#endif
#ifdef UVEXEC_HAS_LSAN
#include <sanitizer/lsan_interface.h>
#endif

namespace uvexec::inline v0::detail {

void close_handle(uv_handle_t* h, uv_close_cb cb) noexcept {
    if (!uv_is_closing(h)) {
        uv_close(h, cb);
        return;
    }
    // Someone else closed it: a host that shut its loop down while uvexec's
    // objects were alive (~loop reports that). libuv may still hold the handle
    // (the close has not finished) or the loop may be closed already, so it is
    // neither closed again nor freed: its memory is left to the process.
#ifdef UVEXEC_HAS_LSAN
    __lsan_ignore_object(h);
#endif
}

}  // namespace uvexec::detail
