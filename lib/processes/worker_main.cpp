// uvexec — the worker side of the process pool: worker_main.
//
// A worker is a plain blocking loop on its channel (descriptor 3): read frames,
// run each call, write its answer before reading the next call, so the parent
// always knows which call a dying worker was running. It exits when the
// channel reaches EOF (the parent closed it or died) and, on Linux, when the
// parent dies (PR_SET_PDEATHSIG).
//
// While a function that takes a std::stop_token runs, and only then, a second
// thread (the stop watcher) reads the channel for it: a cancel frame for that
// call requests its stop; the frames read meanwhile are kept, in order, and
// served after the call, before anything else; a cancel for one of them
// makes it start with its stop already requested. Other calls cost no thread
// and no wakeup.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <typeinfo>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <fmt/format.h>

#include "uvexec/codec.hpp"
#include "uvexec/detail/frame.hpp"
#include "uvexec/detail/worker.hpp"
#include "uvexec/detail/remote.hpp"
#include "uvexec/process_pool_executor.hpp"
#include "uvexec/this_worker.hpp"
#include "fork_server.hpp"
#include "worker_limits.hpp"

namespace uvexec::inline v0 {
namespace detail {
namespace {

bool in_worker = false;
std::string worker_name;
worker_limit_spec limits;  // from the command line (worker_limits.hpp)

[[noreturn]] void die(int status, const std::string& why) {
    std::fprintf(stderr, "uvexec worker %d (%s): %s\n", static_cast<int>(::getpid()), worker_name.c_str(), why.c_str());
    std::fflush(nullptr);
    ::_exit(status);
}

void write_all(int fd, std::string_view data) {
    const char* p = data.data();
    std::size_t left = data.size();
    while (left > 0) {
        ssize_t n = ::write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            // The parent is gone (EPIPE) or the channel broke: nothing to report to.
            die(0, fmt::format("channel write failed ({}); exiting", std::strerror(errno)));
        }
        p += n;
        left -= static_cast<std::size_t>(n);
    }
}

std::string demangle(const char* mangled) {
    int status = 0;
    char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    std::string out = (status == 0 && d) ? d : mangled;
    std::free(d);
    return out;
}

}  // namespace

std::pair<std::string, std::string> describe_exception(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return {demangle(typeid(x).name()), x.what()};
    } catch (...) {
        const std::type_info* t = abi::__cxa_current_exception_type();
        std::string type = t ? demangle(t->name()) : std::string("unknown");
        return {"unknown exception type", "a value of type " + type + " was thrown (not a std::exception)"};
    }
}

namespace {

/// Before call id's answer: tells the parent when this worker's resident
/// memory is above max_worker_memory, so that it sends the worker no more
/// calls and retires it once the answer is in.
void report_memory(int fd, std::uint64_t id) {
    if (limits.max_rss == 0) return;
    const std::uint64_t rss = resident_bytes();
    if (rss <= limits.max_rss) return;
    char report[frame_header_size + 8];
    put_frame_header(report, frame_kind::over_memory, id, 8);
    for (int i = 0; i < 8; ++i) report[frame_header_size + i] = static_cast<char>((rss >> (8 * i)) & 0xff);
    write_all(fd, std::string_view(report, sizeof(report)));
}

void answer_error(int fd, std::string& out, frame_kind kind, std::uint64_t id, const std::string& type,
                  const std::string& what) {
    if (kind == frame_kind::error) report_memory(fd, id);
    std::string payload;
    encode_into(payload, type, what);
    out.clear();
    append_frame(out, kind, id, payload);
    write_all(fd, out);
}

/// A frame the stop watcher read while a call ran, kept for the main loop.
struct saved_frame {
    frame_kind kind;
    std::uint64_t id;
    std::string payload;
};

}  // namespace

/// The worker's reading side: owned by the main thread, lent to the stop
/// watcher while a stoppable call runs.
struct channel_reader {
    channel_reader(int fd, std::size_t max_frame) : in(fd), dec(max_frame) {}

    int in;
    frame_decoder dec;
    std::deque<saved_frame> saved;          // read during a call; served before dec's frames
    std::vector<std::uint64_t> stop_early;  // saved calls cancelled before they started
    bool ended = false;                     // EOF, an error or corruption seen: the main loop meets it again

    /// Reads what is there and sorts its frames (the watcher, during call
    /// `running`): returns true when the parent asked that call to stop or
    /// closed the channel (nobody can take its answer then).
    bool read_during(std::uint64_t running);
    /// Moves the complete frames dec holds to saved, noting cancels as
    /// read_during does; true if one is for call `running`.
    bool sort_frames(std::uint64_t running);
};

/// What a worker knows of the call it runs (declared in remote.hpp).
class call_context {
public:
    call_context(channel_reader& rd, std::uint64_t id, bool stop_requested) noexcept
        : rd_(rd), id_(id), stop_requested_(stop_requested) {}
    ~call_context();
    call_context(const call_context&) = delete;
    call_context& operator=(const call_context&) = delete;

    std::stop_token watch();

    /// A large std::string result, written from where it lies behind the
    /// answer's other bytes (remote.hpp's trampoline moves it here).
    std::string tail;

private:
    channel_reader& rd_;
    std::uint64_t id_;
    bool stop_requested_;
    bool watching_ = false;
};

namespace {

/// The thread that reads the channel while a stoppable call runs. Started at
/// the first such call and kept (parked on a condition variable) until the
/// process exits; never destroyed, so exit() does not wait for it.
class stop_watcher {
public:
    stop_watcher() {
        if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0)
            die(3, fmt::format("cannot create the stop watcher's pipe: {}", std::strerror(errno)));
        // The watcher takes no signal: signals sent to the worker reach the
        // thread that runs the calls, as before it existed.
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        try {
            std::thread([this] { run(); }).detach();
        } catch (const std::exception& e) {
            die(3, fmt::format("cannot start the stop watcher thread: {}", e.what()));
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }

    /// Lends rd to the watcher until finish(); src's stop is requested on a cancel for call id.
    void start(channel_reader& rd, std::uint64_t id, std::stop_source src) {
        std::lock_guard lock(mutex_);
        rd_ = &rd;
        id_ = id;
        src_ = std::move(src);
        active_ = true;
        idle_ = false;
        ++generation_;
        cv_.notify_all();
    }

    /// Takes rd back: returns once the watcher no longer touches it.
    void finish() {
        std::unique_lock lock(mutex_);
        active_ = false;
        char c = 1;
        while (::write(wake_[1], &c, 1) < 0 && errno == EINTR) {
        }
        cv_.wait(lock, [&] { return idle_; });
        rd_ = nullptr;
        src_ = std::stop_source(std::nostopstate);
    }

private:
    void run() noexcept {
        std::unique_lock lock(mutex_);
        std::uint64_t seen = 0;
        for (;;) {
            cv_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            while (active_) {
                pollfd fds[2] = {{wake_[0], POLLIN, 0}, {rd_->ended ? -1 : rd_->in, POLLIN, 0}};
                lock.unlock();
                int r = ::poll(fds, 2, -1);
                lock.lock();
                if (r < 0 && errno != EINTR) die(3, fmt::format("the stop watcher's poll failed: {}", std::strerror(errno)));
                if (!active_ || r <= 0 || fds[1].revents == 0) continue;
                try {
                    if (rd_->read_during(id_)) src_.request_stop();
                } catch (const std::bad_alloc&) {
                    die(3, "out of memory while reading the channel during a call");
                }
            }
            char buf[64];
            while (::read(wake_[0], buf, sizeof buf) > 0) {
            }
            idle_ = true;
            cv_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    int wake_[2] = {-1, -1};
    std::uint64_t generation_ = 0;
    bool active_ = false;
    bool idle_ = true;
    channel_reader* rd_ = nullptr;
    std::uint64_t id_ = 0;
    std::stop_source src_{std::nostopstate};
};

stop_watcher& the_stop_watcher() {
    static stop_watcher* w = new stop_watcher;  // never destroyed: see the class
    return *w;
}

/// Runs a call and writes its answer. The result is encoded straight into
/// out behind a header patched afterwards: one copy (the encoding), then write().
void run_call(int fd, std::size_t max_frame, const frame& f, std::string& out, channel_reader& rd) {
    // A cancel that came before it started (and was kept for it) is taken out first, whatever follows.
    auto early = std::find(rd.stop_early.begin(), rd.stop_early.end(), f.id);
    const bool stop_requested = early != rd.stop_early.end();
    if (stop_requested) rd.stop_early.erase(early);
    if (f.payload.size() < 16) {
        answer_error(fd, out, frame_kind::error, f.id, "uvexec::error", "a call frame without a function identity");
        return;
    }
    std::string why;
    trampoline_fn fn = find_function({get_u64(f.payload.data()), get_u64(f.payload.data() + 8)}, why);
    if (!fn) {
        answer_error(fd, out, frame_kind::error, f.id, "uvexec::error", why);
        return;
    }
    out.clear();
    out.resize(frame_header_size);  // patched below, once the result's size is known
    std::string tail;
    try {
        call_context ctx(rd, f.id, stop_requested);
        fn(f.payload.substr(16), out, ctx);  // the arguments are decoded from the frame where it lies
        tail = std::move(ctx.tail);
    } catch (...) {
        auto [type, what] = describe_exception(std::current_exception());
        answer_error(fd, out, frame_kind::error, f.id, type, what);
        return;
    }
    const std::size_t size = out.size() - frame_header_size + tail.size();
    if (size + 9 > max_frame) {
        tail = std::string();
        answer_error(fd, out, frame_kind::error, f.id, "uvexec::message_too_large_error",
                     fmt::format("the result takes {} bytes, more than max_frame_size ({})", size, max_frame));
        return;
    }
    put_frame_header(out.data(), frame_kind::result, f.id, size);
    report_memory(fd, f.id);
    write_all(fd, out);
    write_all(fd, tail);
    trim_buffer(out, out.size());  // kept for the next answer while answers are as large
}

void run_init(int fd, const frame& f, std::string& out, channel_reader& rd) {
    std::string why;
    trampoline_fn fn = f.payload.size() == 16
                           ? find_function({get_u64(f.payload.data()), get_u64(f.payload.data() + 8)}, why)
                           : nullptr;
    if (!fn) {
        answer_error(fd, out, frame_kind::init_failed, 0, "uvexec::error",
                     why.empty() ? "a malformed initializer frame" : why);
        return;
    }
    std::string ignored;
    try {
        call_context ctx(rd, 0, false);  // an initializer takes no std::stop_token (remote_function)
        fn({}, ignored, ctx);
    } catch (...) {
        auto [type, what] = describe_exception(std::current_exception());
        answer_error(fd, out, frame_kind::init_failed, 0, type, what);
    }
}

void serve_frame(int fd, std::size_t max_frame, const frame& f, std::string& out, channel_reader& rd) {
    switch (f.kind) {
        case frame_kind::call: {
            arm_cpu_limit(limits);
            run_call(fd, max_frame, f, out, rd);
            break;
        }
        case frame_kind::init: run_init(fd, f, out, rd); break;
        case frame_kind::cancel: break;  // for a call that has returned: too late
        default: die(3, fmt::format("unexpected frame kind {} from the parent", static_cast<int>(f.kind)));
    }
}

/// The hello's payload: the protocol version and this host's name.
std::string hello_payload() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    std::string payload;
    encode_into(payload, protocol_version, std::string(host));
    return payload;
}

[[noreturn]] void serve(int in, int fd, std::size_t max_frame) {
    // Its pid and host: behind a launcher (ssh, srun) the parent knows only
    // the launcher's pid, and reports a death with these.
    std::string out;
    append_frame(out, frame_kind::hello, static_cast<std::uint64_t>(::getpid()), hello_payload());
    write_all(fd, out);

    channel_reader rd(in, max_frame);
    for (;;) {
        if (!rd.saved.empty()) {  // read while the last call ran: they come first
            saved_frame s = std::move(rd.saved.front());
            rd.saved.pop_front();
            serve_frame(fd, max_frame, frame{s.kind, s.id, s.payload}, out, rd);
            continue;
        }
        frame f{};
        auto st = rd.dec.next(f);
        if (st == frame_decoder::status::corrupt) die(3, "corrupt frame from the parent: " + rd.dec.error());
        if (st == frame_decoder::status::frame) {
            serve_frame(fd, max_frame, f, out, rd);
            continue;
        }
        std::size_t room = 0;
        char* p = rd.dec.prepare(room);
        ssize_t n = ::read(in, p, room);
        if (n < 0) {
            if (errno == EINTR) continue;
            die(3, fmt::format("channel read failed: {}", std::strerror(errno)));
        }
        if (n == 0) {
            // The parent closed the channel (shutdown, retirement) or died.
            std::fflush(nullptr);
            std::exit(0);
        }
        rd.dec.commit(static_cast<std::size_t>(n));
    }
}

}  // namespace

bool channel_reader::read_during(std::uint64_t running) {
    std::size_t room = 0;
    char* p = dec.prepare(room);
    ssize_t n = ::read(in, p, room);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return false;
    if (n <= 0) {
        ended = true;  // the main loop reads the same end or error after the call
        return true;
    }
    dec.commit(static_cast<std::size_t>(n));
    return sort_frames(running);
}

bool channel_reader::sort_frames(std::uint64_t running) {
    bool stop = false;
    frame f{};
    for (;;) {
        auto st = dec.next(f);
        if (st == frame_decoder::status::need_more) break;
        if (st == frame_decoder::status::corrupt) {
            ended = true;  // the main loop reports it after the call
            return true;   // and exits: the call may as well stop
        }
        if (f.kind != frame_kind::cancel) {
            saved.push_back({f.kind, f.id, std::string(f.payload)});
        } else if (f.id == running) {
            stop = true;
        } else if (std::find(stop_early.begin(), stop_early.end(), f.id) == stop_early.end() &&
                   std::any_of(saved.begin(), saved.end(),
                               [&](const saved_frame& s) { return s.kind == frame_kind::call && s.id == f.id; })) {
            stop_early.push_back(f.id);  // once: run_call takes it out when that call starts
        }
    }
    return stop;
}

call_context::~call_context() {
    if (watching_) the_stop_watcher().finish();
}

std::stop_token call_context::watch() {
    std::stop_source src;
    bool stop = stop_requested_;
    try {
        stop = rd_.sort_frames(id_) || stop;  // its cancel may be among the bytes read with its call
    } catch (const std::bad_alloc&) {
        // A frame was taken from the decoder and could not be kept: the
        // stream is lost to this worker.
        die(3, "out of memory while keeping the frames read with a call");
    }
    if (stop || rd_.ended) src.request_stop();
    if (!watching_ && !rd_.ended) {
        the_stop_watcher().start(rd_, id_, src);
        watching_ = true;
    }
    return src.get_token();
}

std::stop_token watch_for_stop(call_context& ctx) { return ctx.watch(); }

std::string& answer_tail(call_context& ctx) noexcept { return ctx.tail; }

namespace {
/// True when this process's argv[1] is the worker flag: it was started as a
/// worker. Read from /proc, so it needs neither argv nor the environment
/// (which a launcher such as ssh does not forward, and which other threads
/// may be reading: uvexec never changes it).
bool started_as_worker() noexcept {
    int fd = ::open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[512];
    std::size_t n = 0;
    for (;;) {
        ssize_t r = ::read(fd, buf + n, sizeof(buf) - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += static_cast<std::size_t>(r);
        if (n == sizeof(buf) - 1) break;
    }
    ::close(fd);
    buf[n] = '\0';
    std::size_t first = std::strlen(buf);  // argv[0], then its NUL
    return first + 1 < n &&
           (std::strcmp(buf + first + 1, worker_flag) == 0 || std::strcmp(buf + first + 1, fork_server_flag) == 0);
}
}  // namespace

void refuse_unserved_worker() {
    if (in_worker || !started_as_worker()) return;
    std::fprintf(stderr,
                 "uvexec: this process was started as a process-pool worker, but its main() did not call "
                 "uvexec::worker_main(argc, argv) before using uvexec; exiting with status %d so that it "
                 "cannot start workers of its own\n",
                 unserved_worker_status);
    std::fflush(nullptr);
    ::_exit(unserved_worker_status);
}

const std::string& process_worker_name() noexcept { return worker_name; }
bool in_process_worker() noexcept { return in_worker; }

}  // namespace detail

void worker_main(int argc, char** argv) {
    using namespace detail;
    if (argc >= 2 && std::string_view(argv[1]) == fork_server_flag) {
        // A fork server (fork_server_main.cpp): returns only in a worker it
        // forked, with that worker's command line.
        static std::vector<std::string> args = serve_forks(argc, argv);
        static std::vector<char*> worker_argv;
        for (auto& a : args) worker_argv.push_back(a.data());
        worker_argv.push_back(nullptr);
        worker_main(static_cast<int>(args.size()), worker_argv.data());
        return;  // not reached: a worker serves until it exits
    }
    if (argc < 2 || std::string_view(argv[1]) != worker_flag) return;
    if (argc < 6) die(2, "worker_main: malformed worker command line");
    std::size_t max_frame = std::strtoull(argv[2], nullptr, 10);
    worker_name = argv[3];
    long parent = std::strtol(argv[4], nullptr, 10);
    in_worker = true;

#ifdef __linux__
    // parent -1: forked by a fork server, which kills it when the pool goes.
    if (parent >= 0) ::prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    // The parent may have died before prctl: then we were re-parented.
    if (parent > 0 && ::getppid() != parent) die(0, "the parent is gone; exiting");
    std::signal(SIGPIPE, SIG_IGN);

    int in = channel_fd, out = channel_fd;
    if (std::string_view(argv[5]) == "stdio") {
        // The channel is stdin (requests) and stdout (answers), which a
        // launcher such as ssh may forward separately: move both away, then
        // give the worker /dev/null for stdin and its stderr for stdout.
        in = ::dup(0);
        out = ::dup(1);
        int null = ::open("/dev/null", O_RDONLY);
        if (in < 0 || out < 0 || null < 0 || ::dup2(null, 0) < 0 || ::dup2(2, 1) < 0)
            die(2, "worker_main: cannot move the stdio channel");
        ::close(null);
    }
    for (int fd : {in, out}) {
        int flags = ::fcntl(fd, F_GETFL);
        if (flags < 0) die(2, "worker_main: the channel to the parent is not open");
        ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // programs the worker starts do not inherit the channel
    }
    if (max_frame < 64) die(2, "worker_main: malformed maximum frame size");
    if (argc > 6 && !parse_limits_word(argv[6], limits)) die(2, "worker_main: malformed limits");
    if (auto why = apply_start_limits(limits); !why.empty()) die(2, "worker_main: setrlimit(RLIMIT_AS): " + why);
    serve(in, out, max_frame);
}

namespace this_worker {
bool in_process_worker() noexcept { return detail::in_process_worker(); }
}  // namespace this_worker

}  // namespace uvexec
