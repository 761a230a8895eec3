// uvexec — a worker's limits: the command-line word and the worker's checks.
#include "worker_limits.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>

namespace uvexec::inline v0::detail {

worker_limit_spec limits_of(const process_pool_options& opts) {
    worker_limit_spec spec;
    spec.max_rss = opts.max_worker_memory.value_or(0);
    spec.address_space = opts.limits.address_space.value_or(0);
    spec.cpu_seconds = opts.limits.cpu_time ? static_cast<std::uint64_t>(opts.limits.cpu_time->count()) : 0;
    return spec;
}

std::string limits_word(const worker_limit_spec& spec) {
    std::string word(limits_word_prefix);
    auto add = [&](const char* key, std::uint64_t v) {
        if (v == 0) return;
        if (word.size() > limits_word_prefix.size()) word += ',';
        word += fmt::format("{}={}", key, v);
    };
    add("rss", spec.max_rss);
    add("as", spec.address_space);
    add("cpu", spec.cpu_seconds);
    return word;
}

bool parse_limits_word(std::string_view word, worker_limit_spec& spec) noexcept {
    if (!word.starts_with(limits_word_prefix)) return false;
    word.remove_prefix(limits_word_prefix.size());
    while (!word.empty()) {
        const auto comma = word.find(',');
        const std::string_view item = word.substr(0, comma);
        word = comma == std::string_view::npos ? std::string_view{} : word.substr(comma + 1);
        const auto eq = item.find('=');
        if (eq == std::string_view::npos) return false;
        const std::string_view key = item.substr(0, eq), value = item.substr(eq + 1);
        std::uint64_t v = 0;
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (ec != std::errc{} || end != value.data() + value.size() || v == 0) return false;
        if (key == "rss") spec.max_rss = v;
        else if (key == "as") spec.address_space = v;
        else if (key == "cpu") spec.cpu_seconds = v;
        else return false;
    }
    return true;
}

std::string apply_start_limits(const worker_limit_spec& spec) noexcept {
    if (spec.address_space == 0) return {};
    struct rlimit rl{};
    if (::getrlimit(RLIMIT_AS, &rl) != 0) return std::strerror(errno);
    rl.rlim_cur = static_cast<rlim_t>(spec.address_space);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max) rl.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_AS, &rl) != 0) return std::strerror(errno);
    return {};
}

void arm_cpu_limit(const worker_limit_spec& spec) noexcept {
    if (spec.cpu_seconds == 0) return;
    struct rusage ru{};
    struct rlimit rl{};
    if (::getrusage(RUSAGE_SELF, &ru) != 0 || ::getrlimit(RLIMIT_CPU, &rl) != 0) return;
    // RLIMIT_CPU counts whole seconds of the process's life: what it has
    // used is rounded up, so the call may use cpu_seconds to one second more.
    const auto used_us = static_cast<std::uint64_t>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1'000'000 +
                         static_cast<std::uint64_t>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    const std::uint64_t used = (used_us + 999'999) / 1'000'000;
    rlim_t soft = static_cast<rlim_t>(used + spec.cpu_seconds);
    if (rl.rlim_max != RLIM_INFINITY && soft > rl.rlim_max) soft = rl.rlim_max;
    if (soft == rl.rlim_cur) return;
    rl.rlim_cur = soft;
    ::setrlimit(RLIMIT_CPU, &rl);
}

std::uint64_t resident_bytes() noexcept {
    // statm: size resident shared text lib data dt, in pages. Kept open: one
    // pread per call, and a limit on open files cannot make it fail later.
    static const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[128];
    const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return 0;
    const char* p = static_cast<const char*>(std::memchr(buf, ' ', static_cast<std::size_t>(n)));
    if (p == nullptr) return 0;
    std::uint64_t pages = 0;
    std::from_chars(p + 1, buf + n, pages);
    return pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace uvexec::detail
