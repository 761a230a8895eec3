// The remote suite: process-pool workers through a real sshd that this
// program starts on 127.0.0.1 (sshd.hpp), reached with uvexec::ssh_launcher
// exactly as docs/remote-workers.md's recipe says. Without root, sshd,
// ssh-keygen or ssh every test says why and skips; CI installs them
// (.ci/run).
//
// This executable is its own worker, as the other process-pool tests are;
// the worker runs on the same machine but is started by sshd, so it has
// sshd's environment, $HOME as its working directory, and stdio as its only
// channel. Tests synchronise on events (a worker's answer, the gate's FIFO),
// never on the clock.
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include "../gate.hpp"
#include "../remote_functions.hpp"
#include "../support.hpp"
#include "sshd.hpp"

using namespace test;
using uvexec::fn;
using uvexec::future;
using uvexec::process_pool_executor;

namespace work {

int pid() { return static_cast<int>(::getpid()); }
std::string echo(std::string s) { return s; }
std::string name() { return std::string(uvexec::this_worker::name()); }
void fails(std::string why) { throw std::runtime_error(why); }
int held(std::string path) { return test::held(std::move(path)); }
/// argv[0] as the worker's kernel has it: the path the far side ran.
std::string argv0() {
    std::ifstream f("/proc/self/cmdline", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return all.substr(0, all.find('\0'));
}
/// The worker's working directory and whether it sees an environment
/// variable the test set in its own environment (it should not: ssh forwards none).
std::string cwd() { return std::filesystem::current_path().string(); }
bool sees_test_variable() { return std::getenv("UVEXEC_REMOTE_TEST_MARK") != nullptr; }

}  // namespace work

namespace {

private_sshd* the_sshd = nullptr;

/// The suite's launcher, as the docs' recipe has it.
uvexec::launcher_spec ssh_to_localhost() {
    return uvexec::ssh_launcher("127.0.0.1",
                                {.port = the_sshd->port(),
                                 .identity_file = the_sshd->client_key(),
                                 .extra_options = {"StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
                                                   "LogLevel=ERROR"}});
}

/// False (with a loud message) when the suite cannot run here.
bool sshd_ready() {
    if (the_sshd->reason().empty()) return true;
    MESSAGE("SKIPPED: the remote suite needs a private sshd: " << the_sshd->reason());
    return false;
}

std::string this_host() {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    return host;
}

}  // namespace

TEST_CASE("ssh: results and binary payloads (every byte value, 1 MiB) round trip; the worker is sshd's child") {
    if (!sshd_ready()) return;
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2, .launcher = ssh_to_localhost()}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 12)) == 144);
    std::string every_byte;
    for (int i = 0; i < 256; ++i) every_byte.push_back(static_cast<char>(i));
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::echo>, every_byte)) == every_byte);
    std::string mib(std::size_t{1} << 20, '\0');
    for (std::size_t i = 0; i < mib.size(); ++i) mib[i] = static_cast<char>((i * 131 + i / 256) & 0xff);
    std::vector<future<std::string>> both{lp.run_in_executor(ex, fn<&work::echo>, mib),
                                          lp.run_in_executor(ex, fn<&work::echo>, mib)};
    settle(lp, both);
    CHECK(both[0].result() == mib);
    CHECK(both[1].result() == mib);
    // The pool started ssh clients; the workers are other processes, which
    // have no environment of ours and start in $HOME.
    const int worker = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    const auto launchers = ex.worker_pids();
    CHECK(std::find(launchers.begin(), launchers.end(), worker) == launchers.end());
    CHECK_FALSE(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::sees_test_variable>)));
    // sshd starts the command in the user's home from the password database
    // (not the test's $HOME, which CI may set elsewhere).
    const passwd* me = ::getpwuid(::getuid());
    REQUIRE(me != nullptr);
    CHECK(std::filesystem::equivalent(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::cwd>)), me->pw_dir));
    lp.run_until_complete(ex.shutdown());
    CHECK(ex.live_workers() == 0);
}

TEST_CASE("ssh: an exception crosses as remote_error with its type and message") {
    if (!sshd_ready()) return;
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .launcher = ssh_to_localhost()}};
    auto f = lp.run_in_executor(ex, fn<&work::fails>, std::string("it's $HOME `broken`"));
    settle(lp, std::vector{f});
    try {
        f.result();
        FAIL("no exception");
    } catch (const uvexec::remote_error& e) {
        CHECK(e.type_name() == "std::runtime_error");
        CHECK(e.message() == "it's $HOME `broken`");
    }
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("ssh: an executable path with a space and a name_prefix with a space reach the far side intact") {
    if (!sshd_ready()) return;
    const std::filesystem::path dir = the_sshd->dir() / "dir with space $x 'q'";
    std::filesystem::create_directories(dir);
    const std::filesystem::path exe = dir / "my worker";
    std::filesystem::create_symlink(std::filesystem::read_symlink("/proc/self/exe"), exe);
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .name_prefix = "my pool",
                              .worker_executable = exe.string(),
                              .launcher = ssh_to_localhost()}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::name>)) == "my pool_0");
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::argv0>)) == exe.string());
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("ssh: a worker executable whose main forgot worker_main is refused across ssh, not run") {
    if (!sshd_ready()) return;
    uvexec::loop lp;
    process_pool_executor ex{
        {.max_workers = 2, .worker_executable = UVEXEC_TEST_FORGETFUL_EXE, .launcher = ssh_to_localhost()}};
    auto f = lp.run_in_executor(ex, fn<&remote::square>, 3);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::broken_executor_error);
    const std::string text = error_text(f);
    CHECK(text.find("worker_main") != std::string::npos);
    CHECK(text.find("status 121") != std::string::npos);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("ssh: an executable missing on the far side fails its starts (status 127) and then breaks the pool") {
    if (!sshd_ready()) return;
    uvexec::loop lp;
    const std::string missing = (the_sshd->dir() / "no such worker").string();
    process_pool_executor ex{{.max_workers = 1, .worker_executable = missing, .launcher = ssh_to_localhost()}};
    auto f = lp.run_in_executor(ex, fn<&remote::square>, 3);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::broken_executor_error);
    const std::string text = error_text(f);
    CAPTURE(text);
    CHECK(text.find("in a row failed to start") != std::string::npos);
    CHECK(text.find("exited with status 127") != std::string::npos);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("ssh: a SIGKILLed remote worker fails its call with worker_died_error naming its pid and host; the pool heals") {
    if (!sshd_ready()) return;
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .launcher = ssh_to_localhost()}};
    const int worker = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    const int launcher = ex.worker_pids().at(0);
    REQUIRE(worker != launcher);
    gate g;
    auto f = lp.run_in_executor(ex, fn<&work::held>, g.path());
    g.wait_started(1);  // it runs the call now
    REQUIRE(::kill(worker, SIGKILL) == 0);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::worker_died_error);
    const std::string text = error_text(f);
    CAPTURE(text);
    CHECK(text.find("worker process " + std::to_string(launcher)) != std::string::npos);
    CHECK(text.find("the worker itself is pid " + std::to_string(worker) + " on host " + this_host()) !=
          std::string::npos);
    CHECK(text.find("its launcher ended the channel") != std::string::npos);
    try {
        f.result();
    } catch (const uvexec::worker_died_error& e) {
        CHECK(e.pid() == launcher);  // the process the pool started and reaped: ssh
    }
    // A replacement serves.
    const int next = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pid>));
    CHECK(next != worker);
    lp.run_until_complete(ex.shutdown());
}

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    // Set after worker_main: a worker must not see it (ssh forwards no environment).
    ::setenv("UVEXEC_REMOTE_TEST_MARK", "1", 1);
    auto sshd = std::make_unique<private_sshd>();
    the_sshd = sshd.get();
    if (!sshd->reason().empty()) std::fprintf(stderr, "remote suite: SKIPPING every test: %s\n", sshd->reason().c_str());
    doctest::Context context(argc, argv);
    int result = context.run();
    if (result != 0 && sshd->reason().empty()) std::fprintf(stderr, "the private sshd's log:\n%s\n", sshd->log().c_str());
    sshd.reset();  // stopped by pid, its directory removed
    return result;
}
