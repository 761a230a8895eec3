// uvexec — starting a worker process (internal).
//
// The channel is a socketpair made here, so that the worker's end can be put
// on descriptor 3, or on 0 and 1 for launchers that forward only stdio. Both
// ends are close-on-exec; the child's dup2 copies are not. Nothing here
// touches libuv: the caller opens the parent's end as a pipe and watches the
// child (reaper.hpp) before calling spawn_worker_process.
#pragma once

#include <exception>
#include <string>
#include <vector>

namespace uvexec::inline v0::detail {

/// Makes a worker's channel: ends[0] is the parent's (non-blocking), ends[1]
/// the child's, above descriptor 3. Null, or the error (nothing left open).
std::exception_ptr make_channel(int (&ends)[2]) noexcept;

/// Starts args[0] (searched on PATH) with args and env, child_end on
/// descriptor 3 (and /dev/null on stdin), or on stdin and stdout when
/// stdio_channel. Null and pid set, or the error.
std::exception_ptr spawn_worker_process(std::vector<std::string>& args, std::vector<std::string>& env,
                                        int child_end, bool stdio_channel, int& pid) noexcept;

/// Starts a fork server (fork_server.hpp): args[0] with args and env, its
/// control socket end on descriptor 3 and its report socket end on 4 (both
/// must be above 4), /dev/null on stdin. Null and pid set, or the error.
std::exception_ptr spawn_fork_server_process(std::vector<std::string>& args, std::vector<std::string>& env,
                                             int control_end, int report_end, int& pid) noexcept;

}  // namespace uvexec::detail
