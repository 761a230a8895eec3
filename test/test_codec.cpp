// The codec and the frame decoder against malformed input (found by fuzz/).
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "support.hpp"

#include <uvexec/codec.hpp>
#include <uvexec/detail/frame.hpp>

TEST_SUITE("codec") {

TEST_CASE("a bool byte other than 0 or 1 is refused, not loaded as an undefined bool") {
    // Found by fuzz_decode under UBSan: cereal reads std::optional's flag (a
    // bool) with a plain byte copy, so 0xff gave a bool with an invalid value.
    bool b = false;
    CHECK_THROWS_AS(uvexec::detail::decode_from(std::string_view("\x02", 1), b), uvexec::error);
    std::optional<std::tuple<int, std::string>> o;
    CHECK_THROWS_AS(uvexec::detail::decode_from(std::string_view("\xff\xff", 2), o), uvexec::error);
    uvexec::detail::decode_from(std::string_view("\x01", 1), b);
    CHECK(b);
    uvexec::detail::decode_from(std::string_view("\x00", 1), b);
    CHECK_FALSE(b);
    std::optional<int> none = 5;
    uvexec::detail::decode_from(std::string_view("\x01", 1), none);  // cereal's flag says "nullopt"
    CHECK_FALSE(none.has_value());
}

TEST_CASE("an empty vector of arithmetic values decodes (no memcpy to a null pointer)") {
    // Found by fuzz_decode under UBSan: cereal loads a vector<int>'s elements
    // as one block, and an empty vector's data() is null.
    std::string bytes;
    uvexec::detail::encode_into(bytes, std::vector<int>{});
    std::vector<int> v{1, 2};
    uvexec::detail::decode_from(bytes, v);
    CHECK(v.empty());
}

TEST_CASE("strings and vectors of numbers round-trip at every size, read with one copy") {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{4095}, std::size_t{5} << 20}) {
        std::string s(n, '\0');
        for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 7 + 3);
        std::vector<double> v(n / 8);
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i) * 0.5;
        std::string bytes;
        uvexec::detail::encode_into(bytes, s, v);
        std::string s2 = "previous contents";
        std::vector<double> v2{1.0, 2.0};
        uvexec::detail::decode_from(bytes, s2, v2);
        CHECK(s2 == s);
        CHECK(v2 == v);
    }
}

TEST_CASE("a string's or vector's length past the bytes left is refused before anything is allocated") {
    std::string bytes;
    uvexec::detail::encode_into(bytes, std::uint64_t{1000});  // a length of 1000, then nothing
    bytes.append(999, 'x');
    std::string s;
    CHECK_THROWS_WITH_AS(uvexec::detail::decode_from(bytes, s), doctest::Contains("exceeds the 999 bytes left"),
                         uvexec::error);
    // 1000 doubles need 8000 bytes: refused from the length, where cereal's
    // own load would have allocated them first.
    std::string vbytes;
    uvexec::detail::encode_into(vbytes, std::uint64_t{1000});
    vbytes.append(1000, 'x');
    std::vector<double> v;
    CHECK_THROWS_WITH_AS(uvexec::detail::decode_from(vbytes, v), doctest::Contains("exceeds the 1000 bytes left"),
                         uvexec::error);
    CHECK(v.capacity() == 0);
}

TEST_CASE("a large decoded string or vector asks for transparent huge pages") {
    if (!test::huge_pages_available()) {
        MESSAGE("skipped: this kernel has no transparent huge pages on request");
        return;
    }
    const std::size_t n = std::size_t{16} << 20;
    std::string bytes;
    uvexec::detail::encode_into(bytes, std::string(n, 'a'), std::vector<std::int32_t>(n / 4, 7));
    std::string s;
    std::vector<std::int32_t> v;
    uvexec::detail::decode_from(bytes, s, v);
    REQUIRE(s.size() == n);
    // "hg" in VmFlags: madvise(MADV_HUGEPAGE) covers the middle of the buffer.
    CHECK(test::vm_flags_at(s.data() + n / 2).find(" hg") != std::string::npos);
    CHECK(test::vm_flags_at(v.data() + v.size() / 2).find(" hg") != std::string::npos);
    std::string small_bytes;
    uvexec::detail::encode_into(small_bytes, std::string(1000, 'b'));
    std::string small;
    uvexec::detail::decode_from(small_bytes, small);
    CHECK(small == std::string(1000, 'b'));
}

TEST_CASE("feeding a fresh frame decoder nothing is a no-op") {
    // Found by fuzz_frame under UBSan: feed(p, 0) on an empty buffer passed
    // memcpy a null destination (undefined even for 0 bytes).
    uvexec::detail::frame_decoder dec(1024);
    const char byte = 0;
    dec.feed(&byte, 0);
    CHECK(dec.buffered() == 0);
    uvexec::detail::frame f{};
    CHECK(dec.next(f) == uvexec::detail::frame_decoder::status::need_more);
}

}  // TEST_SUITE
