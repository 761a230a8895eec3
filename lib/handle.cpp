// uvexec — closing handles that a host may have closed already.
#include "uvexec/detail/handle.hpp"

#include <utility>

namespace uvexec::detail {

void close_handle(uv_handle_t* h, uv_close_cb cb) noexcept {
    if (!uv_is_closing(h)) {
        uv_close(h, cb);
        return;
    }
    // Closed by someone else. A handle stays on its loop's handle list until
    // libuv has finished closing it; once it is off the list, it is ours again.
    std::pair<uv_handle_t*, bool> probe{h, false};
    uv_walk(
        h->loop,
        [](uv_handle_t* each, void* arg) {
            auto* p = static_cast<std::pair<uv_handle_t*, bool>*>(arg);
            if (each == p->first) p->second = true;
        },
        &probe);
    if (!probe.second && cb) cb(h);
}

}  // namespace uvexec::detail
