// latency_histogram and prometheus_text on values recorded directly, so that
// every expected figure is known exactly (no clock involved).
#include <chrono>
#include <string>

#include "support.hpp"

using uvexec::latency_histogram;
using ns = std::chrono::nanoseconds;

TEST_SUITE("stats") {

TEST_CASE("latency_histogram: every bucket's first value maps back to it, and buckets are at most 1/8 of their start wide") {
    for (std::size_t b = 0; b + 1 < latency_histogram::bucket_count; ++b) {
        const std::uint64_t lo = latency_histogram::bucket_start(b), hi = latency_histogram::bucket_start(b + 1);
        REQUIRE(latency_histogram::bucket_of(lo) == b);
        REQUIRE(latency_histogram::bucket_of(hi - 1) == b);
        REQUIRE(hi > lo);
        if (lo >= latency_histogram::sub_buckets) REQUIRE((hi - lo) * 8 <= lo);
    }
    CHECK(latency_histogram::bucket_of(~std::uint64_t{0}) == latency_histogram::bucket_count - 1);
}

TEST_CASE("latency_histogram: quantiles of recorded values are within 6.25%, count and sum are exact") {
    latency_histogram h;
    CHECK(h.quantile(0.5) == ns(0));
    // 1, 2, ..., 1000 microseconds.
    std::int64_t sum = 0;
    for (int i = 1; i <= 1000; ++i) {
        h.record(std::chrono::microseconds(i));
        sum += i * 1000;
    }
    CHECK(h.count() == 1000);
    CHECK(h.sum() == ns(sum));
    CHECK(h.max() == std::chrono::microseconds(1000));
    for (double q : {0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0}) {
        const double exact = q * 1000.0 * 1000.0;  // the nearest-rank value, in ns
        const double got = static_cast<double>(h.quantile(q).count());
        CHECK(got >= exact * (1 - 0.0625));
        CHECK(got <= exact * (1 + 0.0625));
    }
    CHECK(h.quantile(1.0) == std::chrono::microseconds(1000));  // clamped to the largest value
    // Small values are exact.
    latency_histogram small;
    for (int i = 0; i < 8; ++i) small.record(ns(i));
    CHECK(small.quantile(0.5) == ns(3));
    CHECK(small.quantile(0.0) == ns(0));
    small.record(ns(-5));  // counts as 0
    CHECK(small.count() == 9);
}

TEST_CASE("latency_histogram: a bimodal mix keeps both modes apart (1 ms and 5 s side by side)") {
    latency_histogram h;
    for (int i = 0; i < 90; ++i) h.record(std::chrono::milliseconds(1));
    for (int i = 0; i < 10; ++i) h.record(std::chrono::seconds(5));
    CHECK(h.quantile(0.5) >= std::chrono::microseconds(937));
    CHECK(h.quantile(0.5) <= std::chrono::microseconds(1063));
    CHECK(h.quantile(0.95) >= std::chrono::milliseconds(4687));
    CHECK(h.quantile(0.95) <= std::chrono::seconds(5));
    CHECK(h.count_below(std::chrono::nanoseconds(1 << 20)) == 90);  // 1.05 ms: a bucket edge
    CHECK(h.count_below(std::chrono::nanoseconds(std::int64_t{1} << 36)) == 100);
}

TEST_CASE("prometheus_text: HELP and TYPE lines, _total counters, cumulative buckets with +Inf, escaped pool label") {
    uvexec::executor_stats s;
    s.of = uvexec::executor_stats::kind::processes;
    s.submitted = 7;
    s.deaths.crashed = 2;
    s.run_time.record(std::chrono::milliseconds(1));
    const std::string t = uvexec::prometheus_text(s, "a\"b");
    CHECK(t.find("# TYPE uvexec_calls_submitted_total counter\n") != std::string::npos);
    CHECK(t.find("uvexec_calls_submitted_total{pool=\"a\\\"b\"} 7\n") != std::string::npos);
    CHECK(t.find("uvexec_worker_deaths_total{pool=\"a\\\"b\",cause=\"crashed\"} 2\n") != std::string::npos);
    CHECK(t.find("uvexec_call_run_seconds_bucket{pool=\"a\\\"b\",le=\"+Inf\"} 1\n") != std::string::npos);
    CHECK(t.find("uvexec_call_run_seconds_count{pool=\"a\\\"b\"} 1\n") != std::string::npos);
    CHECK(t.find("# TYPE uvexec_call_wait_seconds histogram\n") != std::string::npos);
    uvexec::executor_stats threads;
    CHECK(uvexec::prometheus_text(threads, "t").find("uvexec_worker_starts_total") == std::string::npos);
}

}  // TEST_SUITE
