// uvexec — a move-only void() callable (internal; std::move_only_function is C++23).
#pragma once

#include "uvexec/detail/config.hpp"

#include <memory>
#include <type_traits>
#include <utility>

namespace uvexec::inline v0::detail {

class unique_function {
public:
    unique_function() noexcept = default;

    template <class F>
        requires(!std::is_same_v<std::decay_t<F>, unique_function> && std::is_invocable_v<std::decay_t<F>&>)
    unique_function(F&& f)  // NOLINT(google-explicit-constructor): a callable is a function
        : p_(new model<std::decay_t<F>>(std::forward<F>(f))) {}

    unique_function(unique_function&&) noexcept = default;
    unique_function& operator=(unique_function&&) noexcept = default;

    explicit operator bool() const noexcept { return bool(p_); }
    void operator()() { p_->call(); }

private:
    struct concept_t {
        virtual ~concept_t() = default;
        virtual void call() = 0;
    };
    template <class F>
    struct model final : concept_t {
        explicit model(F&& f) : f_(std::move(f)) {}
        explicit model(const F& f) : f_(f) {}
        void call() override { f_(); }
        F f_;
    };
    std::unique_ptr<concept_t> p_;
};

}  // namespace uvexec::detail
