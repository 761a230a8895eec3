// The codec and the frame decoder against malformed input (found by fuzz/).
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
