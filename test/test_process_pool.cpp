// process_pool_executor: workers, naming, codec, faults, lifecycle, no zombies.
//
// This executable is its own worker (main begins with worker_main), like
// libuv's spawn tests use the test binary as the child.
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "remote_functions.hpp"
#include "support.hpp"

using namespace test;
using uvexec::fn;
using uvexec::future;
using uvexec::process_pool_executor;
using uvexec::task;

namespace work {

int my_pid() { return static_cast<int>(::getpid()); }

struct span {
    int pid = 0;
    std::int64_t start_ns = 0, end_ns = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(pid, start_ns, end_ns);
    }
};

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

span nap(int ms) {
    span s{my_pid(), now_ns(), 0};
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    s.end_ns = now_ns();
    return s;
}

void segfault() {
    std::signal(SIGSEGV, SIG_DFL);  // a sanitizer's handler would turn the crash into exit(1)
    std::raise(SIGSEGV);
}
void kill9() { ::kill(::getpid(), SIGKILL); }
void nap_then_segfault(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    segfault();
}
void touch(const std::string& path) { std::ofstream(path) << "ran"; }
void exit3() { std::exit(3); }
void garbage() {
    const char junk[] = "\xff\xff\xff\x7fthis is not a frame";
    (void)!::write(3, junk, sizeof(junk));
    std::this_thread::sleep_for(std::chrono::seconds(30));
}
void noop() {}
int chatty(int n) {
    std::printf("a worker's print goes to the terminal, not the channel\n");
    std::fflush(stdout);
    return n * n;
}

struct my_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
int throws_runtime(int) { throw std::runtime_error("runtime trouble"); }
int throws_custom() { throw my_error("custom trouble"); }
int throws_int() { throw 42; }

struct point {
    int x = 0, y = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(x, y);
    }
    bool operator==(const point&) const = default;
};
point add(point a, point b) { return {a.x + b.x, a.y + b.y}; }

std::map<std::string, std::vector<int>> doubled(std::map<std::string, std::vector<int>> m) {
    for (auto& [k, v] : m)
        for (auto& x : v) x *= 2;
    return m;
}
std::optional<std::string> maybe(std::optional<int> v) {
    if (!v) return std::nullopt;
    return std::to_string(*v);
}
std::tuple<int, std::string, double> tupled(std::tuple<int, std::string, double> t) {
    auto [a, b, c] = t;
    return {a + 1, b + "!", c * 2};
}
std::size_t count_bytes(const std::vector<char>& v) {
    std::size_t n = 0;
    for (char c : v) n += (c == 'x');
    return n;
}
std::vector<char> make_bytes(std::size_t n) { return std::vector<char>(n, 'y'); }
std::string echo(std::string s) { return s; }
/// n bytes of a pattern that shows any byte out of place.
std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 4096) & 0xff);
    return s;
}
/// This process's peak resident memory (VmHWM), in KiB.
long peak_rss_kib() {
    std::ifstream f("/proc/self/status");
    for (std::string line; std::getline(f, line);)
        if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

int init_value = 0;
void init() { init_value = 42; }
int get_init() { return init_value; }
void bad_init() { throw std::runtime_error("the initializer failed on purpose"); }

std::string worker_name() { return std::string(uvexec::this_worker::name()); }

/// What a worker inherited from the way it was started.
struct start_state {
    bool sighup_default = false, sigterm_default = false, sigusr1_unblocked = false;
    std::string stdin_target;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(sighup_default, sigterm_default, sigusr1_unblocked, stdin_target);
    }
};
start_state how_started() {
    start_state s;
    struct sigaction sa{};
    s.sighup_default = ::sigaction(SIGHUP, nullptr, &sa) == 0 && sa.sa_handler == SIG_DFL;
    s.sigterm_default = ::sigaction(SIGTERM, nullptr, &sa) == 0 && sa.sa_handler == SIG_DFL;
    sigset_t blocked;
    s.sigusr1_unblocked = ::pthread_sigmask(SIG_SETMASK, nullptr, &blocked) == 0 && !sigismember(&blocked, SIGUSR1);
    char buf[256];
    ssize_t n = ::readlink("/proc/self/fd/0", buf, sizeof(buf));
    if (n > 0) s.stdin_target.assign(buf, static_cast<std::size_t>(n));
    return s;
}

}  // namespace work

namespace {

/// True once pid is no longer our child: reaped, so no zombie is left.
/// (WNOWAIT: looking must not reap it behind libuv's back.)
bool reaped(int pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}

}  // namespace

TEST_SUITE("process_pool") {

TEST_CASE("calls run in worker processes, started lazily and reused, never more than max_workers at once") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 3}};
    CHECK(ex.live_workers() == 0);
    std::vector<future<work::span>> fs;
    for (int i = 0; i < 12; ++i) fs.push_back(lp.run_in_executor(ex, fn<&work::nap>, 30));
    auto spans = lp.run_until_complete(uvexec::gather(std::move(fs)));
    std::set<int> pids;
    std::vector<std::pair<std::int64_t, int>> events;
    for (auto& s : spans) {
        pids.insert(s.pid);
        events.emplace_back(s.start_ns, +1);
        events.emplace_back(s.end_ns, -1);
    }
    CHECK(pids.size() == 3);
    CHECK(pids.count(static_cast<int>(::getpid())) == 0);
    std::sort(events.begin(), events.end());
    int now = 0, peak = 0;
    for (auto& [t, d] : events) peak = std::max(peak, now += d);
    CHECK(peak <= 3);
    CHECK(peak >= 2);
    CHECK(ex.live_workers() == 3);
    auto before = ex.worker_pids();
    lp.run_until_complete(ex.shutdown());
    CHECK(ex.live_workers() == 0);
    for (int pid : before) CHECK(reaped(pid));
}

TEST_CASE("the same fn<&f> runs on a thread pool and a process pool") {
    uvexec::loop lp;
    uvexec::thread_pool_executor threads{{.max_workers = 2}};
    process_pool_executor processes{{.max_workers = 2}};
    CHECK(lp.run_until_complete(lp.run_in_executor(threads, fn<&remote::square>, 7)) == 49);
    CHECK(lp.run_until_complete(lp.run_in_executor(processes, fn<&remote::square>, 7)) == 49);
    CHECK(lp.run_until_complete(processes.submit(lp, fn<&remote::greet>, "pool")) == "hello, pool");
    lp.run_until_complete(processes.shutdown());
}

TEST_CASE("workers are named after their slot") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .name_prefix = "crunchers"}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::worker_name>)) == "crunchers_0");
    CHECK(uvexec::this_worker::name().empty());
    CHECK_FALSE(uvexec::this_worker::in_process_worker());
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("arguments and results of many types cross intact") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2}};
    auto t = [&]() -> task<void> {
        std::map<std::string, std::vector<int>> m{{"a", {1, 2}}, {"b", {}}, {"c", {-3}}};
        auto dm = co_await lp.run_in_executor(ex, fn<&work::doubled>, m);
        CHECK(dm == std::map<std::string, std::vector<int>>{{"a", {2, 4}}, {"b", {}}, {"c", {-6}}});
        CHECK(co_await lp.run_in_executor(ex, fn<&work::maybe>, std::optional<int>(5)) == std::optional<std::string>("5"));
        CHECK(co_await lp.run_in_executor(ex, fn<&work::maybe>, std::nullopt) == std::nullopt);
        auto tp = co_await lp.run_in_executor(ex, fn<&work::tupled>, std::tuple<int, std::string, double>(1, "x", 1.5));
        CHECK(tp == std::tuple<int, std::string, double>(2, "x!", 3.0));
        CHECK(co_await lp.run_in_executor(ex, fn<&work::add>, work::point{1, 2}, work::point{10, 20}) ==
              work::point{11, 22});
        co_await lp.run_in_executor(ex, fn<&work::noop>);
    };
    lp.run_until_complete(t());
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("payloads of tens of MiB cross both ways") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    std::vector<char> big(48u << 20, 'x');
    big[7] = 'z';
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::count_bytes>, std::move(big))) == (48u << 20) - 1);
    auto back = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::make_bytes>, std::size_t(40) << 20));
    CHECK(back.size() == (40u << 20));
    CHECK(back[12345] == 'y');
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("string results on either side of the size written from where it lies arrive whole") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    const std::size_t t = uvexec::detail::answer_tail_threshold;
    for (std::size_t n : {t - 1, t, t + 1, std::size_t{5} << 20, std::size_t{0}}) {
        CAPTURE(n);
        std::string got = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pattern>, n));
        CHECK(got == work::pattern(n));
        // And an echo: the same bytes out and back, then a small call behind it.
        CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::echo>, got)) == got);
        CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 5)) == 25);
    }
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a large string result is written from where it lies: the worker holds it once, not twice") {
    if (test::sanitized) {
        MESSAGE("skipped: a sanitizer's runtime adds shadow memory to the worker's resident size");
        return;
    }
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    const long before = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::peak_rss_kib>));
    REQUIRE(before > 0);
    const std::size_t n = std::size_t{64} << 20;
    std::string got = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pattern>, n));
    CHECK(got.size() == n);
    const long after = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::peak_rss_kib>));
    // The string (64 MiB) plus what a call costs; encoding it into the answer
    // frame as well would take 64 MiB more.
    CHECK(after - before < 96 * 1024);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a large string result over max_frame_size is refused with a clear error") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_frame_size = 1u << 20}};
    auto f = lp.run_in_executor(ex, fn<&work::pattern>, std::size_t{2} << 20);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::remote_error);
    CHECK(error_text(f).find("max_frame_size") != std::string::npos);
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::pattern>, std::size_t{100})) == work::pattern(100));
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("large and small calls pipelined to one worker arrive whole and in order") {
    // Large and small call frames go out in one write batch, and large
    // results are written from where they lie: both interleave with small ones.
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 8}};
    std::vector<std::string> args;
    for (int i = 0; i < 12; ++i) {
        std::size_t n = i % 3 == 1 ? (std::size_t{3} << 20) + static_cast<std::size_t>(i) : static_cast<std::size_t>(10 + i);
        std::string s(n, '\0');
        for (std::size_t k = 0; k < n; ++k) s[k] = static_cast<char>('a' + (k + static_cast<std::size_t>(i)) % 26);
        args.push_back(std::move(s));
    }
    std::vector<future<std::string>> fs;
    for (auto& a : args) fs.push_back(lp.run_in_executor(ex, fn<&work::echo>, a));
    settle(lp, fs);
    for (std::size_t i = 0; i < fs.size(); ++i) CHECK(fs[i].result() == args[i]);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a large argument still being written when the loop is destroyed is cancelled cleanly") {
    // The worker has not even started: the 64 MiB frame is still being
    // written (from the call itself) when the loop closes and cancels the call.
    process_pool_executor ex{{.max_workers = 1}};
    future<work::span> napping;
    future<std::string> big;
    {
        uvexec::loop lp;
        napping = lp.run_in_executor(ex, fn<&work::nap>, 5000);
        big = lp.run_in_executor(ex, fn<&work::echo>, std::string(64u << 20, 'q'));
    }
    CHECK(napping.cancelled());
    CHECK(big.cancelled());
}

TEST_CASE("a message over max_frame_size is refused with a clear error, on either side") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_frame_size = 4096}};
    CHECK_THROWS_AS(lp.run_in_executor(ex, fn<&work::count_bytes>, std::vector<char>(8192, 'x')),
                    uvexec::message_too_large_error);
    auto f = lp.run_in_executor(ex, fn<&work::make_bytes>, std::size_t(8192));
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::remote_error);
    CHECK(error_text(f).find("max_frame_size") != std::string::npos);
    // The worker is still fine.
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 3)) == 9);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("an exception in a worker arrives as remote_error with its type and message") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    auto a = lp.run_in_executor(ex, fn<&work::throws_runtime>, 1);
    auto b = lp.run_in_executor(ex, fn<&work::throws_custom>);
    auto c = lp.run_in_executor(ex, fn<&work::throws_int>);
    settle(lp, std::vector{a, b, c});
    try {
        a.result();
        FAIL("no exception");
    } catch (const uvexec::remote_error& e) {
        CHECK(e.type_name() == "std::runtime_error");
        CHECK(e.message() == "runtime trouble");
        CHECK(std::string(e.what()).find("runtime trouble") != std::string::npos);
    }
    try {
        b.result();
        FAIL("no exception");
    } catch (const uvexec::remote_error& e) {
        CHECK(e.type_name() == "work::my_error");
        CHECK(e.message() == "custom trouble");
    }
    try {
        c.result();
        FAIL("no exception");
    } catch (const uvexec::remote_error& e) {
        CHECK(e.type_name() == "unknown exception type");
        CHECK(e.message().find("int") != std::string::npos);
    }
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a worker that dies fails only the call it was running; the pool replaces it and serves the rest") {
    struct fault {
        const char* name;
        void (*submit)(uvexec::loop&, process_pool_executor&, std::vector<future<void>>&);
        int signal;
        int status;
        const char* text;
    };
    const fault faults[] = {
        {"SIGSEGV", [](auto& lp, auto& ex, auto& v) { v.push_back(lp.run_in_executor(ex, fn<&work::segfault>)); },
         SIGSEGV, 0, "SIGSEGV"},
        {"SIGKILL", [](auto& lp, auto& ex, auto& v) { v.push_back(lp.run_in_executor(ex, fn<&work::kill9>)); },
         SIGKILL, 0, "SIGKILL"},
        {"exit(3)", [](auto& lp, auto& ex, auto& v) { v.push_back(lp.run_in_executor(ex, fn<&work::exit3>)); }, 0, 3,
         "exited with status 3"},
        {"garbage", [](auto& lp, auto& ex, auto& v) { v.push_back(lp.run_in_executor(ex, fn<&work::garbage>)); },
         SIGKILL, 0, "corrupt message"},
    };
    for (const auto& fl : faults) {
        CAPTURE(fl.name);
        uvexec::loop lp;
        process_pool_executor ex{{.max_workers = 2}};
        std::vector<future<int>> before, after;
        for (int i = 0; i < 4; ++i) before.push_back(lp.run_in_executor(ex, fn<&remote::square>, i));
        std::vector<future<void>> victim;
        fl.submit(lp, ex, victim);
        for (int i = 4; i < 12; ++i) after.push_back(lp.run_in_executor(ex, fn<&remote::square>, i));
        settle(lp, victim);
        try {
            victim[0].result();
            FAIL("the call did not fail");
        } catch (const uvexec::worker_died_error& e) {
            CHECK(e.term_signal() == fl.signal);
            if (fl.signal == 0) CHECK(e.exit_status() == fl.status);
            CHECK(e.pid() > 0);
            CHECK(std::string(e.what()).find(fl.text) != std::string::npos);
            CHECK(reaped(e.pid()));
        }
        auto b = lp.run_until_complete(uvexec::gather(std::move(before)));
        auto a = lp.run_until_complete(uvexec::gather(std::move(after)));
        for (int i = 0; i < 4; ++i) CHECK(b[i] == i * i);
        for (int i = 4; i < 12; ++i) CHECK(a[i - 4] == i * i);
        CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 12)) == 144);
        auto pids = ex.worker_pids();
        lp.run_until_complete(ex.shutdown());
        for (int pid : pids) CHECK(reaped(pid));
    }
}

TEST_CASE("max_tasks_per_child replaces a worker after that many calls") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_tasks_per_child = 2}};
    std::vector<int> pids;
    for (int i = 0; i < 6; ++i) pids.push_back(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::my_pid>)));
    CHECK(pids[0] == pids[1]);
    CHECK(pids[2] == pids[3]);
    CHECK(pids[4] == pids[5]);
    CHECK(std::set<int>(pids.begin(), pids.end()).size() == 3);
    lp.run_until_complete(ex.shutdown());
    for (int pid : pids) CHECK(reaped(pid));
    CHECK_THROWS_AS(process_pool_executor({.max_tasks_per_child = 0}), std::invalid_argument);
    CHECK_THROWS_AS(process_pool_executor({.max_workers = 0}), std::invalid_argument);
}

TEST_CASE("the initializer runs once in each worker before its first call") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2, .initializer = fn<&work::init>}};
    std::vector<future<int>> fs;
    for (int i = 0; i < 6; ++i) fs.push_back(lp.run_in_executor(ex, fn<&work::get_init>));
    for (int v : lp.run_until_complete(uvexec::gather(std::move(fs)))) CHECK(v == 42);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a failing initializer breaks the pool with broken_executor_error naming the cause") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2, .initializer = fn<&work::bad_init>}};
    auto f = lp.run_in_executor(ex, fn<&remote::square>, 2);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::broken_executor_error);
    CHECK(error_text(f).find("the initializer failed on purpose") != std::string::npos);
    CHECK_THROWS_AS(lp.run_in_executor(ex, fn<&remote::square>, 2), uvexec::broken_executor_error);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a dedicated worker executable serves what it exposes and refuses the rest") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .worker_executable = UVEXEC_TEST_WORKER_EXE}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 9)) == 81);
    auto f = lp.run_in_executor(ex, fn<&remote::greet>, "x");
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::remote_error);
    CHECK(error_text(f).find("no function with key") != std::string::npos);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a launcher prefix starts workers through another program") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .launcher = {"taskset", "-c", "0"}}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 5)) == 25);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("with stdio_channel, a launcher that forwards only stdio works and the worker's prints stay off the channel") {
    uvexec::loop lp;
    // This launcher closes every descriptor above 2 before starting the worker.
    process_pool_executor ex{{.max_workers = 1,
                              .launcher = {"sh", "-c", "exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; exec \"$@\"", "sh"},
                              .stdio_channel = true}};
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&work::chatty>, 6)) == 36);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a worker executable that forgot worker_main is reported clearly and starts nothing") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2, .worker_executable = UVEXEC_TEST_FORGETFUL_EXE}};
    auto f = lp.run_in_executor(ex, fn<&remote::square>, 3);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::broken_executor_error);
    auto text = error_text(f);
    CHECK(text.find("worker_main") != std::string::npos);
    CHECK(text.find("status 121") != std::string::npos);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a worker that never starts serving is killed after startup_timeout") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .launcher = {"sh", "-c", "exec sleep 30"},
                              .startup_timeout = std::chrono::milliseconds(200)}};
    auto f = lp.run_in_executor(ex, fn<&remote::square>, 3);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::broken_executor_error);
    CHECK(error_text(f).find("did not start serving within 200 ms") != std::string::npos);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a worker that dies before its hello is replaced, and its calls run on the replacement") {
    // The launcher kills the first worker it starts (SIGKILL, as an OOM kill
    // would) and lets the next one through.
    const std::string flag = "/tmp/uvexec-test-died-once-" + std::to_string(::getpid());
    std::remove(flag.c_str());
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1,
                              .launcher = {"sh", "-c", "if [ ! -e \"$0\" ]; then : > \"$0\"; kill -9 $$; fi; exec \"$@\"",
                                           flag}}};
    std::vector<future<int>> fs;
    for (int i = 0; i < 3; ++i) fs.push_back(lp.run_in_executor(ex, fn<&remote::square>, i + 2));
    // None of them had started: they are not worker_died_error, they simply run.
    CHECK(lp.run_until_complete(uvexec::gather(std::move(fs))) == std::vector<int>{4, 9, 16});
    CHECK(std::ifstream(flag).good());
    lp.run_until_complete(ex.shutdown());
    std::remove(flag.c_str());
}

TEST_CASE("workers that keep dying before their hello break the pool, naming how many and why") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2, .launcher = {"sh", "-c", "kill -9 $$"}}};
    auto f = lp.run_in_executor(ex, fn<&remote::square>, 3);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::broken_executor_error);
    auto text = error_text(f);
    CHECK(text.find("3 worker processes in a row failed to start") != std::string::npos);
    CHECK(text.find("SIGKILL") != std::string::npos);
    CHECK_THROWS_AS(lp.run_in_executor(ex, fn<&remote::square>, 2), uvexec::broken_executor_error);
    lp.run_until_complete(ex.shutdown());
    CHECK(ex.live_workers() == 0);
}

TEST_CASE("a missing worker executable fails the calls with the spawn error") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .worker_executable = "/nonexistent/uvexec-worker"}};
    auto f = lp.run_in_executor(ex, fn<&remote::square>, 3);
    settle(lp, std::vector{f});
    CHECK_THROWS_AS(f.result(), uvexec::uv_error);
    CHECK(error_text(f).find("/nonexistent/uvexec-worker") != std::string::npos);
}

TEST_CASE("shutdown waits for queued calls, reaps every worker, and refuses new calls") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 2}};
    std::vector<future<work::span>> fs;
    for (int i = 0; i < 6; ++i) fs.push_back(lp.run_in_executor(ex, fn<&work::nap>, 10));
    auto stopped = ex.shutdown();
    CHECK_THROWS_AS(lp.run_in_executor(ex, fn<&remote::square>, 1), uvexec::executor_shutdown_error);
    auto pids = ex.worker_pids();
    lp.run_until_complete(stopped);
    for (auto& f : fs) CHECK((f.done() && !f.cancelled() && f.exception() == nullptr));
    for (int pid : pids) CHECK(reaped(pid));
}

TEST_CASE("shutdown(cancel_futures) cancels queued calls and lets sent ones finish") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 1}};
    std::vector<future<work::span>> fs;
    for (int i = 0; i < 5; ++i) fs.push_back(lp.run_in_executor(ex, fn<&work::nap>, 20));
    CHECK(ex.queued() == 4);
    lp.run_until_complete(ex.shutdown(true));
    CHECK((fs[0].done() && !fs[0].cancelled()));
    for (int i = 1; i < 5; ++i) CHECK(fs[i].cancelled());
}

TEST_CASE("cancelling a queued call removes it; cancelling a sent call stops the wait") {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1, .max_in_flight_per_worker = 1}};
    auto first = lp.run_in_executor(ex, fn<&work::nap>, 50);
    auto second = lp.run_in_executor(ex, fn<&work::my_pid>);
    CHECK(second.cancel());
    CHECK(ex.queued() == 0);
    CHECK(first.cancel());
    CHECK(first.cancelled());
    // The worker finishes the nap; its answer is dropped and the pool goes on.
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 4)) == 16);
    lp.run_until_complete(ex.shutdown());
}

TEST_CASE("a call cancelled while it waited inside a worker that then dies never runs") {
    const std::string marker = "/tmp/uvexec-test-cancelled-ran-" + std::to_string(::getpid());
    std::remove(marker.c_str());
    uvexec::loop lp;
    // Pipelined whatever its cost, so that the second waits inside the worker.
    process_pool_executor ex{
        {.max_workers = 1, .max_in_flight_per_worker = 2, .pipeline_below = std::chrono::microseconds::max()}};
    auto dying = lp.run_in_executor(ex, fn<&work::nap_then_segfault>, 100);
    auto behind = lp.run_in_executor(ex, fn<&work::touch>, marker);
    CHECK(ex.queued() == 0);  // both were sent to the one worker
    CHECK(behind.cancel());
    settle(lp, std::vector{dying});
    CHECK_THROWS_AS(dying.result(), uvexec::worker_died_error);
    // The replacement serves new calls, and the cancelled one was not sent again.
    CHECK(lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 5)) == 25);
    lp.run_until_complete(ex.shutdown());
    CHECK_FALSE(std::ifstream(marker).good());
    std::remove(marker.c_str());
}

TEST_CASE("destroying the executor with calls in flight is clean and leaves no zombie") {
    uvexec::loop lp;
    std::vector<int> pids;
    future<work::span> running;
    {
        process_pool_executor ex{{.max_workers = 2}};
        running = lp.run_in_executor(ex, fn<&work::nap>, 50);
        lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 2));
        pids = ex.worker_pids();
    }
    // The executor is gone; its workers finish what they were sent, then exit
    // and are reaped by the loop.
    auto span = lp.run_until_complete(running);
    CHECK(span.pid > 0);
    for (int pid : pids) {
        run_until(lp, [&] { return reaped(pid); });
        CHECK(reaped(pid));
    }
}

TEST_CASE("destroying the loop with calls in flight kills and reaps the workers") {
    std::vector<int> pids;
    process_pool_executor ex{{.max_workers = 2}};
    future<work::span> f;
    {
        uvexec::loop lp;
        f = lp.run_in_executor(ex, fn<&work::nap>, 5000);
        lp.run_until_complete(lp.run_in_executor(ex, fn<&remote::square>, 2));
        pids = ex.worker_pids();
    }
    CHECK(f.cancelled());
    for (int pid : pids) CHECK(reaped(pid));
}

TEST_CASE("a worker starts with default signal dispositions, nothing blocked and /dev/null as stdin") {
    // The parent ignores SIGTERM and SIGHUP and blocks SIGUSR1 on the loop
    // thread that starts the workers: none of it may reach a worker, whose
    // code expects a fresh process. (SIGPIPE, which the pool makes the parent
    // ignore, the worker ignores on its own in worker_main.)
    struct sigaction old_term{}, old_hup{}, ignore{};
    ignore.sa_handler = SIG_IGN;
    REQUIRE(::sigaction(SIGTERM, &ignore, &old_term) == 0);
    REQUIRE(::sigaction(SIGHUP, &ignore, &old_hup) == 0);
    sigset_t usr1, old_mask;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    REQUIRE(::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask) == 0);
    // And its stdin is a pipe, which a worker must not share.
    int saved_stdin = ::dup(0);
    int p[2];
    REQUIRE(::pipe(p) == 0);
    REQUIRE(::dup2(p[0], 0) == 0);
    work::start_state s;
    {
        uvexec::loop lp;
        process_pool_executor ex{{.max_workers = 1}};
        s = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::how_started>));
        lp.run_until_complete(ex.shutdown());
    }
    ::dup2(saved_stdin, 0);
    for (int fd : {saved_stdin, p[0], p[1]}) ::close(fd);
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    ::sigaction(SIGTERM, &old_term, nullptr);
    ::sigaction(SIGHUP, &old_hup, nullptr);
    CHECK(s.sighup_default);
    CHECK(s.sigterm_default);
    CHECK(s.sigusr1_unblocked);
    CHECK(s.stdin_target == "/dev/null");
}

TEST_CASE("a worker reaped behind the pool's back still fails its call with worker_died_error, and the pool carries on") {
    // Only a waitpid() in the host can do this (docs/process-pool.md, Signals warns against
    // it); the pool must still notice the death rather than wait forever.
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    int pid = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::my_pid>));
    auto f = lp.run_in_executor(ex, fn<&work::nap>, 10000);
    REQUIRE(::kill(pid, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);  // the host steals the status
    settle(lp, std::vector{f});
    try {
        f.result();
        FAIL("the call did not fail");
    } catch (const uvexec::worker_died_error& e) {
        CHECK(e.pid() == pid);
        CHECK(e.term_signal() == 0);
        CHECK(e.exit_status() == -1);
        CHECK(std::string(e.what()).find("reaped by another waitpid()") != std::string::npos);
    }
    int next = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::my_pid>));
    CHECK(next != pid);
    auto pids = ex.worker_pids();
    lp.run_until_complete(ex.shutdown());
    for (int p : pids) CHECK(reaped(p));
}

TEST_CASE("a worker exits by itself when its parent dies") {
    // Run the orphan scenario in a child copy of this executable: it starts a
    // worker, prints the worker's pid, and is then killed with SIGKILL.
    std::string cmd = "/proc/" + std::to_string(::getpid()) + "/exe --orphan-scenario";
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    int worker = 0;
    REQUIRE(std::fscanf(p, "%d", &worker) == 1);
    ::pclose(p);
    REQUIRE(worker > 0);
    CHECK(eventually([&] { return gone(worker); }));
}

}  // TEST_SUITE

namespace {
[[noreturn]] void orphan_scenario() {
    uvexec::loop lp;
    process_pool_executor ex{{.max_workers = 1}};
    int pid = lp.run_until_complete(lp.run_in_executor(ex, fn<&work::my_pid>));
    std::printf("%d\n", pid);
    std::fflush(stdout);
    std::raise(SIGKILL);
    std::abort();
}
}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    if (argc > 1 && std::string(argv[1]) == "--orphan-scenario") orphan_scenario();
    doctest::Context context(argc, argv);
    return context.run();
}
