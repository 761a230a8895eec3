// uvexec — the registry of functions that worker processes may run.
//
// Every fn<&f> instantiated in the program registers f at static
// initialisation, in the same order in a parent and in a worker that is the
// same executable. A call names f by a key (a hash of its qualified name and
// type) and by f's offset from the base of the module (executable or shared
// library) that holds it: ASLR moves the base, not the offset, so the offset
// is the same in every process running this executable. The key alone serves
// a dedicated worker executable, which shares names, not code; the offset
// tells apart functions that share a key (file-local functions of the same
// name in two translation units), which the key cannot.
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <dlfcn.h>

#include <fmt/format.h>

#include "uvexec/detail/remote.hpp"

namespace uvexec::inline v0::detail {
namespace {

struct entry {
    std::string name;
    any_function fn = nullptr;
    std::uint64_t offset = 0;  // from its module's base; 0 if dladdr cannot say
    trampoline_fn trampoline = nullptr;
};

struct registry {
    std::mutex mutex;
    std::unordered_map<std::uint64_t, std::vector<entry>> entries;  // by key, in registration order
};

registry& the_registry() {
    static registry r;  // constructed on first use: static initialisation order does not matter
    return r;
}

std::uint64_t module_offset(any_function fn) noexcept {
    void* addr = nullptr;
    std::memcpy(&addr, &fn, sizeof addr);
    Dl_info info{};
    if (::dladdr(addr, &info) == 0 || info.dli_fbase == nullptr) return 0;
    return static_cast<std::uint64_t>(static_cast<const char*>(addr) - static_cast<const char*>(info.dli_fbase));
}

std::string names_of(const std::vector<entry>& v) {
    std::string out;
    for (const auto& e : v) out += fmt::format("{}'{}'", out.empty() ? "" : ", ", e.name);
    return out;
}

}  // namespace

std::uint64_t register_function(std::uint64_t key, std::string_view name, any_function fn,
                                trampoline_fn t) noexcept {
    auto& r = the_registry();
    try {
        std::lock_guard lock(r.mutex);
        auto& v = r.entries[key];
        // One function whose registration is instantiated in two modules
        // (each has its own remote<F>) has one address: it is one function.
        for (const auto& e : v)
            if (e.fn == fn) return key;
        v.push_back(entry{std::string(name), fn, module_offset(fn), t});
    } catch (...) {
        // Out of memory at static initialisation: the function stays unknown
        // and a worker says so when asked for it.
    }
    return key;
}

function_identity identify(std::uint64_t key, any_function fn) noexcept {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    function_identity id{key, 0, false};
    auto it = r.entries.find(key);
    if (it == r.entries.end()) return id;
    id.ambiguous = it->second.size() > 1;
    // The offset goes on the wire only where the key cannot tell functions
    // apart, and then the worker must match it exactly (see find_function).
    if (id.ambiguous)
        for (const auto& e : it->second)
            if (e.fn == fn) id.offset = e.offset;
    return id;
}

trampoline_fn find_function(const function_identity& id, std::string& why_not) {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    auto it = r.entries.find(id.key);
    if (it == r.entries.end()) {
        why_not = fmt::format(
            "no function with key {:#018x} is registered in this worker; a dedicated worker executable must "
            "name every function the parent sends it (uvexec::fn<&f>)",
            id.key);
        return nullptr;
    }
    const auto& v = it->second;
    if (id.offset == 0) {
        // The parent holds one function of this key: the name is enough,
        // unless this worker holds several.
        if (v.size() == 1) return v.front().trampoline;
        why_not = fmt::format(
            "the functions {} of this worker share the key {:#018x}, and the parent (another executable) names "
            "them only by it; give them distinct names or external linkage",
            names_of(v), id.key);
        return nullptr;
    }
    // The parent holds several functions of this key and named one by its
    // offset: only that one will do (a worker missing it, say one that did
    // not load the same library, must not run another).
    for (const auto& e : v)
        if (e.offset == id.offset) return e.trampoline;
    why_not = fmt::format(
        "the parent named one of several functions with the key {:#018x} ({}) by its offset {:#x}, and this "
        "worker has no function there (it is not the same executable, or did not load the same libraries); "
        "give them distinct names or external linkage",
        id.key, names_of(v), id.offset);
    return nullptr;
}

}  // namespace uvexec::detail
