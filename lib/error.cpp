// uvexec — error types and libuv's error category.
#include "uvexec/error.hpp"

#include <cstdio>
#include <exception>
#include <string>

#include <fmt/format.h>
#include <uv.h>

#include "uvexec/detail/future_state.hpp"

namespace uvexec::inline v0 {

namespace {
class uv_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "libuv"; }
    std::string message(int ev) const override {
        return fmt::format("{}: {}", uv_err_name(-ev), uv_strerror(-ev));
    }
};
}  // namespace

const std::error_category& uv_category() noexcept {
    static const uv_category_impl category;
    return category;
}

uv_error::uv_error(int status, const std::string& what_failed)
    : error(fmt::format("uvexec: {} failed: {} ({})", what_failed, uv_strerror(status), uv_err_name(status))),
      code_(make_uv_error_code(status)) {}

remote_error::remote_error(std::string type_name, std::string message)
    : error(fmt::format("uvexec: the worker raised {}: {}", type_name, message)),
      type_name_(std::move(type_name)),
      message_(std::move(message)) {}

namespace detail {
void report_callback_exception(std::exception_ptr e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "uvexec: exception in a callback: %s\n", ex.what());
    } catch (...) {
        std::fprintf(stderr, "uvexec: exception of unknown type in a callback\n");
    }
}
}  // namespace detail

}  // namespace uvexec
