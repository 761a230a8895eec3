// uvexec — the parent's end of one worker's channel.
#include "channel.hpp"

#include <algorithm>
#include <cerrno>

#include <unistd.h>

namespace uvexec::inline v0::detail {

namespace {

channel& channel_of(uv_handle_t* h) noexcept { return *static_cast<channel*>(h->data); }

void on_written(uv_write_t* req, int status) noexcept {
    auto& ch = *static_cast<channel*>(req->data);
    ch.writing = false;
    trim_buffer(ch.out_writing, ch.out_writing.size());
    ch.out_writing.clear();
    if (status < 0) return;  // the worker is gone; its exit settles its calls
    flush(ch);
}

void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
    auto& ch = channel_of(h);
    try {
        std::size_t room = 0;
        char* p = ch.decoder.prepare(room);
        *buf = uv_buf_init(p, static_cast<unsigned>(std::min<std::size_t>(room, 1u << 30)));
    } catch (...) {
        *buf = uv_buf_init(nullptr, 0);  // libuv reports UV_ENOBUFS to on_read
    }
}

void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) noexcept {
    auto& ch = channel_of(reinterpret_cast<uv_handle_t*>(s));
    if (nread > 0) {
        ch.decoder.commit(static_cast<std::size_t>(nread));
        ch.owner->on_channel_data();
    } else if (nread == UV_ENOBUFS) {
        uv_read_stop(s);
        ch.owner->on_channel_no_memory();
    } else if (nread < 0) {
        uv_read_stop(s);
        ch.owner->on_channel_end();
    }
}

}  // namespace

int open_channel(uv_loop_t* uv, channel& ch, int fd, channel_owner& owner, bool& opened) noexcept {
    opened = false;
    if (int r = uv_pipe_init(uv, &ch.pipe, 0); r != 0) return r;  // cannot fail in libuv 1.x
    opened = true;
    ch.pipe.data = &ch;
    ch.owner = &owner;
    ch.write_req.data = &ch;
    return uv_pipe_open(&ch.pipe, fd);
}

int start_reading(channel& ch) noexcept { return uv_read_start(ch.stream(), &on_alloc, &on_read); }

void flush(channel& ch) noexcept {
    if (ch.writing || ch.out_pending.empty() || uv_is_closing(ch.handle())) return;
    ch.out_writing.swap(ch.out_pending);
    uv_buf_t buf = uv_buf_init(ch.out_writing.data(), static_cast<unsigned>(ch.out_writing.size()));
    if (uv_write(&ch.write_req, ch.stream(), &buf, 1, &on_written) == 0) {
        ch.writing = true;
    } else {
        ch.out_writing.clear();
        ch.owner->on_channel_write_failed();
    }
}

bool drain_channel(channel& ch) noexcept {
    if (uv_is_closing(ch.handle())) return true;
    uv_os_fd_t fd = -1;
    if (uv_fileno(ch.handle(), &fd) != 0) return true;
    bool memory = true;
    for (;;) {
        std::size_t room = 0;
        char* p = nullptr;
        try {
            p = ch.decoder.prepare(room);
        } catch (...) {
            memory = false;
            break;
        }
        ssize_t n = ::read(fd, p, room);
        if (n > 0) {
            ch.decoder.commit(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        break;  // EOF, EAGAIN (a grandchild holds the other end) or an error
    }
    ch.owner->on_channel_data();
    return memory;
}

}  // namespace uvexec::detail
