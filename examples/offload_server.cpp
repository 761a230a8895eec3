// A TCP server written the way libuv programs are written — it owns its
// uv_loop_t and calls uv_run itself — that hands blocking work to uvexec by
// borrowing that loop. See offload_server_lib.hpp for the protocol.
//
//     $ build/examples/offload_server --port 7000
//     listening on 127.0.0.1:7000
//     $ nc 127.0.0.1 7000
//     ping
//     pong
//     square 12
//     144
//     fib 40
//     102334155
//
// SIGINT or SIGTERM shuts it down cleanly (exit status 0).
#include <cstdio>
#include <stdexcept>

#include <fmt/format.h>

#include <uvexec/process_pool_executor.hpp>

#include "offload_server_lib.hpp"

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);  // serves as a `fib` worker when started as one

    offload::server_options options;
    try {
        if (!offload::parse_command_line(argc, argv, options)) return 0;  // --help
    } catch (const std::invalid_argument& e) {
        fmt::print(stderr, "{}: {}\n{}", argv[0], e.what(), offload::usage(argv[0]));
        return 2;
    }
    return offload::run_offload_server(options, [](const offload::ready_info& info) {
        bool v6 = info.host.find(':') != std::string::npos;
        std::printf(v6 ? "listening on [%s]:%d\n" : "listening on %s:%d\n", info.host.c_str(), info.port);
        std::fflush(stdout);
    });
}
