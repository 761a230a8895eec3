// uvexec — everything: run blocking work on thread or process pools from
// coroutines on a libuv loop. See README.md.
#pragma once

#include "uvexec/detail/config.hpp"

#include "uvexec/as_completed.hpp"
#include "uvexec/error.hpp"
#include "uvexec/future.hpp"
#include "uvexec/gather.hpp"
#include "uvexec/fn.hpp"
#include "uvexec/launchers.hpp"
#include "uvexec/loop.hpp"
#include "uvexec/map.hpp"
#include "uvexec/process_pool_executor.hpp"
#include "uvexec/promise.hpp"
#include "uvexec/shield.hpp"
#include "uvexec/sleep.hpp"
#include "uvexec/stats.hpp"
#include "uvexec/task.hpp"
#include "uvexec/task_group.hpp"
#include "uvexec/thread_pool_executor.hpp"
#include "uvexec/this_worker.hpp"
#include "uvexec/to_thread.hpp"
#include "uvexec/wait.hpp"
