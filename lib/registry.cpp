// uvexec — the registry of functions that worker processes may run.
#include <mutex>
#include <string>
#include <unordered_map>

#include <fmt/format.h>

#include "uvexec/fn.hpp"

namespace uvexec::detail {
namespace {

struct entry {
    std::string name;
    trampoline_fn fn = nullptr;
    std::string clash;  // another function with the same key, if any
};

struct registry {
    std::mutex mutex;
    std::unordered_map<std::uint64_t, entry> entries;
};

registry& the_registry() {
    static registry r;  // constructed on first use: static initialisation order does not matter
    return r;
}

}  // namespace

std::uint64_t register_function(std::uint64_t key, std::string_view name, trampoline_fn fn) noexcept {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    auto [it, inserted] = r.entries.try_emplace(key);
    if (inserted) {
        it->second.name = std::string(name);
        it->second.fn = fn;
    } else if (it->second.fn != fn && it->second.name != name) {
        it->second.clash = std::string(name);
    }
    return key;
}

trampoline_fn find_function(std::uint64_t key, std::string& why_not) {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    auto it = r.entries.find(key);
    if (it == r.entries.end()) {
        why_not = fmt::format(
            "no function with key {:#018x} is registered in this worker; a dedicated worker executable must "
            "name every function the parent sends it (uvexec::fn<&f>)",
            key);
        return nullptr;
    }
    if (!it->second.clash.empty()) {
        why_not = fmt::format("functions '{}' and '{}' share the key {:#018x}; rename one", it->second.name,
                              it->second.clash, key);
        return nullptr;
    }
    return it->second.fn;
}

std::string function_name(std::uint64_t key) {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    auto it = r.entries.find(key);
    return it == r.entries.end() ? std::string() : it->second.name;
}

}  // namespace uvexec::detail
