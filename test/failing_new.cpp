// See failing_new.hpp. In a file of its own so that no new-expression is
// inlined next to these definitions (GCC's -Wmismatched-new-delete).
#include "failing_new.hpp"

#include <cstdlib>
#include <new>

std::atomic<std::size_t> test::fail_allocations_from{0};

void* operator new(std::size_t n) {
    std::size_t limit = test::fail_allocations_from.load(std::memory_order_relaxed);
    if (limit != 0 && n >= limit) throw std::bad_alloc();
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
