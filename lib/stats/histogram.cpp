// uvexec — latency_histogram: HdrHistogram's log-linear buckets.
//
// Values 0 to sub_buckets-1 ns have a bucket each; above, the power of two
// [2^k, 2^(k+1)) is split into sub_buckets equal buckets of 2^(k-3) ns. So a
// bucket is at most 1/8 of its lower bound wide, and its middle is within
// 6.25% of any value in it.
#include "uvexec/stats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace uvexec::inline v0 {

namespace {
constexpr unsigned sub_bits = 3;  // log2(sub_buckets)
static_assert(latency_histogram::sub_buckets == 1u << sub_bits);
}  // namespace

std::size_t latency_histogram::bucket_of(std::uint64_t ns) noexcept {
    if (ns < sub_buckets) return static_cast<std::size_t>(ns);
    const unsigned k = static_cast<unsigned>(std::bit_width(ns)) - 1;  // 2^k <= ns < 2^(k+1), k >= 3
    return (k - sub_bits + 1) * sub_buckets + static_cast<std::size_t>((ns >> (k - sub_bits)) - sub_buckets);
}

std::uint64_t latency_histogram::bucket_start(std::size_t bucket) noexcept {
    if (bucket < sub_buckets) return bucket;
    const std::size_t k = bucket / sub_buckets - 1 + sub_bits;
    return static_cast<std::uint64_t>(sub_buckets + bucket % sub_buckets) << (k - sub_bits);
}

void latency_histogram::record(std::chrono::nanoseconds d) noexcept {
    const std::uint64_t ns = d.count() < 0 ? 0 : static_cast<std::uint64_t>(d.count());
    ++buckets_[bucket_of(ns)];
    ++count_;
    sum_ += ns;
    max_ = std::max(max_, ns);
}

std::chrono::nanoseconds latency_histogram::quantile(double q) const noexcept {
    if (count_ == 0) return std::chrono::nanoseconds(0);
    q = std::clamp(q, 0.0, 1.0);
    // The rank-th smallest value, counting from 1 (the nearest-rank method).
    const auto rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_))));
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < bucket_count; ++b) {
        seen += buckets_[b];
        if (seen < rank) continue;
        const std::uint64_t lo = bucket_start(b);
        const std::uint64_t hi = b + 1 < bucket_count ? bucket_start(b + 1) : lo;  // exclusive
        const std::uint64_t mid = hi > lo + 1 ? lo + (hi - lo) / 2 : lo;
        return std::chrono::nanoseconds(static_cast<std::int64_t>(std::min(mid, max_)));
    }
    return max();
}

std::uint64_t latency_histogram::count_below(std::chrono::nanoseconds bound) const noexcept {
    if (bound.count() <= 0) return 0;
    const auto ns = static_cast<std::uint64_t>(bound.count());
    std::uint64_t n = 0;
    // Buckets that end at or below bound.
    for (std::size_t b = 0; b + 1 < bucket_count && bucket_start(b + 1) <= ns; ++b) n += buckets_[b];
    return n;
}

}  // namespace uvexec
