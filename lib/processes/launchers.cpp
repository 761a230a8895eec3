// uvexec — launchers as values: the words of ssh and srun, and the quoting of
// a worker's command line for a remote shell.
#include "uvexec/launchers.hpp"

#include <cstdlib>
#include <stdexcept>

namespace uvexec::inline v0 {

launcher_spec ssh_launcher(std::string host, ssh_options opts) {
    if (host.empty()) throw std::invalid_argument("uvexec::ssh_launcher: the host is empty");
    if (host.front() == '-')
        throw std::invalid_argument("uvexec::ssh_launcher: a host may not begin with '-' (ssh would read an option)");
    if (opts.alive_interval.count() < 0 || opts.alive_count_max < 1)
        throw std::invalid_argument(
            "uvexec::ssh_launcher: alive_interval must not be negative and alive_count_max must be at least 1");
    if (opts.port && (*opts.port < 1 || *opts.port > 65535))
        throw std::invalid_argument("uvexec::ssh_launcher: port must be between 1 and 65535");
    std::vector<std::string> w{std::move(opts.program),
                               "-T",
                               "-o",
                               "BatchMode=yes",
                               "-o",
                               "ServerAliveInterval=" + std::to_string(opts.alive_interval.count()),
                               "-o",
                               "ServerAliveCountMax=" + std::to_string(opts.alive_count_max)};
    if (opts.port) {
        w.emplace_back("-p");
        w.push_back(std::to_string(*opts.port));
    }
    if (!opts.identity_file.empty()) {
        w.emplace_back("-i");
        w.push_back(std::move(opts.identity_file));
    }
    for (auto& o : opts.extra_options) {
        w.emplace_back("-o");
        w.push_back(std::move(o));
    }
    w.push_back(std::move(host));
    return launcher_spec(std::move(w), true, true, true);
}

launcher_spec srun_launcher(srun_options opts) {
    std::vector<std::string> w{std::move(opts.program), "-n1", "--quiet", "-u"};
    const char* job = std::getenv("SLURM_JOB_ID");  // NOLINT(concurrency-mt-unsafe): read, never written
    if (opts.exact.value_or(job != nullptr && *job != '\0')) w.emplace_back("--exact");
    for (auto& a : opts.extra_args) w.push_back(std::move(a));
    return launcher_spec(std::move(w), true, true, false);
}

namespace detail {

std::string shell_quote(std::string_view word) {
    std::string out;
    out.reserve(word.size() + 2);
    out += '\'';
    for (char c : word) {
        if (c == '\'') out += "'\\''";  // close the quotes, an escaped quote, open them again
        else out += c;
    }
    out += '\'';
    return out;
}

std::vector<std::string> launch_command(const launcher_spec& launcher, std::vector<std::string> worker_words) {
    std::vector<std::string> args;
    args.reserve(launcher.words.size() + worker_words.size());
    args.insert(args.end(), launcher.words.begin(), launcher.words.end());
    for (auto& w : worker_words) args.push_back(launcher.quote_for_shell ? shell_quote(w) : std::move(w));
    return args;
}

}  // namespace detail

}  // namespace uvexec
