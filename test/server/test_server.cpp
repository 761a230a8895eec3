// Tests of the offload server (examples/offload_server_lib.*, offload_server.cpp).
//
// Most tests run run_offload_server() in this process on a thread and talk to
// it over 127.0.0.1; its fib workers are this executable started again (main
// begins with uvexec::worker_main). The signal tests start the example binary
// ($OFFLOAD_SERVER) as a child process. Every wait is bounded: a hang fails
// the test instead of blocking CI.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "offload_server_lib.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

int ms_left(steady::time_point deadline) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - steady::now()).count();
    return static_cast<int>(std::clamp<long long>(left, 0, INT_MAX));
}

/// Polls pred (every millisecond) until it holds or the timeout passes.
/// For conditions only visible as counters or /proc entries.
template <class Pred>
bool eventually(Pred pred, milliseconds timeout = 20s) {
    auto deadline = steady::now() + timeout;
    while (!pred()) {
        if (steady::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

std::uint64_t fib_reference(int n) {
    std::uint64_t a = 0, b = 1;
    for (int i = 0; i < n; ++i) b = std::exchange(a, b) + b;
    return a;
}

// --- a blocking-with-timeouts line client ----------------------------------------

class client {
public:
    explicit client(int port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
            int e = errno;
            ::close(fd_);
            throw std::runtime_error(fmt::format("connect to 127.0.0.1:{}: {}", port, std::strerror(e)));
        }
        ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
        int one = 1;
        ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    client(client&& o) noexcept : fd_(std::exchange(o.fd_, -1)), buf_(std::move(o.buf_)) {}
    client(const client&) = delete;
    client& operator=(const client&) = delete;
    ~client() { close(); }

    /// Sends everything; false on error or if the peer does not take it in time.
    bool send(std::string_view data, milliseconds timeout = 10s) {
        auto deadline = steady::now() + timeout;
        while (!data.empty()) {
            ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
            if (n > 0) {
                data.remove_prefix(static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
            pollfd p{fd_, POLLOUT, 0};
            if (::poll(&p, 1, ms_left(deadline)) <= 0) return false;
        }
        return true;
    }

    enum class status { line, eof, timeout, error };

    /// The next line (without '\n'), or why there is none.
    status read_line(std::string& line, milliseconds timeout = 10s) {
        auto deadline = steady::now() + timeout;
        for (;;) {
            if (auto nl = buf_.find('\n'); nl != std::string::npos) {
                line = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return status::line;
            }
            char tmp[65536];
            ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
            if (n > 0) {
                buf_.append(tmp, static_cast<std::size_t>(n));
                continue;
            }
            if (n == 0) return status::eof;
            if (errno != EAGAIN && errno != EINTR) return status::error;
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, ms_left(deadline)) == 0) return status::timeout;
        }
    }

    /// The next line, or "<eof>", "<timeout>", "<error>" — readable in CHECKs.
    std::string line(milliseconds timeout = 10s) {
        std::string l;
        switch (read_line(l, timeout)) {
            case status::line: return l;
            case status::eof: return "<eof>";
            case status::timeout: return "<timeout>";
            case status::error: return "<error>";
        }
        return "<?>";
    }

    /// True once the server has closed the connection (EOF or reset), after
    /// skipping any answers still in flight; false on timeout.
    bool closed_by_peer(milliseconds timeout = 20s) {
        auto deadline = steady::now() + timeout;
        std::string l;
        for (;;) {
            auto st = read_line(l, milliseconds(ms_left(deadline)));
            if (st == status::eof || st == status::error) return true;
            if (st == status::timeout) return false;
        }
    }

    /// Something (a line or EOF) can be read right now.
    bool readable_now() {
        if (buf_.find('\n') != std::string::npos) return true;
        pollfd p{fd_, POLLIN, 0};
        return ::poll(&p, 1, 0) > 0;
    }

    /// Closes abruptly: the server sees a reset, not an orderly EOF.
    void reset() {
        linger l{1, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        close();
    }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
    std::string buf_;
};

// --- the server on a thread of this process ---------------------------------------

class in_process_server {
public:
    explicit in_process_server(offload::server_options o = {}) : opts_(std::move(o)) {
        opts_.host = "127.0.0.1";
        opts_.port = 0;
        opts_.handle_signals = false;
        opts_.verbose = std::getenv("OFFLOAD_TEST_VERBOSE") != nullptr;
    }
    in_process_server(const in_process_server&) = delete;
    in_process_server& operator=(const in_process_server&) = delete;
    ~in_process_server() {
        if (thread_.joinable()) stop();
    }

    /// Starts the server; false if it did not listen within 30 s.
    bool start() {
        auto ready = std::make_shared<std::promise<int>>();
        auto ready_f = ready->get_future();
        auto done = std::make_shared<std::promise<int>>();
        done_ = done->get_future();
        thread_ = std::thread([this, ready, done] {
            bool listening = false;
            int rc = offload::run_offload_server(
                opts_,
                [&](const offload::ready_info& info) {
                    listening = true;
                    ready->set_value(info.port);
                },
                &control_);
            if (!listening) ready->set_value(0);
            done->set_value(rc);
        });
        if (ready_f.wait_for(30s) != std::future_status::ready) return false;
        port_ = ready_f.get();
        return port_ != 0;
    }

    /// Stops the server and returns run_offload_server's result. A server
    /// that does not stop within 60 s aborts the test program (a hang must
    /// fail, not block).
    int stop() {
        control_.stop();
        if (!thread_.joinable()) return rc_;
        if (done_.wait_for(60s) != std::future_status::ready) {
            std::fputs("test_server: the in-process server did not stop within 60 s\n", stderr);
            std::abort();
        }
        thread_.join();
        rc_ = done_.get();
        return rc_;
    }

    int port() const { return port_; }
    const offload::server_stats& stats() const { return control_.stats(); }

private:
    offload::server_options opts_;
    offload::server_control control_;
    std::thread thread_;
    std::future<int> done_;
    int port_ = 0;
    int rc_ = -1;
};

// --- the example binary as a child process ----------------------------------------

std::string server_binary() {
    if (const char* p = std::getenv("OFFLOAD_SERVER"); p && *p) return p;
    // Run by hand from the build tree: build/test/server/test_server.
    auto guess = std::filesystem::canonical("/proc/self/exe").parent_path() / "../../examples/offload_server";
    return guess.lexically_normal().string();
}

int pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

/// The pids of the child processes of pid (all its threads).
std::set<pid_t> children_of(pid_t pid) {
    std::set<pid_t> out;
    std::error_code ec;
    for (auto& task : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
        std::ifstream f(task.path() / "children");
        pid_t c = 0;
        while (f >> c) out.insert(c);
    }
    return out;
}

class child_server {
public:
    child_server() = default;
    child_server(const child_server&) = delete;
    child_server& operator=(const child_server&) = delete;
    ~child_server() {
        if (out_fd_ >= 0) ::close(out_fd_);
        if (pid_ > 0) {  // a failed test left it running
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }

    /// Starts the example binary and waits (30 s at most) for "listening on
    /// 127.0.0.1:PORT" on its stdout.
    bool start(std::vector<std::string> args) {
        std::string path = server_binary();
        if (::access(path.c_str(), X_OK) != 0) {
            FAIL_CHECK("the example binary is not at " << path << " (set OFFLOAD_SERVER)");
            return false;
        }
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return false;
        args.insert(args.begin(), path);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        // This process's environment, minus the UV_THREADPOOL_SIZE uvexec
        // chose for the in-process servers: the child sizes its own pool.
        std::vector<std::string> env;
        for (char** e = environ; *e; ++e)
            if (!std::string_view(*e).starts_with("UV_THREADPOOL_SIZE=")) env.emplace_back(*e);
        std::vector<char*> envp;
        for (auto& e : env) envp.push_back(e.data());
        envp.push_back(nullptr);

        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t none, defaults;
        sigemptyset(&none);
        sigemptyset(&defaults);
        for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD}) sigaddset(&defaults, s);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &defaults);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        int r = ::posix_spawn(&pid_, path.c_str(), &fa, &attr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        ::close(p[1]);
        out_fd_ = p[0];
        if (r != 0) {
            pid_ = -1;
            FAIL_CHECK("posix_spawn " << path << ": " << std::strerror(r));
            return false;
        }
        auto deadline = steady::now() + 30s;
        const std::string_view prefix = "listening on 127.0.0.1:";
        for (;;) {
            if (auto nl = out_.find('\n'); nl != std::string::npos) {
                std::string first = out_.substr(0, nl);
                if (!std::string_view(first).starts_with(prefix)) {
                    FAIL_CHECK("unexpected first line on the server's stdout: " << first);
                    return false;
                }
                port_ = std::atoi(first.c_str() + prefix.size());
                return port_ > 0;
            }
            pollfd pf{out_fd_, POLLIN, 0};
            if (::poll(&pf, 1, ms_left(deadline)) <= 0) {
                FAIL_CHECK("the server did not print its port within 30 s");
                return false;
            }
            char buf[256];
            ssize_t n = ::read(out_fd_, buf, sizeof(buf));
            if (n <= 0) {
                FAIL_CHECK("the server closed its stdout before printing its port");
                return false;
            }
            out_.append(buf, static_cast<std::size_t>(n));
        }
    }

    /// Waits (bounded) for the child to exit and reaps it; its wait status, or
    /// nullopt on timeout.
    std::optional<int> wait_exit(milliseconds timeout) {
        auto deadline = steady::now() + timeout;
        int pfd = pidfd_open(pid_);
        if (pfd >= 0) {
            pollfd p{pfd, POLLIN, 0};
            int r = ::poll(&p, 1, ms_left(deadline));
            ::close(pfd);
            if (r <= 0) return std::nullopt;
        }
        for (;;) {  // without pidfd (old kernel): poll waitpid
            int status = 0;
            pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                pid_ = -1;
                return status;
            }
            if (r < 0 && errno != EINTR) return std::nullopt;
            if (steady::now() > deadline) return std::nullopt;
            std::this_thread::sleep_for(2ms);
        }
    }

    pid_t pid() const { return pid_; }
    int port() const { return port_; }

private:
    pid_t pid_ = -1;
    int out_fd_ = -1;
    std::string out_;
    int port_ = 0;
};

/// After the server exited: none of its worker processes may be left, neither
/// running nor as a zombie. This process is a child subreaper (see
/// become_subreaper), so a worker the server failed to reap would have become
/// our child: waitpid() must say it is not.
void check_workers_gone(const std::set<pid_t>& workers) {
    for (pid_t w : workers) {
        int status = 0;
        pid_t r = ::waitpid(w, &status, WNOHANG);
        INFO("worker pid " << w);
        CHECK_MESSAGE((r == -1 && errno == ECHILD), "the server exited without reaping this worker");
        if (r == 0) {
            ::kill(w, SIGKILL);
            ::waitpid(w, nullptr, 0);
        }
        CHECK(::kill(w, 0) == -1);
    }
}

void become_subreaper() { REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }

bool is_printable_line(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

}  // namespace

// --- the pieces ---------------------------------------------------------------------

TEST_CASE("parse_request accepts the three commands and rejects everything else") {
    using k = offload::request::kind;
    CHECK(offload::parse_request("ping").what == k::ping);
    CHECK(offload::parse_request("ping\r").what == k::ping);
    CHECK(offload::parse_request("  ping \t").what == k::ping);
    auto sq = offload::parse_request("square -12");
    CHECK(sq.what == k::square);
    CHECK(sq.arg == -12);
    CHECK(offload::parse_request("square 4294967295").what == k::square);
    CHECK(offload::parse_request("square -4294967295").what == k::square);
    auto f = offload::parse_request("fib 45");
    CHECK(f.what == k::fib);
    CHECK(f.arg == 45);
    CHECK(offload::parse_request("fib 0").what == k::fib);

    const std::vector<std::string_view> bad_lines = {"", " ", "\r", "pong", "PING", "ping 1", "fib", "fib -3", "fib abc", "fib 46",
                                 "fib 3.5", "fib +3", "fib 1 2", "fib 99999999999999999999", "square",
                                 "square 4294967296", "square -4294967296", "square 0x10", "square 1e3",
                                 std::string_view("fib 4\0", 6), std::string_view("\0\xff\x01garbage", 10)};
    for (std::string_view bad : bad_lines) {
        auto r = offload::parse_request(bad);
        INFO("line: \"" << bad << "\"");
        CHECK(r.what == k::invalid);
        CHECK_FALSE(r.error.empty());
        CHECK(is_printable_line(r.error));
    }
}

TEST_CASE("fib and square compute the right values and refuse out-of-range arguments") {
    for (int n = 0; n <= 30; ++n) CHECK(offload::fib(n) == fib_reference(n));
    CHECK(fib_reference(45) == 1134903170u);
    CHECK_THROWS_AS(offload::fib(-1), std::out_of_range);
    CHECK_THROWS_AS(offload::fib(offload::max_fib_n + 1), std::out_of_range);
    CHECK(offload::square(0) == 0);
    CHECK(offload::square(-7) == 49);
    CHECK(offload::square(4294967295) == 18446744065119617025ull);
    CHECK(offload::square(-4294967295) == 18446744065119617025ull);
    CHECK_THROWS_AS(offload::square(4294967296), std::out_of_range);
}

TEST_CASE("parse_command_line reads the documented options") {
    auto parse = [](std::vector<std::string> words, offload::server_options& o) {
        words.insert(words.begin(), "offload_server");
        std::vector<char*> argv;
        for (auto& w : words) argv.push_back(w.data());
        return offload::parse_command_line(static_cast<int>(argv.size()), argv.data(), o);
    };
    offload::server_options o;
    CHECK(o.host == "127.0.0.1");
    CHECK(o.port == 7000);
    CHECK(o.threads == 4);
    CHECK(o.processes == 2);
    REQUIRE(parse({"--host", "0.0.0.0", "--port=0", "--threads", "3", "--processes=5", "--max-line", "100",
                   "--grace", "2"},
                  o));
    CHECK(o.host == "0.0.0.0");
    CHECK(o.port == 0);
    CHECK(o.threads == 3);
    CHECK(o.processes == 5);
    CHECK(o.max_line == 100);
    CHECK(o.shutdown_grace == 2s);
    CHECK_THROWS_AS(parse({"--port", "65536"}, o), std::invalid_argument);
    CHECK_THROWS_AS(parse({"--threads", "0"}, o), std::invalid_argument);
    CHECK_THROWS_AS(parse({"--processes"}, o), std::invalid_argument);
    CHECK_THROWS_AS(parse({"--bogus"}, o), std::invalid_argument);

    REQUIRE(parse({"--pool-cpus", "1", "--loop-cpus=0,2-3"}, o));
    CHECK(o.pool_cpus == "1");
    CHECK(o.loop_cpus == "0,2-3");
    for (const char* bad : {"", "x", "1,", ",1", "3-1", "-1", "1-", "99999"})
        CHECK_THROWS_AS(parse({"--pool-cpus", bad}, o), std::invalid_argument);
}

TEST_CASE("parse_cpu_list reads taskset(1) lists") {
    auto set = offload::parse_cpu_list("--pool-cpus", "0,2-4,7");
    CHECK(CPU_COUNT(&set) == 5);
    for (int cpu : {0, 2, 3, 4, 7}) CHECK(CPU_ISSET(cpu, &set));
    for (int cpu : {1, 5, 6, 8}) CHECK_FALSE(CPU_ISSET(cpu, &set));
    try {
        offload::parse_cpu_list("--loop-cpus", "0-");
        FAIL("no exception");
    } catch (const std::invalid_argument& e) {
        CHECK(std::string_view(e.what()).starts_with("--loop-cpus: expected a CPU list"));
    }
}

// --- the server, in this process ------------------------------------------------------

TEST_CASE("50 concurrent clients mixing ping, square and fib get correct answers in request order") {
    in_process_server srv({.threads = 4, .processes = 2});
    REQUIRE(srv.start());

    constexpr int n_clients = 50;
    std::vector<client> clients;
    for (int i = 0; i < n_clients; ++i) clients.emplace_back(srv.port());
    std::vector<std::vector<std::string>> expected(n_clients);

    // Two rounds over all clients, so that every connection has work queued
    // in both executors at the same time; a slow fib comes before fast
    // answers on the same connection, which must wait for it.
    for (int round = 0; round < 2; ++round) {
        for (int i = 0; i < n_clients; ++i) {
            int fn = 15 + (i + round) % 11;
            std::int64_t sq = static_cast<std::int64_t>(i) * 7919 - 100000 + round;
            std::string req = fmt::format("fib {}\nping\nsquare {}\nfib {}\nsquare -{}\nping\n", fn, sq, i % 3, i);
            auto& e = expected[i];
            e.push_back(std::to_string(fib_reference(fn)));
            e.push_back("pong");
            e.push_back(std::to_string(static_cast<std::uint64_t>(sq * sq)));
            e.push_back(std::to_string(fib_reference(i % 3)));
            e.push_back(std::to_string(static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(i)));
            e.push_back("pong");
            REQUIRE(clients[i].send(req));
        }
    }
    for (int i = 0; i < n_clients; ++i) {
        INFO("client " << i);
        for (auto& want : expected[i]) CHECK(clients[i].line(60s) == want);
    }
    CHECK(srv.stats().work_submitted == 2u * 4 * n_clients);
    CHECK(srv.stats().work_pending == 0);
    clients.clear();
    CHECK(srv.stop() == 0);
    CHECK(srv.stats().connections_open == 0);
}

TEST_CASE("100 pings on another connection are answered while two slow fibs run") {
    in_process_server srv({.threads = 2, .processes = 2});
    REQUIRE(srv.start());

    constexpr int slow_n = 40;  // about a second of CPU each (see offload::max_fib_n)
    client a(srv.port()), b(srv.port());
    REQUIRE(a.send(fmt::format("fib {}\n", slow_n)));
    REQUIRE(b.send(fmt::format("fib {}\n", slow_n)));
    REQUIRE(eventually([&] { return srv.stats().work_pending == 2; }));

    client p(srv.port());
    auto started = steady::now();
    milliseconds worst{0};
    for (int i = 0; i < 100; ++i) {
        auto t0 = steady::now();
        REQUIRE(p.send("ping\n"));
        REQUIRE(p.line(10s) == "pong");
        worst = std::max(worst, std::chrono::duration_cast<milliseconds>(steady::now() - t0));
    }
    auto pings_took = std::chrono::duration_cast<milliseconds>(steady::now() - started);
    // All 100 answered, and neither fib is done yet.
    CHECK_FALSE(a.readable_now());
    CHECK_FALSE(b.readable_now());
    CHECK(srv.stats().work_pending == 2);
    MESSAGE("100 ping round trips took " << pings_took.count() << " ms, the slowest " << worst.count()
                                         << " ms, while two fib " << slow_n << " ran");

    auto fib_started = steady::now();
    CHECK(a.line(120s) == std::to_string(fib_reference(slow_n)));
    CHECK(b.line(120s) == std::to_string(fib_reference(slow_n)));
    MESSAGE("the fibs finished " << std::chrono::duration_cast<milliseconds>(steady::now() - fib_started).count()
                                 << " ms after the last pong");
    CHECK(srv.stop() == 0);
}

TEST_CASE("a client that disconnects mid-request does not crash the server, and its work is let go") {
    in_process_server srv({.threads = 1, .processes = 1});
    REQUIRE(srv.start());

    bool fib_cancelled = true;
    SUBCASE("by a reset") {
        client a(srv.port());
        // One fib runs in the only worker, the second waits in the pool's queue.
        REQUIRE(a.send("fib 40\nfib 40\nsquare 5\nping\n"));
        REQUIRE(eventually([&] { return srv.stats().work_submitted == 3; }));
        a.reset();
    }
    SUBCASE("by an orderly close") {
        client a(srv.port());
        REQUIRE(a.send("fib 40\nfib 40\nsquare 5\nping\n"));
        REQUIRE(eventually([&] { return srv.stats().work_submitted == 3; }));
        a.close();
    }
    SUBCASE("while its answers are being written") {
        client a(srv.port());
        std::string many;
        for (int i = 0; i < 2000; ++i) many += "ping\nsquare 3\n";
        REQUIRE(a.send(many));
        REQUIRE(eventually([&] { return srv.stats().work_submitted >= 10; }));
        a.reset();
        fib_cancelled = false;
    }

    // The connection is closed and every future it left behind is done: the
    // queued calls cancelled, the running fib's result dropped when it ends.
    REQUIRE(eventually([&] { return srv.stats().connections_open == 0; }));
    CHECK(srv.stats().work_pending == 0);
    if (fib_cancelled) CHECK(srv.stats().results_dropped >= 2);

    // The server goes on serving, the fib worker included.
    client c(srv.port());
    REQUIRE(c.send("ping\nfib 20\nsquare 9\n"));
    CHECK(c.line() == "pong");
    CHECK(c.line(120s) == "6765");
    CHECK(c.line() == "81");
    CHECK(srv.stop() == 0);
    CHECK(srv.stats().work_pending == 0);
}

TEST_CASE("malformed lines get an error line and the connection stays usable") {
    in_process_server srv({.threads = 1, .processes = 1});
    REQUIRE(srv.start());
    client c(srv.port());

    std::vector<std::string> bad = {"fib -3", "fib abc", "fib 46", "fib", "fib 1 2", "square", "square x",
                                    "square 4294967296", "bogus", "", "   ", "PING", "ping pong",
                                    std::string("\0\x01\xff\xfe\x80garbage\r", 13), std::string("fib 4\0", 6)};
    std::mt19937 rng(42);
    std::string noise;
    for (int i = 0; i < 3000; ++i) {
        char ch = static_cast<char>(rng() & 0xff);
        noise += ch == '\n' ? '\0' : ch;
    }
    bad.push_back(noise);
    for (auto& line : bad) REQUIRE(c.send(line + "\n"));
    for (std::size_t i = 0; i < bad.size(); ++i) {
        std::string answer = c.line();
        INFO("request #" << i << ", answer: " << answer);
        CHECK(answer.starts_with("error "));
        CHECK(is_printable_line(answer));
    }
    REQUIRE(c.send("ping\r\nfib 10\nsquare -3\n"));
    CHECK(c.line() == "pong");
    CHECK(c.line(60s) == "55");
    CHECK(c.line() == "9");
    CHECK(srv.stats().error_replies == bad.size());
    CHECK(srv.stop() == 0);
}

TEST_CASE("an over-long line gets an error line after the answers owed, then the connection is closed") {
    in_process_server srv({.threads = 1, .processes = 1});  // max_line 4096
    REQUIRE(srv.start());

    SUBCASE("a line of exactly the limit is fine") {
        client c(srv.port());
        REQUIRE(c.send("ping" + std::string(4092, ' ') + "\n"));
        CHECK(c.line() == "pong");
        REQUIRE(c.send("square" + std::string(4089, ' ') + "7\n"));
        CHECK(c.line() == "49");
    }
    SUBCASE("no newline in sight") {
        client c(srv.port());
        REQUIRE(c.send("fib 25\nsquare 3\n" + std::string(5000, 'x')));
        CHECK(c.line(60s) == "75025");
        CHECK(c.line() == "9");
        CHECK(c.line().starts_with("error line too long"));
        CHECK(c.line() == "<eof>");
    }
    SUBCASE("one byte over, with its newline") {
        client c(srv.port());
        REQUIRE(c.send("ping" + std::string(4093, ' ') + "\nping\n"));
        CHECK(c.line().starts_with("error line too long"));
        CHECK(c.line() == "<eof>");  // the ping after it is not answered
    }
    SUBCASE("a megabyte of binary garbage") {
        client c(srv.port());
        std::string junk(1 << 20, '\x01');
        c.send(junk, 5s);  // the server may close before it has taken everything
        CHECK(c.closed_by_peer());
    }
    REQUIRE(eventually([&] { return srv.stats().connections_open == 0; }));
    client after(srv.port());
    REQUIRE(after.send("ping\n"));
    CHECK(after.line() == "pong");
    CHECK(srv.stop() == 0);
}

TEST_CASE("a client pipelining more requests than the per-connection limit is read only as answers leave") {
    offload::server_options o{.threads = 1, .processes = 1};
    o.max_pending_per_connection = 8;
    in_process_server srv(o);
    REQUIRE(srv.start());
    client c(srv.port());
    std::string reqs;
    for (int i = 0; i < 200; ++i) reqs += "fib 40\n";
    REQUIRE(c.send(reqs));
    // The 200 lines arrive together, but the server takes only 8 of them;
    // the first fib 40 takes about a second, and until it is answered no
    // further request is taken from this connection.
    REQUIRE(eventually([&] { return srv.stats().work_submitted >= 8; }));
    CHECK(srv.stats().work_submitted == 8);
    CHECK(srv.stats().requests == 8);
    c.reset();
    REQUIRE(eventually([&] { return srv.stats().connections_open == 0; }));
    CHECK(srv.stats().work_pending == 0);
    CHECK(srv.stop() == 0);
}

TEST_CASE("stop() while work runs closes the clients and returns 0 with nothing left over") {
    in_process_server srv({.threads = 1, .processes = 2});
    REQUIRE(srv.start());
    client c(srv.port());
    REQUIRE(c.send("fib 40\nfib 40\nfib 40\nsquare 4\n"));
    REQUIRE(eventually([&] { return srv.stats().work_submitted == 4; }));
    CHECK(srv.stop() == 0);
    CHECK(c.closed_by_peer());
    CHECK(srv.stats().connections_open == 0);
    CHECK(srv.stats().work_pending == 0);
}

TEST_CASE("a server that cannot listen says so and returns 1") {
    in_process_server first;
    REQUIRE(first.start());
    offload::server_options o;
    o.host = "127.0.0.1";
    o.port = first.port();  // taken
    o.handle_signals = false;
    o.verbose = false;
    bool ready = false;
    CHECK(offload::run_offload_server(o, [&](const offload::ready_info&) { ready = true; }) == 1);
    CHECK_FALSE(ready);
    o.port = 0;
    o.host = "not an address";
    CHECK(offload::run_offload_server(o, [&](const offload::ready_info&) { ready = true; }) == 1);
    CHECK_FALSE(ready);
    CHECK(first.stop() == 0);
}

// --- the example binary, as a child ------------------------------------------------------

TEST_CASE("SIGTERM during work: the example exits 0, closes its clients and leaves no zombie") {
    become_subreaper();
    child_server child;
    REQUIRE(child.start({"--host", "127.0.0.1", "--port", "0", "--threads", "2", "--processes", "2"}));

    client work(child.port());
    REQUIRE(work.send("square 3\nfib 40\nfib 40\nfib 40\n"));  // two fibs run, the third waits
    CHECK(work.line() == "9");
    client p(child.port());
    REQUIRE(p.send("ping\n"));
    CHECK(p.line() == "pong");
    std::set<pid_t> workers;
    REQUIRE(eventually([&] { return (workers = children_of(child.pid())).size() == 2; }));
    REQUIRE(::kill(child.pid(), SIGTERM) == 0);

    CHECK(p.closed_by_peer());
    CHECK(work.closed_by_peer());
    auto status = child.wait_exit(60s);
    REQUIRE_MESSAGE(status.has_value(), "the server did not exit within 60 s of SIGTERM");
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
    check_workers_gone(workers);
}

TEST_CASE("SIGINT on an idle server: exit status 0") {
    child_server child;
    REQUIRE(child.start({"--port", "0"}));
    client p(child.port());
    REQUIRE(p.send("ping\nsquare 11\n"));
    CHECK(p.line() == "pong");
    CHECK(p.line() == "121");
    REQUIRE(::kill(child.pid(), SIGINT) == 0);
    CHECK(p.closed_by_peer());
    auto status = child.wait_exit(30s);
    REQUIRE(status.has_value());
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
}

TEST_CASE("shutdown does not wait for running work beyond --grace, or after a second signal") {
    become_subreaper();
    child_server child;
    bool second_signal = false;
    SUBCASE("grace period over") {
        REQUIRE(child.start({"--port", "0", "--processes", "1", "--grace", "1"}));
    }
    SUBCASE("second signal") {
        REQUIRE(child.start({"--port", "0", "--processes", "1", "--grace", "600"}));
        second_signal = true;
    }
    client c(child.port());
    REQUIRE(c.send("fib 45\n"));  // ten seconds or more
    std::set<pid_t> workers;
    REQUIRE(eventually([&] { return (workers = children_of(child.pid())).size() == 1; }));
    auto t0 = steady::now();
    REQUIRE(::kill(child.pid(), SIGTERM) == 0);
    CHECK(c.closed_by_peer());
    if (second_signal) REQUIRE(::kill(child.pid(), SIGTERM) == 0);
    auto status = child.wait_exit(60s);
    REQUIRE(status.has_value());
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
    MESSAGE("exited " << std::chrono::duration_cast<milliseconds>(steady::now() - t0).count() << " ms after SIGTERM");
    check_workers_gone(workers);
}
