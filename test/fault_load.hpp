// Faults under load: many calls flow through a 4-worker process pool while
// workers die at random -- killed with SIGKILL or SIGSEGV from another thread,
// or exiting by themselves in the middle of a call. Shared by the unit suite
// (test_faults.cpp, short) and the soak suite (soak.cpp, long). The including
// executable must be its own worker (main begins with uvexec::worker_main).
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stop_token>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "support.hpp"

namespace faults {

/// What a call returns: enough to check it is the right answer to the right
/// call, and where it ran.
struct answer {
    int id = 0;
    std::int64_t value = 0;
    int pid = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(id, value, pid);
    }
};

inline std::int64_t expected(int id) { return std::int64_t(id) * 3 + 1; }

/// Calls whose id this says exit their worker with status 7 mid-call.
inline bool exits_itself(int id) { return id % 509 == 508; }

/// The initializer: a signal sent to a worker must kill it, not be turned
/// into exit(1) by a sanitizer's SIGSEGV handler.
inline void default_signals() { std::signal(SIGSEGV, SIG_DFL); }

/// The call: a little work, then the answer (or, for some ids, death).
inline answer job(int id, int spin_us) {
    auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
    while (std::chrono::steady_clock::now() < until) {
    }
    if (exits_itself(id)) ::_exit(7);
    return {id, expected(id), static_cast<int>(::getpid())};
}

/// In a run with a hang timeout, calls whose id this says never return by
/// themselves: odd ones ignore their std::stop_token (cancel_grace kills their
/// worker), even ones return once it is requested.
inline bool hangs(int id) { return id % 211 == 105; }

inline int hang(int id) {
    volatile int spin = id;
    for (;;) spin = spin + 1;
}

inline int hang_until_stopped(std::stop_token stop, int id) {
    while (!stop.stop_requested()) {
    }
    return id;
}

/// True once pid is no longer our child. WNOWAIT: looking must not reap it
/// behind libuv's back.
inline bool reaped(int pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}

/// libuv opens one process-wide pipe pair the first time it watches a signal
/// (SIGCHLD, for the first worker) and keeps it: a descriptor count taken
/// before any worker was ever spawned would see it as a leak. This makes sure
/// it exists.
inline void warm_up() {
    uvexec::loop lp;
    uvexec::process_pool_executor ex{{.max_workers = 1}};
    lp.run_until_complete(lp.run_in_executor(ex, uvexec::fn<&default_signals>));
    lp.run_until_complete(ex.shutdown());
}

inline std::size_t open_fds() {
    std::size_t n = 0;
    for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

struct outcome {
    int answers = 0;   // results and failures received for this id
    bool ok = false;
    int failed_pid = 0, failed_signal = 0, failed_status = 0;
    bool wrong = false;  // a result for another id, a wrong value, or another error
    bool timed_out = false;  // a hanging call's wait_for ended with timeout_error
};

/// Loop-thread state (the killer's closures run on the loop thread too).
struct state {
    std::vector<outcome> outcomes;
    std::set<int> served;                  // pids that answered a call: past hello and initializer
    std::map<int, std::set<int>> killed;   // pid -> signals we sent it
    std::set<int> seen;                    // every worker pid observed
    int kills = 0;
    std::chrono::milliseconds hang_timeout{0};  // 0: no call hangs
};

inline uvexec::task<void> one(uvexec::loop& lp, uvexec::process_pool_executor& ex, state& st, int id, int spin_us) {
    auto& o = st.outcomes[static_cast<std::size_t>(id)];
    try {
        if (st.hang_timeout.count() > 0 && hangs(id)) {
            auto f = (id & 1) ? lp.run_in_executor(ex, uvexec::fn<&hang>, id)
                              : lp.run_in_executor(ex, uvexec::fn<&hang_until_stopped>, id);
            try {
                co_await uvexec::wait_for(std::move(f), st.hang_timeout);
                o.wrong = true;  // it cannot return before its stop
            } catch (const uvexec::timeout_error&) {
                o.timed_out = true;
            }
            ++o.answers;
            co_return;
        }
        answer a = co_await lp.run_in_executor(ex, uvexec::fn<&job>, id, spin_us);
        ++o.answers;
        o.ok = true;
        if (a.id != id || a.value != expected(id)) o.wrong = true;
        st.served.insert(a.pid);
        st.seen.insert(a.pid);
    } catch (const uvexec::worker_died_error& e) {
        ++o.answers;
        o.failed_pid = e.pid();
        o.failed_signal = e.term_signal();
        o.failed_status = e.exit_status();
        st.seen.insert(e.pid());
    } catch (...) {
        ++o.answers;
        o.wrong = true;
    }
}

inline uvexec::task<void> batch(uvexec::loop& lp, uvexec::process_pool_executor& ex, state& st, int first, int n,
                                int spin_us) {
    std::vector<uvexec::future<void>> fs;
    fs.reserve(static_cast<std::size_t>(n));
    for (int id = first; id < first + n; ++id) fs.push_back(lp.spawn(one(lp, ex, st, id, spin_us)));
    co_await uvexec::gather(std::move(fs));
    for (int pid : ex.worker_pids()) st.seen.insert(pid);
}

inline uvexec::task<void> pause(uvexec::loop& lp) { co_await uvexec::sleep(lp, std::chrono::milliseconds(5)); }

struct report {
    int tasks = 0, kills = 0, failures = 0, self_exits = 0, timeouts = 0;
};

/// Runs at least `tasks` calls (in batches of 1000) and until `kills` workers
/// have been killed from another thread, then checks every outcome. tweak
/// may set more options of the pool (worker lifetime, say).
inline report run(int tasks, int kills, int spin_us, std::uint32_t seed,
                  const std::function<void(uvexec::process_pool_options&)>& tweak = {},
                  std::chrono::milliseconds hang_timeout = std::chrono::milliseconds(0)) {
    using namespace std::chrono_literals;
    warm_up();
    const std::size_t fds_before = open_fds();
    state st;
    st.hang_timeout = hang_timeout;
    report rep;
    {
        uvexec::loop lp;
        uvexec::process_pool_options opts{.max_workers = 4, .initializer = uvexec::fn<&default_signals>};
        if (tweak) tweak(opts);
        uvexec::process_pool_executor ex{std::move(opts)};
        std::atomic<bool> stop{false};
        std::atomic<int> kills_done{0};
        std::thread killer([&] {
            std::mt19937 rng(seed);
            while (!stop.load() && kills_done.load() < kills) {
                std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(1000, 8000)(rng)));
                const auto pick = rng();
                const int sig = (pick & 1) ? SIGKILL : SIGSEGV;
                // Pick and kill on the loop thread: a pid in worker_pids() is
                // not reaped yet, so it cannot have been reused.
                lp.call_soon_threadsafe([&st, &ex, &kills_done, pick, sig] {
                    std::vector<int> live;
                    for (int pid : ex.worker_pids())
                        if (st.served.count(pid)) live.push_back(pid);  // killing a starting worker breaks the pool
                    if (live.empty()) return;
                    int pid = live[(pick >> 1) % live.size()];
                    if (::kill(pid, sig) == 0) {
                        st.killed[pid].insert(sig);
                        ++st.kills;
                        ++kills_done;
                    }
                });
            }
        });
        int submitted = 0;
        constexpr int batch_size = 1000;
        const int cap = tasks * 20;
        while (submitted < tasks || (kills_done.load() < kills && submitted < cap)) {
            st.outcomes.resize(static_cast<std::size_t>(submitted + batch_size));
            lp.run_until_complete(batch(lp, ex, st, submitted, batch_size, spin_us));
            submitted += batch_size;
        }
        stop = true;
        killer.join();
        lp.run_until_complete(pause(lp));  // the killer's last closures
        st.hang_timeout = std::chrono::milliseconds(0);  // the last batch must all succeed
        // The pool still serves.
        st.outcomes.resize(static_cast<std::size_t>(submitted + batch_size));
        lp.run_until_complete(batch(lp, ex, st, submitted, batch_size, 0));
        submitted += batch_size;
        for (int id = submitted - batch_size; id < submitted; ++id)
            if (!exits_itself(id)) CHECK(st.outcomes[static_cast<std::size_t>(id)].ok);
        lp.run_until_complete(ex.shutdown());
        rep.tasks = submitted;
    }
    rep.kills = st.kills;

    std::map<int, int> failures_per_pid;
    int lost = 0, twice = 0, wrong = 0, bad_failure = 0;
    for (int id = 0; id < rep.tasks; ++id) {
        const auto& o = st.outcomes[static_cast<std::size_t>(id)];
        if (o.answers == 0) ++lost;
        if (o.answers > 1) ++twice;
        if (o.wrong) ++wrong;
        if (o.timed_out) {
            ++rep.timeouts;
            continue;
        }
        if (o.answers != 1 || o.ok || o.wrong) {
            if (exits_itself(id) && o.ok) ++wrong;  // it cannot have answered
            continue;
        }
        ++rep.failures;
        ++failures_per_pid[o.failed_pid];
        auto k = st.killed.find(o.failed_pid);
        bool by_us = k != st.killed.end() && o.failed_signal != 0 && k->second.count(o.failed_signal) != 0;
        bool by_itself = exits_itself(id) && o.failed_signal == 0 && o.failed_status == 7;
        if (by_itself) ++rep.self_exits;
        if (!by_us && !by_itself) {
            ++bad_failure;
            MESSAGE("call ", id, " failed on worker ", o.failed_pid, " (signal ", o.failed_signal, ", status ",
                    o.failed_status, "), which nobody killed that way");
        }
    }
    CHECK(lost == 0);
    CHECK(twice == 0);
    CHECK(wrong == 0);
    CHECK(bad_failure == 0);
    for (auto [worker, n] : failures_per_pid) {
        auto pid = worker;  // CAPTURE captures in a lambda, and clang 14 cannot capture a structured binding
        CAPTURE(pid);
        CHECK(n == 1);  // a dying worker fails only the call it was running
    }
    CHECK(rep.kills >= kills);
    for (int pid : st.seen) {
        CAPTURE(pid);
        CHECK(reaped(pid));
    }
    for (auto& [pid, sigs] : st.killed) CHECK(reaped(pid));
    CHECK(open_fds() == fds_before);
    MESSAGE(rep.tasks, " calls, ", rep.kills, " kills, ", rep.timeouts, " hanging calls timed out, ", rep.failures,
            " failed with worker_died_error (", rep.self_exits,
            " of them self-exits), ", st.seen.size(), " workers");
    return rep;
}

}  // namespace faults
