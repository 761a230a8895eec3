// uvexec benchmarks — shared helpers: options, timing, medians, reporting.
//
// Every benchmark measures uvexec and its baseline in the same run, repeats
// each measurement (default 5 times), and prints the medians and their ratio.
// Benchmarks print numbers; they never fail on a slow machine.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace bench {

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/// `--name value` options with defaults; unknown options are an error.
class options {
public:
    options(int argc, char** argv, std::string_view usage) : usage_(usage) {
        for (int i = 1; i < argc; ++i) {
            std::string_view a = argv[i];
            if (a == "-h" || a == "--help") {
                std::fprintf(stdout, "%.*s\n", static_cast<int>(usage_.size()), usage_.data());
                std::exit(0);
            }
            if (a.substr(0, 2) != "--" || i + 1 >= argc) die(fmt::format("bad argument '{}'", a));
            args_.emplace_back(std::string(a.substr(2)), argv[++i]);
        }
    }
    long get(std::string_view name, long def) {
        known_.emplace_back(name);
        for (auto& [k, v] : args_)
            if (k == name) {
                char* end = nullptr;
                long x = std::strtol(v.c_str(), &end, 10);
                if (end == v.c_str() || *end != '\0' || x < 0) die(fmt::format("--{} wants a number, got '{}'", name, v));
                return x;
            }
        return def;
    }
    std::string get_str(std::string_view name, std::string def) {
        known_.emplace_back(name);
        for (auto& [k, v] : args_)
            if (k == name) return v;
        return def;
    }
    /// Call after all get()s: refuses options nobody asked for.
    void done() {
        for (auto& [k, v] : args_)
            if (std::find(known_.begin(), known_.end(), k) == known_.end()) die(fmt::format("unknown option --{}", k));
    }

private:
    [[noreturn]] void die(const std::string& why) const {
        std::fprintf(stderr, "%s\n%.*s\n", why.c_str(), static_cast<int>(usage_.size()), usage_.data());
        std::exit(2);
    }
    std::string_view usage_;
    std::vector<std::pair<std::string, std::string>> args_;
    std::vector<std::string> known_;
};

/// Runs fn() reps times (after `warmup` unmeasured runs); fn returns one
/// measurement. Prints each measurement when verbose.
inline std::vector<double> repeat(long reps, long warmup, const std::function<double()>& fn) {
    for (long i = 0; i < warmup; ++i) (void)fn();
    std::vector<double> v;
    for (long i = 0; i < reps; ++i) v.push_back(fn());
    return v;
}

inline std::string join(const std::vector<double>& v, const char* fmtspec) {
    std::string s;
    for (double x : v) {
        if (!s.empty()) s += ' ';
        s += fmt::format(fmt::runtime(fmtspec), x);
    }
    return s;
}

/// One result line, human-readable, plus a machine-readable line that
/// compare scripts can grep:  RESULT name uvexec=... baseline=... ratio=... unit=...
inline void report(std::string_view name, std::string_view unit, double uvexec, double baseline,
                   std::string_view baseline_name, std::string_view target) {
    double ratio = baseline != 0 ? uvexec / baseline : 0;
    fmt::print("{:<26} uvexec {:>12.4g} {:<10} {:<22} {:>12.4g} {:<10} ratio {:>6.3f}   {}\n", name, uvexec, unit,
               baseline_name, baseline, unit, ratio, target);
    fmt::print("RESULT {} uvexec={:.6g} baseline={:.6g} ratio={:.4f} unit={}\n", name, uvexec, baseline, ratio, unit);
    std::fflush(stdout);
}

}  // namespace bench
