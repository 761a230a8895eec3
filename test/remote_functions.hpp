// Functions the process-pool tests run in workers. Shared with the dedicated
// worker executable (worker_exe.cpp), so both name the same functions.
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace remote {

inline int square(int n) { return n * n; }

inline std::string greet(const std::string& who) { return "hello, " + who; }

}  // namespace remote
