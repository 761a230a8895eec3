// Fuzz target: detail::decode_from of representative types from arbitrary
// bytes. It may throw uvexec::error and nothing else; it must never crash,
// read out of bounds, or allocate without bound (run with -malloc_limit_mb and
// -rss_limit_mb). What decodes must re-encode to bytes that decode to an
// equal value.
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "uvexec/codec.hpp"
#include "uvexec/error.hpp"

namespace {

template <class... T>
void check(std::string_view bytes) {
    std::tuple<T...> v{};
    try {
        std::apply([&](auto&... x) { uvexec::detail::decode_from(bytes, x...); }, v);
    } catch (const uvexec::error&) {
        return;  // refused: fine
    }
    std::string again;
    std::apply([&](const auto&... x) { uvexec::detail::encode_into(again, x...); }, v);
    std::tuple<T...> w{};
    std::apply([&](auto&... x) { uvexec::detail::decode_from(again, x...); }, w);  // must not throw
    if (v != w) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 7) {
        case 0: check<std::string>(bytes); break;
        case 1: check<std::vector<int>>(bytes); break;
        case 2: check<std::map<std::string, std::vector<std::string>>>(bytes); break;
        case 3: check<std::optional<std::tuple<int, std::string>>>(bytes); break;
        case 4: check<std::string, std::string>(bytes); break;  // a remote error: (type, what)
        case 5: check<std::uint32_t>(bytes); break;             // a hello's protocol version
        case 6: check<std::vector<std::vector<std::string>>>(bytes); break;
    }
    return 0;
}
