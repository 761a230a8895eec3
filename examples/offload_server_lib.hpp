// offload_server — a line-protocol TCP server written the way libuv programs
// are written (the program owns its uv_loop_t, uses uv_tcp_t / uv_listen /
// uv_read_start / uv_write and calls uv_run itself) that hands its blocking
// work to uvexec by *borrowing* that loop: `uvexec::loop lp(&uv)`.
//
// Protocol: one request per '\n'-terminated line (a trailing '\r' is ignored),
// one answer line per request, answers in request order per connection.
//
//     ping        -> pong                     answered at once, on the loop
//     square N    -> N*N                      on a uvexec::thread_pool_executor
//                                             (|N| <= 4294967295, so N*N fits 64 bits)
//     fib N       -> the N-th Fibonacci number on a uvexec::process_pool_executor,
//                                             by deliberately naive recursion
//                                             (0 <= N <= 45, see fib() below)
//     anything else, a bad or out-of-range N  -> "error <reason>"
//     a line longer than max_line bytes        -> the answers still owed, then
//                                                "error line too long ...", then
//                                                the server closes the connection
//
// The loop never blocks: a running `fib 45` (seconds of CPU in a worker
// process) does not delay anybody's `ping`.
//
// Connection lifetime. A client that closes its end (EOF, reset, or a failed
// write) is gone: its connection is closed at once and its unanswered work is
// cancelled — calls still queued in an executor never run; calls already
// running finish (neither libuv's threads nor a worker's current call can be
// interrupted) and their results are dropped by the completion callback, which
// finds the connection gone. (The process pool sends each worker one call at a
// time, max_in_flight_per_worker = 1, so that a fib waiting for a busy worker
// is still cancellable.) A client must therefore keep its connection open
// until it has read its answers (a half-close with shutdown(SHUT_WR) counts as
// leaving). Each connection has at most max_pending_per_connection unanswered
// requests; beyond that, and while more than 1 MiB of answers wait to be
// written to a client that does not read, the server stops reading from it
// (TCP back-pressure) instead of buffering without bound.
//
// Shutdown (SIGINT/SIGTERM, or server_control::stop()): stop accepting, close
// every client connection (their queued work is cancelled, see above), then
// `executor.shutdown(/*cancel_futures=*/true)` on both pools and wait — through
// add_done_callback, never blocking — until the calls already running have
// finished and every worker process has exited and been reaped. Then every
// handle is closed, uv_loop_close() returns 0 and run_offload_server returns 0.
// If the running calls take longer than shutdown_grace, or a second signal
// arrives, the server stops waiting: destroying the uvexec::loop cancels what is
// left and kills the worker processes (SIGKILL; they are reaped before
// run_offload_server returns). Note that Ctrl-C in a terminal sends SIGINT to
// the whole process group, worker processes included, so running fib calls
// end at once in that case.
//
// Threading: run_offload_server runs everything on the calling thread (it
// creates the loop, the executors and the uvexec::loop there). Only
// server_control::stop() and server_control::stats() may be used from other
// threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include <sched.h>
#include <uv.h>

namespace offload {

/// Largest N accepted by `fib N`. Naive recursion makes about 1.6^N calls
/// (2*fib(N+1) - 1 exactly): N = 40 takes about one second of one CPU (0.9 s
/// with g++ -O2, 1.1 s with clang++ -O2, 1.3 s at -O0; some six times that
/// under ThreadSanitizer), each step up costs 1.6 times more, and N = 45 about
/// eleven times as long as N = 40. The cap keeps every request bounded
/// (N = 90 would take millennia).
inline constexpr int max_fib_n = 45;
/// Largest |N| accepted by `square N`: N*N then fits in 64 unsigned bits.
inline constexpr std::int64_t max_square_abs = 4294967295;

/// The N-th Fibonacci number (fib(0) = 0, fib(1) = 1) by naive, deliberately
/// CPU-heavy recursion (through a volatile function pointer, so no optimiser
/// can make it cheap). Throws std::out_of_range outside 0..max_fib_n. Runs in
/// a worker process (uvexec::fn<&offload::fib>).
std::uint64_t fib(int n);
/// n*n. Throws std::out_of_range if |n| > max_square_abs. Runs on a pool thread.
std::uint64_t square(std::int64_t n);

/// A parsed request line.
struct request {
    enum class kind { ping, square, fib, invalid };
    kind what = kind::invalid;
    std::int64_t arg = 0;
    std::string error;  // for invalid: the answer without the "error " prefix
};

/// Parses one line (without its '\n'; one trailing '\r' is ignored).
/// Never throws for any input bytes.
request parse_request(std::string_view line);

struct server_options {
    std::string host = "127.0.0.1";
    int port = 7000;  // 0 picks a free port (see ready_info::port)
    int threads = 4;    // thread_pool_executor max_workers
    int processes = 2;  // process_pool_executor max_workers
    std::size_t max_line = 4096;                  // bytes, without the '\n'
    std::size_t max_pending_per_connection = 64;  // unanswered requests before reading pauses
    std::chrono::milliseconds shutdown_grace{10000};
    // How much nicer (0-19, as nice(1)) than the loop the pools' threads and workers run: above 0,
    // CPU-heavy calls yield the CPU to the loop thread when cores are short.
    int pool_nice = 0;
    // CPUs (a taskset(1) list such as "1" or "2-3,6"; empty: no pinning) for
    // the pools' threads and worker processes, and for the loop thread. On a
    // machine the pools can saturate, giving the loop CPUs of its own is what
    // keeps its latency (docs/performance.md, "The HTTP server").
    std::string pool_cpus{};
    std::string loop_cpus{};
    // Calls each pool accepts and has not started (max_queue); 0 means
    // unbounded. Past it a request is refused (http_server: 503).
    std::size_t max_queue = 0;
    bool handle_signals = true;  // SIGINT/SIGTERM start the shutdown (uv_signal_t)
    bool verbose = true;         // lifecycle messages on stderr
};

/// Parses a CPU list as taskset(1) writes it ("1", "0-2,5") into a cpu_set_t;
/// throws std::invalid_argument naming `option` if it is empty, malformed or
/// names a CPU at or above CPU_SETSIZE.
cpu_set_t parse_cpu_list(std::string_view option, std::string_view list);

/// Parses `--host H --port P --threads N --processes N --max-line BYTES
/// --max-pending N --grace SECONDS --pool-nice N --pool-cpus LIST --loop-cpus LIST --max-queue N` (also `--opt=value`). Throws std::invalid_argument with a
/// readable message; returns false if --help was given (usage printed).
bool parse_command_line(int argc, char** argv, server_options& out);
/// The usage text.
std::string usage(std::string_view program);

/// What the usage text says differs between the servers that share this
/// command line (offload_server, http_server).
struct usage_words {
    std::string_view threads_for;    // what the thread pool serves
    std::string_view processes_for;  // what the process pool serves
    std::string_view max_line_of;    // what --max-line limits
    int grace_default = 10;          // seconds
    std::string protocol;            // the last line
};
std::string usage(std::string_view program, const usage_words& words);

/// Passed to the ready callback once the server is listening.
struct ready_info {
    std::string host;
    int port = 0;  // the port actually bound (useful with port 0)
};

/// Counters the server keeps; readable from any thread.
struct server_stats {
    std::atomic<std::uint64_t> connections_accepted{0};
    std::atomic<std::uint64_t> connections_open{0};
    std::atomic<std::uint64_t> requests{0};         // lines handled
    std::atomic<std::uint64_t> error_replies{0};
    std::atomic<std::uint64_t> work_submitted{0};   // square/fib calls given to an executor
    std::atomic<std::uint64_t> work_pending{0};     // ... whose future is not done yet
    std::atomic<std::uint64_t> results_dropped{0};  // futures that completed after their connection was gone
};

/// Lets another thread stop a server and read its counters. Create it before
/// run_offload_server and keep it alive until that returns.
class server_control {
public:
    /// Any thread, any time (also before the server started: it then stops as
    /// soon as it is listening). Idempotent.
    void stop() noexcept;
    const server_stats& stats() const noexcept { return stats_; }

private:
    friend struct control_access;
    std::mutex mutex_;
    uv_async_t* async_ = nullptr;  // the running server's stop handle
    bool stop_requested_ = false;
    server_stats stats_;
};

/// Runs the server on the calling thread until it is stopped (signal or
/// control->stop()). on_ready is called once, on this thread, when the server
/// listens. Returns 0 after a clean shutdown; 1 if it could not start (bad
/// address, port in use: the reason is printed on stderr and on_ready is not
/// called) or if the loop could not be closed cleanly. Ignores SIGPIPE for the
/// process (a write to a vanished client must fail with EPIPE, not kill us).
int run_offload_server(const server_options& options, std::function<void(const ready_info&)> on_ready = {},
                       server_control* control = nullptr);

}  // namespace offload
