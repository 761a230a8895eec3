// uvexec — one-shot timers for sleep() and wait() deadlines.
#include "uvexec/detail/timer.hpp"

#include "uvexec/detail/handle.hpp"
#include "uvexec/error.hpp"

namespace uvexec::inline v0::detail {

timer::timer(uv_loop_t* uv) : h_(new handle) {
    if (int r = uv_timer_init(uv, &h_->uv); r != 0) {
        delete h_;
        throw uv_error(r, "uv_timer_init");
    }
    h_->uv.data = h_;
}

timer::~timer() {
    uv_timer_stop(&h_->uv);
    close_handle(reinterpret_cast<uv_handle_t*>(&h_->uv),
             [](uv_handle_t* h) noexcept { delete static_cast<handle*>(h->data); });
}

void timer::start(std::uint64_t ms, callback cb, void* ctx) noexcept {
    h_->cb = cb;
    h_->ctx = ctx;
    // The loop's cached time may be a whole iteration old; measure from now.
    uv_update_time(h_->uv.loop);
    uv_timer_start(&h_->uv, &timer::on_timeout, ms, 0);  // cannot fail for a live handle and a callback
}

void timer::stop() noexcept { uv_timer_stop(&h_->uv); }

void timer::on_timeout(uv_timer_t* t) noexcept {
    auto* h = static_cast<handle*>(t->data);
    h->cb(h->ctx);
}

}  // namespace uvexec::detail
