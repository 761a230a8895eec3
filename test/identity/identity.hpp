// Submitters of file-local functions that share a name across two
// translation units (identity_a.cpp: scale(x) = 10x, bump(x) = x + 1;
// identity_b.cpp: 100x and x + 2).
#pragma once

#include <uvexec/loop.hpp>
#include <uvexec/process_pool_executor.hpp>

namespace identity {
uvexec::future<int> scale_a(uvexec::loop& lp, uvexec::process_pool_executor& ex, int x);
uvexec::future<int> scale_b(uvexec::loop& lp, uvexec::process_pool_executor& ex, int x);
uvexec::future<int> bump_a(uvexec::loop& lp, uvexec::process_pool_executor& ex, int x);
uvexec::future<int> bump_b(uvexec::loop& lp, uvexec::process_pool_executor& ex, int x);
}  // namespace identity
