// uvexec — an executor_stats snapshot as Prometheus text (format 0.0.4).
//
// https://prometheus.io/docs/instrumenting/exposition_formats/: a HELP and a
// TYPE line per metric family, counters named _total, histograms as
// cumulative _bucket{le="..."} lines ending with le="+Inf", then _sum and
// _count; durations in seconds.
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "uvexec/stats.hpp"

namespace uvexec::inline v0 {

namespace {

/// The histograms' bounds: 2^k ns for k = 10, 12, ..., 36 (1.02 µs to 68.7 s),
/// exact edges of latency_histogram's buckets.
constexpr int first_bound_log2 = 10, last_bound_log2 = 36, bound_step_log2 = 2;

/// A label value with \, " and newline escaped, as the format requires.
std::string escaped(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

struct labelled {
    std::string pool;  // escaped
    const executor_stats* s;
};

struct writer {
    std::string& out;
    const std::vector<labelled>& pools;

    void family(std::string_view name, std::string_view type, std::string_view help) {
        fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }
    template <class T>
    void sample(std::string_view name, const labelled& p, T value, std::string_view extra_labels = {}) {
        fmt::format_to(std::back_inserter(out), "{}{{pool=\"{}\"{}}} {}\n", name, p.pool, extra_labels, value);
    }
    template <class Get>
    void counter(std::string_view name, Get get, std::string_view help) {
        family(name, "counter", help);
        for (const auto& p : pools) sample(name, p, static_cast<std::uint64_t>(get(*p.s)));
    }
    template <class Get>
    void gauge(std::string_view name, Get get, std::string_view help) {
        family(name, "gauge", help);
        for (const auto& p : pools) sample(name, p, static_cast<double>(get(*p.s)));
    }
    template <class Get>
    void histogram(std::string_view name, Get get, std::string_view help) {
        family(name, "histogram", help);
        const std::string bucket = fmt::format("{}_bucket", name);
        for (const auto& p : pools) {
            const latency_histogram& h = get(*p.s);
            for (int k = first_bound_log2; k <= last_bound_log2; k += bound_step_log2) {
                const auto bound = std::chrono::nanoseconds(std::int64_t{1} << k);
                sample(bucket, p, h.count_below(bound), fmt::format(",le=\"{}\"", static_cast<double>(bound.count()) / 1e9));
            }
            sample(bucket, p, h.count(), ",le=\"+Inf\"");
            sample(fmt::format("{}_sum", name), p, static_cast<double>(h.sum().count()) / 1e9);
            sample(fmt::format("{}_count", name), p, h.count());
        }
    }
};

using S = executor_stats;

}  // namespace

std::string prometheus_text(const executor_stats& stats, std::string_view name) {
    return prometheus_text({{name, &stats}});
}

std::string prometheus_text(std::initializer_list<std::pair<std::string_view, const executor_stats*>> pools) {
    std::vector<labelled> all, processes;
    for (const auto& [name, s] : pools) {
        all.push_back({escaped(name), s});
        if (s->of == executor_stats::kind::processes) processes.push_back(all.back());
    }
    std::string out;
    writer w{out, all};
    w.counter("uvexec_calls_submitted_total", [](const S& s) { return s.submitted; }, "Calls accepted by submit().");
    w.counter("uvexec_calls_completed_total", [](const S& s) { return s.completed; }, "Calls that returned a value.");
    w.counter("uvexec_calls_failed_total", [](const S& s) { return s.failed; }, "Calls that ended with an exception.");
    w.counter("uvexec_calls_cancelled_total", [](const S& s) { return s.cancelled; }, "Calls whose future was cancelled.");
    w.counter("uvexec_calls_rejected_total", [](const S& s) { return s.rejected; },
              "submit() calls refused because the queue was full (max_queue).");
    w.gauge("uvexec_calls_queued", [](const S& s) { return s.queued; }, "Calls accepted and not yet started.");
    w.gauge("uvexec_calls_running", [](const S& s) { return s.running; }, "Calls started and not yet finished.");
    w.gauge("uvexec_workers", [](const S& s) { return s.workers; },
            "Worker threads holding a slot, or worker processes alive.");
    w.gauge("uvexec_max_workers", [](const S& s) { return s.max_workers; }, "The executor's max_workers.");
    w.gauge("uvexec_max_queue", [](const S& s) { return s.max_queue; }, "The executor's max_queue; 0 when unbounded.");
    w.gauge("uvexec_utilisation", [](const S& s) { return s.utilisation; },
            "Time spent running calls over max_workers times the time since the first submission (0 to 1).");
    if (!processes.empty()) {
        writer p{out, processes};
        p.counter("uvexec_worker_starts_total", [](const S& s) { return s.starts; }, "Worker processes started.");
        p.family("uvexec_worker_deaths_total", "counter", "Worker processes that ended other than by retiring, by cause.");
        for (const auto& l : processes) {
            p.sample("uvexec_worker_deaths_total", l, l.s->deaths.crashed, ",cause=\"crashed\"");
            p.sample("uvexec_worker_deaths_total", l, l.s->deaths.exited, ",cause=\"exited\"");
            p.sample("uvexec_worker_deaths_total", l, l.s->deaths.killed, ",cause=\"killed\"");
        }
        p.counter("uvexec_worker_recycles_total", [](const S& s) { return s.recycles; },
                  "Workers retired after max_tasks_per_child calls.");
        p.counter("uvexec_worker_memory_recycles_total", [](const S& s) { return s.memory_recycles; },
                  "Workers retired because their resident memory was above max_worker_memory.");
        p.counter("uvexec_worker_idle_exits_total", [](const S& s) { return s.idle_exits; },
                  "Workers retired after idle_timeout without a call.");
    }
    w.histogram("uvexec_call_wait_seconds", [](const S& s) -> const latency_histogram& { return s.wait_time; },
                "Time from submit() to the call's start.");
    w.histogram("uvexec_call_run_seconds", [](const S& s) -> const latency_histogram& { return s.run_time; },
                "Time from a call's start to its end.");
    return out;
}

}  // namespace uvexec
