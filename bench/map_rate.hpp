// uvexec benchmarks — the map side of process_map and thread_throughput --map:
// items per second of int twice(int) over iota(0, n) through an executor's
// map(), read in order by one coroutine.
#pragma once

#include <cstdio>
#include <cstddef>

#include <uvexec/uvexec.hpp>

#include "bench_common.hpp"

namespace bench {

inline int twice(int i) noexcept { return 2 * i; }

/// The ints [0, n), computed as they are read: what std::views::iota(0, n)
/// gives, which clang 14 cannot instantiate with libstdc++ 12.
struct iota_ints {
    struct iterator {
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        int i = 0;
        int operator*() const noexcept { return i; }
        iterator& operator++() noexcept {
            ++i;
            return *this;
        }
        iterator operator++(int) noexcept { return {i++}; }
        bool operator==(const iterator&) const = default;
    };
    int n = 0;
    iterator begin() const noexcept { return {0}; }
    iterator end() const noexcept { return {n}; }
};

inline uvexec::task<long> sum_all(uvexec::map_stream<int>& m) {
    long sum = 0;
    while (auto r = co_await m.next()) sum += *r;
    co_return sum;
}

/// Items per second of twice over iota(0, n) through ex.map (fn: uvexec::fn<&twice>
/// or any callable the executor takes); checks the sum.
template <class Ex, class F>
double map_rate(uvexec::loop& lp, Ex& ex, F fn, long n, uvexec::map_options opts) {
    auto t0 = clock::now();
    auto m = ex.map(lp, fn, iota_ints{static_cast<int>(n)}, opts);
    const long sum = lp.run_until_complete(sum_all(m));
    const double rate = static_cast<double>(n) / seconds_since(t0);
    if (sum != (n - 1) * n) std::fprintf(stderr, "map: wrong sum %ld\n", sum);
    return rate;
}

}  // namespace bench
