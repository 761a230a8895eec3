// Launchers as values: the words ssh_launcher and srun_launcher produce, and
// the quoting of a worker's command line for a remote shell, checked against
// a real /bin/sh. (The remote suite, test/remote/, runs workers through a
// real sshd.)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <uvexec/uvexec.hpp>

using uvexec::launcher_spec;
using uvexec::detail::launch_command;
using uvexec::detail::shell_quote;
using strings = std::vector<std::string>;

namespace {

/// What /bin/sh makes of a command line: runs `printf %s <line>` through
/// popen (which is `sh -c`) and returns its output.
std::string sh_output(const std::string& line) {
    std::FILE* p = ::popen(("printf %s " + line).c_str(), "r");
    REQUIRE(p != nullptr);
    std::string out;
    char buf[256];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    CHECK(::pclose(p) == 0);
    return out;
}

/// Sets or unsets an environment variable for one test, and puts it back.
class env_var {
public:
    env_var(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) {
            old_ = old;
            had_ = true;
        }
        if (value) ::setenv(name, value, 1);
        else ::unsetenv(name);
    }
    ~env_var() {
        if (had_) ::setenv(name_, old_.c_str(), 1);
        else ::unsetenv(name_);
    }
    env_var(const env_var&) = delete;
    env_var& operator=(const env_var&) = delete;

private:
    const char* name_;
    std::string old_;
    bool had_ = false;
};

}  // namespace

TEST_CASE("ssh_launcher: batch mode, no pty, keepalives, then port, identity, extra options and the host") {
    launcher_spec s = uvexec::ssh_launcher("worker-host");
    CHECK(s.words == strings{"ssh", "-T", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o",
                             "ServerAliveCountMax=3", "worker-host"});
    CHECK(s.stdio_channel);
    CHECK(s.remote);
    CHECK(s.quote_for_shell);

    s = uvexec::ssh_launcher("me@box", {.port = 2222,
                                        .identity_file = "/keys/id ed25519",
                                        .alive_interval = std::chrono::seconds(5),
                                        .alive_count_max = 2,
                                        .extra_options = {"StrictHostKeyChecking=no", "ConnectTimeout=3"},
                                        .program = "/usr/bin/ssh"});
    CHECK(s.words == strings{"/usr/bin/ssh", "-T", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", "-o",
                             "ServerAliveCountMax=2", "-p", "2222", "-i", "/keys/id ed25519", "-o",
                             "StrictHostKeyChecking=no", "-o", "ConnectTimeout=3", "me@box"});
}

TEST_CASE("ssh_launcher refuses a host ssh would misread and impossible options") {
    CHECK_THROWS_AS(uvexec::ssh_launcher(""), std::invalid_argument);
    CHECK_THROWS_AS(uvexec::ssh_launcher("-oProxyCommand=x"), std::invalid_argument);
    CHECK_THROWS_AS(uvexec::ssh_launcher("h", {.port = 0}), std::invalid_argument);
    CHECK_THROWS_AS(uvexec::ssh_launcher("h", {.port = 65536}), std::invalid_argument);
    CHECK_THROWS_AS(uvexec::ssh_launcher("h", {.alive_count_max = 0}), std::invalid_argument);
    CHECK_THROWS_AS(uvexec::ssh_launcher("h", {.alive_interval = std::chrono::seconds(-1)}), std::invalid_argument);
}

TEST_CASE("srun_launcher: one task, quiet, unbuffered; --exact inside an allocation unless told; no quoting") {
    {
        env_var job("SLURM_JOB_ID", nullptr);
        launcher_spec s = uvexec::srun_launcher();
        CHECK(s.words == strings{"srun", "-n1", "--quiet", "-u"});
        CHECK(s.stdio_channel);
        CHECK(s.remote);
        CHECK_FALSE(s.quote_for_shell);
        CHECK(uvexec::srun_launcher({.exact = true}).words == strings{"srun", "-n1", "--quiet", "-u", "--exact"});
    }
    {
        env_var job("SLURM_JOB_ID", "4242");
        CHECK(uvexec::srun_launcher().words == strings{"srun", "-n1", "--quiet", "-u", "--exact"});
        CHECK(uvexec::srun_launcher({.exact = false}).words == strings{"srun", "-n1", "--quiet", "-u"});
        CHECK(uvexec::srun_launcher({.extra_args = {"--partition=debug", "--time=10"}, .program = "/opt/srun"}).words ==
              strings{"/opt/srun", "-n1", "--quiet", "-u", "--exact", "--partition=debug", "--time=10"});
    }
}

TEST_CASE("plain launcher words stay a launcher that runs the worker here, unquoted, on descriptor 3") {
    uvexec::process_pool_options o{.launcher = {"taskset", "-c", "1"}};
    CHECK(o.launcher.words == strings{"taskset", "-c", "1"});
    CHECK_FALSE(o.launcher.stdio_channel);
    CHECK_FALSE(o.launcher.remote);
    CHECK_FALSE(o.launcher.quote_for_shell);
    const strings words{"nice", "-n", "5"};
    o.launcher = words;
    CHECK(o.launcher.words == words);
    CHECK(uvexec::process_pool_options{}.launcher.empty());
    CHECK(launch_command(o.launcher, {"/bin/my worker", "--uvexec-worker", "my pool_0"}) ==
          strings{"nice", "-n", "5", "/bin/my worker", "--uvexec-worker", "my pool_0"});
}

TEST_CASE("shell_quote: single quotes, each ' as '\\''") {
    CHECK(shell_quote("") == "''");
    CHECK(shell_quote("plain") == "'plain'");
    CHECK(shell_quote("my pool") == "'my pool'");
    CHECK(shell_quote("it's") == "'it'\\''s'");
    CHECK(shell_quote("'") == "''\\'''");
}

TEST_CASE("shell_quote: a POSIX shell reads back every word exactly, whatever it holds") {
    const strings words{"",
                        "plain",
                        "/path with space/worker",
                        "my pool_0",
                        "it's",
                        "''",
                        "\"double\"",
                        "$HOME ${HOME} $(id) $((1+1))",
                        "`id`",
                        "back\\slash\\",
                        "new\nline\n",
                        "tab\there",
                        "glob * ? [a]",
                        "; rm -rf / & | < > ( ) { } # ~ !",
                        "limits:as=1048576,cpu=5"};
    for (const std::string& w : words) {
        CAPTURE(w);
        CHECK(sh_output(shell_quote(w)) == w);
    }
    // As ssh sends them: words joined with spaces, one string for the remote shell.
    std::string all;
    for (const std::string& w : words) all += shell_quote(w) + " ";
    std::string expected;
    for (const std::string& w : words) expected += w;
    CHECK(sh_output(all) == expected);
}

TEST_CASE("launch_command: an ssh launcher's own words are left alone, each worker word is quoted") {
    launcher_spec s = uvexec::ssh_launcher("box", {.identity_file = "/k/id"});
    strings cmd = launch_command(s, {"/opt/my app/worker", "--uvexec-worker", "1048576", "my pool_0", "0", "stdio"});
    REQUIRE(cmd.size() == s.words.size() + 6);
    CHECK(strings(cmd.begin(), cmd.begin() + static_cast<std::ptrdiff_t>(s.words.size())) == s.words);
    CHECK(strings(cmd.begin() + static_cast<std::ptrdiff_t>(s.words.size()), cmd.end()) ==
          strings{"'/opt/my app/worker'", "'--uvexec-worker'", "'1048576'", "'my pool_0'", "'0'", "'stdio'"});
    // srun execs the worker itself: nothing is quoted.
    CHECK(launch_command(uvexec::srun_launcher({.exact = false}), {"/opt/my app/worker", "my pool_0"}) ==
          strings{"srun", "-n1", "--quiet", "-u", "/opt/my app/worker", "my pool_0"});
}

TEST_CASE("a remote launcher cannot go with the fork server, which passes descriptors") {
    CHECK_THROWS_WITH_AS(uvexec::process_pool_executor({.launcher = uvexec::ssh_launcher("box"),
                                                        .start_method = uvexec::process_start_method::forkserver}),
                         doctest::Contains("remote launcher"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(uvexec::process_pool_executor({.launcher = uvexec::srun_launcher(),
                                                        .start_method = uvexec::process_start_method::forkserver}),
                         doctest::Contains("remote launcher"), std::invalid_argument);
}
