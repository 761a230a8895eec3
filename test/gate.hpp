// A gate for process-pool tests: calls that block in a worker until the test
// releases them, and say when they have started, so that tests synchronise on
// events rather than on the clock. held() is the function a worker runs.
#pragma once

#include <cerrno>
#include <string>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

namespace test {

/// Says it started (a byte on path.started), then blocks until the test
/// writes a byte to the FIFO at path; returns its pid.
inline int held(std::string path) {
    int started = ::open((path + ".started").c_str(), O_WRONLY | O_NONBLOCK);  // the test holds it open
    (void)!::write(started, "s", 1);
    ::close(started);
    int fd = ::open(path.c_str(), O_RDONLY);  // the test holds it open for writing: no wait here
    char c = 0;
    while (::read(fd, &c, 1) < 0 && errno == EINTR) {
    }
    ::close(fd);
    return static_cast<int>(::getpid());
}

/// A FIFO that held() blocks on until release(), and one on which it says
/// it started.
class gate {
public:
    gate() : path_("/tmp/uvexec-test-gate-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++)) {
        for (const std::string& p : {path_, path_ + ".started"}) {
            ::unlink(p.c_str());
            REQUIRE(::mkfifo(p.c_str(), 0600) == 0);
        }
        // O_RDWR: opening does not wait for the other side.
        fd_ = ::open(path_.c_str(), O_RDWR | O_NONBLOCK);
        started_fd_ = ::open((path_ + ".started").c_str(), O_RDWR);
        REQUIRE((fd_ >= 0 && started_fd_ >= 0));
    }
    ~gate() {
        release(64);
        ::close(fd_);
        ::close(started_fd_);
        ::unlink(path_.c_str());
        ::unlink((path_ + ".started").c_str());
    }
    /// Blocks until n held() calls have started (at most 60 s: a hang guard).
    void wait_started(int n) {
        for (int i = 0; i < n; ++i) {
            pollfd p{started_fd_, POLLIN, 0};
            int r;
            while ((r = ::poll(&p, 1, 60000)) < 0 && errno == EINTR) {  // a worker's SIGCHLD
            }
            REQUIRE(r == 1);
            char c = 0;
            REQUIRE(::read(started_fd_, &c, 1) == 1);
        }
    }
    const std::string& path() const { return path_; }
    /// Lets n held() calls go (each reads one byte).
    void release(int n = 1) {
        const std::string bytes(static_cast<std::size_t>(n), 'x');
        (void)!::write(fd_, bytes.data(), bytes.size());
    }

private:
    static inline int counter_ = 0;
    std::string path_;
    int fd_ = -1;
    int started_fd_ = -1;
};

}  // namespace test
