// The frame decoder's memory: it grows with the bytes that arrive, never from
// a header alone, at most to twice what it holds, and copies within itself no
// more than a constant times the bytes fed (issue 13: payloads at socket speed).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "support.hpp"

#include <uvexec/detail/frame.hpp>

namespace {

using uvexec::detail::frame;
using uvexec::detail::frame_decoder;
using uvexec::detail::frame_kind;

constexpr std::size_t read_room = 64 * 1024;  // what the parent's on_alloc and the worker ask prepare() for

std::string make_frame(std::uint64_t id, std::size_t payload_size) {
    std::string payload(payload_size, '\0');
    for (std::size_t i = 0; i < payload_size; ++i) payload[i] = static_cast<char>((i * 131 + id) & 0xff);
    std::string out;
    uvexec::detail::append_frame(out, frame_kind::result, id, payload);
    return out;
}

/// Writes bytes [at, at + n) of stream through prepare/commit, as a read would.
void read_into(frame_decoder& dec, const std::string& stream, std::size_t at, std::size_t n) {
    std::size_t room = 0;
    char* p = dec.prepare(room, read_room);
    REQUIRE(room >= read_room);
    n = std::min({n, room, stream.size() - at});
    std::memcpy(p, stream.data() + at, n);
    dec.commit(n);
}

}  // namespace

TEST_SUITE("frame") {

TEST_CASE("a header announcing 200 MiB followed by nothing leaves the decoder small") {
    // Today's default max_frame_size is 256 MiB: a worker that announces
    // 200 MiB and stalls must not make the parent allocate 200 MiB from 13 bytes.
    frame_decoder dec(256u << 20);
    char header[uvexec::detail::frame_header_size];
    uvexec::detail::put_frame_header(header, frame_kind::result, 7, 200u << 20);
    dec.feed(header, sizeof(header));
    frame f{};
    CHECK(dec.next(f) == frame_decoder::status::need_more);
    std::size_t room = 0;
    (void)dec.prepare(room, read_room);  // the next read, as on_alloc asks for it
    CHECK(dec.next(f) == frame_decoder::status::need_more);
    CHECK(dec.capacity() <= sizeof(header) + 2 * read_room);
}

TEST_CASE("a large frame read in small pieces never has a buffer above twice the bytes received") {
    frame_decoder dec(256u << 20);
    // A few small frames first, so that the large one does not start at the
    // front of the buffer.
    std::string stream;
    for (std::uint64_t i = 1; i <= 5; ++i) stream += make_frame(i, 100 * static_cast<std::size_t>(i));
    const std::size_t big = 24u << 20;
    stream += make_frame(99, big);
    stream += make_frame(100, 10);  // and one after it, in the same reads

    std::vector<std::uint64_t> ids;
    std::size_t at = 0;
    std::size_t max_ratio_violations = 0;
    while (at < stream.size()) {
        const std::size_t before = dec.buffered();
        read_into(dec, stream, at, 4096);
        at += dec.buffered() - before;
        frame f{};
        while (dec.next(f) == frame_decoder::status::frame) {
            ids.push_back(f.id);
            if (f.id == 99) {
                REQUIRE(f.payload.size() == big);
                CHECK(std::memcmp(f.payload.data(), stream.data() + stream.size() - 23 - big, big) == 0);
            }
        }
        // While the large frame arrives, what is held is never more than twice
        // what has arrived, plus one read's room.
        if (ids.size() < 6 && dec.capacity() > 2 * dec.buffered() + read_room) ++max_ratio_violations;
    }
    CHECK(max_ratio_violations == 0);
    CHECK(ids == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 99, 100});
    // Linear: the bytes moved within the buffer are at most a small multiple
    // of the bytes fed (no tail moved per read, growth at least ~1.5x).
    CHECK(dec.bytes_moved() <= 3 * stream.size());
    CHECK(dec.capacity() <= big + 4 + 9 + 2 * read_room);
}

TEST_CASE("a stream of mixed frames in uneven reads decodes whole, moving each byte a bounded number of times") {
    frame_decoder dec(8u << 20);
    std::string stream;
    std::uint64_t lcg = 12345;
    auto rnd = [&] { return lcg = lcg * 6364136223846793005ull + 1442695040888963407ull, lcg >> 33; };
    std::vector<std::size_t> sizes;
    for (int i = 0; i < 400; ++i) {
        std::size_t s = rnd() % 4 == 0 ? rnd() % (3u << 20) : rnd() % 3000;
        sizes.push_back(s);
        stream += make_frame(static_cast<std::uint64_t>(i), s);
    }
    std::size_t at = 0, got = 0;
    while (at < stream.size()) {
        const std::size_t before = dec.buffered();
        read_into(dec, stream, at, 1 + rnd() % (200 * 1024));
        at += dec.buffered() - before;
        frame f{};
        while (dec.next(f) == frame_decoder::status::frame) {
            REQUIRE(f.id == got);
            REQUIRE(f.payload.size() == sizes[got]);
            ++got;
        }
        CHECK(dec.capacity() <= std::max<std::size_t>(2 * dec.buffered(), (3u << 20) + 13) + read_room);
    }
    CHECK(got == sizes.size());
    CHECK(dec.buffered() == 0);
    CHECK(dec.bytes_moved() <= 3 * stream.size());
}

TEST_CASE("a frame consumed whole empties the buffer: the next read starts at its front, nothing moved") {
    frame_decoder dec(1u << 20);
    std::string fr = make_frame(1, 200000);
    dec.feed(fr.data(), fr.size());
    frame f{};
    REQUIRE(dec.next(f) == frame_decoder::status::frame);
    const std::size_t moved = dec.bytes_moved(), cap = dec.capacity();
    std::size_t room = 0;
    (void)dec.prepare(room, read_room);
    CHECK(room == cap);  // the whole buffer again
    CHECK(dec.bytes_moved() == moved);
}

TEST_CASE("a large buffer is reused while large frames come, and given back after a small one") {
    frame_decoder dec(64u << 20);
    std::string fr = make_frame(1, 24u << 20);
    dec.feed(fr.data(), fr.size());
    frame f{};
    REQUIRE(dec.next(f) == frame_decoder::status::frame);
    const std::size_t cap = dec.capacity();
    CHECK(cap >= fr.size());
    if (test::huge_pages_available())  // its first touch was cheap: transparent huge pages asked for
        CHECK(test::vm_flags_at(f.payload.data() + f.payload.size() / 2).find(" hg") != std::string::npos);
    // The next large frame is read into the same buffer: no growth, nothing moved.
    std::size_t room = 0;
    (void)dec.prepare(room, read_room);
    CHECK(dec.capacity() == cap);
    CHECK(room == cap);
    const std::size_t moved = dec.bytes_moved();
    std::string again = make_frame(2, 24u << 20);
    dec.feed(again.data(), again.size());
    REQUIRE(dec.next(f) == frame_decoder::status::frame);
    CHECK(f.id == 2);
    CHECK(dec.capacity() == cap);
    CHECK(dec.bytes_moved() == moved);
    // A small frame: the buffer it emptied is given back before the next read,
    // so the parent keeps no large buffer once the large messages stop.
    std::string small = make_frame(3, 100);
    dec.feed(small.data(), small.size());
    REQUIRE(dec.next(f) == frame_decoder::status::frame);
    (void)dec.prepare(room, read_room);
    CHECK(dec.capacity() <= 2 * read_room);
    CHECK(room >= read_room);
    // And the next frame still decodes.
    dec.feed(small.data(), small.size());
    REQUIRE(dec.next(f) == frame_decoder::status::frame);
    CHECK(f.id == 3);
}

TEST_CASE("a reused buffer (write batch, worker answer) keeps its memory while messages fill a quarter of it") {
    std::string buf;
    uvexec::detail::reserve_large(buf, std::size_t{16} << 20);
    const std::size_t cap = buf.capacity();
    REQUIRE(cap >= (std::size_t{16} << 20));
    uvexec::detail::trim_buffer(buf, cap / 4);  // a message as large as that: kept
    CHECK(buf.capacity() == cap);
    uvexec::detail::trim_buffer(buf, cap / 4 - 1);  // a smaller one: given back
    CHECK(buf.capacity() < (std::size_t{1} << 20));
    std::string small;
    small.reserve(1u << 20);  // up to 1 MiB is always kept
    const std::size_t small_cap = small.capacity();
    uvexec::detail::trim_buffer(small, 0);
    CHECK(small.capacity() == small_cap);
}

TEST_CASE("corrupt lengths are still rejected, from the length alone, and nothing is allocated for them") {
    SUBCASE("over max_frame") {
        frame_decoder dec(1u << 20);
        char header[uvexec::detail::frame_header_size];
        uvexec::detail::put_frame_header(header, frame_kind::result, 1, 1u << 20);  // length 1 MiB + 9
        dec.feed(header, 4);
        frame f{};
        CHECK(dec.next(f) == frame_decoder::status::corrupt);
        CHECK(dec.error().find("exceeds the maximum frame size") != std::string::npos);
        CHECK(dec.capacity() < 1024);
        dec.feed(header + 4, sizeof(header) - 4);
        CHECK(dec.next(f) == frame_decoder::status::corrupt);  // and stays so
    }
    SUBCASE("shorter than a header") {
        frame_decoder dec(1u << 20);
        const char bad[4] = {8, 0, 0, 0};
        dec.feed(bad, 4);
        frame f{};
        CHECK(dec.next(f) == frame_decoder::status::corrupt);
        CHECK(dec.error().find("shorter than a frame header") != std::string::npos);
    }
    SUBCASE("a decoder of max_frame 0 (the parent's after a protocol violation) refuses everything") {
        frame_decoder dec(1u << 20);
        std::string fr = make_frame(1, 10);
        dec.feed(fr.data(), fr.size());
        dec = frame_decoder(0);
        CHECK(dec.buffered() == 0);
        dec.feed(fr.data(), fr.size());
        frame f{};
        CHECK(dec.next(f) == frame_decoder::status::corrupt);
    }
}

}  // TEST_SUITE
