// uvexec benchmarks — the bare-pipe baseline of the process-pool benchmarks:
// this same executable started again (posix_spawn, so it pays the same exec
// and dynamic loading as a uvexec worker) with a socketpair on descriptor 3,
// answering every 21-byte call frame with a 13-byte reply frame, one write()
// per reply: the sizes of a uvexec no-op call and its void result, and the
// way a uvexec worker answers. No serialization, no event loop.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace bare {

constexpr std::size_t call_size = 21;   // u32 length, u8 kind, u64 id, u64 function key
constexpr std::size_t reply_size = 13;  // u32 length, u8 kind, u64 id
constexpr const char* child_flag = "--bare-echo-child";

inline bool child_requested(int argc, char** argv) { return argc > 1 && std::strcmp(argv[1], child_flag) == 0; }

inline void write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(std::string("bare pipe: write: ") + std::strerror(errno));
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

/// Reads exactly n bytes (blocking).
inline void read_all(int fd, char* p, std::size_t n) {
    while (n > 0) {
        ssize_t r = ::read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) throw std::runtime_error("bare pipe: the child closed the channel");
        p += r;
        n -= static_cast<std::size_t>(r);
    }
}

/// The child: echo loop on descriptor 3 until EOF.
[[noreturn]] inline void child_main() {
    const int fd = 3;
    static char buf[64 * 1024];
    char reply[reply_size] = {static_cast<char>(reply_size - 4), 0, 0, 0, 17};
    std::size_t have = 0;
    for (;;) {
        ssize_t r = ::read(fd, buf + have, sizeof(buf) - have);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) ::_exit(0);
        have += static_cast<std::size_t>(r);
        std::size_t off = 0;
        for (; have - off >= call_size; off += call_size) {
            std::memcpy(reply + 5, buf + off + 5, 8);  // the call's id
            write_all(fd, reply, reply_size);
        }
        std::memmove(buf, buf + off, have - off);
        have -= off;
    }
}

struct child {
    pid_t pid = -1;
    int fd = -1;
};

/// Starts this executable as a bare echo child (argv[1] = flag; another
/// benchmark's child may be named by another flag).
inline child spawn(const char* flag_arg = child_flag) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);  // dup2 clears close-on-exec on 3
    if (sv[1] == 3) {
        // dup2(3, 3) would keep close-on-exec: hand the child a copy instead.
        int other = ::fcntl(sv[1], F_DUPFD_CLOEXEC, 4);
        ::close(sv[1]);
        sv[1] = other;
        posix_spawn_file_actions_destroy(&fa);
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    }
    char exe[] = "/proc/self/exe";
    char flag[64];
    std::snprintf(flag, sizeof(flag), "%s", flag_arg);
    char* argv[] = {exe, flag, nullptr};
    child c;
    int r = ::posix_spawn(&c.pid, exe, &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(sv[1]);
    if (r != 0) throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(r));
    c.fd = sv[0];
    return c;
}

inline void stop(child& c) {
    if (c.fd >= 0) ::close(c.fd);
    int st = 0;
    if (c.pid > 0) ::waitpid(c.pid, &st, 0);
    c = {};
}

/// A call frame with the given id.
inline void make_call(char* out, std::uint64_t id) {
    std::memset(out, 0, call_size);
    out[0] = static_cast<char>(call_size - 4);
    out[4] = 1;
    std::memcpy(out + 5, &id, 8);
}

/// One round trip, blocking.
inline void ping(child& c, std::uint64_t id) {
    char call[call_size], reply[reply_size];
    make_call(call, id);
    write_all(c.fd, call, call_size);
    read_all(c.fd, reply, reply_size);
}

/// Calls per second of n round trips through the children cs, up to depth
/// frames in flight to each, the parent batching its writes and polling with
/// poll(2): one message per call each way.
inline double throughput(std::vector<child>& cs, long n, long depth) {
    const std::size_t w = cs.size();
    std::vector<long> in_flight(w, 0);
    std::vector<std::size_t> carry(w, 0);
    std::vector<pollfd> pfds(w);
    for (std::size_t i = 0; i < w; ++i) pfds[i] = {cs[i].fd, POLLIN, 0};
    std::vector<char> batch(static_cast<std::size_t>(depth) * call_size);
    for (long i = 0; i < depth; ++i) make_call(batch.data() + static_cast<std::size_t>(i) * call_size, static_cast<std::uint64_t>(i));
    static char rbuf[64 * 1024];
    long sent = 0, received = 0;
    auto t0 = std::chrono::steady_clock::now();
    while (received < n) {
        for (std::size_t i = 0; i < w; ++i) {
            long k = std::min(depth - in_flight[i], n - sent);
            if (k <= 0) continue;
            write_all(cs[i].fd, batch.data(), static_cast<std::size_t>(k) * call_size);
            in_flight[i] += k;
            sent += k;
        }
        if (::poll(pfds.data(), w, -1) < 0) continue;
        for (std::size_t i = 0; i < w; ++i) {
            if (!(pfds[i].revents & POLLIN)) continue;
            ssize_t r = ::read(cs[i].fd, rbuf, sizeof(rbuf));
            if (r <= 0) throw std::runtime_error("bare child died");
            carry[i] += static_cast<std::size_t>(r);
            auto frames = static_cast<long>(carry[i] / reply_size);
            carry[i] %= reply_size;
            in_flight[i] -= frames;
            received += frames;
        }
    }
    return static_cast<double>(n) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}


}  // namespace bare
