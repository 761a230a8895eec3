// uvexec — starting a worker process with posix_spawn.
//
// posix_spawn, not uv_spawn: glibc's clones the parent without copying its
// page tables (CLONE_VM | CLONE_VFORK), where libuv 1.44's fork() holds the
// loop thread for a time that grows with the parent's resident memory (about
// 120 ms per worker from a 4 GiB heap; bench_process_startup --heap-mb). Like
// libuv, the child gets default signal dispositions, an empty signal mask,
// and /dev/null as stdin.
#include "spawn.hpp"

#include <cerrno>
#include <csignal>

#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

#include <fmt/format.h>
#include <uv.h>

#include "../error_ptr.hpp"
#include "uvexec/detail/worker.hpp"
#include "uvexec/error.hpp"

namespace uvexec::inline v0::detail {

std::exception_ptr make_channel(int (&ends)[2]) noexcept {
    uv_os_sock_t fds[2];
    if (int r = uv_socketpair(SOCK_STREAM, 0, fds, UV_NONBLOCK_PIPE, 0); r != 0)
        return error_ptr([&] { return uv_error(r, "uv_socketpair for a worker's channel"); });
    if (fds[1] <= channel_fd) {
        // dup2 onto itself would leave it close-on-exec: move it above 3 first.
        // (Needed, not defensive: if socketpair handed back fd 0, opening
        // /dev/null on 0 in the child would close the channel before the dup2.)
        int moved = ::fcntl(fds[1], F_DUPFD_CLOEXEC, channel_fd + 1);
        int err = errno;
        ::close(fds[1]);
        if (moved < 0) {
            ::close(fds[0]);
            return error_ptr([&] { return uv_error(-err, "fcntl(F_DUPFD_CLOEXEC) for a worker's channel"); });
        }
        fds[1] = moved;
    }
    ends[0] = fds[0];
    ends[1] = fds[1];
    return nullptr;
}

namespace {

/// posix_spawnp of args with env: each fds[i] on descriptor targets[i] (or, for
/// stdio_channel, the one fd on 0 and 1), /dev/null on stdin otherwise.
std::exception_ptr spawn_with(std::vector<std::string>& args, std::vector<std::string>& env, const int* fds,
                              const int* targets, int n, bool stdio_channel, const char* what, int& pid) noexcept {
    std::vector<char*> argv, envp;
    try {
        argv.reserve(args.size() + 1);
        envp.reserve(env.size() + 1);
    } catch (...) {
        return std::current_exception();
    }
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    if (stdio_channel) {
        posix_spawn_file_actions_adddup2(&actions, fds[0], 0);
        posix_spawn_file_actions_adddup2(&actions, fds[0], 1);
    } else {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        for (int i = 0; i < n; ++i) posix_spawn_file_actions_adddup2(&actions, fds[i], targets[i]);
    }
    pid_t child = 0;
    int r = ::posix_spawnp(&child, argv[0], &actions, &attr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (r != 0) return error_ptr([&] { return uv_error(-r, fmt::format("posix_spawn of {} '{}'", what, argv[0])); });
    pid = child;
    return nullptr;
}

}  // namespace

std::exception_ptr spawn_worker_process(std::vector<std::string>& args, std::vector<std::string>& env,
                                        int child_end, bool stdio_channel, int& pid) noexcept {
    const int target = channel_fd;
    return spawn_with(args, env, &child_end, &target, 1, stdio_channel, "worker", pid);
}

std::exception_ptr spawn_fork_server_process(std::vector<std::string>& args, std::vector<std::string>& env,
                                             int control_end, int report_end, int& pid) noexcept {
    const int fds[2] = {control_end, report_end};
    const int targets[2] = {3, 4};
    return spawn_with(args, env, fds, targets, 2, false, "the fork server", pid);
}

}  // namespace uvexec::detail
