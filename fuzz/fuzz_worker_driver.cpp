// The driver of fuzz_worker (fuzz_worker_main.cpp): the parent's handling of whatever a worker writes.
// Each input is the byte stream a worker writes after a valid hello, in answer
// to one call (garbage_worker.cpp writes it and exits). The parent must fail
// or answer that call -- a value, worker_died_error, remote_error or uvexec::error
// (an undecodable result) -- and serve the next call correctly from a fresh
// worker; every worker is reaped and no descriptor is left open. The pool has
// no initializer, so nothing a worker writes may break it: an init_failed
// frame is a protocol violation like any other (worker_died_error).
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <uvexec/uvexec.hpp>

#include "fuzz_functions.hpp"
#include "fuzz_worker.hpp"

namespace {

std::string input_path;

[[noreturn]] void fail(const char* why) {
    std::fprintf(stderr, "fuzz_worker: %s\n", why);
    std::abort();
}

bool reaped(int pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}

std::size_t open_fds() {
    std::size_t n = 0;
    for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

void write_input(const std::uint8_t* data, std::size_t size) {
    std::ofstream out(input_path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) fail("cannot write the input file");
}

uvexec::task<void> until_no_worker(uvexec::loop& lp, uvexec::process_pool_executor& ex) {
    for (int i = 0; i < 2000 && ex.live_workers() != 0; ++i) co_await uvexec::sleep(lp, std::chrono::milliseconds(1));
    if (ex.live_workers() != 0) fail("the broken worker was not reaped within 2 s");
}

}  // namespace

void fuzz_worker_init() {
    input_path = "/tmp/uvexec-fuzz-worker-" + std::to_string(::getpid()) + ".bin";
    ::setenv("UVEXEC_FUZZ_WORKER_INPUT", input_path.c_str(), 1);
    // libuv opens a process-wide pipe pair the first time it watches SIGCHLD
    // and keeps it; spawn one well-behaved worker first so that the
    // descriptor count per input does not see it as a leak.
    write_input(nullptr, 0);
    uvexec::loop lp;
    uvexec::process_pool_executor ex{{.max_workers = 1, .worker_executable = UVEXEC_FUZZ_GARBAGE_WORKER}};
    if (lp.run_until_complete(lp.run_in_executor(ex, uvexec::fn<&fuzzfn::square>, 3)) != 9) fail("warm-up failed");
    lp.run_until_complete(ex.shutdown());
}

void fuzz_worker_one(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return;  // an empty file means "behave"; nothing to test
    const std::size_t fds_before = open_fds();
    write_input(data, size);
    std::vector<int> pids;
    {
        uvexec::loop lp;
        uvexec::process_pool_executor ex{{
            .max_workers = 1,
            .worker_executable = UVEXEC_FUZZ_GARBAGE_WORKER,
            .max_frame_size = 1u << 20,
            .startup_timeout = std::chrono::milliseconds(5000),
        }};
        auto first = lp.run_in_executor(ex, uvexec::fn<&fuzzfn::square>, 7);
        pids = ex.worker_pids();
        try {
            (void)lp.run_until_complete(std::move(first));  // any int the bytes say
        } catch (const uvexec::broken_executor_error&) {
            fail("a worker broke a pool that has no initializer");
        } catch (const uvexec::worker_died_error&) {
        } catch (const uvexec::remote_error&) {
        } catch (const uvexec::error&) {  // an undecodable result
        }
        write_input(nullptr, 0);  // the next worker behaves
        lp.run_until_complete(until_no_worker(lp, ex));
        if (lp.run_until_complete(lp.run_in_executor(ex, uvexec::fn<&fuzzfn::square>, 9)) != 81)
            fail("a well-behaved worker after a broken one gave a wrong answer");
        for (int pid : ex.worker_pids()) pids.push_back(pid);
        lp.run_until_complete(ex.shutdown());
    }
    for (int pid : pids)
        if (!reaped(pid)) fail("a worker was left unreaped");
    if (open_fds() != fds_before) fail("a descriptor leaked");
}
