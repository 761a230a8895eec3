// uvexec — fresh memory and transparent huge pages (see detail/pages.hpp).
#include "uvexec/detail/pages.hpp"

#include <cstdint>

#include <sys/mman.h>

namespace uvexec::inline v0::detail {

namespace {
/// Where the kernel backs memory with transparent huge pages, a mapping this
/// size gets whole 2 MiB pages (Linux aligns large anonymous mappings to them).
bool advise(void* p, std::size_t n) noexcept {
#ifdef MADV_HUGEPAGE
    constexpr std::uintptr_t huge = std::uintptr_t{2} << 20;
    if (p == nullptr || n < huge_page_advice_threshold) return false;
    const auto begin = (reinterpret_cast<std::uintptr_t>(p) + huge - 1) & ~(huge - 1);
    const auto end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(huge - 1);
    // Errors (EINVAL without THP, say) are ignored: the advice is only a hint.
    return end > begin && ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0;
#else
    (void)p;
    (void)n;
    return false;
#endif
}
}  // namespace

void advise_huge_pages(void* p, std::size_t n) noexcept { (void)advise(p, n); }

void* map_fresh(std::size_t n) noexcept {
    void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
#ifdef MADV_POPULATE_WRITE
    // Without huge pages, one system call instead of a fault per 4 KiB.
    if (!advise(m, n)) (void)::madvise(m, n, MADV_POPULATE_WRITE);
#else
    (void)advise(m, n);
#endif
    return m;
}

void unmap_fresh(void* p, std::size_t n) noexcept { ::munmap(p, n); }

}  // namespace uvexec::detail
