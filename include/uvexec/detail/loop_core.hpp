// uvexec — the state behind a uvexec::loop (internal).
//
// Threading: everything here is used on the loop's thread except post(),
// which any thread may call. post() and the teardown in ~loop_core meet under
// inbox_mutex_, so a post either lands before the loop closes or throws
// loop_closed_error; it never touches a closed handle.
#pragma once

#include "uvexec/detail/config.hpp"

#include <coroutine>
#include <cstddef>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <uv.h>

#include "uvexec/detail/unique_function.hpp"

namespace uvexec::inline v0::detail {

/// Something that holds work on a loop and must let go of it when the loop
/// closes (executors). Linked into its loop while bound to it.
class loop_client {
public:
    /// The loop is closing: drop queued work, cancel what libuv can cancel.
    /// An owned loop then runs until busy() is false.
    virtual void on_loop_closing() noexcept = 0;
    /// Work of this client's is inside libuv and will call back on the loop.
    virtual bool busy() const noexcept = 0;
    /// The client has been detached from the closed loop; it may bind again.
    virtual void on_loop_closed() noexcept = 0;

protected:
    ~loop_client() = default;

private:
    friend class loop_core;
    loop_client* prev_ = nullptr;
    loop_client* next_ = nullptr;
    bool told_closing_ = false;  // on_loop_closing has been called (loop_core::close)
};

class reaper;  // lib/processes/reaper.cpp

/// The node a spawned coroutine's frame keeps in its loop (see loop::spawn).
struct spawned_node {
    spawned_node* prev = nullptr;
    spawned_node* next = nullptr;
    std::coroutine_handle<> frame;
};

class loop_core : public std::enable_shared_from_this<loop_core> {
public:
    /// Owns a fresh uv_loop_t when host is null, else borrows host.
    explicit loop_core(uv_loop_t* host);
    ~loop_core();
    loop_core(const loop_core&) = delete;
    loop_core& operator=(const loop_core&) = delete;

    uv_loop_t* uv() const noexcept { return uv_; }
    bool owned() const noexcept { return owned_; }
    bool closing() const noexcept { return closing_; }
    bool on_loop_thread() const noexcept { return std::this_thread::get_id() == thread_; }

    /// Any thread: queue fn to run on the loop thread, in order, and wake the
    /// loop. Wakeups coalesce; the inbox is drained whole on each one.
    /// Throws loop_closed_error once the loop is closing.
    void post(unique_function fn);

    /// Loop thread: while holds are outstanding the loop's wakeup handle is
    /// referenced, so uv_run keeps running for work that will arrive via post().
    void hold() noexcept;
    void unhold() noexcept;

    void track(spawned_node& n) noexcept;
    void untrack(spawned_node& n) noexcept;

    void attach(loop_client& c) noexcept;
    void detach(loop_client& c) noexcept;

    /// Runs the loop until done() is true. Throws if the loop runs out of work
    /// first (nothing could ever complete it) or if called re-entrantly.
    template <class Pred>
    void run_until(Pred done) {
        run_guard g(*this);
        while (!done()) {
            int alive = uv_run(uv_, UV_RUN_ONCE);
            if (!alive && !done()) no_more_work();
        }
    }

    /// The loop's reaper of worker processes, while it watches one
    /// (lib/processes/reaper.hpp); null otherwise.
    reaper*& child_reaper() noexcept { return reaper_; }

    /// Closes the loop: see loop::~loop for the order. Idempotent.
    void close() noexcept;

private:
    struct run_guard {
        explicit run_guard(loop_core& l);
        ~run_guard() { l_.running_ = false; }
        loop_core& l_;
    };
    [[noreturn]] void no_more_work() const;
    bool clients_busy() const noexcept;
    static void on_wakeup(uv_async_t* h) noexcept;
    void drain() noexcept;

    uv_loop_t* uv_;
    bool owned_;
    bool closing_ = false;
    bool running_ = false;
    std::thread::id thread_;
    uv_async_t* wakeup_;  // heap: freed by its close callback
    std::size_t holds_ = 0;

    std::mutex inbox_mutex_;
    std::vector<unique_function> inbox_;  // guarded by inbox_mutex_
    bool inbox_closed_ = false;           // guarded by inbox_mutex_

    spawned_node* spawned_ = nullptr;
    loop_client* clients_ = nullptr;
    reaper* reaper_ = nullptr;
};

}  // namespace uvexec::detail
