// A global operator new that can be told to fail, for tests of what happens
// when the parent runs out of memory. Linked into one test executable only.
#pragma once

#include <atomic>
#include <cstddef>

namespace test {
/// Allocations of at least this many bytes throw std::bad_alloc (0: none).
extern std::atomic<std::size_t> fail_allocations_from;
}  // namespace test
