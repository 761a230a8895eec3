// The one function the worker-output fuzzer calls; shared by the harness and
// its worker so both name it the same way.
#pragma once

namespace fuzzfn {
inline int square(int n) { return n * n; }
}  // namespace fuzzfn
