// uvexec — launchers: what a process pool puts in front of a worker's command
// line, as values (ssh_launcher, srun_launcher) or as plain words.
//
// A launcher that runs the worker on another host forwards only stdio, passes
// the worker's command line through a remote shell (ssh) and knows nothing of
// the parent's pid; a launcher_spec says all that, so that the pool sets the
// stdio channel and quotes the words for it. See docs/remote-workers.md.
#pragma once

#include "uvexec/detail/config.hpp"

#include <chrono>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace uvexec::inline v0 {

/// What a process pool puts in front of each worker's command line
/// (process_pool_options::launcher), and what that launcher needs. Plain words
/// convert to one: `.launcher = {"taskset", "-c", "1"}` runs the worker on this
/// machine, its channel on descriptor 3 (unless stdio_channel is set in the
/// options), exactly as a word list always did.
struct launcher_spec {
    /// The launcher's own words, e.g. {"ssh", "-T", ..., "host"}; empty: the
    /// worker is started directly.
    std::vector<std::string> words{};
    /// The launcher forwards only stdin and stdout: the worker's channel goes
    /// there (as process_pool_options::stdio_channel).
    bool stdio_channel = false;
    /// The worker runs on another host (or beyond a launcher that does not
    /// exec it): the parent's pid means nothing there, and a start method that
    /// passes descriptors (forkserver) is refused.
    bool remote = false;
    /// The launcher hands the worker's command line to a POSIX shell on the
    /// far side as one string (ssh does): each of the worker's words is
    /// single-quoted for it, so spaces, quotes and `$` arrive intact.
    bool quote_for_shell = false;

    launcher_spec() = default;
    /// Plain launcher words, as process_pool_options::launcher always took.
    launcher_spec(std::vector<std::string> w)  // NOLINT(google-explicit-constructor): words read as a launcher
        : words(std::move(w)) {}
    /// Plain launcher words: `.launcher = {"taskset", "-c", "1"}`.
    launcher_spec(std::initializer_list<std::string> w)  // NOLINT(google-explicit-constructor)
        : words(w) {}
    /// All four parts, as ssh_launcher and srun_launcher make them.
    launcher_spec(std::vector<std::string> w, bool stdio, bool is_remote, bool quote)
        : words(std::move(w)), stdio_channel(stdio), remote(is_remote), quote_for_shell(quote) {}

    /// True when there is no launcher: the worker is started directly.
    bool empty() const noexcept { return words.empty(); }
};

/// Options of ssh_launcher. Authentication is ssh's: BatchMode is on, so the
/// key must work without a passphrase prompt (an agent or an unencrypted key).
struct ssh_options {
    /// The remote sshd's port (`-p`); unset: ssh's default (its config, or 22).
    std::optional<int> port{};
    /// A private key file (`-i`); empty: ssh's defaults and agent.
    std::string identity_file{};
    /// Seconds between keepalive probes ssh sends when the connection is
    /// silent (`ServerAliveInterval`); 0 turns them off.
    std::chrono::seconds alive_interval{15};
    /// Unanswered keepalives after which ssh drops the connection and exits
    /// with status 255 (`ServerAliveCountMax`): a cut network ends the worker
    /// after about alive_interval × alive_count_max.
    int alive_count_max = 3;
    /// More ssh options, each passed as `-o option`, e.g.
    /// "StrictHostKeyChecking=no" or "ConnectTimeout=5".
    std::vector<std::string> extra_options{};
    /// The ssh client to run (searched on PATH).
    std::string program{"ssh"};
};

/// Workers on host (a name or `user@host`) through ssh: `ssh -T -o
/// BatchMode=yes -o ServerAliveInterval=N -o ServerAliveCountMax=M [-p port]
/// [-i identity] [-o extra...] host`, with the channel on stdio and the
/// worker's command line quoted for the remote shell. The worker executable
/// must exist at the same path there; see docs/remote-workers.md.
launcher_spec ssh_launcher(std::string host, ssh_options opts = {});

/// Options of srun_launcher.
struct srun_options {
    /// Pass `--exact` (a step takes only the CPUs it asks for, so that steps
    /// of one allocation run side by side). Unset: yes when run inside an
    /// allocation (SLURM_JOB_ID is set when srun_launcher is called).
    std::optional<bool> exact{};
    /// More srun arguments, put after the launcher's own, e.g.
    /// {"--partition=debug", "--time=10"}.
    std::vector<std::string> extra_args{};
    /// The srun to run (searched on PATH).
    std::string program{"srun"};
};

/// Workers as Slurm job steps: `srun -n1 --quiet -u [--exact] [extra...]`,
/// with the channel on stdio (-u: unbuffered, or answers wait in srun's
/// buffers). srun execs the worker itself: nothing is quoted.
launcher_spec srun_launcher(srun_options opts = {});

namespace detail {

/// word quoted for a POSIX shell: inside single quotes, each ' written as '\''.
std::string shell_quote(std::string_view word);

/// The command line a pool starts for a worker: the launcher's words, then
/// the worker's own (quoted for the remote shell if the launcher asks).
std::vector<std::string> launch_command(const launcher_spec& launcher, std::vector<std::string> worker_words);

}  // namespace detail

}  // namespace uvexec
