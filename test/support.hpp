// Helpers shared by the tests.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <uv.h>

#include <uvexec/uvexec.hpp>

namespace test {

using namespace std::chrono_literals;

/// Built with AddressSanitizer or ThreadSanitizer, whose runtimes change what
/// memory a process maps and keeps (shadow memory, a quarantine of freed blocks).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif
#else
inline constexpr bool sanitized = false;
#endif

/// Whether the kernel gives transparent huge pages to memory that asks for
/// them (THP "always" or "madvise").
inline bool huge_pages_available() {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string line;
    std::getline(f, line);
    return line.find("[always]") != std::string::npos || line.find("[madvise]") != std::string::npos;
}

/// The VmFlags line of this process's mapping that holds address p ("" if none).
inline std::string vm_flags_at(const void* p) {
    std::ifstream f("/proc/self/smaps");
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    bool inside = false;
    for (std::string line; std::getline(f, line);) {
        unsigned long lo = 0, hi = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
            inside = a >= lo && a < hi;
        } else if (inside && line.rfind("VmFlags:", 0) == 0) {
            return line;
        }
    }
    return "";
}

/// The bytes of this process's mappings advised to use huge pages ("hg" in
/// their VmFlags).
inline std::size_t huge_advised_bytes() {
    std::ifstream f("/proc/self/smaps");
    std::size_t total = 0, size = 0;
    for (std::string line; std::getline(f, line);) {
        unsigned long lo = 0, hi = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
            size = hi - lo;
        } else if (line.rfind("VmFlags:", 0) == 0 && line.find(" hg") != std::string::npos) {
            total += size;
        }
    }
    return total;
}

/// Counts copies, moves and live objects (cppcoro's `counted`).
struct counted {
    static inline std::atomic<int> copies{0}, moves{0}, alive{0};
    static void reset() { copies = moves = alive = 0; }
    int value = 0;
    explicit counted(int v = 0) : value(v) { ++alive; }
    counted(const counted& o) : value(o.value) { ++copies; ++alive; }
    counted(counted&& o) noexcept : value(o.value) { ++moves; ++alive; }
    counted& operator=(const counted&) = default;
    counted& operator=(counted&&) = default;
    ~counted() { --alive; }
};

/// An exception type of the tests' own, to prove types travel intact.
struct custom_error : std::runtime_error {
    int code;
    custom_error(std::string what, int c) : std::runtime_error(std::move(what)), code(c) {}
};

/// A uv_loop_t the test owns, as a host server would. Its destructor checks
/// that everything uvexec put on it was closed: uv_loop_close() returns 0.
struct host_loop {
    uv_loop_t uv{};
    host_loop() { REQUIRE(uv_loop_init(&uv) == 0); }
    ~host_loop() {
        uv_run(&uv, UV_RUN_DEFAULT);  // let libuv finish closing handles
        CHECK(uv_loop_close(&uv) == 0);
    }
};

/// Spins (with short sleeps) until pred() holds or 10 s pass; returns pred().
/// Used only on foreign threads that have no loop to wait on.
template <class Pred>
bool eventually(Pred pred) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

/// True when pid does not exist or is a zombie that is not ours (a process
/// that has exited, whoever its parent is).
inline bool gone(int pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return true;
    std::string line;
    std::getline(stat, line);
    auto close = line.rfind(')');
    return close != std::string::npos && line.size() > close + 2 && line[close + 2] == 'Z';
}

namespace detail {
template <class T>
uvexec::task<void> wait_all(std::vector<uvexec::future<T>> fs) {
    co_await uvexec::wait(std::move(fs));
}
}  // namespace detail

/// The what() of the exception f holds ("" when it holds a value).
template <class T>
std::string error_text(uvexec::future<T>& f) {
    try {
        (void)f.result();
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}

/// Runs lp until every future in fs is done, whatever their outcome.
template <class T>
void settle(uvexec::loop& lp, std::vector<uvexec::future<T>> fs) {
    lp.run_until_complete(detail::wait_all(std::move(fs)));
}

/// Runs lp (in 5 ms steps, at most 10 s) until pred() holds, for conditions
/// that only the loop's own callbacks make true and that no future reports.
template <class Pred>
void run_until(uvexec::loop& lp, Pred pred) {
    auto poll = [](uvexec::loop& lp, Pred pred) -> uvexec::task<void> {
        for (int i = 0; i < 2000 && !pred(); ++i) co_await uvexec::sleep(lp, 5ms);
    };
    lp.run_until_complete(poll(lp, pred));
}

}  // namespace test
