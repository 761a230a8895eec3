#!/usr/bin/env python3
"""The uvexec benchmark workloads with Python's asyncio executors, on this machine.

    python3 bench/compare_python.py                      # Python figures only
    python3 bench/compare_python.py --build build-bench  # also runs uvexec's
        benchmarks from that build directory and prints a markdown table
        (workload | uvexec | baseline | ratio | Python | uvexec/Python)
    add --quick for smaller sizes (about a minute in all)

Each workload mirrors a program in bench/ (same shape, same units): medians of
--reps runs. Python is slower, so some sizes are smaller than uvexec's; the
figures are rates or per-call costs, so they stay comparable.
"""
import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def noop():
    pass


def worker_pid():
    return os.getpid()


def median(v):
    return statistics.median(v)


def thread_workers():
    return min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default, like uvexec's


# --- thread pool ---------------------------------------------------------------

def thread_throughput(n):
    async def main(ex):
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await asyncio.gather(*[loop.run_in_executor(ex, noop) for _ in range(n)])
        return n / (time.perf_counter() - t0)

    with concurrent.futures.ThreadPoolExecutor(thread_workers()) as ex:
        asyncio.run(main(ex))  # warm-up: threads started
        return asyncio.run(main(ex))


def thread_latency(n):
    async def main(ex):
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        for _ in range(n):
            await loop.run_in_executor(ex, noop)
        return (time.perf_counter() - t0) / n * 1e6

    with concurrent.futures.ThreadPoolExecutor(thread_workers()) as ex:
        asyncio.run(main(ex))
        return asyncio.run(main(ex))


def resident_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGESIZE')


def memory_child(n, conn):
    async def main():
        loop = asyncio.get_running_loop()
        gate = threading.Event()
        ex = concurrent.futures.ThreadPoolExecutor(2)
        started = threading.Semaphore(0)

        def blocked():
            started.release()
            gate.wait()

        gates = [loop.run_in_executor(ex, blocked) for _ in range(2)]
        started.acquire()
        started.acquire()
        fs = [None] * n  # the list itself is not counted, as in uvexec's benchmark
        before = resident_bytes()
        for i in range(n):
            fs[i] = loop.run_in_executor(ex, noop)
        after = resident_bytes()
        conn.send((after - before) / n)
        gate.set()
        ex.shutdown(wait=True, cancel_futures=True)
        await asyncio.gather(*gates)

    asyncio.run(main())


def memory(n):
    ctx = multiprocessing.get_context('fork')  # a fresh process per measurement
    a, b = ctx.Pipe()
    p = ctx.Process(target=memory_child, args=(n, b))
    p.start()
    v = a.recv()
    p.join()
    return v


# --- process pool ----------------------------------------------------------------

def process_throughput(n):
    async def main(ex):
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await asyncio.gather(*[loop.run_in_executor(ex, noop) for _ in range(n)])
        return n / (time.perf_counter() - t0)

    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        asyncio.run(main(ex))  # warm-up: workers started
        return asyncio.run(main(ex))


def process_latency(n):
    async def main(ex):
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        for _ in range(n):
            await loop.run_in_executor(ex, noop)
        return (time.perf_counter() - t0) / n * 1e6

    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        asyncio.run(main(ex))
        return asyncio.run(main(ex))


def process_startup(method):
    """Constructing a pool of 3 to the first result of each worker (ms)."""
    async def main():
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        ex = concurrent.futures.ProcessPoolExecutor(3, mp_context=multiprocessing.get_context(method))
        pids = set()
        while len(pids) < 3:  # a fast worker may answer several: ask until all three have
            for f in asyncio.as_completed([loop.run_in_executor(ex, worker_pid) for _ in range(3)]):
                pids.add(await f)
        ms = (time.perf_counter() - t0) * 1e3
        ex.shutdown(wait=True)
        return ms

    return asyncio.run(main())


# --- the seed programs -------------------------------------------------------------

SEED = r'''
import asyncio, concurrent.futures, logging, sys, time, os

def blocks(n):
    log = logging.getLogger('blocks({})'.format(n))
    log.info('running')
    time.sleep(0.1)
    log.info('done')
    return n ** 2

async def run_blocking_tasks(executor):
    log = logging.getLogger('run_blocking_tasks')
    log.info('starting')
    log.info('creating executor tasks')
    loop = asyncio.get_running_loop()
    blocking_tasks = [loop.run_in_executor(executor, blocks, i) for i in range(6)]
    log.info('waiting for executor tasks')
    completed, pending = await asyncio.wait(blocking_tasks)
    results = [t.result() for t in completed]
    log.info('results: {!r}'.format(results))
    log.info('exiting')

if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='PID %(process)5s %(threadName)10s %(name)18s: %(message)s',
                        stream=sys.stderr)
    executor = concurrent.futures.{kind}PoolExecutor(max_workers=3)
    asyncio.run(run_blocking_tasks(executor))
'''


def seed_example(kind, reps):
    with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
        f.write(SEED.replace('{kind}', kind))
        path = f.name
    try:
        v = []
        for i in range(reps + 1):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            if i:
                v.append((time.perf_counter() - t0) * 1e3)
        return median(v)
    finally:
        os.unlink(path)


# --- uvexec's benchmarks -----------------------------------------------------------

def run_uvexec(build, quick):
    """name -> (uvexec, baseline, ratio, unit) from the RESULT lines of bench/."""
    b = os.path.join(build, 'bench')
    progs = [
        ('bench_thread_throughput', ['--n', '100000', '--reps', '3'] if quick else []),
        ('bench_thread_latency', ['--n', '20000'] if quick else []),
        ('bench_process_throughput', ['--reps', '3'] if quick else []),
        ('bench_process_latency', ['--reps', '3'] if quick else []),
        ('bench_process_startup', []),
        ('bench_memory', ['--reps', '3'] if quick else []),
        ('bench_examples', ['--thread', os.path.join(build, 'examples', 'executor_thread'),
                            '--process', os.path.join(build, 'examples', 'executor_process')]),
    ]
    out = {}
    for prog, args in progs:
        print(f'running {prog} {" ".join(args)}', file=sys.stderr, flush=True)
        r = subprocess.run([os.path.join(b, prog)] + args, capture_output=True, text=True)
        sys.stderr.write(r.stdout)
        for m in re.finditer(r'^RESULT (\S+) uvexec=(\S+) baseline=(\S+) ratio=(\S+) unit=(\S+)$', r.stdout, re.M):
            out[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)), m.group(5))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--build', help='a uvexec build directory: also run its benchmarks and print a table')
    ap.add_argument('--quick', action='store_true', help='smaller sizes')
    ap.add_argument('--reps', type=int, default=None, help='repetitions per workload (default 5, 3 with --quick)')
    a = ap.parse_args()
    reps = a.reps or (3 if a.quick else 5)
    q = a.quick
    sizes = {
        'thread_throughput': 20000 if q else 100000,
        'thread_latency': 5000 if q else 20000,
        'process_throughput': 5000 if q else 20000,
        'process_latency': 2000 if q else 5000,
        'memory': 100000 if q else 200000,
    }
    print(f'Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, reps={reps}, sizes={sizes}')

    py = {}

    def measure(name, unit, fn, *args):
        v = [fn(*args) for _ in range(reps)]
        py[name] = median(v)
        print(f'{name:<28} python {py[name]:>12.4g} {unit:<8} runs: {" ".join(f"{x:.4g}" for x in v)}', flush=True)

    measure('thread_throughput', 'calls/s', thread_throughput, sizes['thread_throughput'])
    measure('thread_latency', 'us', thread_latency, sizes['thread_latency'])
    measure('process_throughput', 'calls/s', process_throughput, sizes['process_throughput'])
    measure('process_latency', 'us', process_latency, sizes['process_latency'])
    measure('process_startup', 'ms', process_startup, 'spawn')
    measure('process_startup_fork', 'ms', process_startup, 'fork')
    measure('memory_pending_void_call', 'bytes', memory, sizes['memory'])
    py['example_executor_thread'] = seed_example('Thread', reps)
    print(f'{"example_executor_thread":<28} python {py["example_executor_thread"]:>12.4g} ms', flush=True)
    py['example_executor_process'] = seed_example('Process', reps)
    print(f'{"example_executor_process":<28} python {py["example_executor_process"]:>12.4g} ms', flush=True)

    if not a.build:
        return
    u = run_uvexec(a.build, q)
    rows = [
        ('thread pool throughput (calls/s)', 'thread_throughput', 'thread_throughput'),
        ('thread pool round trip (us)', 'thread_latency', 'thread_latency'),
        ('process pool throughput (calls/s)', 'process_throughput', 'process_throughput'),
        ('process pool round trip (us)', 'process_latency', 'process_latency'),
        ('process pool start-up, 3 workers (ms)', 'process_startup', 'process_startup'),
        ('bytes per pending thread call', 'memory_pending_void_call', 'memory_pending_void_call'),
        ('executor_thread end to end (ms)', 'example_executor_thread', 'example_executor_thread'),
        ('executor_process end to end (ms)', 'example_executor_process', 'example_executor_process'),
    ]
    print()
    print('| workload | uvexec | baseline | ratio | Python | uvexec/Python |')
    print('|---|---|---|---|---|---|')
    for label, ukey, pkey in rows:
        if ukey not in u:
            continue
        uv, base, ratio, _ = u[ukey]
        p = py.get(pkey)
        print(f'| {label} | {uv:.4g} | {base:.4g} | {ratio:.3f} | {p:.4g} | {uv / p:.3g} |')


if __name__ == '__main__':
    main()
