// uvexec — frame encoding and the incremental frame decoder.
#include "uvexec/detail/frame.hpp"

#include <cstring>

#include <fmt/format.h>

namespace uvexec::inline v0::detail {

namespace {
std::uint32_t get_u32(const char* p) noexcept {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t(static_cast<unsigned char>(p[i])) << (8 * i);
    return v;
}
}  // namespace

void put_u64(std::string& out, std::uint64_t v) {
    char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    out.append(b, 8);
}

std::uint64_t get_u64(const char* p) noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(static_cast<unsigned char>(p[i])) << (8 * i);
    return v;
}

void put_frame_header(char* out, frame_kind kind, std::uint64_t id, std::size_t payload_size) noexcept {
    const auto len = static_cast<std::uint32_t>(payload_size + 1 + 8);
    for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
    out[4] = static_cast<char>(kind);
    for (int i = 0; i < 8; ++i) out[5 + i] = static_cast<char>((id >> (8 * i)) & 0xff);
}

void append_frame_header(std::string& out, frame_kind kind, std::uint64_t id, std::size_t payload_size) {
    char header[frame_header_size];
    put_frame_header(header, kind, id, payload_size);
    out.append(header, frame_header_size);
}

void append_frame(std::string& out, frame_kind kind, std::uint64_t id, std::string_view payload) {
    append_frame_header(out, kind, id, payload.size());
    out.append(payload);
}

char* frame_decoder::prepare(std::size_t& room, std::size_t min_room) {
    if (begin_ == end_) begin_ = end_ = 0;
    if (buf_.size() - end_ < min_room) {
        // Move the unread tail to the front before growing.
        if (begin_ > 0) {
            std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
            end_ -= begin_;
            begin_ = 0;
        }
        if (buf_.size() - end_ < min_room) buf_.resize(end_ + min_room);
    }
    room = buf_.size() - end_;
    return buf_.data() + end_;
}

void frame_decoder::feed(const char* data, std::size_t n) {
    if (n == 0) return;  // memcpy's pointers must be valid even for 0 bytes; an empty buffer's is null
    std::size_t room = 0;
    char* p = prepare(room, n);
    std::memcpy(p, data, n);
    commit(n);
}

frame_decoder::status frame_decoder::fail(std::string why) {
    corrupt_ = true;
    error_ = std::move(why);
    return status::corrupt;
}

frame_decoder::status frame_decoder::next(frame& f) {
    if (corrupt_) return status::corrupt;
    std::size_t avail = end_ - begin_;
    if (avail < 4) return status::need_more;
    const char* p = buf_.data() + begin_;
    std::uint32_t len = get_u32(p);
    if (len < 9) return fail(fmt::format("frame length {} is shorter than a frame header", len));
    if (len > max_frame_)
        return fail(fmt::format("frame length {} exceeds the maximum frame size {}", len, max_frame_));
    if (avail < 4 + std::size_t(len)) {
        // Make sure the whole frame will fit without reading more than it.
        if (buf_.size() - begin_ < 4 + std::size_t(len)) {
            std::size_t room = 0;
            prepare(room, 4 + std::size_t(len) - avail);
        }
        return status::need_more;
    }
    p = buf_.data() + begin_;
    f.kind = static_cast<frame_kind>(static_cast<unsigned char>(p[4]));
    f.id = get_u64(p + 5);
    f.payload = std::string_view(p + frame_header_size, len - 9);
    begin_ += 4 + std::size_t(len);
    return status::frame;
}

}  // namespace uvexec::detail
