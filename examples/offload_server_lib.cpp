// offload_server — the server itself; see offload_server_lib.hpp for the
// protocol, the connection lifetime and the shutdown sequence.
//
// Ownership, all on the loop thread:
//  - `server` lives on run_offload_server's stack and outlives the loop's
//    last callback; its handles (listener, signals, stop async, grace timer)
//    are members and are closed before the final uv_run.
//  - a `connection` is owned by server::conns (a shared_ptr) from accept until
//    its uv_tcp_t's close callback. Completion callbacks of offloaded work hold
//    only a weak_ptr to it: when the work finishes after the client left, the
//    callback finds the connection expired or closing and drops the result.
//  - a write request owns its bytes and is freed by its own callback, which
//    libuv runs (with UV_ECANCELED if need be) before the close callback of
//    the connection's handle.
#include "offload_server_lib.hpp"
#include "server_core.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include <arpa/inet.h>

#include <fmt/format.h>

#include <uvexec/uvexec.hpp>

namespace offload {

// --- the work ------------------------------------------------------------------

namespace {

std::uint64_t naive_fib(int n) noexcept;

// The recursion goes through a volatile pointer so that the optimiser cannot
// make the double recursion cheaper than it is: without it, g++ -O2
// -fsanitize=thread computed fib 43 in 8 ms instead of seconds.
std::uint64_t (*volatile recurse)(int) noexcept = &naive_fib;

std::uint64_t naive_fib(int n) noexcept {
    return n < 2 ? static_cast<std::uint64_t>(n) : recurse(n - 1) + recurse(n - 2);
}

}  // namespace

std::uint64_t fib(int n) {
    if (n < 0 || n > max_fib_n)
        throw std::out_of_range(fmt::format("fib: N must be from 0 to {}, got {}", max_fib_n, n));
    return recurse(n);
}

std::uint64_t square(std::int64_t n) {
    if (n < -max_square_abs || n > max_square_abs)
        throw std::out_of_range(fmt::format("square: |N| must be at most {}, got {}", max_square_abs, n));
    auto a = static_cast<std::uint64_t>(n < 0 ? -n : n);
    return a * a;
}

// --- the protocol --------------------------------------------------------------

namespace {

constexpr std::string_view commands_hint = "expected ping, square N or fib N";

bool is_blank(char c) noexcept { return c == ' ' || c == '\t'; }

/// A short, printable rendering of client bytes for an error message: the
/// answer stays one line of ASCII whatever the client sent.
std::string printable(std::string_view s, std::size_t max = 32) {
    std::string out;
    for (std::size_t i = 0; i < s.size() && i < max; ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        out += (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? static_cast<char>(c) : '?';
    }
    if (s.size() > max) out += "...";
    return out;
}

/// An exception's text as one line of an answer.
std::string one_line(std::string_view s) {
    std::string out(s.substr(0, 300));
    for (char& c : out)
        if (c == '\n' || c == '\r') c = ' ';
    return out;
}

std::optional<std::int64_t> parse_int(std::string_view s) noexcept {
    std::int64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
    return v;
}

}  // namespace

cpu_set_t parse_cpu_list(std::string_view option, std::string_view list) {
    cpu_set_t set;
    CPU_ZERO(&set);
    auto bad = [&] {
        return std::invalid_argument(fmt::format("{}: expected a CPU list such as \"1\" or \"0-2,5\" (CPUs below {}), got \"{}\"",
                                                 option, CPU_SETSIZE, printable(list, 64)));
    };
    if (list.empty()) throw bad();
    for (std::string_view rest = list; !rest.empty();) {
        auto comma = rest.find(',');
        auto item = rest.substr(0, comma);
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
        if (comma != std::string_view::npos && rest.empty()) throw bad();  // a trailing comma
        auto dash = item.find('-');
        auto first = parse_int(item.substr(0, dash));
        auto last = dash == std::string_view::npos ? first : parse_int(item.substr(dash + 1));
        if (!first || !last || *first < 0 || *last < *first || *last >= CPU_SETSIZE) throw bad();
        for (auto cpu = *first; cpu <= *last; ++cpu) CPU_SET(static_cast<int>(cpu), &set);
    }
    return set;
}

request parse_request(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::vector<std::string_view> words;
    for (std::size_t i = 0; i < line.size();) {
        while (i < line.size() && is_blank(line[i])) ++i;
        std::size_t start = i;
        while (i < line.size() && !is_blank(line[i])) ++i;
        if (i > start) words.push_back(line.substr(start, i - start));
    }

    request r;
    auto fail = [&r](std::string why) {
        r.what = request::kind::invalid;
        r.error = std::move(why);
        return r;
    };
    if (words.empty()) return fail(fmt::format("empty request ({})", commands_hint));
    std::string_view cmd = words[0];
    if (cmd == "ping") {
        if (words.size() != 1) return fail("usage: ping");
        r.what = request::kind::ping;
    } else if (cmd == "square") {
        if (words.size() != 2) return fail("usage: square N");
        auto v = parse_int(words[1]);
        if (!v || *v < -max_square_abs || *v > max_square_abs)
            return fail(fmt::format("square: N must be an integer from {} to {}", -max_square_abs, max_square_abs));
        r.what = request::kind::square;
        r.arg = *v;
    } else if (cmd == "fib") {
        if (words.size() != 2) return fail("usage: fib N");
        auto v = parse_int(words[1]);
        if (!v || *v < 0 || *v > max_fib_n) return fail(fmt::format("fib: N must be an integer from 0 to {}", max_fib_n));
        r.what = request::kind::fib;
        r.arg = *v;
    } else {
        return fail(fmt::format("unknown command \"{}\" ({})", printable(cmd), commands_hint));
    }
    return r;
}

// --- the command line ----------------------------------------------------------

std::string usage(std::string_view program, const usage_words& w) {
    return fmt::format(
        "usage: {} [--host ADDR] [--port N] [--threads N] [--processes N] [--max-line BYTES] [--max-pending N]\n"
        "          [--grace SECONDS] [--pool-nice N] [--pool-cpus LIST] [--loop-cpus LIST] [--max-queue N]\n"
        "  --host ADDR        address to listen on (default 127.0.0.1)\n"
        "  --port N           TCP port, 0 picks a free one (default 7000)\n"
        "  --threads N        thread pool size for {} (default 4)\n"
        "  --processes N      worker processes for {} (default 2)\n"
        "  --max-line BYTES   longest {} accepted (default 4096)\n"
        "  --max-pending N    unanswered requests per connection before reading pauses (default 64)\n"
        "  --grace SECONDS    on SIGINT/SIGTERM, how long running work may take before it is\n"
        "                     abandoned and the workers are killed (default {}; 0 waits forever)\n"
        "  --pool-nice N      how much nicer than the loop the pools' threads and workers run\n"
        "                     so their work yields the CPU to the loop (as nice(1); default 0)\n"
        "  --pool-cpus LIST   CPUs of the pools' threads and worker processes, as taskset(1)\n"
        "                     writes them (\"1\", \"2-3,6\"); default: no pinning\n"
        "  --loop-cpus LIST   CPUs of the loop thread (default: no pinning)\n"
        "  --max-queue N      calls each pool holds before it refuses more (default 0: unbounded)\n"
        "{}\n",
        program, w.threads_for, w.processes_for, w.max_line_of, w.grace_default, w.protocol);
}

std::string usage(std::string_view program) {
    return usage(program, usage_words{"`square`", "`fib`", "request line", 10,
                                      fmt::format("Protocol: one request per line: `ping`, `square N` (|N| <= {}), "
                                                  "`fib N` (0 <= N <= {}).",
                                                  max_square_abs, max_fib_n)});
}

bool parse_command_line(int argc, char** argv, server_options& out) {
    auto number = [](std::string_view opt, std::string_view text, std::int64_t lo, std::int64_t hi) {
        auto v = parse_int(text);
        if (!v || *v < lo || *v > hi)
            throw std::invalid_argument(
                fmt::format("{}: expected an integer from {} to {}, got \"{}\"", opt, lo, hi, printable(text, 64)));
        return *v;
    };
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::fputs(usage(argv[0]).c_str(), stdout);
            return false;
        }
        std::string_view name = arg;
        std::optional<std::string_view> value;
        if (auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
        }
        auto take = [&]() -> std::string_view {
            if (value) return *value;
            if (i + 1 >= argc) throw std::invalid_argument(fmt::format("{}: missing value", name));
            return argv[++i];
        };
        if (name == "--host") {
            out.host = std::string(take());
        } else if (name == "--port") {
            out.port = static_cast<int>(number(name, take(), 0, 65535));
        } else if (name == "--threads") {
            out.threads = static_cast<int>(number(name, take(), 1, 1024));
        } else if (name == "--processes") {
            out.processes = static_cast<int>(number(name, take(), 1, 1024));
        } else if (name == "--max-line") {
            out.max_line = static_cast<std::size_t>(number(name, take(), 1, 1 << 24));
        } else if (name == "--max-pending") {
            out.max_pending_per_connection = static_cast<std::size_t>(number(name, take(), 1, 65536));
        } else if (name == "--grace") {
            out.shutdown_grace = std::chrono::seconds(number(name, take(), 0, 86400));
        } else if (name == "--pool-nice") {
            out.pool_nice = static_cast<int>(number(name, take(), 0, 19));
        } else if (name == "--pool-cpus" || name == "--loop-cpus") {
            auto list = take();
            parse_cpu_list(name, list);  // throws on a bad list
            (name == "--pool-cpus" ? out.pool_cpus : out.loop_cpus) = std::string(list);
        } else if (name == "--max-queue") {
            out.max_queue = static_cast<std::size_t>(number(name, take(), 0, 1 << 24));
        } else {
            throw std::invalid_argument(fmt::format("unknown option \"{}\"", printable(arg, 64)));
        }
    }
    return true;
}

// --- the thread-safe control ---------------------------------------------------

struct control_access {
    static void attach(server_control& c, uv_async_t* a) {
        std::lock_guard lock(c.mutex_);
        c.async_ = a;
        if (c.stop_requested_) uv_async_send(a);
    }
    /// After this returns no other thread touches the async handle.
    static void detach(server_control& c) {
        std::lock_guard lock(c.mutex_);
        c.async_ = nullptr;
    }
    static server_stats& stats(server_control& c) { return c.stats_; }
};

void server_control::stop() noexcept {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
    if (async_ != nullptr) uv_async_send(async_);
}

// --- the server ----------------------------------------------------------------

namespace {

struct connection;

struct server : server_core {
    server(uv_loop_t* loop, const server_options& o, server_stats& s, server_control* c)
        : server_core(loop, o, "offload_server"), stats(s), control(c) {}

    server_stats& stats;
    server_control* control;
    uv_async_t stop_async{};
    bool async_open = false;
    std::unordered_map<connection*, std::shared_ptr<connection>> conns;
};

struct reply {
    std::uint64_t seq = 0;
    bool ready = false;
    std::string text;                     // the answer, without '\n', once ready
    uvexec::future<std::uint64_t> work;   // the offloaded call, while pending
};

// Draining (connection_core) after an over-long line.
struct connection : connection_core, std::enable_shared_from_this<connection> {
    explicit connection(server& s) : srv(s) {}
    server& srv;
    std::size_t scanned = 0;   // in[0, scanned) has no '\n'
    std::deque<reply> replies;  // unanswered requests, in request order
    std::uint64_t next_seq = 0;
};

void connection_closed(server& srv) noexcept { --srv.stats.connections_open; }

/// Writes every ready answer at the front of the queue, in one uv_write.
void flush(connection& c) {
    std::string out;
    while (!c.replies.empty() && c.replies.front().ready) {
        out += c.replies.front().text;
        out += '\n';
        c.replies.pop_front();
    }
    if (!out.empty() && !c.write(std::move(out), &on_write<connection>)) close_connection(c);
}

void push_ready(connection& c, std::string text) {
    c.replies.push_back(reply{c.next_seq++, true, std::move(text), {}});
}

void on_work_done(server& srv, const std::weak_ptr<connection>& weak, std::uint64_t seq,
                  const uvexec::future<std::uint64_t>& done) {
    --srv.stats.work_pending;
    auto c = weak.lock();
    if (!c || c->closing) {
        ++srv.stats.results_dropped;  // the client left; nobody wants this answer
        return;
    }
    std::string text;
    try {
        text = fmt::format("{}", done.result());
    } catch (const std::exception& e) {
        ++srv.stats.error_replies;
        text = "error " + one_line(e.what());
    }
    // Answers leave only from the front and only when ready, so this
    // request's slot is still in the queue.
    reply& r = c->replies[static_cast<std::size_t>(seq - c->replies.front().seq)];
    r.ready = true;
    r.text = std::move(text);
    r.work = {};
    pump(*c);
}

template <class Submit>
void offload(connection& c, Submit submit) {
    server& srv = c.srv;
    uvexec::future<std::uint64_t> f;
    try {
        f = submit();
    } catch (const std::exception& e) {  // e.g. executor_shutdown_error, broken_executor_error
        ++srv.stats.error_replies;
        push_ready(c, "error " + one_line(e.what()));
        return;
    }
    ++srv.stats.work_submitted;
    ++srv.stats.work_pending;
    std::uint64_t seq = c.next_seq++;
    c.replies.push_back(reply{seq, false, {}, f});
    f.add_done_callback([&srv, weak = c.weak_from_this(), seq](uvexec::future<std::uint64_t> done) {
        on_work_done(srv, weak, seq, done);
    });
}

void handle_line(connection& c, std::string_view line) {
    server& srv = c.srv;
    ++srv.stats.requests;
    request req = parse_request(line);
    switch (req.what) {
        case request::kind::ping:
            push_ready(c, "pong");
            break;
        case request::kind::square:
            offload(c, [&] { return srv.lp->run_in_executor(*srv.threads, &square, req.arg); });
            break;
        case request::kind::fib:
            offload(c, [&] {
                return srv.lp->run_in_executor(*srv.processes, uvexec::fn<&fib>, static_cast<int>(req.arg));
            });
            break;
        case request::kind::invalid:
            ++srv.stats.error_replies;
            push_ready(c, "error " + req.error);
            break;
    }
}

void reject_long_line(connection& c) {
    ++c.srv.stats.requests;
    ++c.srv.stats.error_replies;
    push_ready(c, fmt::format("error line too long (more than {} bytes); closing the connection", c.srv.opts.max_line));
    c.draining = true;
}

/// Handles the complete lines received, as far as the per-connection limits allow.
void consume(connection& c) {
    const auto& opts = c.srv.opts;
    std::size_t pos = 0;  // start of the first unconsumed line
    while (!c.closing && !c.draining && c.replies.size() < opts.max_pending_per_connection && !c.write_backlogged()) {
        std::size_t nl = c.in.find('\n', std::max(pos, c.scanned));
        if (nl == std::string::npos) {
            c.scanned = c.in.size();
            if (c.in.size() - pos > opts.max_line) reject_long_line(c);
            break;
        }
        if (nl - pos > opts.max_line) {
            reject_long_line(c);
            break;
        }
        handle_line(c, std::string_view(c.in).substr(pos, nl - pos));
        pos = nl + 1;
    }
    if (c.draining) {
        c.in.clear();
        c.scanned = 0;
    } else if (pos != 0) {
        c.in.erase(0, pos);
        c.scanned = c.scanned > pos ? c.scanned - pos : 0;
    }
}

void on_connection(uv_stream_t* listener, int status) {
    auto& srv = server_of<server>(listener);
    if (status < 0) {
        srv.log("accept failed: {}", uv_strerror(status));
        return;
    }
    ++srv.stats.connections_open;
    ++srv.stats.connections_accepted;
    if (auto c = accept_connection<connection>(listener, srv)) update_reading(*c);
}

// --- shutdown ------------------------------------------------------------------

void close_control_handles(server& srv) {
    if (srv.async_open && srv.control) control_access::detach(*srv.control);
    close_if_open(as_handle(&srv.stop_async), srv.async_open);
    srv.close_handles();
}

/// Stop waiting for running work: uv_run returns, and finish() destroys the
/// uvexec::loop, which cancels what is left and kills the worker processes.
void force_stop(server& srv, std::string_view why) { srv.stop_waiting(why); }

void begin_shutdown(server& srv, std::string_view why) {
    if (srv.stopping) {
        force_stop(srv, fmt::format("{} during shutdown", why));
        return;
    }
    srv.stopping = true;
    srv.log("{}: shutting down ({} connection(s) open, {} call(s) pending)", why, srv.conns.size(),
            srv.stats.work_pending.load());
    // No new connections, no more stop requests (a signal now forces).
    if (srv.control) control_access::detach(*srv.control);
    close_if_open(as_handle(&srv.stop_async), srv.async_open);
    close_if_open(as_handle(&srv.listener), srv.listener_open);
    // Close the clients; their queued work is cancelled. The map is erased
    // from only in close callbacks, so iterating it here is safe.
    for (auto& entry : srv.conns) close_connection(*entry.second);

    srv.start_grace([](uv_timer_t* t) { force_stop(server_of<server>(t), "shutdown grace period over"); });
    // Wait, without blocking, for the calls already running; cancel the rest.
    srv.shutdown_pools(/*cancel_futures=*/true, [&srv] {
        srv.log("executors shut down; closing");
        close_control_handles(srv);  // nothing is left on the loop: uv_run returns
    });
}

void on_signal(uv_signal_t* h, int signum) {
    begin_shutdown(server_of<server>(h), signum == SIGINT ? "SIGINT" : "SIGTERM");
}

// --- start and finish ----------------------------------------------------------

/// Opens everything; returns false (having said why) if the server cannot start.
bool start(server& srv, ready_info& info) {
    if (!srv.start(&on_connection, &on_signal, info)) return false;
    if (uv_async_init(srv.uv, &srv.stop_async, [](uv_async_t* a) {
            begin_shutdown(server_of<server>(a), "stop requested");
        }) != 0) {
        fmt::print(stderr, "offload_server: uv_async_init failed\n");
        return false;
    }
    srv.stop_async.data = static_cast<server_core*>(&srv);
    srv.async_open = true;
    if (srv.control) control_access::attach(*srv.control, &srv.stop_async);
    return true;
}

/// Closes what is still open; then the uvexec::loop and the executors go.
/// After a forced stop that cancels the calls still running and kills the
/// workers; the caller's last uv_run then reaps them and finishes the closes.
void finish(server& srv) {
    close_control_handles(srv);
    for (auto& entry : srv.conns) close_connection(*entry.second);
    srv.release_uvexec();
}

}  // namespace

int run_offload_server(const server_options& opts, std::function<void(const ready_info&)> on_ready,
                       server_control* control) {
    if (opts.threads < 1 || opts.threads > 1024 || opts.processes < 1 || opts.processes > 1024 || opts.port < 0 ||
        opts.port > 65535 || opts.max_line < 1 || opts.max_pending_per_connection < 1) {
        fmt::print(stderr, "offload_server: invalid options\n");
        return 1;
    }
    return run_on_own_loop("offload_server", [&](uv_loop_t* uv) {
        server_stats own_stats;
        server_stats& stats = control ? control_access::stats(*control) : own_stats;
        int rc = 0;
        server srv(uv, opts, stats, control);
        ready_info info;
        if (start(srv, info)) {
            srv.log("listening on {}:{} ({} thread(s), {} worker process(es))", info.host, info.port, opts.threads,
                    opts.processes);
            if (on_ready) {
                try {
                    on_ready(info);
                } catch (const std::exception& e) {
                    fmt::print(stderr, "offload_server: the ready callback failed: {}\n", e.what());
                    rc = 1;
                    begin_shutdown(srv, "ready callback failed");
                }
            }
            uv_run(uv, UV_RUN_DEFAULT);
        } else {
            rc = 1;
        }
        finish(srv);
        uv_run(uv, UV_RUN_DEFAULT);  // close callbacks; calls and workers still coming back
        srv.log("stopped ({} connection(s) served, {} request(s), {} result(s) dropped)",
                stats.connections_accepted.load(), stats.requests.load(), stats.results_dropped.load());
        return rc;
    });
}

}  // namespace offload
