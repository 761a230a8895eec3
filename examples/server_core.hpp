// server_core — what the two example servers (offload_server's line protocol
// and http_server's HTTP/1.1) share: the libuv plumbing of a TCP server that
// borrows the program's loop for uvexec. Each server keeps its protocol, its
// connections' state and its shutdown policy; this holds the rest:
//
//  - server_core: the two pools and the uvexec::loop borrowing the program's
//    uv_loop_t, the listener, SIGINT/SIGTERM, the shutdown grace timer and a
//    read buffer. A server derives from it; every handle's data is the
//    server_core, so callbacks get the server back with server_of<S>(handle).
//  - connection_core: a client's uv_tcp_t and its write and read state, with
//    the write path (one uv_write per batch, the request owning its bytes),
//    starting and stopping reads, and accepting.
//  - run_on_own_loop: the uv_loop_init ... uv_loop_close frame of a run.
//
// Everything here runs on the loop thread.
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <uv.h>

#include <fmt/format.h>

#include <uvexec/loop.hpp>
#include <uvexec/process_pool_executor.hpp>
#include <uvexec/thread_pool_executor.hpp>

#include "offload_server_lib.hpp"

namespace offload {

inline uv_handle_t* as_handle(auto* h) noexcept { return reinterpret_cast<uv_handle_t*>(h); }
inline uv_stream_t* as_stream(uv_tcp_t* h) noexcept { return reinterpret_cast<uv_stream_t*>(h); }

/// uv_close(h) once: clears `open` first.
void close_if_open(uv_handle_t* h, bool& open) noexcept;

/// Binds `listener` (initialised on its loop) to host:port and listens with
/// on_connection; fills bound_to with the address actually bound. On failure
/// says why on stderr, prefixed with `program`, and returns false.
bool listen_tcp(uv_tcp_t& listener, const std::string& host, int port, uv_connection_cb on_connection,
                std::string_view program, ready_info& bound_to);

/// Lists on stderr the handles still open on `uv` (after uv_loop_close failed).
void report_open_handles(uv_loop_t* uv, std::string_view program);

struct server_core {
    server_core(uv_loop_t* loop, const server_options& o, std::string_view prog) : uv(loop), opts(o), program(prog) {}
    server_core(const server_core&) = delete;
    server_core& operator=(const server_core&) = delete;

    uv_loop_t* uv;
    const server_options& opts;
    std::string_view program;  // the prefix of every message on stderr

    // The pools, then the loop borrowing `uv`; released by release_uvexec().
    std::optional<uvexec::thread_pool_executor> threads;
    std::optional<uvexec::process_pool_executor> processes;
    std::optional<uvexec::loop> lp;

    uv_tcp_t listener{};
    uv_signal_t sigint{}, sigterm{};
    uv_timer_t grace{};
    bool listener_open = false, sigint_open = false, sigterm_open = false, grace_open = false;
    bool stopping = false;      // shutdown began
    bool forced = false;        // shutdown stopped waiting for running work
    int executors_running = 0;  // pools whose shutdown has not completed
    std::array<char, 64 * 1024> read_buffer{};

    /// Creates the pools (the process pool sends one call per worker at a
    /// time, so that a call waiting for a busy worker stays cancellable in
    /// the pool's queue; both at opts.pool_nice) and the uvexec::loop, listens, and watches SIGINT and
    /// SIGTERM if opts.handle_signals. Returns false, having said why, if the
    /// server cannot start.
    bool start(uv_connection_cb on_connection, uv_signal_cb on_signal, ready_info& bound_to);
    /// Starts the grace timer (unless opts.shutdown_grace is 0).
    void start_grace(uv_timer_cb on_grace_over);
    /// shutdown(cancel_futures) on both pools, without blocking; all_done runs
    /// once both have completed (every accepted call finished, every worker
    /// process reaped).
    void shutdown_pools(bool cancel_futures, std::function<void()> all_done);
    /// Stops waiting for running work: uv_run returns, and release_uvexec()
    /// then cancels what is left and kills the worker processes. False if
    /// that was done already.
    bool stop_waiting(std::string_view why);
    /// Closes the listener, the signal handles and the timer.
    void close_handles();
    /// Destroys the uvexec::loop (it cancels what is left and kills the worker
    /// processes) and the pools; the caller's next uv_run finishes their closes.
    void release_uvexec();

    template <class... A>
    void log(fmt::format_string<A...> f, A&&... a) const {
        if (opts.verbose) fmt::print(stderr, "{}: {}\n", program, fmt::format(f, std::forward<A>(a)...));
    }
};

/// The server whose handle `h` is (its data is the server_core).
template <class Server>
Server& server_of(const auto* h) noexcept {
    return static_cast<Server&>(*static_cast<server_core*>(h->data));
}

/// Bytes of answers waiting in libuv for a client before a server stops reading from it.
inline constexpr std::size_t write_queue_limit = 1u << 20;

struct connection_core {
    uv_tcp_t tcp{};        // data: the connection (the derived object)
    std::string in;        // received bytes not yet consumed
    std::size_t writes_in_flight = 0;
    bool reading = false;
    bool pumping = false;  // pump() is on the stack
    bool draining = false; // no more requests are read: answer what is owed, then close
    bool closing = false;

    /// Writes `bytes` in one uv_write that owns them; on_write must call
    /// finish_write first. Returns false if uv_write failed (nothing in flight).
    bool write(std::string bytes, uv_write_cb on_write);
    /// More than write_queue_limit bytes wait to be written.
    bool write_backlogged() noexcept;
    /// Starts or stops reading as `want` says; false if uv_read_start failed.
    bool set_reading(bool want, uv_alloc_cb on_alloc, uv_read_cb on_read);
};

/// Frees a write request made by connection_core::write; returns its stream.
uv_stream_t* free_write(uv_write_t* req) noexcept;

/// In a write callback: frees the request and its bytes, counts the write as
/// done, and returns its connection.
template <class Connection>
Connection& finish_write(uv_write_t* req) noexcept {
    auto& c = *static_cast<Connection*>(free_write(req)->data);
    --c.writes_in_flight;
    return c;
}

/// The read buffer of a connection's server (both servers read into one
/// buffer and copy what they keep).
template <class Connection>
void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) {
    auto& srv = static_cast<Connection*>(h->data)->srv;
    *buf = uv_buf_init(srv.read_buffer.data(), static_cast<unsigned>(srv.read_buffer.size()));
}

// --- the read/write cycle -------------------------------------------------------
//
// Both servers' connections go through the same cycle. A Connection derives
// from connection_core and has `srv` (its server, with a map `conns` from
// Connection* to the shared_ptr owning it) and `replies` (a std::deque of its
// unanswered requests in order, each with a uvexec::future `work`, valid while
// the request waits for a pool); and these, found by argument-dependent lookup
// in the server's own code:
//   consume(c)               handles the requests in c.in as far as the limits
//                            allow (stopping at opts.max_pending_per_connection
//                            unanswered ones, or while c.write_backlogged())
//   flush(c)                 writes the answers ready at the front, with
//                            c.write(..., &on_write<Connection>)
//   connection_closed(srv)   after a connection's handle closed and it was freed

/// The client is gone (or must go): cancel its unanswered work and close.
/// cancel() completes each future at once; its done-callback runs now, sees
/// `closing` and drops it. Queued calls never run; running ones finish in
/// their thread or worker and their results are discarded. The connection is
/// freed in its handle's close callback, which libuv runs after the callbacks
/// of its writes (with UV_ECANCELED if need be).
template <class Connection>
void close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    auto owed = std::move(c.replies);
    c.replies.clear();
    for (auto& r : owed)
        if (r.work.valid()) r.work.cancel();
    uv_close(as_handle(&c.tcp), [](uv_handle_t* h) {
        auto* conn = static_cast<Connection*>(h->data);
        auto& srv = conn->srv;
        srv.conns.erase(conn);  // frees the connection
        connection_closed(srv);
    });
}

template <class Connection>
std::size_t unanswered(const Connection& c) noexcept {
    return c.replies.size();
}

template <class Connection>
void pump(Connection& c);

/// The client is gone (EOF, reset) or sent bytes: consume them.
template <class Connection>
void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto& c = *static_cast<Connection*>(s->data);
    if (nread < 0) {  // UV_EOF, ECONNRESET, ...: the client is gone
        close_connection(c);
        return;
    }
    if (nread == 0 || c.closing || c.draining) return;  // draining: read and discard
    c.in.append(buf->base, static_cast<std::size_t>(nread));
    pump(c);
}

template <class Connection>
void on_write(uv_write_t* req, int status) {
    auto& c = finish_write<Connection>(req);
    if (c.closing) return;
    if (status < 0) {
        close_connection(c);  // the client went away under our answers
        return;
    }
    pump(c);
}

/// Reads while the connection has room for more requests and its client
/// keeps reading its answers; otherwise leaves the bytes in the kernel. A
/// draining connection reads and discards, so that no unread bytes turn its
/// close into a reset that could destroy the last answers in flight.
template <class Connection>
void update_reading(Connection& c) {
    bool want = !c.closing && (c.draining || (unanswered(c) < c.srv.opts.max_pending_per_connection &&
                                              !c.write_backlogged()));
    if (!c.set_reading(want, &on_alloc<Connection>, &on_read<Connection>)) close_connection(c);
}

/// Handles what can be handled, writes what is ready, adjusts reading, and
/// closes a draining connection once all is answered and written. Not
/// reentrant: a completion that arrives while it runs (a submission that
/// fails at once) only marks its answer ready, and this loop writes it.
template <class Connection>
void pump(Connection& c) {
    if (c.closing || c.pumping) return;
    c.pumping = true;
    for (;;) {
        consume(c);
        std::size_t before = unanswered(c);
        flush(c);
        if (c.closing || unanswered(c) == before || c.draining) break;  // no room was freed
    }
    c.pumping = false;
    if (c.closing) return;
    if (c.draining && unanswered(c) == 0 && c.writes_in_flight == 0) {
        close_connection(c);
        return;
    }
    update_reading(c);
}

/// Accepts a client of `listener` into a new Connection (constructed from the
/// server), owned by srv.conns until its handle's close callback; nullptr if
/// that failed (said on stderr; a connection that could not be accepted is
/// closed with close_connection, found by argument-dependent lookup).
template <class Connection, class Server>
std::shared_ptr<Connection> accept_connection(uv_stream_t* listener, Server& srv) {
    auto c = std::make_shared<Connection>(srv);
    if (int r = uv_tcp_init(srv.uv, &c->tcp); r != 0) {
        srv.log("uv_tcp_init failed: {}", uv_strerror(r));
        return nullptr;
    }
    c->tcp.data = c.get();
    srv.conns.emplace(c.get(), c);
    if (uv_accept(listener, as_stream(&c->tcp)) != 0) {
        close_connection(*c);
        return nullptr;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    return c;
}

/// Initialises a loop, calls body(loop), which runs the server on it to the
/// end (its last uv_run after server_core::release_uvexec and the last
/// closes), and closes the loop, listing what is still open if that fails. Ignores SIGPIPE (a write to
/// a vanished client must fail with EPIPE, not kill us). Returns body's
/// result, or 1 if the loop could not be initialised or closed.
int run_on_own_loop(std::string_view program, const std::function<int(uv_loop_t*)>& body);

}  // namespace offload
