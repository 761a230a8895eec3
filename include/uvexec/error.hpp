// uvexec — error types.
//
// Every exception uvexec throws derives from uvexec::error, so one catch clause
// handles them all. libuv's negative status codes are carried as a
// std::error_code in uv_category().
#pragma once

#include "uvexec/detail/config.hpp"

#include <stdexcept>
#include <string>
#include <system_error>

namespace uvexec::inline v0 {

/// Base of every exception uvexec throws.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// The std::error_category of libuv's negative status codes (UV_ECANCELED, ...).
/// message() is uv_strerror(), name() is "libuv".
const std::error_category& uv_category() noexcept;

/// Makes a std::error_code from a libuv status (a negative number).
inline std::error_code make_uv_error_code(int status) noexcept {
    return {-status, uv_category()};
}

/// A libuv call failed. code() holds the libuv status; what() says which call
/// and uv_err_name/uv_strerror of the status.
class uv_error : public error {
public:
    uv_error(int status, const std::string& what_failed);
    const std::error_code& code() const noexcept { return code_; }

private:
    std::error_code code_;
};

/// The future, or the work behind it, was cancelled. Python: asyncio.CancelledError.
class cancelled_error : public error {
public:
    cancelled_error() : error("uvexec: the future was cancelled") {}
    using error::error;
};

/// A wait_for() or wait() deadline passed. Python: asyncio.TimeoutError.
class timeout_error : public error {
public:
    timeout_error() : error("uvexec: the operation timed out") {}
    using error::error;
};

/// An operation was asked of a future in the wrong state, e.g. result() of a
/// pending future or a second set_value(). Python: asyncio.InvalidStateError.
class invalid_state_error : public error {
public:
    using error::error;
};

/// Work was submitted to an executor that has been shut down.
/// Python: RuntimeError('cannot schedule new futures after shutdown').
class executor_shutdown_error : public error {
public:
    using error::error;
};

/// submit() was refused because the executor's queue holds max_queue calls
/// already. Thrown before submit touches its arguments: nothing was taken
/// from the caller, who may wait (co_await ex.room(lp)) and submit again, or
/// refuse the request (HTTP 503). Python: none (piscina's maxQueue error).
class queue_full_error : public error {
public:
    using error::error;
};

/// An executor's initializer failed; the executor accepts no more work and its
/// queued work fails with this error. Python: BrokenThreadPool / BrokenProcessPool.
class broken_executor_error : public error {
public:
    using error::error;
};

/// The loop was closed (destroyed) before the operation could be delivered to it.
/// Python: RuntimeError('Event loop is closed').
class loop_closed_error : public error {
public:
    using error::error;
};

/// A promise was destroyed without being fulfilled. Its future fails with this.
class broken_promise_error : public error {
public:
    broken_promise_error() : error("uvexec: the promise was destroyed without a result") {}
};

/// An exception thrown by a call in a worker process, carried back. Python:
/// the original exception re-raised from a ProcessPoolExecutor future.
class remote_error : public error {
public:
    remote_error(std::string type_name, std::string message);
    /// The demangled type of the original exception ("std::runtime_error"), or
    /// "unknown exception type" for a throw of something not derived from
    /// std::exception.
    const std::string& type_name() const noexcept { return type_name_; }
    /// The original what().
    const std::string& message() const noexcept { return message_; }

private:
    std::string type_name_;
    std::string message_;
};

/// The worker process running a call died (signal, exit, or a corrupt
/// message on its channel) before answering. Only that call fails; the pool
/// replaces the worker. Python: BrokenProcessPool (which breaks the whole pool).
class worker_died_error : public error {
public:
    worker_died_error(const std::string& what, int pid, int exit_status, int term_signal)
        : error(what), pid_(pid), exit_status_(exit_status), term_signal_(term_signal) {}
    int pid() const noexcept { return pid_; }
    /// The exit status, when the worker exited (term_signal() == 0); -1 when
    /// its status was lost because another waitpid() in the process reaped it.
    int exit_status() const noexcept { return exit_status_; }
    /// The signal that killed the worker, or 0.
    int term_signal() const noexcept { return term_signal_; }

private:
    int pid_, exit_status_, term_signal_;
};

/// The name this error had before 0.2.
using worker_died [[deprecated("uvexec::worker_died is now uvexec::worker_died_error")]] = worker_died_error;

/// A call's arguments or result do not fit in one frame (max_frame_size).
class message_too_large_error : public error {
public:
    using error::error;
};

/// A process-pool call names a function that its workers cannot tell apart
/// from another of the same qualified name and type (see fn.hpp); thrown by
/// submit, so no call can run the wrong function.
class ambiguous_function_error : public error {
public:
    using error::error;
};

}  // namespace uvexec
