// Fuzz target: the parent's handling of whatever a worker writes; the work is
// in fuzz_worker_driver.cpp.
#include "fuzz_worker.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz_worker_init();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz_worker_one(data, size);
    return 0;
}
