// process_start_method::forkserver: workers forked by a fork server that has
// run nothing of main but worker_main, under the faults the default start
// method passes (a worker killed, the fork server itself killed, the parent
// dying, random kills under load).
//
// This executable is its own worker (main begins with worker_main).
#define DOCTEST_CONFIG_IMPLEMENT
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "fault_load.hpp"

using namespace test;
using uvexec::fn;
using uvexec::process_pool_executor;
using uvexec::process_start_method;

namespace {

/// Set by main after worker_main: a process forked from the test (not from a
/// fork server that never ran main) would see 1.
int main_ran = 0;
/// Counted by the initializer, in each worker.
int initialized = 0;

int my_pid() { return static_cast<int>(::getpid()); }
int saw_main() { return main_ran; }
void count_init() { ++initialized; }
int init_count() { return initialized; }

/// Writes its pid to path (so the test knows it runs, and where), then waits
/// until the file go exists; returns 42.
int run_until_go(std::string path, std::string go) {
    {
        std::ofstream(path + ".tmp") << ::getpid() << "\n";
        std::filesystem::rename(path + ".tmp", path);
    }
    while (!std::filesystem::exists(go)) ::usleep(1000);
    return 42;
}

/// Writes its pid to path, then blocks until killed.
int hang(std::string path) {
    run_until_go(path, "/");
    for (;;) ::pause();
}

std::string scratch(const std::string& what) {
    return (std::filesystem::temp_directory_path() /
            ("uvexec-forkserver-" + std::to_string(::getpid()) + "-" + what))
        .string();
}

/// The pid written by run_until_go/hang, once the file exists (the loop runs meanwhile).
int started(uvexec::loop& lp, const std::string& path) {
    run_until(lp, [&] { return std::filesystem::exists(path); });
    int pid = 0;
    std::ifstream(path) >> pid;
    std::filesystem::remove(path);
    return pid;
}

/// Field 4 of /proc/pid/stat; 0 if pid is gone.
int ppid_of(int pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) return 0;
    auto close = line.rfind(')');
    int ppid = 0;
    char state = 0;
    std::sscanf(line.c_str() + close + 2, "%c %d", &state, &ppid);
    return ppid;
}

std::string cmdline_of(int pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (auto& c : s)
        if (c == '\0') c = ' ';
    return s;
}

bool is_fork_server(int pid) { return cmdline_of(pid).find("--uvexec-fork-server") != std::string::npos; }

/// The initializer of the load test: as fault_load's, and only in a worker
/// that a fork server forked (otherwise the pool is broken and the test fails).
void forked_default_signals() {
    faults::default_signals();
    if (!is_fork_server(static_cast<int>(::getppid()))) throw std::runtime_error("not forked by a fork server");
}

uvexec::process_pool_options forkserver_options(int workers) {
    return {.max_workers = workers, .start_method = process_start_method::forkserver};
}

/// A FIFO that holds a fork server before its exec: as its launcher, a shell
/// reads a line from it, then execs the fork server. release() writes lines.
struct gate {
    explicit gate(const std::string& what) : path(scratch("gate-" + what)) {
        std::filesystem::remove(path);
        REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    }
    ~gate() {
        if (fd >= 0) ::close(fd);
        std::filesystem::remove(path);
    }
    gate(const gate&) = delete;
    gate& operator=(const gate&) = delete;
    std::vector<std::string> launcher() const {
        return {"sh", "-c", "read x < '" + path + "'; exec \"$0\" \"$@\""};
    }
    /// Lets n fork servers through (O_RDWR: never waits for a reader).
    void release(int n = 1) {
        if (fd < 0) fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        for (int i = 0; i < n; ++i) REQUIRE(::write(fd, "go\n", 3) == 3);
    }
    std::string path;
    int fd = -1;
};

/// A uv_timer_t on the loop, counting its 1 ms ticks (it does not hold the loop).
struct ticker {
    explicit ticker(uvexec::loop& lp) : t(new timer) {
        uv_timer_init(lp.native(), &t->handle);
        t->handle.data = t;
        uv_timer_start(&t->handle, [](uv_timer_t* h) { ++static_cast<timer*>(h->data)->ticks; }, 1, 1);
        uv_unref(reinterpret_cast<uv_handle_t*>(&t->handle));
    }
    ~ticker() {
        uv_close(reinterpret_cast<uv_handle_t*>(&t->handle), [](uv_handle_t* h) { delete static_cast<timer*>(h->data); });
    }
    ticker(const ticker&) = delete;
    ticker& operator=(const ticker&) = delete;
    int ticks() const { return t->ticks; }
    struct timer {
        uv_timer_t handle{};
        int ticks = 0;
    };
    timer* t;
};

/// The pid of our child that is a fork server (a launcher's shell before
/// its exec counts: its command line carries the flag), or 0.
int fork_server_child() {
    int found = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        const int pid = std::stoi(name);
        if (ppid_of(pid) == ::getpid() && !gone(pid) && is_fork_server(pid)) found = pid;
    }
    return found;
}

}  // namespace

TEST_SUITE("process_forkserver") {

TEST_CASE("results come through a forkserver pool, from children of a fork server that did not run main") {
    uvexec::loop lp;
    process_pool_executor ex{forkserver_options(2)};
    std::vector<uvexec::future<int>> pids;
    for (int i = 0; i < 2; ++i)
        pids.push_back(lp.run_in_executor(ex, fn<&run_until_go>, scratch("r" + std::to_string(i)), scratch("go")));
    // Both run at once: two workers.
    const int a = started(lp, scratch("r0")), b = started(lp, scratch("r1"));
    std::ofstream(scratch("go")).flush();
    settle(lp, pids);
    std::filesystem::remove(scratch("go"));
    CHECK(pids[0].result() == 42);
    CHECK(pids[1].result() == 42);
    REQUIRE(a != b);
    const int server = ppid_of(a);
    CHECK(server != ::getpid());          // not our child: the fork server's
    CHECK(ppid_of(b) == server);          // one server for the pool
    CHECK(ppid_of(server) == ::getpid());  // which is ours
    CHECK(is_fork_server(server));
    // Forked from a process that ran worker_main and nothing else of main.
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&saw_main>)) == 0);
    CHECK(main_ran == 1);
    lp.run_until_complete(ex.shutdown());
    // The fork server exits once the pool has no worker and takes no call.
    run_until(lp, [&] { return gone(server); });
    CHECK(gone(server));
}

TEST_CASE("the initializer runs once in each forked worker, not in the fork server") {
    uvexec::loop lp;
    auto opts = forkserver_options(2);
    opts.initializer = fn<&count_init>;
    process_pool_executor ex{std::move(opts)};
    std::vector<uvexec::future<int>> fs;
    for (int i = 0; i < 2; ++i)
        fs.push_back(lp.run_in_executor(ex, fn<&run_until_go>, scratch("i" + std::to_string(i)), scratch("igo")));
    const int a = started(lp, scratch("i0")), b = started(lp, scratch("i1"));
    CHECK(a != b);
    CHECK(is_fork_server(ppid_of(a)));
    CHECK(ppid_of(b) == ppid_of(a));
    std::ofstream(scratch("igo")).flush();
    settle(lp, fs);
    std::filesystem::remove(scratch("igo"));
    for (int i = 0; i < 6; ++i) CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&init_count>)) == 1);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a killed forked worker fails only its running call, naming the signal; the next call is not lost") {
    uvexec::loop lp;
    process_pool_executor ex{forkserver_options(1)};
    auto running = lp.run_in_executor(ex, fn<&hang>, scratch("k"));
    const int pid = started(lp, scratch("k"));
    const int server = ppid_of(pid);
    CHECK(is_fork_server(server));
    auto next = lp.run_in_executor(ex, fn<&my_pid>);  // queued behind it (or pipelined, never started)
    REQUIRE(::kill(pid, SIGKILL) == 0);
    settle(lp, std::vector{running});
    try {
        running.result();
        FAIL("the call should have failed");
    } catch (const uvexec::worker_died_error& e) {
        CHECK(e.pid() == pid);
        CHECK(e.term_signal() == SIGKILL);
        CHECK(std::string(e.what()).find("SIGKILL") != std::string::npos);
    }
    const int replacement = lp.run_until_complete(std::move(next));
    CHECK(replacement != pid);
    CHECK(ppid_of(replacement) == server);  // the same fork server forked it
    lp.run_until_complete(ex.shutdown());
    CHECK(gone(pid));
}

TEST_CASE("killing the fork server: running calls finish, its workers' deaths are still seen, new workers start") {
    uvexec::loop lp;
    auto opts = forkserver_options(2);
    opts.min_workers = 2;
    process_pool_executor ex{std::move(opts)};
    auto a = lp.run_in_executor(ex, fn<&run_until_go>, scratch("sa"), scratch("sgo"));
    auto b = lp.run_in_executor(ex, fn<&hang>, scratch("sb"));
    const int pa = started(lp, scratch("sa")), pb = started(lp, scratch("sb"));
    const int server = ppid_of(pa);
    REQUIRE(is_fork_server(server));
    REQUIRE(::kill(server, SIGKILL) == 0);
    run_until(lp, [&] { return faults::reaped(server); });  // the pool reaps its own child
    CHECK(faults::reaped(server));

    // A call running on a worker of the dead server finishes.
    std::ofstream(scratch("sgo")).flush();
    CHECK(lp.run_until_complete(std::move(a)) == 42);
    std::filesystem::remove(scratch("sgo"));

    // A worker of the dead server that dies is seen (its pidfd), its status unknown.
    REQUIRE(::kill(pb, SIGKILL) == 0);
    settle(lp, std::vector{b});
    try {
        b.result();
        FAIL("the call should have failed");
    } catch (const uvexec::worker_died_error& e) {
        CHECK(e.pid() == pb);
        CHECK(std::string(e.what()).find("fork server") != std::string::npos);
    }

    // Its replacement (min_workers) comes from a new fork server.
    run_until(lp, [&] {
        auto pids = ex.worker_pids();
        return pids.size() == 2 && pids[0] != pb && pids[1] != pb;
    });
    auto pids = ex.worker_pids();
    REQUIRE(pids.size() == 2);
    const int fresh = pids[0] == pa ? pids[1] : pids[0];
    const int new_server = ppid_of(fresh);
    CHECK(new_server != server);
    CHECK(new_server != ::getpid());
    CHECK(is_fork_server(new_server));
    CHECK(ppid_of(pa) != server);  // the old server's worker was re-parented, and serves on
    std::set<int> answered;
    for (int i = 0; i < 20; ++i) answered.insert(lp.run_until_complete(lp.run_in_executor(ex, fn<&my_pid>)));
    CHECK(answered.count(pa) + answered.count(fresh) == answered.size());
    lp.run_until_complete(ex.shutdown());
    run_until(lp, [&] { return gone(pa) && gone(fresh) && gone(new_server); });
    CHECK(gone(pa));
    CHECK(gone(fresh));
    CHECK(gone(new_server));
}

TEST_CASE("when the parent dies, the fork server and its workers exit, a busy one too") {
    std::string cmd = "/proc/" + std::to_string(::getpid()) + "/exe --orphan-scenario " + scratch("orphan");
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    int idle = 0, busy = 0, server = 0, forked = 0;
    REQUIRE(std::fscanf(p, "%d %d %d %d", &idle, &busy, &server, &forked) == 4);
    ::pclose(p);
    REQUIRE(idle > 0);
    REQUIRE(busy > 0);
    REQUIRE(server > 0);
    CHECK(forked == 1);  // the workers were the fork server's children
    CHECK(eventually([&] { return gone(server); }));
    CHECK(eventually([&] { return gone(idle); }));
    CHECK(eventually([&] { return gone(busy); }));
}

TEST_CASE("faults under load with the fork server: nothing lost, answered twice or leaked") {
    auto rep = faults::run(3000, 15, 50, 20261206,
                           [](uvexec::process_pool_options& o) {
                               o.start_method = process_start_method::forkserver;
                               o.initializer = fn<&forked_default_signals>;
                           });
    CHECK(rep.failures > 0);
    CHECK(rep.failures - rep.self_exits <= rep.kills);
}

TEST_CASE("a launcher applies to the fork server's exec: taskset pins every forked worker") {
    uvexec::loop lp;
    auto opts = forkserver_options(1);
    opts.launcher = {"taskset", "-c", "0"};
    process_pool_executor ex{std::move(opts)};
    const int pid = lp.run_until_complete(lp.run_in_executor(ex, fn<&my_pid>));
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line, cpus;
    while (std::getline(status, line))
        if (line.rfind("Cpus_allowed_list:", 0) == 0) cpus = line.substr(line.find_first_not_of(" \t", 18));
    CHECK(cpus == "0");
    CHECK(is_fork_server(ppid_of(pid)));
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a worker program whose main forgot worker_main breaks a forkserver pool, saying so") {
    uvexec::loop lp;
    auto opts = forkserver_options(2);
    opts.worker_executable = UVEXEC_TEST_FORGETFUL_EXE;
    process_pool_executor ex{std::move(opts)};
    auto f = lp.run_in_executor(ex, fn<&my_pid>);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::broken_executor_error);
    try {
        f.result();
    } catch (const std::exception& e) {
        const std::string text = e.what();
        CHECK(text.find("fork server") != std::string::npos);
        CHECK(text.find("worker_main") != std::string::npos);
        CHECK(text.find("status 121") != std::string::npos);
    }
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("the loop runs while the fork server is slow to answer; the call completes once it answers") {
    uvexec::loop lp;
    ticker tick(lp);
    gate g("slow");
    auto opts = forkserver_options(1);
    opts.launcher = g.launcher();
    process_pool_executor ex{std::move(opts)};
    auto f = lp.run_in_executor(ex, fn<&my_pid>);
    // Submitting asked the fork server for a worker without waiting for it.
    CHECK_FALSE(f.done());
    run_until(lp, [&] { return tick.ticks() >= 10 || f.done(); });
    CHECK(tick.ticks() >= 10);  // the loop ran while the answer was due
    CHECK_FALSE(f.done());
    CHECK(ex.worker_pids().empty());  // no pid before the answer
    g.release();
    const int pid = lp.run_until_complete(std::move(f));
    CHECK(is_fork_server(ppid_of(pid)));
    CHECK(ex.worker_pids() == std::vector<int>{pid});
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a fork server that never answers fails the start within startup_timeout, saying so; the loop runs meanwhile") {
    uvexec::loop lp;
    ticker tick(lp);
    gate g("never");
    auto opts = forkserver_options(1);
    opts.launcher = g.launcher();
    opts.startup_timeout = std::chrono::milliseconds(500);
    process_pool_executor ex{std::move(opts)};
    auto f = lp.run_in_executor(ex, fn<&my_pid>);
    auto queued = lp.run_in_executor(ex, fn<&my_pid>);  // waits in the queue meanwhile
    CHECK_FALSE(f.done());
    run_until(lp, [&] { return fork_server_child() != 0 || f.done(); });
    const int server = fork_server_child();
    CHECK(server != 0);
    run_until(lp, [&] { return tick.ticks() >= 5 || f.done(); });
    CHECK_FALSE(f.done());
    settle(lp, std::vector{f, queued});
    for (auto* x : {&f, &queued}) {
        const std::string text = error_text(*x);
        CHECK(text.find("fork server") != std::string::npos);
        CHECK(text.find("did not answer within 500 ms (startup_timeout); it was killed") != std::string::npos);
    }
    run_until(lp, [&] { return gone(server); });
    CHECK(gone(server));
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a fork server killed with requests pending fails them, naming the signal; a new one serves the next call") {
    uvexec::loop lp;
    gate g("killed");
    auto opts = forkserver_options(1);
    opts.launcher = g.launcher();
    process_pool_executor ex{std::move(opts)};
    auto a = lp.run_in_executor(ex, fn<&my_pid>);
    auto b = lp.run_in_executor(ex, fn<&my_pid>);
    run_until(lp, [&] { return fork_server_child() != 0; });
    const int server = fork_server_child();
    REQUIRE(server != 0);
    REQUIRE(::kill(server, SIGKILL) == 0);
    settle(lp, std::vector{a, b});
    for (auto* x : {&a, &b}) {
        const std::string text = error_text(*x);
        CHECK(text.find("fork server") != std::string::npos);
        CHECK(text.find("killed by signal 9 (SIGKILL)") != std::string::npos);
    }
    CHECK(ex.live_workers() == 0);
    g.release();
    const int pid = lp.run_until_complete(lp.run_in_executor(ex, fn<&my_pid>));
    CHECK(is_fork_server(ppid_of(pid)));
    CHECK(ppid_of(pid) != server);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("shutdown, kill_workers and the loop's end with a fork request pending") {
    SUBCASE("shutdown waits for the pending worker's call") {
        uvexec::loop lp;
        ticker tick(lp);
        gate g("shutdown");
        auto opts = forkserver_options(1);
        opts.launcher = g.launcher();
        process_pool_executor ex{std::move(opts)};
        auto f = lp.run_in_executor(ex, fn<&my_pid>);
        run_until(lp, [&] { return fork_server_child() != 0; });
        auto done = ex.shutdown();
        run_until(lp, [&] { return tick.ticks() >= 10 || done.done(); });
        CHECK_FALSE(done.done());  // the call is due
        g.release();
        CHECK(is_fork_server(ppid_of(lp.run_until_complete(std::move(f)))));
        lp.run_until_complete(std::move(done));
    }
    SUBCASE("kill_workers cancels the call and ends the request") {
        uvexec::loop lp;
        gate g("kill");
        auto opts = forkserver_options(1);
        opts.launcher = g.launcher();
        process_pool_executor ex{std::move(opts)};
        auto f = lp.run_in_executor(ex, fn<&my_pid>);
        run_until(lp, [&] { return fork_server_child() != 0; });
        const int server = fork_server_child();
        lp.run_until_complete(ex.kill_workers());
        settle(lp, std::vector{f});
        CHECK_THROWS(f.result());
        CHECK(ex.live_workers() == 0);
        run_until(lp, [&] { return gone(server); });
        CHECK(gone(server));
    }
    SUBCASE("the loop closes") {
        int server = 0;
        {
            uvexec::loop lp;
            gate g("close");
            auto opts = forkserver_options(1);
            opts.launcher = g.launcher();
            process_pool_executor ex{std::move(opts)};
            auto f = lp.run_in_executor(ex, fn<&my_pid>);
            run_until(lp, [&] { return fork_server_child() != 0; });
            server = fork_server_child();
        }
        CHECK(server != 0);
        CHECK(gone(server));
    }
}

TEST_CASE("start_method forkserver with stdio_channel is refused, naming both") {
    auto opts = forkserver_options(1);
    opts.stdio_channel = true;
    try {
        process_pool_executor ex{std::move(opts)};
        FAIL("the options should have been refused");
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find("forkserver") != std::string::npos);
        CHECK(std::string(e.what()).find("stdio_channel") != std::string::npos);
    }
}

}  // TEST_SUITE

namespace {
/// A child copy of this test: a forkserver pool with one idle and one busy
/// worker; prints their pids and the fork server's, then dies by SIGKILL.
[[noreturn]] void orphan_scenario(const std::string& path) {
    uvexec::loop lp;
    process_pool_executor ex{forkserver_options(2)};
    auto a = lp.run_in_executor(ex, fn<&run_until_go>, path + "-idle", std::string("/"));
    auto b = lp.run_in_executor(ex, fn<&hang>, path + "-busy");
    const int idle = started(lp, path + "-idle");
    lp.run_until_complete(std::move(a));
    const int busy = started(lp, path + "-busy");
    const int server = ppid_of(busy);
    std::printf("%d %d %d %d\n", idle, busy, server, is_fork_server(server) && ppid_of(idle) == server ? 1 : 0);
    std::fflush(stdout);
    std::raise(SIGKILL);
    std::abort();
}
}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    main_ran = 1;
    if (argc > 2 && std::string(argv[1]) == "--orphan-scenario") orphan_scenario(argv[2]);
    doctest::Context context(argc, argv);
    return context.run();
}
