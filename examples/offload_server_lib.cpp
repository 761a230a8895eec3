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

std::string usage(std::string_view program) {
    return fmt::format(
        "usage: {} [--host ADDR] [--port N] [--threads N] [--processes N] [--max-line BYTES] [--grace SECONDS]\n"
        "  --host ADDR        address to listen on (default 127.0.0.1)\n"
        "  --port N           TCP port, 0 picks a free one (default 7000)\n"
        "  --threads N        thread pool size for `square` (default 4)\n"
        "  --processes N      worker processes for `fib` (default 2)\n"
        "  --max-line BYTES   longest request line accepted (default 4096)\n"
        "  --grace SECONDS    on SIGINT/SIGTERM, how long running work may take before it is\n"
        "                     abandoned and the workers are killed (default 10; 0 waits forever)\n"
        "Protocol: one request per line: `ping`, `square N` (|N| <= {}), `fib N` (0 <= N <= {}).\n",
        program, max_square_abs, max_fib_n);
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
        } else if (name == "--grace") {
            out.shutdown_grace = std::chrono::seconds(number(name, take(), 0, 86400));
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

/// Bytes of answers waiting in libuv for a client before we stop reading from it.
constexpr std::size_t write_queue_limit = 1u << 20;

struct connection;

struct server {
    server(uv_loop_t* loop, const server_options& o, server_stats& s, server_control* c)
        : uv(loop), opts(o), stats(s), control(c) {}
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    uv_loop_t* uv;
    const server_options& opts;
    server_stats& stats;
    server_control* control;

    // Executors first, then the loop borrowing `uv`; torn down in finish().
    std::optional<uvexec::thread_pool_executor> threads;
    std::optional<uvexec::process_pool_executor> processes;
    std::optional<uvexec::loop> lp;

    uv_tcp_t listener{};
    uv_signal_t sigint{}, sigterm{};
    uv_async_t stop_async{};
    uv_timer_t grace{};
    bool listener_open = false, sigint_open = false, sigterm_open = false, async_open = false, grace_open = false;

    std::unordered_map<connection*, std::shared_ptr<connection>> conns;
    bool stopping = false;
    bool forced = false;
    int executors_running = 0;
    std::array<char, 64 * 1024> read_buffer{};

    template <class... A>
    void log(fmt::format_string<A...> f, A&&... a) const {
        if (opts.verbose) fmt::print(stderr, "offload_server: {}\n", fmt::format(f, std::forward<A>(a)...));
    }
};

struct reply {
    std::uint64_t seq = 0;
    bool ready = false;
    std::string text;                     // the answer, without '\n', once ready
    uvexec::future<std::uint64_t> work;   // the offloaded call, while pending
};

struct connection : std::enable_shared_from_this<connection> {
    explicit connection(server& s) : srv(s) {}
    server& srv;
    uv_tcp_t tcp{};
    std::string in;            // received bytes not yet consumed
    std::size_t scanned = 0;   // in[0, scanned) has no '\n'
    std::deque<reply> replies;  // unanswered requests, in request order
    std::uint64_t next_seq = 0;
    std::size_t writes_in_flight = 0;
    bool reading = false;
    bool pumping = false;      // pump() is on the stack
    bool draining = false;     // over-long line: answer what is owed, then close
    bool closing = false;
};

struct write_request {
    uv_write_t req{};
    std::string bytes;
};

uv_handle_t* as_handle(auto* h) noexcept { return reinterpret_cast<uv_handle_t*>(h); }
uv_stream_t* as_stream(uv_tcp_t* h) noexcept { return reinterpret_cast<uv_stream_t*>(h); }

void close_if_open(uv_handle_t* h, bool& open) noexcept {
    if (!open) return;
    open = false;
    uv_close(h, nullptr);
}

void pump(connection& c);

/// The client is gone (or must go): cancel its unanswered work and close.
void close_connection(connection& c) {
    if (c.closing) return;
    c.closing = true;
    // cancel() completes each future at once; its done-callback runs now,
    // sees `closing` and drops it. Queued calls never run; running ones
    // finish in their thread or worker and their results are discarded.
    auto owed = std::move(c.replies);
    c.replies.clear();
    for (auto& r : owed)
        if (r.work.valid()) r.work.cancel();
    uv_close(as_handle(&c.tcp), [](uv_handle_t* h) {
        auto* conn = static_cast<connection*>(h->data);
        server& srv = conn->srv;
        --srv.stats.connections_open;
        srv.conns.erase(conn);  // frees the connection
    });
}

void on_write(uv_write_t* req, int status) {
    std::unique_ptr<write_request> w(static_cast<write_request*>(req->data));
    auto& c = *static_cast<connection*>(req->handle->data);
    --c.writes_in_flight;
    if (c.closing) return;
    if (status < 0) {
        close_connection(c);  // the client went away under our answers
        return;
    }
    pump(c);
}

/// Writes every ready answer at the front of the queue, in one uv_write.
void flush(connection& c) {
    std::string out;
    while (!c.replies.empty() && c.replies.front().ready) {
        out += c.replies.front().text;
        out += '\n';
        c.replies.pop_front();
    }
    if (out.empty()) return;
    auto w = std::make_unique<write_request>();
    w->bytes = std::move(out);
    w->req.data = w.get();
    uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
    if (uv_write(&w->req, as_stream(&c.tcp), &buf, 1, &on_write) != 0) {
        close_connection(c);
        return;
    }
    w.release();  // freed by on_write
    ++c.writes_in_flight;
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

bool write_backlogged(connection& c) {
    return uv_stream_get_write_queue_size(as_stream(&c.tcp)) >= write_queue_limit;
}

void reject_long_line(connection& c) {
    ++c.srv.stats.requests;
    ++c.srv.stats.error_replies;
    push_ready(c, fmt::format("error line too long (more than {} bytes); closing the connection", c.srv.opts.max_line));
    c.draining = true;
}

/// Handles the complete lines received, as far as the per-connection limits allow.
void consume_lines(connection& c) {
    const auto& opts = c.srv.opts;
    std::size_t pos = 0;  // start of the first unconsumed line
    while (!c.closing && !c.draining && c.replies.size() < opts.max_pending_per_connection && !write_backlogged(c)) {
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

void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) {
    auto& srv = static_cast<connection*>(h->data)->srv;
    *buf = uv_buf_init(srv.read_buffer.data(), static_cast<unsigned>(srv.read_buffer.size()));
}

void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto& c = *static_cast<connection*>(s->data);
    if (nread < 0) {  // UV_EOF, ECONNRESET, ...: the client is gone
        close_connection(c);
        return;
    }
    if (nread == 0 || c.closing || c.draining) return;
    c.in.append(buf->base, static_cast<std::size_t>(nread));
    pump(c);
}

/// Reads while the connection has room for more requests and its client
/// keeps reading its answers; otherwise leaves the bytes in the kernel. A
/// draining connection reads and discards, so that no unread bytes turn its
/// close into a reset that could destroy the last answers in flight.
void update_reading(connection& c) {
    bool want = !c.closing && (c.draining || (c.replies.size() < c.srv.opts.max_pending_per_connection &&
                                              !write_backlogged(c)));
    if (want && !c.reading) {
        if (uv_read_start(as_stream(&c.tcp), &on_alloc, &on_read) != 0) {
            close_connection(c);
            return;
        }
        c.reading = true;
    } else if (!want && c.reading) {
        uv_read_stop(as_stream(&c.tcp));
        c.reading = false;
    }
}

/// Handles what can be handled, writes what is ready, and adjusts reading.
/// Not reentrant: a completion that arrives while it runs (a submission that
/// fails at once) only marks its answer ready, and this loop writes it.
void pump(connection& c) {
    if (c.closing || c.pumping) return;
    c.pumping = true;
    for (;;) {
        consume_lines(c);
        std::size_t before = c.replies.size();
        flush(c);
        if (c.closing) break;
        if (c.replies.size() == before || c.draining) break;  // no room was freed
    }
    c.pumping = false;
    if (c.closing) return;
    if (c.draining && c.replies.empty() && c.writes_in_flight == 0) {
        close_connection(c);
        return;
    }
    update_reading(c);
}

void on_connection(uv_stream_t* listener, int status) {
    auto& srv = *static_cast<server*>(listener->data);
    if (status < 0) {
        srv.log("accept failed: {}", uv_strerror(status));
        return;
    }
    auto c = std::make_shared<connection>(srv);
    if (int r = uv_tcp_init(srv.uv, &c->tcp); r != 0) {
        srv.log("uv_tcp_init failed: {}", uv_strerror(r));
        return;
    }
    c->tcp.data = c.get();
    srv.conns.emplace(c.get(), c);  // owned until its handle's close callback
    ++srv.stats.connections_open;
    ++srv.stats.connections_accepted;
    if (uv_accept(listener, as_stream(&c->tcp)) != 0) {
        close_connection(*c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    update_reading(*c);
}

// --- shutdown ------------------------------------------------------------------

void close_control_handles(server& srv) {
    if (srv.async_open && srv.control) control_access::detach(*srv.control);
    close_if_open(as_handle(&srv.stop_async), srv.async_open);
    close_if_open(as_handle(&srv.listener), srv.listener_open);
    close_if_open(as_handle(&srv.sigint), srv.sigint_open);
    close_if_open(as_handle(&srv.sigterm), srv.sigterm_open);
    close_if_open(as_handle(&srv.grace), srv.grace_open);
}

/// Stop waiting for running work: uv_run returns, and finish() destroys the
/// uvexec::loop, which cancels what is left and kills the worker processes.
void force_stop(server& srv, std::string_view why) {
    if (srv.forced) return;
    srv.forced = true;
    srv.log("{}: no longer waiting for running work", why);
    uv_stop(srv.uv);
}

void executors_finished(server& srv) {
    srv.log("executors shut down; closing");
    close_control_handles(srv);  // nothing is left on the loop: uv_run returns
}

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

    if (srv.opts.shutdown_grace.count() > 0) {
        uv_timer_start(
            &srv.grace, [](uv_timer_t* t) { force_stop(*static_cast<server*>(t->data), "shutdown grace period over"); },
            static_cast<std::uint64_t>(srv.opts.shutdown_grace.count()), 0);
    }
    // Wait, without blocking, for the calls already running; cancel the rest.
    srv.executors_running = 2;
    auto one_done = [&srv](const uvexec::future<void>&) {
        if (--srv.executors_running == 0) executors_finished(srv);
    };
    srv.threads->shutdown(/*cancel_futures=*/true).add_done_callback(one_done);
    srv.processes->shutdown(/*cancel_futures=*/true).add_done_callback(one_done);
}

void on_signal(uv_signal_t* h, int signum) {
    begin_shutdown(*static_cast<server*>(h->data), signum == SIGINT ? "SIGINT" : "SIGTERM");
}

// --- start and finish ----------------------------------------------------------

int resolve(const server_options& opts, sockaddr_storage& addr) {
    if (opts.host.find(':') != std::string::npos)
        return uv_ip6_addr(opts.host.c_str(), opts.port, reinterpret_cast<sockaddr_in6*>(&addr));
    return uv_ip4_addr(opts.host.c_str(), opts.port, reinterpret_cast<sockaddr_in*>(&addr));
}

/// Opens everything; returns false (having said why) if the server cannot start.
bool start(server& srv, ready_info& info) {
    const auto& opts = srv.opts;
    try {
        srv.threads.emplace(uvexec::thread_pool_options{.max_workers = opts.threads});
        // One call per worker at a time: a fib waiting for a busy worker stays
        // in the pool's queue, where cancelling it (its client left) means it
        // never runs. (The default of 2 would send it to the busy worker, and a
        // call already sent runs even when cancelled.) Requests and answers are
        // a few bytes, so frames are capped small.
        srv.processes.emplace(uvexec::process_pool_options{
            .max_workers = opts.processes, .max_frame_size = 64 * 1024, .max_in_flight_per_worker = 1});
        srv.lp.emplace(srv.uv);
    } catch (const std::exception& e) {
        fmt::print(stderr, "offload_server: cannot start: {}\n", e.what());
        return false;
    }

    sockaddr_storage addr{};
    if (int r = resolve(opts, addr); r != 0) {
        fmt::print(stderr, "offload_server: bad listen address \"{}\": {}\n", opts.host, uv_strerror(r));
        return false;
    }
    uv_tcp_init(srv.uv, &srv.listener);
    srv.listener.data = &srv;
    srv.listener_open = true;
    int r = uv_tcp_bind(&srv.listener, reinterpret_cast<const sockaddr*>(&addr), 0);
    if (r == 0) r = uv_listen(as_stream(&srv.listener), SOMAXCONN, &on_connection);
    if (r != 0) {
        fmt::print(stderr, "offload_server: cannot listen on {}:{}: {}\n", opts.host, opts.port, uv_strerror(r));
        return false;
    }
    sockaddr_storage bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(&srv.listener, reinterpret_cast<sockaddr*>(&bound), &len);
    char name[INET6_ADDRSTRLEN] = {};
    uv_ip_name(reinterpret_cast<const sockaddr*>(&bound), name, sizeof(name));
    info.host = name;
    info.port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                            : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

    uv_timer_init(srv.uv, &srv.grace);
    srv.grace.data = &srv;
    srv.grace_open = true;
    if (opts.handle_signals) {
        uv_signal_init(srv.uv, &srv.sigint);
        srv.sigint.data = &srv;
        srv.sigint_open = true;
        uv_signal_init(srv.uv, &srv.sigterm);
        srv.sigterm.data = &srv;
        srv.sigterm_open = true;
        if (uv_signal_start(&srv.sigint, &on_signal, SIGINT) != 0 ||
            uv_signal_start(&srv.sigterm, &on_signal, SIGTERM) != 0) {
            fmt::print(stderr, "offload_server: cannot watch SIGINT/SIGTERM\n");
            return false;
        }
    }
    if (uv_async_init(srv.uv, &srv.stop_async, [](uv_async_t* a) {
            begin_shutdown(*static_cast<server*>(a->data), "stop requested");
        }) != 0) {
        fmt::print(stderr, "offload_server: uv_async_init failed\n");
        return false;
    }
    srv.stop_async.data = &srv;
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
    srv.lp.reset();
    srv.processes.reset();
    srv.threads.reset();
}

void report_open_handles(uv_loop_t* uv) {
    uv_walk(
        uv,
        [](uv_handle_t* h, void*) {
            fmt::print(stderr, "offload_server:   still open: {} handle{}\n", uv_handle_type_name(uv_handle_get_type(h)),
                       uv_is_closing(h) ? " (closing)" : "");
        },
        nullptr);
}

}  // namespace

int run_offload_server(const server_options& opts, std::function<void(const ready_info&)> on_ready,
                       server_control* control) {
    if (opts.threads < 1 || opts.threads > 1024 || opts.processes < 1 || opts.processes > 1024 || opts.port < 0 ||
        opts.port > 65535 || opts.max_line < 1 || opts.max_pending_per_connection < 1) {
        fmt::print(stderr, "offload_server: invalid options\n");
        return 1;
    }
    // A write to a client that vanished must fail with EPIPE, not kill us.
    std::signal(SIGPIPE, SIG_IGN);

    uv_loop_t uv;
    if (int r = uv_loop_init(&uv); r != 0) {
        fmt::print(stderr, "offload_server: uv_loop_init: {}\n", uv_strerror(r));
        return 1;
    }
    server_stats own_stats;
    server_stats& stats = control ? control_access::stats(*control) : own_stats;
    int rc = 0;
    {
        server srv(&uv, opts, stats, control);
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
            uv_run(&uv, UV_RUN_DEFAULT);
        } else {
            rc = 1;
        }
        finish(srv);
        uv_run(&uv, UV_RUN_DEFAULT);  // close callbacks; calls and workers still coming back
        srv.log("stopped ({} connection(s) served, {} request(s), {} result(s) dropped)",
                stats.connections_accepted.load(), stats.requests.load(), stats.results_dropped.load());
    }
    if (int r = uv_loop_close(&uv); r != 0) {
        fmt::print(stderr, "offload_server: uv_loop_close: {}\n", uv_strerror(r));
        report_open_handles(&uv);
        return 1;
    }
    return rc;
}

}  // namespace offload
