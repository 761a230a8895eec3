// uvexec — the process pool's wire format (internal).
//
// A frame is: u32 length (little-endian, counts everything after itself),
// u8 kind, u64 id (little-endian), then length - 9 bytes of payload. Both the
// parent and the worker decode a byte stream with frame_decoder, which never
// allocates more than max_frame bytes for one frame, whatever it is fed, and
// reports a corrupt stream instead of guessing.
#pragma once

#include "uvexec/detail/config.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace uvexec::inline v0::detail {

/// Protocol version; a worker built from other uvexec sources says so in HELLO.
inline constexpr std::uint32_t protocol_version = 2;

enum class frame_kind : std::uint8_t {
    // parent -> worker
    call = 1,  // id = task id; payload = u64 function key, u64 module offset (fn.hpp), the arguments' archive
    init = 2,  // id = 0; payload = u64 function key and u64 module offset of the initializer
    // worker -> parent
    hello = 16,        // id = worker pid; payload = u32 protocol version
    result = 17,       // id = task id; payload = the result's archive
    error = 18,        // id = task id; payload = the archive of (type name, what()) of the exception
    init_failed = 19,  // id = 0; payload = remote error
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
std::uint64_t get_u64(const char* p) noexcept;

/// Incremental decoder of a frame stream.
class frame_decoder {
public:
    explicit frame_decoder(std::size_t max_frame) : max_frame_(max_frame) {}

    /// Where the next read may write, at least min_room bytes (grows the buffer).
    char* prepare(std::size_t& room, std::size_t min_room = 64 * 1024);
    /// n bytes were written at prepare()'s pointer.
    void commit(std::size_t n) noexcept { end_ += n; }
    /// Copies bytes in (prepare + memcpy + commit).
    void feed(const char* data, std::size_t n);

    enum class status { frame, need_more, corrupt };
    /// The next complete frame, need_more, or corrupt (then error() says why
    /// and the decoder stays corrupt).
    status next(frame& f);

    const std::string& error() const noexcept { return error_; }
    /// Bytes received but not yet returned as frames.
    std::size_t buffered() const noexcept { return end_ - begin_; }

private:
    status fail(std::string why);

    std::size_t max_frame_;
    std::vector<char> buf_;
    std::size_t begin_ = 0, end_ = 0;
    bool corrupt_ = false;
    std::string error_;
};

}  // namespace uvexec::detail
