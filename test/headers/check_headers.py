#!/usr/bin/env python3
"""The headers suite: every public header compiles alone, and what a program
that uses only threads includes pulls in no serialization code.

Usage: check_headers.py INCLUDE_DIR -- COMPILER ARGS...

Checks, each failing the test with the compiler's output:
  1. each header under INCLUDE_DIR/uvexec compiles on its own (-fsyntax-only);
  2. a translation unit including every header a thread-only program may use
     (all but process_pool_executor.hpp, codec.hpp and uvexec.hpp) includes no cereal header (the list comes from the compiler's -M output);
  3. below C++20 a header stops the compiler at once (two lines: uvexec's own
     message saying what to add, and the fatal error that stops it).
"""
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import tempfile

include_dir = pathlib.Path(sys.argv[1])
compiler = sys.argv[sys.argv.index("--") + 1:]
headers = sorted(p.relative_to(include_dir).as_posix() for p in (include_dir / "uvexec").rglob("*.hpp"))
thread_only = ["uvexec/thread_pool_executor.hpp", "uvexec/loop.hpp", "uvexec/gather.hpp", "uvexec/wait.hpp",
               "uvexec/as_completed.hpp", "uvexec/fn.hpp", "uvexec/promise.hpp", "uvexec/sleep.hpp",
               "uvexec/task.hpp", "uvexec/future.hpp", "uvexec/task_group.hpp", "uvexec/shield.hpp",
               "uvexec/to_thread.hpp", "uvexec/error.hpp", "uvexec/this_worker.hpp", "uvexec/map.hpp"]


def compile_source(text, extra):
    with tempfile.NamedTemporaryFile("w", suffix=".cpp", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        return subprocess.run(compiler + extra + [path], capture_output=True, text=True)
    finally:
        os.unlink(path)


failures = []


def alone(h):
    proc = compile_source(f"#include <{h}>\n", ["-fsyntax-only"])
    return h, proc


with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    for h, proc in pool.map(alone, headers):
        if proc.returncode != 0:
            failures.append(f"{h} does not compile alone:\n{proc.stderr[-3000:]}")
        else:
            print(f"ok: {h} compiles alone")

text = "".join(f"#include <{h}>\n" for h in thread_only)
proc = compile_source(text, ["-M"])
if proc.returncode != 0:
    failures.append(f"the thread-only set does not compile:\n{proc.stderr[-3000:]}")
else:
    cereal = sorted({w for w in proc.stdout.split() if "/cereal/" in w})
    if cereal:
        failures.append("the thread-only set includes cereal headers: " + ", ".join(cereal[:5]))
    else:
        print(f"ok: the thread-only set ({len(thread_only)} headers) includes no cereal header")

std17 = [a for a in compiler if not a.startswith("-std=")] + ["-std=c++17"]
with tempfile.NamedTemporaryFile("w", suffix=".cpp", delete=False) as f:
    f.write("#include <uvexec/loop.hpp>\n")
    path = f.name
proc = subprocess.run(std17 + ["-fsyntax-only", path], capture_output=True, text=True)
os.unlink(path)
errors = [l for l in proc.stderr.splitlines() if ": error" in l or ": fatal error" in l]
first = errors[0] if errors else ""
if proc.returncode == 0 or "uvexec needs C++20" not in first:
    failures.append(f"below C++20 the first error is not uvexec's own: {first!r}")
elif len(errors) > 2:
    failures.append(f"below C++20 the compiler does not stop after uvexec's message: {len(errors)} errors")
else:
    print("ok: below C++20 the compiler stops at once with: compile with -std=c++20")

if failures:
    print("\n\n".join(failures))
    print(f"FAIL: {len(failures)} check(s)")
    sys.exit(1)
print(f"ok: {len(headers)} headers")
