// uvexec — who is running this code.
#pragma once

#include "uvexec/detail/config.hpp"

#include <string_view>

namespace uvexec::inline v0::this_worker {

/// The name of the executor slot running the calling code:
/// "ThreadPoolExecutor-0_1" on a thread-pool call, "ProcessPoolExecutor-0_1"
/// anywhere in a process-pool worker, "" elsewhere. Python:
/// threading.current_thread().name / multiprocessing.current_process().name.
std::string_view name() noexcept;

/// True in a process started as a process-pool worker (inside worker_main).
bool in_process_worker() noexcept;

}  // namespace uvexec::this_worker
