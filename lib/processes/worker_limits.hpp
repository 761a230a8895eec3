// uvexec — a worker's limits: max_worker_memory and worker_limits (internal).
//
// The parent puts them on the worker's command line as one word,
// "limits:rss=N,as=N,cpu=N" (only the keys that are set; no word when none
// is). The worker applies RLIMIT_AS once, before its first call; re-arms
// RLIMIT_CPU before each call; and after each answer reads its own resident
// memory, telling the parent (an over_memory frame) when it is above the
// limit. The memory is measured in the worker, not read from /proc/<pid> by
// the parent, because with a launcher (ssh, srun) the parent's pid is the
// launcher's, on another host.
//
// Invariants: nothing here costs a call anything when its limit is unset;
// the worker never exits because of max_worker_memory on its own: the parent
// retires it, so no call is lost.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "uvexec/process_pool_executor.hpp"

namespace uvexec::inline v0::detail {

/// What a worker is told to keep to; 0: no limit.
struct worker_limit_spec {
    std::uint64_t max_rss = 0;        // bytes (max_worker_memory)
    std::uint64_t address_space = 0;  // bytes (RLIMIT_AS)
    std::uint64_t cpu_seconds = 0;    // per call (RLIMIT_CPU, re-armed)
    bool any() const noexcept { return max_rss != 0 || address_space != 0 || cpu_seconds != 0; }
};

inline constexpr std::string_view limits_word_prefix = "limits:";

/// The parent: the spec of opts (checked by the pool's constructor).
worker_limit_spec limits_of(const process_pool_options& opts);
/// The parent: the command-line word for spec (spec.any() must hold).
std::string limits_word(const worker_limit_spec& spec);
/// The worker: reads a word made by limits_word; false if it is malformed.
bool parse_limits_word(std::string_view word, worker_limit_spec& spec) noexcept;

/// The worker, once, before its first call: sets RLIMIT_AS; the error if it
/// cannot (empty when it could).
std::string apply_start_limits(const worker_limit_spec& spec) noexcept;
/// The worker, before each call: gives the call spec.cpu_seconds more CPU time.
void arm_cpu_limit(const worker_limit_spec& spec) noexcept;
/// The worker's resident memory in bytes, from /proc/self/statm; 0 if unknown.
std::uint64_t resident_bytes() noexcept;

}  // namespace uvexec::detail
