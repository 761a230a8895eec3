// server_core — see server_core.hpp.
#include "server_core.hpp"

#include <csignal>
#include <cerrno>
#include <exception>
#include <optional>
#include <system_error>

#include <arpa/inet.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace offload {

namespace {

struct write_request {
    uv_write_t req{};
    std::string bytes;
};

}  // namespace

void close_if_open(uv_handle_t* h, bool& open) noexcept {
    if (!open) return;
    open = false;
    uv_close(h, nullptr);
}

bool listen_tcp(uv_tcp_t& listener, const std::string& host, int port, uv_connection_cb on_connection,
                std::string_view program, ready_info& bound_to) {
    sockaddr_storage addr{};
    int r = host.find(':') != std::string::npos
                ? uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr))
                : uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr));
    if (r != 0) {
        fmt::print(stderr, "{}: bad listen address \"{}\": {}\n", program, host, uv_strerror(r));
        return false;
    }
    r = uv_tcp_bind(&listener, reinterpret_cast<const sockaddr*>(&addr), 0);
    if (r == 0) r = uv_listen(as_stream(&listener), SOMAXCONN, on_connection);
    if (r != 0) {
        fmt::print(stderr, "{}: cannot listen on {}:{}: {}\n", program, host, port, uv_strerror(r));
        return false;
    }
    sockaddr_storage bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(&listener, reinterpret_cast<sockaddr*>(&bound), &len);
    char name[INET6_ADDRSTRLEN] = {};
    uv_ip_name(reinterpret_cast<const sockaddr*>(&bound), name, sizeof(name));
    bound_to.host = name;
    bound_to.port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                                : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    return true;
}

void report_open_handles(uv_loop_t* uv, std::string_view program) {
    uv_walk(
        uv,
        [](uv_handle_t* h, void* prog) {
            fmt::print(stderr, "{}:   still open: {} handle{}\n", *static_cast<std::string_view*>(prog),
                       uv_handle_type_name(uv_handle_get_type(h)), uv_is_closing(h) ? " (closing)" : "");
        },
        &program);
}

// --- server_core ---------------------------------------------------------------------

bool server_core::start(uv_connection_cb on_connection, uv_signal_cb on_signal, ready_info& bound_to) {
    try {
        uvexec::thread_pool_options thread_options{.max_workers = opts.threads};
        // One call per worker at a time: a call waiting for a busy worker stays
        // in the pool's queue, where cancelling it (its client left) means it
        // never runs. (The default of 2 would send it to the busy worker, and a
        // call already sent runs even when cancelled.) Requests and answers are
        // a few bytes, so frames are capped small.
        uvexec::process_pool_options process_options{
            .max_workers = opts.processes, .max_frame_size = 64 * 1024, .max_in_flight_per_worker = 1};
        // Linux keeps a nice value and a CPU affinity per thread: each pool
        // thread sets its own (libuv's threads, so its file-system work too);
        // workers are started through nice(1) and taskset(1), which exec them
        // with fd 3 intact. The loop thread is pinned here, before libuv's
        // threads exist (they inherit it, then the initializer moves them).
        if (!opts.loop_cpus.empty()) {
            auto set = parse_cpu_list("--loop-cpus", opts.loop_cpus);
            if (sched_setaffinity(0, sizeof set, &set) != 0)
                throw std::system_error(errno, std::generic_category(), "--loop-cpus " + opts.loop_cpus);
        }
        std::optional<cpu_set_t> pool_set;
        if (!opts.pool_cpus.empty()) pool_set = parse_cpu_list("--pool-cpus", opts.pool_cpus);
        if (opts.pool_nice > 0 || pool_set) {
            thread_options.initializer = [n = opts.pool_nice, pool_set] {
                if (n > 0) {  // relative, as nice(1) is for the workers
                    const auto tid = static_cast<id_t>(syscall(SYS_gettid));
                    setpriority(PRIO_PROCESS, tid, getpriority(PRIO_PROCESS, tid) + n);
                }
                if (pool_set && sched_setaffinity(0, sizeof *pool_set, &*pool_set) != 0)
                    throw std::system_error(errno, std::generic_category(), "--pool-cpus");
            };
            if (opts.pool_nice > 0) process_options.launcher = {"nice", "-n", std::to_string(opts.pool_nice)};
            if (pool_set) {
                auto& words = process_options.launcher.words;
                words.insert(words.end(), {"taskset", "-c", opts.pool_cpus});
            }
        }
        if (opts.max_queue > 0) thread_options.max_queue = process_options.max_queue = opts.max_queue;
        threads.emplace(std::move(thread_options));
        processes.emplace(std::move(process_options));
        lp.emplace(uv);
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}: cannot start: {}\n", program, e.what());
        return false;
    }

    uv_tcp_init(uv, &listener);
    listener.data = this;
    listener_open = true;
    if (!listen_tcp(listener, opts.host, opts.port, on_connection, program, bound_to)) return false;

    uv_timer_init(uv, &grace);
    grace.data = this;
    grace_open = true;
    if (opts.handle_signals) {
        uv_signal_init(uv, &sigint);
        sigint.data = this;
        sigint_open = true;
        uv_signal_init(uv, &sigterm);
        sigterm.data = this;
        sigterm_open = true;
        if (uv_signal_start(&sigint, on_signal, SIGINT) != 0 || uv_signal_start(&sigterm, on_signal, SIGTERM) != 0) {
            fmt::print(stderr, "{}: cannot watch SIGINT/SIGTERM\n", program);
            return false;
        }
    }
    return true;
}

void server_core::start_grace(uv_timer_cb on_grace_over) {
    if (opts.shutdown_grace.count() > 0)
        uv_timer_start(&grace, on_grace_over, static_cast<std::uint64_t>(opts.shutdown_grace.count()), 0);
}

void server_core::shutdown_pools(bool cancel_futures, std::function<void()> all_done) {
    executors_running = 2;
    auto one_done = [this, all_done = std::move(all_done)](const uvexec::future<void>&) {
        if (--executors_running == 0) all_done();
    };
    threads->shutdown(cancel_futures).add_done_callback(one_done);
    processes->shutdown(cancel_futures).add_done_callback(one_done);
}

bool server_core::stop_waiting(std::string_view why) {
    if (forced) return false;
    forced = true;
    log("{}: no longer waiting for running work", why);
    uv_stop(uv);
    return true;
}

void server_core::close_handles() {
    close_if_open(as_handle(&listener), listener_open);
    close_if_open(as_handle(&sigint), sigint_open);
    close_if_open(as_handle(&sigterm), sigterm_open);
    close_if_open(as_handle(&grace), grace_open);
}

void server_core::release_uvexec() {
    lp.reset();
    processes.reset();
    threads.reset();
}

// --- connection_core -------------------------------------------------------------------

bool connection_core::write(std::string bytes, uv_write_cb on_write) {
    auto w = std::make_unique<write_request>();
    w->bytes = std::move(bytes);
    w->req.data = w.get();
    uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
    if (uv_write(&w->req, as_stream(&tcp), &buf, 1, on_write) != 0) return false;
    w.release();  // freed by on_write, through free_write
    ++writes_in_flight;
    return true;
}

uv_stream_t* free_write(uv_write_t* req) noexcept {
    uv_stream_t* stream = req->handle;
    delete static_cast<write_request*>(req->data);
    return stream;
}

bool connection_core::write_backlogged() noexcept {
    return uv_stream_get_write_queue_size(as_stream(&tcp)) >= write_queue_limit;
}

bool connection_core::set_reading(bool want, uv_alloc_cb on_alloc, uv_read_cb on_read) {
    if (want && !reading) {
        if (uv_read_start(as_stream(&tcp), on_alloc, on_read) != 0) return false;
        reading = true;
    } else if (!want && reading) {
        uv_read_stop(as_stream(&tcp));
        reading = false;
    }
    return true;
}

// --- a run ---------------------------------------------------------------------------------

int run_on_own_loop(std::string_view program, const std::function<int(uv_loop_t*)>& body) {
    std::signal(SIGPIPE, SIG_IGN);  // a write to a vanished client must fail with EPIPE, not kill us
    uv_loop_t uv;
    if (int r = uv_loop_init(&uv); r != 0) {
        fmt::print(stderr, "{}: uv_loop_init: {}\n", program, uv_strerror(r));
        return 1;
    }
    int rc = body(&uv);
    if (int r = uv_loop_close(&uv); r != 0) {
        fmt::print(stderr, "{}: uv_loop_close: {}\n", program, uv_strerror(r));
        report_open_handles(&uv, program);
        return 1;
    }
    return rc;
}

}  // namespace offload
