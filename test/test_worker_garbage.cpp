// The parent against whatever a worker writes, without libFuzzer: replays the
// fuzz_worker seed corpus and then random byte strings (some pure noise, some
// a valid frame header for call #1 with random payload) through the same
// driver (fuzz/fuzz_worker_driver.cpp), which aborts on any wrong outcome.
// UVEXEC_GARBAGE_INPUTS sets how many random strings (the soak suite runs more).
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <uvexec/detail/frame.hpp>

#include "../fuzz/fuzz_worker.hpp"

namespace {
void replay(const std::string& bytes) {
    fuzz_worker_one(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
}
}  // namespace

TEST_CASE("whatever a worker writes, the parent fails or answers the call, then serves, reaps and closes") {
    fuzz_worker_init();
    int corpus = 0;
    for (auto& e : std::filesystem::directory_iterator(UVEXEC_FUZZ_CORPUS)) {
        std::ifstream in(e.path(), std::ios::binary);
        replay(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
        ++corpus;
    }
    CHECK(corpus > 0);
    const char* env = std::getenv("UVEXEC_GARBAGE_INPUTS");
    const int n = env ? std::atoi(env) : 100;
    std::mt19937 rng(20261125);
    for (int i = 0; i < n; ++i) {
        std::string bytes;
        const auto len = std::uniform_int_distribution<std::size_t>(1, 64)(rng);
        if (i % 2 == 0) {
            // A frame that claims to answer call #1, of a random kind and length.
            using namespace uvexec::detail;
            const frame_kind kinds[] = {frame_kind::result, frame_kind::error, frame_kind::hello,
                                        frame_kind::init_failed, static_cast<frame_kind>(rng() & 0xff)};
            append_frame_header(bytes, kinds[rng() % 5], rng() % 4 == 0 ? rng() : 1, len);
            if (rng() % 4 == 0) bytes[0] = static_cast<char>(rng());  // a wrong length now and then
        }
        for (std::size_t k = 0; k < len; ++k) bytes.push_back(static_cast<char>(rng()));
        replay(bytes);
    }
    MESSAGE(corpus, " corpus inputs and ", n, " random ones");
}

int main(int argc, char** argv) {
    doctest::Context context(argc, argv);
    return context.run();
}
