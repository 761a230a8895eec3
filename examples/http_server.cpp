// http_server — an HTTP/1.1 server written the way libuv programs are written
// (the program owns its uv_loop_t, uses uv_tcp_t / uv_listen / uv_read_start /
// uv_write and calls uv_run itself) that parses requests with http-parser
// (Debian's libhttp-parser-dev) and hands its blocking work to uvexec by
// borrowing that loop: `uvexec::loop lp(&uv)`.
//
//     $ build/examples/http_server --port 8080 --threads 2 --processes 1
//     listening on 127.0.0.1:8080
//     $ curl -s 127.0.0.1:8080/fib?n=30
//     832040
//
// Routes (GET only; any other method is answered 405 with `Allow: GET`):
//
//     /ping        200 "pong"                      answered at once, on the loop
//     /hash?n=N    200 hash_rounds(N), in decimal  on the thread pool, 0 <= N <= max_hash_rounds
//     /fib?n=N     200 fib(N)                      on the process pool, 0 <= N <= offload::max_fib_n (45)
//     /metrics     200 both pools' stats()         Prometheus text (uvexec::prometheus_text), pool="threads"|"processes"
//     any other path                 404
//     /hash or /fib while its pool holds --max-queue calls not yet started
//                                    503 with `Retry-After: 1` (uvexec::queue_full_error)
//     n missing, not an integer, or out of its bounds; a URL longer than
//     --max-line bytes                400, and the connection stays open
//     bytes http-parser rejects      400 with `Connection: close`, then the connection is closed
//
// Connections are kept alive (HTTP/1.1's default, or HTTP/1.0 with
// `Connection: keep-alive`) and requests may be pipelined: answers leave in
// request order, each as soon as it and those before it are done. A connection
// has at most --max-pending unanswered requests (64); beyond that the server
// stops reading from it until answers have left (TCP back-pressure), and also
// while more than 1 MiB of answers wait for a client that does not read. A
// client that closes its end (or resets) is gone: its queued work is cancelled
// and the results of its running work are dropped, as in offload_server.
//
// SIGTERM or SIGINT: the server stops accepting and stops reading new
// requests, answers the requests it has already read (their work still runs,
// `shutdown(cancel_futures=false)` on both pools), the last answer on each
// connection with `Connection: close`, closes idle connections at once and
// the others after their last answer, and exits 0 once every handle is closed
// and every worker process reaped. If that takes longer than --grace seconds
// (default 5), or a second signal arrives, it stops waiting: the connections
// are closed, their work cancelled, the worker processes killed and reaped,
// and it exits 0 as well (a /hash already running on a pool thread cannot be
// interrupted: the exit waits for it, at most about a second at its bound).
//
// The command line is offload_server's (same parser): --host, --port (0 picks
// a free port, printed as `listening on HOST:PORT`), --threads, --processes,
// --max-line (longest URL), --max-pending, --grace (here 5 s by default),
// --pool-nice (the nice value of the pools' threads and workers), --pool-cpus
// and --loop-cpus (CPU lists for the pools and for the loop thread), --max-queue
// (each pool's max_queue; 0, the default, is unbounded).
#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <http_parser.h>
#include <uv.h>

#include <fmt/format.h>

#include <uvexec/uvexec.hpp>

#include "offload_server_lib.hpp"
#include "server_core.hpp"

namespace {

using namespace std::chrono_literals;

// --- the work --------------------------------------------------------------------

/// Largest n accepted by /hash: 10^8 rounds take about a second of one CPU
/// (10^6, about 10 ms).
constexpr std::int64_t max_hash_rounds = 100'000'000;

/// n rounds of splitmix64 from 0: h = mix(h + 0x9e3779b97f4a7c15), each round
/// depending on the last, so the work is n sequential steps the optimiser
/// cannot skip. hash_rounds(0) = 0, hash_rounds(1) = 0xe220a8397b1dcdaf.
std::uint64_t hash_rounds(std::int64_t n) {
    std::uint64_t h = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        std::uint64_t z = h + 0x9e3779b97f4a7c15;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
        z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
        h = z ^ (z >> 31);
    }
    return h;
}

// --- what a route answers ----------------------------------------------------------

struct server;

/// An answer ready now.
struct answer {
    int status = 200;
    std::string body;
    std::string_view content_type = "text/plain; charset=utf-8";
    std::string_view extra_headers = {};  // complete lines, each ending in \r\n
};

/// A route answers at once, or with a call handed to a pool (200 with its result).
using route_result = std::variant<answer, uvexec::future<std::uint64_t>>;

/// One entry of the route table: an exact path and its handler, which gets
/// the query string (without '?', possibly empty). A handler may throw what
/// submitting to a pool throws; the request is then answered 500.
struct route {
    std::string_view path;
    route_result (*handle)(server& srv, std::string_view query);
};

answer bad_request(std::string why) { return {400, std::move(why) + "\n"}; }

std::string_view reason(int status) noexcept {
    switch (status) {
        case 200: return "OK";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 500: return "Internal Server Error";
        case 503: return "Service Unavailable";
        default: return "Unknown";
    }
}

/// The value of parameter `n` in a query string, if it is there once and is an
/// integer from lo to hi.
std::optional<std::int64_t> query_n(std::string_view query, std::int64_t lo, std::int64_t hi) {
    std::optional<std::int64_t> found;
    while (!query.empty()) {
        std::size_t amp = query.find('&');
        std::string_view param = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        if (!param.starts_with("n=")) continue;
        if (found) return std::nullopt;  // n given twice
        std::string_view text = param.substr(2);
        std::int64_t v = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (ec != std::errc{} || end != text.data() + text.size() || v < lo || v > hi) return std::nullopt;
        found = v;
    }
    return found;
}

// --- the server --------------------------------------------------------------------

struct connection;

struct server : offload::server_core {
    server(uv_loop_t* loop, const offload::server_options& o) : server_core(loop, o, "http_server") {}

    http_parser_settings parser_settings{};
    std::unordered_map<connection*, std::shared_ptr<connection>> conns;  // owned until their close callback
};

route_result ping_route(server&, std::string_view) { return answer{200, "pong\n"}; }

route_result metrics_route(server& srv, std::string_view) {
    const uvexec::executor_stats threads = srv.threads->stats(), processes = srv.processes->stats();
    return answer{200, uvexec::prometheus_text({{"threads", &threads}, {"processes", &processes}}),
                  "text/plain; version=0.0.4; charset=utf-8"};
}

route_result hash_route(server& srv, std::string_view query) {
    auto n = query_n(query, 0, max_hash_rounds);
    if (!n) return bad_request(fmt::format("/hash needs n, an integer from 0 to {}", max_hash_rounds));
    return srv.lp->run_in_executor(*srv.threads, &hash_rounds, *n);
}

route_result fib_route(server& srv, std::string_view query) {
    auto n = query_n(query, 0, offload::max_fib_n);
    if (!n) return bad_request(fmt::format("/fib needs n, an integer from 0 to {}", offload::max_fib_n));
    return srv.lp->run_in_executor(*srv.processes, uvexec::fn<&offload::fib>, static_cast<int>(*n));
}

constexpr std::array routes{
    route{"/ping", &ping_route},
    route{"/hash", &hash_route},
    route{"/fib", &fib_route},
    route{"/metrics", &metrics_route},
};

/// A request's answer, in request order; `ready` once it can be written.
struct reply {
    std::uint64_t seq = 0;
    bool ready = false;
    answer what;
    uvexec::future<std::uint64_t> work;  // the offloaded call, while pending
    bool http10 = false;                 // the request was HTTP/1.0 (keep-alive must be said)
};

struct connection : offload::connection_core, std::enable_shared_from_this<connection> {
    explicit connection(server& s) : srv(s) {}
    server& srv;
    http_parser parser{};
    std::string url;             // the current request's URL, while it is parsed
    bool url_too_long = false;
    std::deque<reply> replies;  // unanswered requests, in request order
    std::uint64_t next_seq = 0;
    // Draining (connection_core) after the last request: Connection: close,
    // an unparseable request, or shutdown.
};

using offload::as_handle;
using offload::close_if_open;

void maybe_finished(server& srv);
void connection_closed(server& srv) { maybe_finished(srv); }

void append_response(std::string& out, const answer& a, bool close, bool http10_keep_alive) {
    fmt::format_to(std::back_inserter(out), "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}{}\r\n",
                   a.status, reason(a.status), a.content_type, a.body.size(), a.extra_headers,
                   close ? "Connection: close\r\n" : http10_keep_alive ? "Connection: keep-alive\r\n" : "");
    out += a.body;
}

/// Writes every ready answer at the front of the queue, in one uv_write.
void flush(connection& c) {
    std::string out;
    while (!c.replies.empty() && c.replies.front().ready) {
        bool last = c.draining && c.replies.size() == 1;
        append_response(out, c.replies.front().what, last, c.replies.front().http10);
        c.replies.pop_front();
    }
    if (!out.empty() && !c.write(std::move(out), &offload::on_write<connection>)) close_connection(c);
}

bool is_http10(const connection& c) noexcept { return c.parser.http_major == 1 && c.parser.http_minor == 0; }

void push_ready(connection& c, answer a) {
    c.replies.push_back(reply{c.next_seq++, true, std::move(a), {}, is_http10(c)});
}

void on_work_done(const std::weak_ptr<connection>& weak, std::uint64_t seq, const uvexec::future<std::uint64_t>& done) {
    auto c = weak.lock();
    if (!c || c->closing) return;  // the client left; nobody wants this answer
    answer a;
    try {
        a.body = fmt::format("{}\n", done.result());
    } catch (const std::exception& e) {  // e.g. worker_died_error
        a = answer{500, fmt::format("{}\n", e.what())};
    }
    // Answers leave only from the front and only when ready, so this
    // request's slot is still in the queue.
    reply& r = c->replies[static_cast<std::size_t>(seq - c->replies.front().seq)];
    r.ready = true;
    r.what = std::move(a);
    r.work = {};
    pump(*c);
}

/// Answers one parsed request (from on_message_complete).
void handle_request(connection& c) {
    if (c.parser.method != HTTP_GET) {
        push_ready(c, answer{405, "only GET is served\n", "text/plain; charset=utf-8", "Allow: GET\r\n"});
        return;
    }
    http_parser_url u;
    http_parser_url_init(&u);
    if (c.url_too_long || http_parser_parse_url(c.url.data(), c.url.size(), 0, &u) != 0 ||
        (u.field_set & (1 << UF_PATH)) == 0) {
        push_ready(c, bad_request(fmt::format("bad URL (at most {} bytes)", c.srv.opts.max_line)));
        return;
    }
    auto field = [&](http_parser_url_fields f) {
        if ((u.field_set & (1 << f)) == 0) return std::string_view{};
        return std::string_view(c.url).substr(u.field_data[f].off, u.field_data[f].len);
    };
    std::string_view path = field(UF_PATH);
    auto r = std::find_if(routes.begin(), routes.end(), [&](const route& rt) { return rt.path == path; });
    if (r == routes.end()) {
        push_ready(c, answer{404, "no such route (try /ping, /hash?n=N, /fib?n=N or /metrics)\n"});
        return;
    }
    route_result result;
    try {
        result = r->handle(c.srv, field(UF_QUERY));
    } catch (const uvexec::queue_full_error&) {  // the pool holds --max-queue calls: come back later
        push_ready(c, answer{503, "the server is busy; try again\n", "text/plain; charset=utf-8", "Retry-After: 1\r\n"});
        return;
    } catch (const std::exception& e) {  // submitting failed: broken_executor_error, ...
        push_ready(c, answer{500, fmt::format("{}\n", e.what())});
        return;
    }
    if (auto* a = std::get_if<answer>(&result)) {
        push_ready(c, std::move(*a));
        return;
    }
    auto& f = std::get<uvexec::future<std::uint64_t>>(result);
    std::uint64_t seq = c.next_seq++;
    c.replies.push_back(reply{seq, false, {}, f, is_http10(c)});
    f.add_done_callback(
        [weak = c.weak_from_this(), seq](uvexec::future<std::uint64_t> done) { on_work_done(weak, seq, done); });
}

// http-parser's callbacks; parser.data is the connection.
int on_message_begin(http_parser* p) {
    auto& c = *static_cast<connection*>(p->data);
    c.url.clear();
    c.url_too_long = false;
    return 0;
}

int on_url(http_parser* p, const char* at, std::size_t len) {
    auto& c = *static_cast<connection*>(p->data);
    if (c.url.size() + len > c.srv.opts.max_line)
        c.url_too_long = true;
    else
        c.url.append(at, len);
    return 0;
}

/// One request at a time: pausing returns from http_parser_execute, so that
/// consume() checks the connection's limits before the next one.
int on_message_complete(http_parser* p) {
    auto& c = *static_cast<connection*>(p->data);
    handle_request(c);
    if (!http_should_keep_alive(p) || p->upgrade) c.draining = true;
    http_parser_pause(p, 1);
    return 0;
}

/// Parses the bytes received, one request at a time, as far as the limits allow.
void consume(connection& c) {
    while (!c.closing && !c.draining && !c.in.empty() && c.replies.size() < c.srv.opts.max_pending_per_connection &&
           !c.write_backlogged()) {
        if (HTTP_PARSER_ERRNO(&c.parser) == HPE_PAUSED) http_parser_pause(&c.parser, 0);
        std::size_t used = http_parser_execute(&c.parser, &c.srv.parser_settings, c.in.data(), c.in.size());
        c.in.erase(0, used);
        auto err = HTTP_PARSER_ERRNO(&c.parser);
        if (err == HPE_PAUSED) continue;
        if (err != HPE_OK) {
            push_ready(c, bad_request(fmt::format("unparseable request: {}", http_errno_description(err))));
            c.draining = true;
        }
        break;  // everything received was parsed
    }
    if (c.draining) c.in.clear();
}

void on_connection(uv_stream_t* listener, int status) {
    auto& srv = offload::server_of<server>(listener);
    if (status < 0) {
        srv.log("accept failed: {}", uv_strerror(status));
        return;
    }
    auto c = offload::accept_connection<connection>(listener, srv);
    if (!c) return;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c.get();
    update_reading(*c);
}

// --- shutdown ------------------------------------------------------------------------

/// After a signal: once every connection is closed and both pools have shut
/// down, nothing of ours is left on the loop and uv_run returns.
void maybe_finished(server& srv) {
    if (srv.stopping && !srv.forced && srv.executors_running == 0 && srv.conns.empty()) {
        srv.log("all answered and both pools shut down; closing");
        srv.close_handles();
    }
}

/// Stops waiting: closes the connections (cancelling their work) and returns
/// from uv_run; finish() then destroys the uvexec::loop, which cancels what is
/// left and kills the worker processes.
void force_stop(server& srv, std::string_view why) {
    if (srv.stop_waiting(why))
        for (auto& entry : srv.conns) close_connection(*entry.second);
}

void begin_shutdown(server& srv, std::string_view why) {
    if (srv.stopping) {
        force_stop(srv, fmt::format("{} during shutdown", why));
        return;
    }
    srv.stopping = true;
    srv.log("{}: shutting down ({} connection(s) open)", why, srv.conns.size());
    close_if_open(as_handle(&srv.listener), srv.listener_open);
    // Read no more requests; answer those read, then close. Connections are
    // erased from the map only in close callbacks, so iterating is safe.
    for (auto& entry : srv.conns) {
        entry.second->draining = true;
        pump(*entry.second);
    }
    srv.start_grace([](uv_timer_t* t) { force_stop(offload::server_of<server>(t), "shutdown grace period over"); });
    // Accepted work, queued or running, runs to the end.
    srv.shutdown_pools(/*cancel_futures=*/false, [&srv] { maybe_finished(srv); });
}

void on_signal(uv_signal_t* h, int signum) {
    begin_shutdown(offload::server_of<server>(h), signum == SIGINT ? "SIGINT" : "SIGTERM");
}

// --- start and finish ------------------------------------------------------------------

bool start(server& srv, offload::ready_info& info) {
    srv.parser_settings.on_message_begin = &on_message_begin;
    srv.parser_settings.on_url = &on_url;
    srv.parser_settings.on_message_complete = &on_message_complete;
    return srv.start(&on_connection, &on_signal, info);
}

/// Closes what is still open; then the uvexec::loop and the pools go (after a
/// forced stop that cancels the calls still running and kills the workers; the
/// caller's last uv_run reaps them and finishes the closes).
void finish(server& srv) {
    srv.close_handles();
    for (auto& entry : srv.conns) close_connection(*entry.second);
    srv.release_uvexec();
}

int run(const offload::server_options& opts) {
    return offload::run_on_own_loop("http_server", [&](uv_loop_t* uv) {
        int rc = 0;
        server srv(uv, opts);
        offload::ready_info info;
        if (start(srv, info)) {
            srv.log("{} thread(s), {} worker process(es)", opts.threads, opts.processes);
            bool v6 = info.host.find(':') != std::string::npos;
            std::printf(v6 ? "listening on [%s]:%d\n" : "listening on %s:%d\n", info.host.c_str(), info.port);
            std::fflush(stdout);
            uv_run(uv, UV_RUN_DEFAULT);
        } else {
            rc = 1;
        }
        finish(srv);
        uv_run(uv, UV_RUN_DEFAULT);  // close callbacks; calls and workers still coming back
        srv.log("stopped");
        return rc;
    });
}

std::string usage(std::string_view program) {
    return offload::usage(program, {"/hash", "/fib", "URL", 5,
                                    fmt::format("Routes (GET): /ping, /hash?n=N (0 <= N <= {}), /fib?n=N (0 <= N <= {}).",
                                                max_hash_rounds, offload::max_fib_n)});
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);  // serves as a /fib worker when started as one

    offload::server_options options;
    options.shutdown_grace = 5s;
    for (int i = 1; i < argc; ++i) {
        if (std::string_view(argv[i]) == "--help" || std::string_view(argv[i]) == "-h") {
            std::fputs(usage(argv[0]).c_str(), stdout);
            return 0;
        }
    }
    try {
        offload::parse_command_line(argc, argv, options);
    } catch (const std::invalid_argument& e) {
        fmt::print(stderr, "{}: {}\n{}", argv[0], e.what(), usage(argv[0]));
        return 2;
    }
    return run(options);
}
