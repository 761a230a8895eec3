// A private sshd for the remote suite (see sshd.hpp).
#include "sshd.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace test {

namespace {

constexpr const char* sshd_path = "/usr/sbin/sshd";

/// The full path of program on PATH, or "".
std::string on_path(const std::string& program) {
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "/usr/bin:/bin");
    for (std::string d; std::getline(dirs, d, ':');) {
        std::string full = (d.empty() ? std::string(".") : d) + "/" + program;
        if (::access(full.c_str(), X_OK) == 0) return full;
    }
    return "";
}

/// Runs args to its end (stdout to /dev/null); its exit status, or -1.
int run(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid = 0;
    int r = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (r != 0) return -1;
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// A port on 127.0.0.1 that nothing listens on now (the kernel's pick).
int free_port() {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return 0;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = 0;
    if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    ::close(s);
    return port;
}

}  // namespace

private_sshd::private_sshd() {
    if (::geteuid() != 0) {
        reason_ = "not root (the private sshd runs as root, as CI does)";
        return;
    }
    if (::access(sshd_path, X_OK) != 0) {
        reason_ = "/usr/sbin/sshd is missing (apt-get install openssh-server)";
        return;
    }
    if (on_path("ssh-keygen").empty() || on_path("ssh").empty()) {
        reason_ = "ssh-keygen or ssh is missing (apt-get install openssh-client)";
        return;
    }
    char tmpl[] = "/tmp/uvexec-remote-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
        reason_ = std::string("mkdtemp failed: ") + std::strerror(errno);
        return;
    }
    dir_ = tmpl;
    if (!start() && reason_.empty()) reason_ = "the private sshd did not start";
}

bool private_sshd::start() {
    const std::string d = dir_.string();
    for (const char* key : {"host_ed25519", "client_ed25519"}) {
        if (run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", d + "/" + key}) != 0) {
            reason_ = std::string("ssh-keygen failed for ") + key;
            return false;
        }
    }
    std::filesystem::copy_file(dir_ / "client_ed25519.pub", dir_ / "authorized_keys");
    ::mkdir("/run/sshd", 0755);  // sshd's privilege separation directory; may exist
    port_ = free_port();
    if (port_ == 0) {
        reason_ = "no free port on 127.0.0.1";
        return false;
    }
    {
        std::ofstream cfg(dir_ / "sshd_config");
        cfg << "Port " << port_ << "\n"
            << "ListenAddress 127.0.0.1\n"
            << "HostKey " << d << "/host_ed25519\n"
            << "PidFile " << d << "/sshd.pid\n"
            << "AuthorizedKeysFile " << d << "/authorized_keys\n"
            << "StrictModes no\n"
            << "UsePAM no\n"
            << "PubkeyAuthentication yes\n"
            << "PasswordAuthentication no\n"
            << "KbdInteractiveAuthentication no\n"
            << "PermitRootLogin prohibit-password\n"
            << "PrintMotd no\n"
            << "MaxStartups 100:30:200\n"
            << "LogLevel INFO\n";
    }
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
        reason_ = "pipe2 failed";
        return false;
    }
    const std::string cfg = d + "/sshd_config";
    const pid_t parent = ::getpid();
    pid_t pid = ::fork();  // not posix_spawn: the child sets PR_SET_PDEATHSIG before exec
    if (pid < 0) {
        reason_ = "fork failed";
        return false;
    }
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(1);
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(pipe_fds[1], 2);
        ::execl(sshd_path, sshd_path, "-D", "-e", "-f", cfg.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    pid_ = pid;
    ::close(pipe_fds[1]);
    // Its log: read on a thread of its own until every writer is gone (the
    // daemon and the sessions it forked), so the daemon never blocks on it.
    std::thread([fd = pipe_fds[0], st = log_] {
        char buf[4096];
        for (;;) {
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            std::lock_guard lock(st->m);
            if (n <= 0) {
                st->ended = true;
                st->cv.notify_all();
                break;
            }
            st->text.append(buf, static_cast<std::size_t>(n));
            st->cv.notify_all();
        }
        ::close(fd);
    }).detach();
    // Ready once it says it listens (an event, not a guess); 30 s is a hang guard.
    std::unique_lock lock(log_->m);
    log_->cv.wait_for(lock, std::chrono::seconds(30), [&] {
        return log_->ended || log_->text.find("Server listening on 127.0.0.1 port") != std::string::npos;
    });
    if (log_->text.find("Server listening on 127.0.0.1 port") == std::string::npos) {
        reason_ = "the private sshd did not start listening; its log:\n" + log_->text;
        return false;
    }
    return true;
}

std::string private_sshd::log() const {
    std::lock_guard lock(log_->m);
    return log_->text;
}

private_sshd::~private_sshd() {
    if (pid_ > 0) {
        ::kill(pid_, SIGTERM);
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
    }
    if (!dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
}

}  // namespace test
