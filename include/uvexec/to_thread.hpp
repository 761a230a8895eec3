// uvexec — to_thread(): run a blocking function on the loop's default pool.
//
// Python: `await asyncio.to_thread(fn, *args)`. The same as
// lp.run_in_executor(nullptr, fn, args...): the loop's default
// thread_pool_executor, created on first use and destroyed with the loop
// (see loop::default_executor).
#pragma once

#include "uvexec/detail/config.hpp"

#include <utility>

#include "uvexec/loop.hpp"
#include "uvexec/thread_pool_executor.hpp"

namespace uvexec::inline v0 {

/// Python: asyncio.to_thread(fn, *args). Runs fn(args...) on lp's default
/// thread pool and returns a future of its result; cancelling the future
/// (also from a task group) drops the call if it has not started.
template <class F, class... A>
auto to_thread(loop& lp, F&& fn, A&&... args) {
    return lp.run_in_executor(nullptr, std::forward<F>(fn), std::forward<A>(args)...);
}

}  // namespace uvexec
