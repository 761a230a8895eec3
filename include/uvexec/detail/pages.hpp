// uvexec — fresh memory and transparent huge pages (internal).
//
// Large buffers (a message's frame, a million-future wait's nodes) are
// written once right after they are allocated, so what they cost is mostly
// their first touch: one page fault per 4 KiB, which on a virtual machine can
// cost more than writing the page (50 ms per fresh 16 MiB against 0.9 ms to
// rewrite it on the project's machine; docs/performance.md, "Payloads and
// page faults"). Backed by 2 MiB transparent huge pages, the same first touch
// takes about 1.3 ms. These helpers only advise: they change no byte, and do
// nothing where the kernel has no such pages.
#pragma once

#include "uvexec/detail/config.hpp"

#include <cstddef>

namespace uvexec::inline v0::detail {

/// Buffers at least this large are advised to use transparent huge pages.
inline constexpr std::size_t huge_page_advice_threshold = std::size_t{4} << 20;

/// Advises the kernel to back the whole 2 MiB pages inside [p, p + n) with
/// transparent huge pages (madvise MADV_HUGEPAGE) when n is at least
/// huge_page_advice_threshold.
void advise_huge_pages(void* p, std::size_t n) noexcept;

/// A fresh private anonymous mapping of n bytes (zero-filled), advised to use
/// huge pages when large enough, or its pages populated in one system call
/// when that advice cannot be given; null if mmap fails. Free with
/// unmap_fresh(p, n).
void* map_fresh(std::size_t n) noexcept;
void unmap_fresh(void* p, std::size_t n) noexcept;

}  // namespace uvexec::detail
