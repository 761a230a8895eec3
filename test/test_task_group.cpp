// task_group: failures cancel siblings (also inside executors), outside
// cancellation, teardown, nesting, and the interrupt points of wait/sleep/gather.
#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

using namespace test;
using uvexec::future;
using uvexec::promise;
using uvexec::task;
using uvexec::task_group;
using uvexec::thread_pool_executor;

namespace {

/// What a child saw: cancelled_error, and whether its frame reached its end.
struct child_log {
    int cancelled = 0;
    int finished = 0;
};

/// Awaits f; counts a cancelled_error and the end of the frame.
task<void> await_logged(future<void> f, child_log& log) {
    try {
        co_await f;
    } catch (const uvexec::cancelled_error&) {
        ++log.cancelled;
    }
    ++log.finished;
}

task<void> throw_after(uvexec::loop& lp, std::function<bool()> ready, int code) {
    co_await uvexec::to_thread(lp, [ready] { REQUIRE(eventually(ready)); });
    throw custom_error("child failed", code);
}

task<void> throw_now(int code) {
    throw custom_error("child failed", code);
    co_return;
}

/// Catches what run() throws and returns its code (-1: cancelled_error, 0: none).
template <class Body>
task<int> run_and_catch(uvexec::loop& lp, Body body) {
    try {
        co_await task_group::run(lp, std::move(body));
    } catch (const custom_error& e) {
        co_return e.code;
    } catch (const uvexec::cancelled_error&) {
        co_return -1;
    }
    co_return 0;
}

}  // namespace

TEST_SUITE("task_group") {

TEST_CASE("a child that throws while its siblings are inside executors cancels them; run() rethrows after they finished") {
    thread_pool_executor ex{{.max_workers = 2}};
    std::atomic<bool> open{false};  // executor calls wait for it
    std::atomic<int> waiting{0};
    std::atomic<int> queued_ran{0};
    std::vector<future<void>> calls;
    child_log log;
    int code = 0;
    {
        uvexec::loop lp;
        auto outer = [&]() -> task<void> {
            code = co_await run_and_catch(lp, [&](task_group& g) -> task<void> {
                // Two calls run (held at the gate), a third waits in the queue.
                for (int i = 0; i < 2; ++i) {
                    calls.push_back(lp.run_in_executor(ex, [&] {
                        ++waiting;
                        REQUIRE(eventually([&] { return open.load(); }));
                    }));
                    g.spawn(await_logged(calls.back(), log));
                }
                calls.push_back(lp.run_in_executor(ex, [&] { ++queued_ran; }));
                g.spawn(await_logged(calls.back(), log));
                g.spawn(throw_after(lp, [&] { return waiting == 2; }, 7));
                co_return;
            });
            // run() has returned: every child frame has ended.
            CHECK(log.finished == 3);
        };
        lp.run_until_complete(outer());
        CHECK(code == 7);
        CHECK(log.cancelled == 3);
        for (auto& c : calls) CHECK(c.cancelled());
        open = true;  // the running calls end; ~loop waits for them
    }
    CHECK(queued_ran == 0);  // cancelled before it started: never ran
}

TEST_CASE("a child awaiting a future that is resolved but whose waiters have not run yet still ends cancelled") {
    // An executor resolves a future first and runs its waiters once its own
    // state is consistent (a process pool does so for a whole read of
    // answers). A group cancellation that falls in between must not be lost.
    uvexec::loop lp;
    auto* st = new uvexec::detail::future_state<int>(&lp.core());
    auto f = uvexec::detail::make_future(uvexec::detail::state_ptr<uvexec::detail::future_state<int>>::adopt(st));
    bool saw_cancel = false, saw_value = false;
    auto body = [&](task_group& g) -> task<void> {
        g.spawn([&]() -> task<void> {
            try {
                (void)co_await f;
                saw_value = true;
            } catch (const uvexec::cancelled_error&) {
                saw_cancel = true;
            }
        });
        co_await uvexec::sleep(lp, std::chrono::milliseconds(0));  // the child is suspended on f now
        st->emplace(5);
        st->resolve_value();  // done, its waiters not yet run
        g.cancel();
        st->notify_waiters();
    };
    lp.run_until_complete(task_group::run(lp, body));
    CHECK(saw_cancel);
    CHECK_FALSE(saw_value);
    CHECK(f.result() == 5);  // the future keeps its value for anyone else
}

TEST_CASE("a group cancelled from outside (wait_for's timeout) cancels every child and waits for them") {
    uvexec::loop lp;
    promise<void> never1(lp), never2(lp);
    child_log log;
    bool after = false;
    auto outer = [&]() -> task<void> {
        try {
            co_await uvexec::wait_for(lp,
                                      task_group::run(lp,
                                                      [&](task_group& g) -> task<void> {
                                                          g.spawn(await_logged(never1.get_future(), log));
                                                          g.spawn(await_logged(never2.get_future(), log));
                                                          co_await never1.get_future();  // the body too
                                                          after = true;
                                                      }),
                                      10ms);
            FAIL("no timeout");
        } catch (const uvexec::timeout_error&) {
            CHECK(log.finished == 2);  // both children ended before wait_for threw
        }
    };
    lp.run_until_complete(outer());
    CHECK(log.cancelled == 2);
    CHECK_FALSE(after);
    CHECK(never1.get_future().cancelled());  // the awaited futures were cancelled
}

TEST_CASE("a group whose awaiting child is cancelled by the outer group cancels its own children first") {
    uvexec::loop lp;
    promise<void> never(lp);
    child_log inner_log;
    int inner_result = 0;
    auto code = lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        g.spawn([&]() -> task<void> {
            inner_result = co_await run_and_catch(lp, [&](task_group& inner) -> task<void> {
                inner.spawn(await_logged(never.get_future(), inner_log));
                inner.spawn(await_logged(never.get_future(), inner_log));
                co_return;
            });
        });
        g.spawn(throw_now(3));  // the nested group is suspended by now
        co_return;
    }));
    CHECK(code == 3);
    CHECK(inner_result == -1);  // the nested run() threw cancelled_error
    CHECK(inner_log.cancelled == 2);
    CHECK(inner_log.finished == 2);
}

TEST_CASE("a body that throws after spawning cancels the children, waits for them, and its exception is rethrown") {
    uvexec::loop lp;
    promise<void> never(lp);
    child_log log;
    auto code = lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        g.spawn(await_logged(never.get_future(), log));
        g.spawn(await_logged(never.get_future(), log));
        co_await uvexec::sleep(lp, 0ms);
        throw custom_error("body", 5);
    }));
    CHECK(code == 5);
    CHECK(log.cancelled == 2);
    CHECK(log.finished == 2);
}

TEST_CASE("children may spawn children; the group waits for every one of them") {
    uvexec::loop lp;
    promise<void> p(lp);
    int leaves = 0;
    std::size_t size_while_waiting = 0;
    std::function<task<void>(task_group&, int)> tree = [&](task_group& g, int depth) -> task<void> {
        if (depth == 0) {
            co_await p.get_future();
            ++leaves;
            co_return;
        }
        g.spawn(tree(g, depth - 1));
        g.spawn(tree(g, depth - 1));
        co_return;
    };
    auto outer = [&]() -> task<void> {
        co_await task_group::run(lp, [&](task_group& g) -> task<void> {
            g.spawn(tree(g, 3));
            co_await uvexec::sleep(lp, 0ms);
            size_while_waiting = g.size();
            p.set_value();
        });
    };
    lp.run_until_complete(outer());
    CHECK(leaves == 8);
    CHECK(size_while_waiting == 8);  // inner nodes finished at once, the 8 leaves wait
}

TEST_CASE("a child that catches cancelled_error and keeps going is waited for, executor calls included") {
    uvexec::loop lp;
    promise<void> never(lp);
    bool cleanup_done = false;
    auto code = lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        g.spawn([&]() -> task<void> {
            try {
                co_await never.get_future();
            } catch (const uvexec::cancelled_error&) {
            }
            // Cancellation is delivered once: this call is not cancelled.
            int v = co_await uvexec::to_thread(lp, [] { return 41; });
            cleanup_done = v == 41;
        });
        g.spawn(throw_now(2));
        co_return;
    }));
    CHECK(code == 2);
    CHECK(cleanup_done);
}

TEST_CASE("the first failure is rethrown; later ones stay in the children's futures") {
    uvexec::loop lp;
    promise<void> never(lp);
    future<void> second;
    auto code = lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        second = g.spawn([&]() -> task<void> {
            try {
                co_await never.get_future();
            } catch (const uvexec::cancelled_error&) {
                throw custom_error("while cancelled", 9);
            }
        });
        g.spawn(throw_now(1));
        co_return;
    }));
    CHECK(code == 1);
    REQUIRE(second.done());
    CHECK_THROWS_AS(second.result(), custom_error);
}

TEST_CASE("spawn returns the child's future; cancelling it cancels that child only, which is not a failure") {
    uvexec::loop lp;
    promise<int> never(lp);
    auto r = lp.run_until_complete([&]() -> task<int> {
        co_return co_await task_group::run(lp, [&](task_group& g) -> task<int> {
            auto a = g.spawn([]() -> task<int> { co_return 20; });
            auto b = g.spawn([&]() -> task<int> { co_return co_await never.get_future(); });
            auto c = g.spawn([&]() -> task<int> { co_return co_await uvexec::to_thread(lp, [] { return 1; }); });
            b.cancel();
            CHECK(b.cancelled());
            int sum = co_await a + co_await c;
            co_return sum;
        });
    }());
    CHECK(r == 21);
    CHECK(never.get_future().cancelled());
}

TEST_CASE("cancel() stops the children and the body, and run() returns normally") {
    uvexec::loop lp;
    promise<void> never(lp);
    child_log log;
    bool body_after = false;
    auto code = lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        g.spawn(await_logged(never.get_future(), log));
        g.spawn([&]() -> task<void> {
            co_await uvexec::sleep(lp, 0ms);
            g.cancel();
        });
        co_await uvexec::sleep(lp, 1h);  // interrupted
        body_after = true;
    }));
    CHECK(code == 0);
    CHECK(log.cancelled == 1);
    CHECK_FALSE(body_after);
}

TEST_CASE("a child spawned into a cancelling group is cancelled at its first suspension") {
    uvexec::loop lp;
    promise<void> never(lp);
    child_log log;
    lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        g.cancel();  // the body's own cancellation waits for its next suspension
        CHECK(g.cancelling());
        g.spawn(await_logged(never.get_future(), log));
        CHECK(log.cancelled == 1);
        CHECK(g.size() == 0);
        co_return;
    }));
    CHECK(log.finished == 1);
}

TEST_CASE("a gather first suspending in a cancelling group cancels its futures at once, without re-entering itself") {
    // gather watches its futures before it suspends; the cancellation that
    // waits for that suspension must unhook it before cancelling them.
    uvexec::loop lp;
    promise<int> a(lp), b(lp);
    auto fa = a.get_future(), fb = b.get_future();
    child_log log;
    lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        g.cancel();
        g.spawn([&]() -> task<void> {
            std::vector<future<int>> fs;  // g++ 12 rejects a braced list in a coroutine
            fs.push_back(fa);
            fs.push_back(fb);
            try {
                co_await uvexec::gather(std::move(fs));
            } catch (const uvexec::cancelled_error&) {
                ++log.cancelled;
            }
            ++log.finished;
        });
        co_return;
    }));
    CHECK(log.cancelled == 1);
    CHECK(log.finished == 1);
    CHECK(fa.cancelled());
    CHECK(fb.cancelled());
}

TEST_CASE("a child ending with a cancelled_error the group did not send is not a failure") {
    uvexec::loop lp;
    promise<void> p(lp);
    auto f = p.get_future();
    auto code = lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        auto c = g.spawn([&]() -> task<void> { co_await f; });
        f.cancel();  // someone else cancels what the child awaits
        CHECK(c.cancelled());
        co_return;
    }));
    CHECK(code == 0);
}

TEST_CASE("a body returning a value: run() returns it") {
    uvexec::loop lp;
    auto v = lp.run_until_complete(task_group::run(lp, [&](task_group& g) -> task<std::string> {
        auto a = g.spawn([]() -> task<std::string> { co_return "a"; });
        auto b = g.spawn([&]() -> task<std::string> {
            co_return co_await uvexec::to_thread(lp, [] { return std::string("b"); });
        });
        co_return co_await a + co_await b;
    }));
    CHECK(v == "ab");
}

TEST_CASE("sleep, wait, gather, wait_for and as_completed are interrupted by the group; gather cancels its futures") {
    uvexec::loop lp;
    promise<int> pw(lp), pg(lp), pf(lp), pa(lp);
    child_log log;
    auto wait_child = [&]() -> task<void> {
        std::vector<future<int>> fs{pw.get_future()};
        try {
            co_await uvexec::wait(std::move(fs));
        } catch (const uvexec::cancelled_error&) {
            ++log.cancelled;
        }
    };
    auto gather_child = [&]() -> task<void> {
        std::vector<future<int>> fs{pg.get_future()};
        try {
            co_await uvexec::gather(std::move(fs));
        } catch (const uvexec::cancelled_error&) {
            ++log.cancelled;
        }
    };
    auto wait_for_child = [&]() -> task<void> {
        try {
            co_await uvexec::wait_for(pf.get_future(), 1h);
        } catch (const uvexec::cancelled_error&) {
            ++log.cancelled;
        }
    };
    auto as_completed_child = [&]() -> task<void> {
        auto ac = uvexec::as_completed(std::vector<future<int>>{pa.get_future()});
        try {
            while (auto f = co_await ac) {
            }
        } catch (const uvexec::cancelled_error&) {
            ++log.cancelled;
        }
    };
    auto sleep_child = [&]() -> task<void> {
        try {
            co_await uvexec::sleep(lp, 1h);
        } catch (const uvexec::cancelled_error&) {
            ++log.cancelled;
        }
    };
    auto code = lp.run_until_complete(run_and_catch(lp, [&](task_group& g) -> task<void> {
        g.spawn(wait_child);
        g.spawn(gather_child);
        g.spawn(wait_for_child);
        g.spawn(as_completed_child);
        g.spawn(sleep_child);
        g.spawn(throw_now(4));
        co_return;
    }));
    CHECK(code == 4);
    CHECK(log.cancelled == 5);
    CHECK_FALSE(pw.get_future().done());     // wait leaves its futures alone
    CHECK(pg.get_future().cancelled());      // gather cancels them, as in Python
    CHECK(pf.get_future().cancelled());      // so does wait_for
    CHECK_FALSE(pa.get_future().done());     // and as_completed leaves them
}

TEST_CASE("no child outlives the group when the loop is destroyed under it") {
    counted::reset();
    std::shared_ptr<int> witness = std::make_shared<int>(0);
    {
        std::unique_ptr<promise<void>> p;  // outlives the loop: its futures are never broken
        uvexec::loop lp;
        p = std::make_unique<promise<void>>(lp);
        auto top = lp.spawn(task_group::run(lp, [&](task_group& g) -> task<void> {
            for (int i = 0; i < 3; ++i)
                g.spawn([&, w = witness, c = counted(i)]() -> task<void> {
                    counted local(10);
                    co_await p->get_future();
                });
            g.spawn([&]() -> task<void> {
                co_await task_group::run(lp, [&](task_group& inner) -> task<void> {
                    inner.spawn([&, w = witness]() -> task<void> { co_await p->get_future(); });
                    co_return;
                });
            });
            co_await p->get_future();
        }));
        CHECK(witness.use_count() == 5);
        CHECK(counted::alive > 0);
        // ~loop destroys the suspended frames: the group's children with them.
    }
    CHECK(witness.use_count() == 1);
    CHECK(counted::alive == 0);
}

TEST_CASE("wait_for(lp, task, d) returns the result in time, and its task has finished when it times out") {
    uvexec::loop lp;
    promise<void> never(lp);
    auto v = lp.run_until_complete(uvexec::wait_for(lp, []() -> task<int> { co_return 3; }(), 1h));
    CHECK(v == 3);
    child_log log;
    auto outer = [&]() -> task<void> {
        try {
            co_await uvexec::wait_for(lp, await_logged(never.get_future(), log), 1ms);
            FAIL("no timeout");
        } catch (const uvexec::timeout_error&) {
            CHECK(log.finished == 1);
        }
    };
    lp.run_until_complete(outer());
    CHECK(log.cancelled == 1);
}

}  // TEST_SUITE
