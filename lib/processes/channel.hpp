// uvexec — the parent's end of one worker's channel: frames in and out (internal).
//
// A channel is a uv_pipe_t over the parent's end of the socketpair, a frame
// decoder for what the worker writes, and a write queue for what is sent to
// it. It knows bytes and frames, not calls: its owner (the worker, as the
// pool sees it) is told when frames have arrived, when the worker closed its
// end, and when memory for a message ran out.
//
// Invariants (loop thread):
//  - at most one uv_write is in flight; frames appended meanwhile go out
//    together in the next one (out_pending, then swapped into out_writing);
//  - nothing is written once the pipe is closing;
//  - the decoder never holds more than max_frame bytes of one frame.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <uv.h>

#include "uvexec/detail/frame.hpp"

namespace uvexec::inline v0::detail {

/// Who hears of a channel's events.
class channel_owner {
public:
    /// The decoder holds new bytes: take the frames (next()).
    virtual void on_channel_data() noexcept = 0;
    /// The worker closed its end, or reading failed (then the worker is
    /// exiting, or misbehaves); nothing more will be read.
    virtual void on_channel_end() noexcept = 0;
    /// No memory for a message the worker sends; reading has stopped.
    virtual void on_channel_no_memory() noexcept = 0;
    /// A write could not even be started: the channel is unusable.
    virtual void on_channel_write_failed() noexcept = 0;

protected:
    ~channel_owner() = default;
};

struct channel {
    explicit channel(std::size_t max_frame) : decoder(max_frame) {}

    uv_pipe_t pipe{};  // pipe.data is this channel
    uv_write_t write_req{};
    channel_owner* owner = nullptr;
    std::string out_pending, out_writing;
    frame_decoder decoder;
    bool writing = false;

    uv_handle_t* handle() noexcept { return reinterpret_cast<uv_handle_t*>(&pipe); }
    uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&pipe); }
};

/// Opens fd as ch's pipe on uv, owned by owner. On failure the handle may
/// still be open (see opened): close it as usual.
int open_channel(uv_loop_t* uv, channel& ch, int fd, channel_owner& owner, bool& opened) noexcept;
/// Starts reading; 0 or a libuv error.
int start_reading(channel& ch) noexcept;
/// Queues a complete frame (throws std::bad_alloc, nothing queued then).
inline void send_frame(channel& ch, std::string_view frame) {
    reserve_large(ch.out_pending, ch.out_pending.size() + frame.size());
    ch.out_pending.append(frame);
}
/// Writes what is queued, unless a write is in flight (its callback flushes again).
void flush(channel& ch) noexcept;
/// Reads what the worker wrote before it died (libuv may report the exit
/// before the last bytes) and tells the owner. Returns false if memory ran out.
bool drain_channel(channel& ch) noexcept;

}  // namespace uvexec::detail
