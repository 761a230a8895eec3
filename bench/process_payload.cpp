// Process-pool payloads: the round trip of a std::string of S bytes to a
// one-worker process_pool_executor whose function returns it
// (`std::string echo(std::string)`), against the same bytes echoed by a bare
// child over a socketpair in the same run: the parent writes an 8-byte length
// and the bytes, the child reads them whole into a buffer it keeps and writes
// them back, the parent reads them into a buffer it keeps. No serialization,
// no event loop, no allocation per round trip: the best a socketpair does.
//
// Reports, per size, the payload bytes round-tripped per second (MiB/s) of
// each and their ratio (uvexec / socketpair; above 1, uvexec is faster).
// Target (issue 13): ratio >= 0.8 at every size, without memfd.
#include <sys/uio.h>

#include <string>
#include <vector>

#include <uvexec/uvexec.hpp>

#include "bare_pipe.hpp"
#include "bench_common.hpp"

namespace {

constexpr std::string_view usage =
    "process_payload [--sizes 64K,1M,16M,128M] [--reps 5] [--mib 64]\n"
    "  Round trips of a std::string of each size to a one-worker process_pool_executor that returns\n"
    "  it, against a bare socketpair echo of the same bytes. Each measurement repeats the round\n"
    "  trip until about --mib MiB have gone each way (at least once). Prints MiB/s and ratios.";

constexpr const char* payload_child_flag = "--bare-payload-child";

std::string echo(std::string s) { return s; }

/// The bare child: u64 length, then the bytes; echoes them back the same way.
[[noreturn]] void payload_child_main() {
    const int fd = 3;
    std::vector<char> buf;
    for (;;) {
        std::uint64_t len = 0;
        try {
            bare::read_all(fd, reinterpret_cast<char*>(&len), sizeof(len));
        } catch (...) {
            ::_exit(0);  // EOF: the parent is done
        }
        if (buf.size() < len) buf.resize(len);
        bare::read_all(fd, buf.data(), len);
        bare::write_all(fd, reinterpret_cast<const char*>(&len), sizeof(len));
        bare::write_all(fd, buf.data(), len);
    }
}

/// One bare round trip of payload; the answer lands in back (kept between rounds).
void bare_round_trip(bare::child& c, const std::string& payload, std::string& back) {
    std::uint64_t len = payload.size();
    iovec iov[2] = {{&len, sizeof(len)}, {const_cast<char*>(payload.data()), payload.size()}};
    std::size_t total = sizeof(len) + payload.size();
    while (total > 0) {
        ssize_t n = ::writev(c.fd, iov, 2);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(std::string("bare pipe: writev: ") + std::strerror(errno));
        }
        total -= static_cast<std::size_t>(n);
        for (auto& v : iov) {
            std::size_t k = std::min(v.iov_len, static_cast<std::size_t>(n));
            v.iov_base = static_cast<char*>(v.iov_base) + k;
            v.iov_len -= k;
            n -= static_cast<ssize_t>(k);
        }
    }
    std::uint64_t got = 0;
    bare::read_all(c.fd, reinterpret_cast<char*>(&got), sizeof(got));
    if (back.size() != got) back.resize(got);
    bare::read_all(c.fd, back.data(), got);
}

uvexec::task<void> uvexec_rounds(uvexec::loop& lp, uvexec::process_pool_executor& ex, const std::string& payload,
                                 long rounds) {
    for (long i = 0; i < rounds; ++i) {
        std::string r = co_await lp.run_in_executor(ex, uvexec::fn<&echo>, payload);
        if (r.size() != payload.size()) throw std::runtime_error("process_payload: the echo lost bytes");
    }
}

/// Seconds per round trip.
double run_uvexec(uvexec::loop& lp, uvexec::process_pool_executor& ex, const std::string& payload, long rounds) {
    auto t0 = bench::clock::now();
    lp.run_until_complete(uvexec_rounds(lp, ex, payload, rounds));
    return bench::seconds_since(t0) / static_cast<double>(rounds);
}

double run_bare(bare::child& c, const std::string& payload, std::string& back, long rounds) {
    auto t0 = bench::clock::now();
    for (long i = 0; i < rounds; ++i) bare_round_trip(c, payload, back);
    return bench::seconds_since(t0) / static_cast<double>(rounds);
}

/// "64K", "16M", "1G" or a byte count.
std::size_t parse_size(std::string_view s) {
    std::size_t mult = 1;
    if (!s.empty() && (s.back() == 'K' || s.back() == 'M' || s.back() == 'G')) {
        mult = s.back() == 'K' ? 1u << 10 : s.back() == 'M' ? 1u << 20 : 1u << 30;
        s.remove_suffix(1);
    }
    std::size_t v = 0;
    for (char ch : s) {
        if (ch < '0' || ch > '9') throw std::invalid_argument("process_payload: bad size");
        v = v * 10 + static_cast<std::size_t>(ch - '0');
    }
    return v * mult;
}

std::string size_name(std::size_t n) {
    if (n >= (1u << 20) && n % (1u << 20) == 0) return fmt::format("{}MiB", n >> 20);
    if (n >= (1u << 10) && n % (1u << 10) == 0) return fmt::format("{}KiB", n >> 10);
    return fmt::format("{}B", n);
}

}  // namespace

int main(int argc, char** argv) {
    uvexec::worker_main(argc, argv);
    if (argc > 1 && std::strcmp(argv[1], payload_child_flag) == 0) payload_child_main();
    bench::options opt(argc, argv, usage);
    std::string sizes_arg = opt.get_str("sizes", "64K,1M,16M,128M");
    long reps = opt.get("reps", 5);
    long mib = opt.get("mib", 64);
    opt.done();

    std::vector<std::size_t> sizes;
    for (std::size_t at = 0; at <= sizes_arg.size();) {
        std::size_t comma = std::min(sizes_arg.find(',', at), sizes_arg.size());
        sizes.push_back(parse_size(std::string_view(sizes_arg).substr(at, comma - at)));
        at = comma + 1;
    }
    fmt::print("process_payload: sizes={} reps={} (~{} MiB each way per measurement; one worker, one bare child)\n",
               sizes_arg, reps, mib);

    uvexec::process_pool_executor ex{{.max_workers = 1}};
    uvexec::loop lp;
    bare::child c = bare::spawn(payload_child_flag);
    std::string back;

    for (std::size_t size : sizes) {
        std::string payload(size, '\0');
        for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<char>('a' + i % 23);
        const long rounds = std::max<long>(1, static_cast<long>((static_cast<std::size_t>(mib) << 20) / std::max<std::size_t>(size, 1)));
        // Warm-up, and the echoes are checked whole once.
        std::string r = lp.run_until_complete(lp.run_in_executor(ex, uvexec::fn<&echo>, payload));
        bare_round_trip(c, payload, back);
        if (r != payload || back != payload) throw std::runtime_error("process_payload: an echo differs");
        r = {};
        std::vector<double> u, b;
        for (long i = 0; i < reps; ++i) {
            u.push_back(run_uvexec(lp, ex, payload, rounds));
            b.push_back(run_bare(c, payload, back, rounds));
        }
        auto ms = [](const std::vector<double>& v) {
            std::vector<double> out;
            for (double x : v) out.push_back(x * 1e3);
            return out;
        };
        const double mib_size = static_cast<double>(size) / (1u << 20);
        fmt::print("  {} x{}: uvexec ms/round trip: {}\n  {} x{}: bare   ms/round trip: {}\n", size_name(size), rounds,
                   bench::join(ms(u), "{:.3f}"), size_name(size), rounds, bench::join(ms(b), "{:.3f}"));
        fmt::print("  {}: medians uvexec {:.3f} ms, socketpair {:.3f} ms per round trip\n", size_name(size),
                   bench::median(u) * 1e3, bench::median(b) * 1e3);
        bench::report("process_payload_" + size_name(size), "MiB/s", mib_size / bench::median(u),
                      mib_size / bench::median(b), "bare socketpair", "(target: ratio >= 0.8)");
    }
    bare::stop(c);
    lp.run_until_complete(ex.shutdown());
}
