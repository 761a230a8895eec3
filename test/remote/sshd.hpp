// A private sshd for the remote suite: its own host key, client key,
// authorized_keys and config in a temporary directory, listening on
// 127.0.0.1 on a free port, started by this process (sshd -D -e), recorded by
// pid and stopped by pid. If this process dies first, the kernel sends sshd
// SIGTERM (PR_SET_PDEATHSIG), so no test run leaves a daemon behind.
#pragma once

#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace test {

class private_sshd {
public:
    /// Starts the daemon, or says why it cannot (reason()): not root, no
    /// /usr/sbin/sshd or ssh-keygen or ssh, or the daemon failed to start.
    private_sshd();
    /// Stops the daemon (SIGTERM to its pid, then waitpid) and removes the directory.
    ~private_sshd();
    private_sshd(const private_sshd&) = delete;
    private_sshd& operator=(const private_sshd&) = delete;

    /// Empty when the daemon runs; otherwise why the suite is skipped.
    const std::string& reason() const { return reason_; }
    int port() const { return port_; }
    int pid() const { return pid_; }
    /// The client's private key, authorised for this user.
    std::string client_key() const { return (dir_ / "client_ed25519").string(); }
    /// The temporary directory (removed with the daemon).
    const std::filesystem::path& dir() const { return dir_; }
    /// What the daemon has logged so far (its -e output).
    std::string log() const;

private:
    struct log_state {
        std::mutex m;
        std::condition_variable cv;
        std::string text;
        bool ended = false;
    };

    bool start();

    std::string reason_;
    std::filesystem::path dir_;
    int port_ = 0;
    int pid_ = -1;
    std::shared_ptr<log_state> log_ = std::make_shared<log_state>();
};

}  // namespace test
