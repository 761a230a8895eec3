// uvexec — constants and hooks shared by the two sides of the process pool (internal).
#pragma once

#include "uvexec/detail/config.hpp"

#include <string>

namespace uvexec::inline v0::detail {

/// argv[1] of a worker process; the rest: max frame size, worker name,
/// parent pid (0 if unknown, -1 when forked by a fork server: no
/// PR_SET_PDEATHSIG), channel ("3", or "stdio" for stdin+stdout).
inline constexpr const char* worker_flag = "--uvexec-worker";
/// argv[1] of a fork server (process_start_method::forkserver); the rest:
/// max frame size, parent pid (0 if unknown), the workers' limits (optional).
/// Its control socket is descriptor 3, its report socket descriptor 4.
inline constexpr const char* fork_server_flag = "--uvexec-fork-server";
/// The worker's end of its channel.
inline constexpr int channel_fd = 3;
/// Exit status of a worker whose main() used uvexec without calling worker_main.
inline constexpr int unserved_worker_status = 121;

/// Exits the process (status 121) if it was started as a worker but main()
/// did not call worker_main: called by every uvexec::loop and process pool
/// constructor, so a forgetful worker can never start workers of its own.
void refuse_unserved_worker();

const std::string& process_worker_name() noexcept;
bool in_process_worker() noexcept;

}  // namespace uvexec::detail
