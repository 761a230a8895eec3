// uvexec — the process pool's wire format (internal).
//
// A frame is: u32 length (little-endian, counts everything after itself),
// u8 kind, u64 id (little-endian), then length - 9 bytes of payload. Both the
// parent and the worker decode a byte stream with frame_decoder, whose memory
// grows with the bytes it receives (never from a length it reads), never
// beyond max_frame plus a read's room, and which reports a corrupt stream
// instead of guessing.
#pragma once

#include "uvexec/detail/config.hpp"
#include "uvexec/detail/pages.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace uvexec::inline v0::detail {

/// Protocol version; a worker built from other uvexec sources says so in HELLO.
inline constexpr std::uint32_t protocol_version = 5;

enum class frame_kind : std::uint8_t {
    // parent -> worker
    call = 1,  // id = task id; payload = u64 function key, u64 module offset (fn.hpp), the arguments' archive
    init = 2,  // id = 0; payload = u64 function key and u64 module offset of the initializer
    cancel = 3,  // id = task id of a call sent earlier whose function takes a std::stop_token; no payload
    // worker -> parent
    hello = 16,        // id = worker pid; payload = u32 protocol version, then (from version 5) its host name
    result = 17,       // id = task id; payload = the result's archive
    error = 18,        // id = task id; payload = the archive of (type name, what()) of the exception
    init_failed = 19,  // id = 0; payload = remote error
    over_memory = 20,  // id = task id just answered; payload = u64 resident bytes (above max_worker_memory)
};

inline constexpr std::size_t frame_header_size = 4 + 1 + 8;

struct frame {
    frame_kind kind;
    std::uint64_t id;
    std::string_view payload;  // valid until the decoder is fed again
};

/// Appends one frame to out.
void append_frame(std::string& out, frame_kind kind, std::uint64_t id, std::string_view payload);
/// Appends the header of a frame whose payload (payload_size bytes) the
/// caller appends next.
void append_frame_header(std::string& out, frame_kind kind, std::uint64_t id, std::size_t payload_size);
/// Writes the same header into out[0 .. frame_header_size).
void put_frame_header(char* out, frame_kind kind, std::uint64_t id, std::size_t payload_size) noexcept;

void put_u64(std::string& out, std::uint64_t v);

/// s.reserve(n), advising huge pages for what it allocated (above).
void reserve_large(std::string& s, std::size_t n);
/// A buffer reused from message to message (the parent's write batch, a
/// worker's answer) keeps its memory while the messages use a quarter of it,
/// and gives back anything above 1 MiB otherwise: used is the size of the
/// message it just carried.
void trim_buffer(std::string& s, std::size_t used) noexcept;
std::uint64_t get_u64(const char* p) noexcept;

/// Incremental decoder of a frame stream.
///
/// Its buffer grows only with the bytes that arrive, never from a header: a
/// header announcing 200 MiB followed by nothing costs nothing. It grows to at
/// most twice the unread bytes (or the frame being read, plus the room a read
/// asks for), so a large frame is read in place, in reads as large as the
/// bytes already held, and every byte is copied within the buffer at most a
/// constant number of times in all: no step is worse than linear in the size.
/// Unread bytes move to the front only when the bytes already consumed paid
/// for it (they are at most as many); a frame fully consumed empties the
/// buffer, which keeps its capacity (at most max_frame + 4 + a read's room)
/// while the frames fill a quarter of it, and shrinks to nothing otherwise
/// (a buffer of up to 1 MiB is always kept).
class frame_decoder {
public:
    explicit frame_decoder(std::size_t max_frame) noexcept : max_frame_(max_frame) {}
    ~frame_decoder();
    frame_decoder(frame_decoder&& o) noexcept;
    frame_decoder& operator=(frame_decoder&& o) noexcept;
    frame_decoder(const frame_decoder&) = delete;
    frame_decoder& operator=(const frame_decoder&) = delete;

    /// Where the next read may write, at least min_room bytes (grows the
    /// buffer; throws std::bad_alloc). room may be larger than asked.
    char* prepare(std::size_t& room, std::size_t min_room = 64 * 1024);
    /// n bytes were written at prepare()'s pointer.
    void commit(std::size_t n) noexcept { end_ += n; }
    /// Copies bytes in (prepare + memcpy + commit).
    void feed(const char* data, std::size_t n);

    enum class status { frame, need_more, corrupt };
    /// The next complete frame, need_more, or corrupt (then error() says why
    /// and the decoder stays corrupt). Never allocates.
    status next(frame& f);

    const std::string& error() const noexcept { return error_; }
    /// Bytes received but not yet returned as frames.
    std::size_t buffered() const noexcept { return end_ - begin_; }
    /// The buffer's size in bytes (for tests and accounting).
    std::size_t capacity() const noexcept { return cap_; }
    /// Bytes copied within the decoder's own memory so far (moving unread
    /// bytes to the front, growing): at most a small multiple of the bytes fed.
    std::size_t bytes_moved() const noexcept { return moved_; }

private:
    status fail(std::string why);
    void grow(std::size_t min_room);

    std::size_t max_frame_;
    char* buf_ = nullptr;  // ::operator new(cap_)
    std::size_t cap_ = 0;
    std::size_t begin_ = 0, end_ = 0;
    std::size_t moved_ = 0;
    std::size_t last_frame_ = 0;  // bytes of the last frame returned
    bool corrupt_ = false;
    std::string error_;
};

}  // namespace uvexec::detail
