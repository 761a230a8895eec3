// uvexec — frame encoding and the incremental frame decoder.
#include "uvexec/detail/frame.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <utility>


#include <fmt/format.h>

namespace uvexec::inline v0::detail {

namespace {
std::uint32_t get_u32(const char* p) noexcept {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t(static_cast<unsigned char>(p[i])) << (8 * i);
    return v;
}

/// An empty buffer larger than this is given back unless the last message
/// took a quarter of it: a worker that once sent a large message does not keep
/// its size in the parent, but a stream of large messages reuses one buffer
/// (whose pages are already there) instead of growing a fresh one for each.
constexpr std::size_t kept_capacity = 1u << 20;
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

void reserve_large(std::string& s, std::size_t n) {
    if (n <= s.capacity()) return;
    s.reserve(n);
    advise_huge_pages(s.data(), s.capacity());
}

void trim_buffer(std::string& s, std::size_t used) noexcept {
    if (s.capacity() > kept_capacity && used < s.capacity() / 4) std::string().swap(s);
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

frame_decoder::~frame_decoder() { ::operator delete(buf_); }

frame_decoder::frame_decoder(frame_decoder&& o) noexcept
    : max_frame_(o.max_frame_), buf_(std::exchange(o.buf_, nullptr)), cap_(std::exchange(o.cap_, 0)),
      begin_(std::exchange(o.begin_, 0)), end_(std::exchange(o.end_, 0)), moved_(o.moved_),
      last_frame_(o.last_frame_), corrupt_(o.corrupt_),
      error_(std::move(o.error_)) {}

frame_decoder& frame_decoder::operator=(frame_decoder&& o) noexcept {
    if (this != &o) {
        ::operator delete(buf_);
        max_frame_ = o.max_frame_;
        buf_ = std::exchange(o.buf_, nullptr);
        cap_ = std::exchange(o.cap_, 0);
        begin_ = std::exchange(o.begin_, 0);
        end_ = std::exchange(o.end_, 0);
        moved_ = o.moved_;
        last_frame_ = o.last_frame_;
        corrupt_ = o.corrupt_;
        error_ = std::move(o.error_);
    }
    return *this;
}


char* frame_decoder::prepare(std::size_t& room, std::size_t min_room) {
    if (begin_ == end_) {
        begin_ = end_ = 0;  // everything consumed: start again at the front, no copy
        if (cap_ > kept_capacity && min_room <= kept_capacity && last_frame_ < cap_ / 4) {
            ::operator delete(buf_);
            buf_ = nullptr;
            cap_ = 0;
        }
    }
    if (cap_ - end_ < min_room) grow(min_room);
    room = cap_ - end_;
    return buf_ + end_;
}

void frame_decoder::grow(std::size_t min_room) {
    const std::size_t unread = end_ - begin_;
    if (begin_ > 0 && unread <= begin_) {
        // The bytes consumed since the buffer last moved pay for moving the
        // unread ones (a partial frame after the consumed ones): linear in all.
        std::memmove(buf_, buf_ + begin_, unread);
        moved_ += unread;
        begin_ = 0;
        end_ = unread;
        if (cap_ - end_ >= min_room) return;
    }
    // Grow with what has arrived: to twice the unread bytes at most, or to the
    // frame being read and a read's room if its header says less (the header
    // alone is never trusted with more), and always by the room asked for.
    std::size_t target = 2 * unread;
    if (unread >= 4) {
        std::uint32_t len = get_u32(buf_ + begin_);
        if (len <= max_frame_) target = std::min(target, std::size_t(4) + len + min_room);
    }
    const std::size_t new_cap = std::max(unread + min_room, target);
    // ::operator new, as std::allocator does: a program's own replacement of
    // it sees the buffer (also under ASan, whose operator new[] would not
    // forward to it), and running out of memory throws std::bad_alloc.
    auto* p = static_cast<char*>(::operator new(new_cap));
    advise_huge_pages(p, new_cap);
    if (unread > 0) std::memcpy(p, buf_ + begin_, unread);
    ::operator delete(buf_);
    moved_ += unread;
    buf_ = p;
    cap_ = new_cap;
    begin_ = 0;
    end_ = unread;
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
    const char* p = buf_ + begin_;
    std::uint32_t len = get_u32(p);
    if (len < 9) return fail(fmt::format("frame length {} is shorter than a frame header", len));
    if (len > max_frame_)
        return fail(fmt::format("frame length {} exceeds the maximum frame size {}", len, max_frame_));
    // Not complete: wait for its bytes; the buffer grows as they arrive
    // (prepare), never from the length alone.
    if (avail < 4 + std::size_t(len)) return status::need_more;
    f.kind = static_cast<frame_kind>(static_cast<unsigned char>(p[4]));
    f.id = get_u64(p + 5);
    f.payload = std::string_view(p + frame_header_size, len - 9);
    begin_ += 4 + std::size_t(len);
    last_frame_ = 4 + std::size_t(len);
    return status::frame;
}

}  // namespace uvexec::detail
