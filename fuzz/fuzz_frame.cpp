// Fuzz target: detail::frame_decoder fed arbitrary bytes in arbitrary chunks.
//
// Properties checked (any violation aborts, which libFuzzer reports):
//  - it never crashes and never reads or writes out of bounds (ASan);
//  - it never allocates much more than max_frame (run with -malloc_limit_mb=2:
//    max_frame is 1 MiB, plus the 64 KiB a read may ask for);
//  - the frames it returns, re-encoded, are exactly the bytes it consumed;
//  - once corrupt it stays corrupt, with the same error, whatever it is fed.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fuzzer/FuzzedDataProvider.h>

#include "uvexec/detail/frame.hpp"

namespace {
constexpr std::size_t max_frame = 1u << 20;

[[noreturn]] void fail(const char* why) {
    __builtin_trap();
    (void)why;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace uvexec::detail;
    FuzzedDataProvider in(data, size);
    frame_decoder dec(max_frame);
    std::string fed, reencoded;
    bool corrupt = false;
    std::string first_error;
    while (in.remaining_bytes() > 0) {
        // How the bytes arrive: through prepare/commit like the parent's
        // on_alloc (64 KiB at least), or through feed().
        const bool via_prepare = in.ConsumeBool();
        const std::size_t chunk = in.ConsumeIntegralInRange<std::size_t>(0, 300);
        std::string bytes = in.ConsumeBytesAsString(chunk);
        if (via_prepare) {
            std::size_t room = 0;
            char* p = dec.prepare(room);
            if (room < 64 * 1024) fail("prepare gave less room than asked");
            std::memcpy(p, bytes.data(), bytes.size());
            dec.commit(bytes.size());
        } else {
            dec.feed(bytes.data(), bytes.size());
        }
        fed += bytes;
        frame f{};
        for (;;) {
            auto st = dec.next(f);
            if (st == frame_decoder::status::need_more) {
                if (corrupt) fail("a corrupt decoder recovered");
                break;
            }
            if (st == frame_decoder::status::corrupt) {
                if (dec.error().empty()) fail("corrupt without a reason");
                if (!corrupt) {
                    corrupt = true;
                    first_error = dec.error();
                } else if (dec.error() != first_error) {
                    fail("the error changed");
                }
                break;
            }
            if (corrupt) fail("a corrupt decoder returned a frame");
            if (f.payload.size() + frame_header_size > max_frame + 4) fail("a frame over max_frame");
            append_frame(reencoded, f.kind, f.id, f.payload);
        }
        if (!corrupt) {
            if (reencoded.size() + dec.buffered() != fed.size()) fail("bytes lost or invented");
            if (fed.compare(0, reencoded.size(), reencoded) != 0) fail("frames differ from the bytes fed");
        }
    }
    return 0;
}
