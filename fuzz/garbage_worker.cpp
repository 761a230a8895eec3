// The worker of fuzz_worker. When the file named by UVEXEC_FUZZ_WORKER_INPUT
// is non-empty it plays a broken worker: it says a valid hello, waits for the
// parent's first bytes (the call), writes the file's bytes to its channel as
// if they were its answer, and exits. Otherwise it is an ordinary worker
// serving fuzzfn::square.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include <unistd.h>

#include <uvexec/codec.hpp>
#include <uvexec/detail/frame.hpp>
#include <uvexec/process_pool_executor.hpp>

#include "fuzz_functions.hpp"

namespace {
void write_all(int fd, const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) {
        ssize_t n = ::write(fd, s.data() + off, s.size() - off);
        if (n <= 0) ::_exit(0);  // the parent closed the channel
        off += static_cast<std::size_t>(n);
    }
}
}  // namespace

int main(int argc, char** argv) {
    uvexec::expose<&fuzzfn::square>();
    std::string garbage;
    if (const char* path = std::getenv("UVEXEC_FUZZ_WORKER_INPUT")) {
        std::ifstream in(path, std::ios::binary);
        garbage.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    if (garbage.empty() || argc < 6 || std::string_view(argv[1]) != "--uvexec-worker") {
        uvexec::worker_main(argc, argv);
        std::fprintf(stderr, "garbage_worker: run me only as a uvexec worker\n");
        return 2;
    }
    const int fd = 3;
    std::string hello, payload;
    uvexec::detail::encode_into(payload, uvexec::detail::protocol_version, std::string("garbage-host"));
    uvexec::detail::append_frame(hello, uvexec::detail::frame_kind::hello, static_cast<std::uint64_t>(::getpid()),
                                 payload);
    write_all(fd, hello);
    char buf[4096];
    if (::read(fd, buf, sizeof buf) <= 0) ::_exit(0);
    write_all(fd, garbage);
    ::_exit(0);  // skip LeakSanitizer: this process is not under test
}
