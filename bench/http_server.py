#!/usr/bin/env python3
"""The HTTP example under a real client: wrk against examples/http_server.

Starts the server on 127.0.0.1, port 0, and measures with wrk (every run
bounded by -d and by a timeout):

  * /ping throughput: wrk -c CONNECTIONS on /ping alone (requests/s);
  * /ping latency with no pool work: wrk -c 1 --latency on /ping (p50, p99);
  * /ping latency while both pools are saturated: the same, while two more
    wrk processes keep /fib (process pool) and /hash (thread pool) busy, each
    with twice as many connections as its pool has workers, so that a call is
    always queued behind the running ones;

alternating the unloaded and loaded runs, --reps times, and prints the
medians and the ratio p99 saturated / p99 unloaded (goal: at most 2).

With --pin (two CPUs or more), the pools' threads and workers run on the last
CPU (--pool-cpus) and the loop thread and every wrk on the others
(--loop-cpus, taskset), so that pool work never takes the loop's CPU.

usage: http_server.py --server build/examples/http_server [--duration 5] [--reps 3]
                      [--threads 1] [--processes 1] [--pool-nice 0] [--pin] [--connections 4]
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys

# Starting the server is shared with its test.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "http"))
import server_process  # noqa: E402

TIMEOUT = 60.0  # seconds: the bound on every wait beyond a run's own duration


CLIENT_PREFIX = []  # ["taskset", "-c", LOOP_CPUS] with --pin


def cpu_split():
    """(loop CPUs, pool CPUs) as taskset lists: the last usable CPU for the pools, the others for the loop."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("http_server benchmark skipped: --pin needs two CPUs or more")
        sys.exit(77)  # meson's "skipped"
    return ",".join(map(str, cpus[:-1])), str(cpus[-1])


def start_server(exe, threads, processes, pool_nice, pin):
    extra = []
    if pin:
        loop_cpus, pool_cpus = cpu_split()
        extra = ["--loop-cpus", loop_cpus, "--pool-cpus", pool_cpus]
        CLIENT_PREFIX[:] = ["taskset", "-c", loop_cpus]
    try:
        return server_process.start_server(
            exe, ["--threads", str(threads), "--processes", str(processes), "--pool-nice", str(pool_nice)] + extra,
            TIMEOUT, stderr=subprocess.DEVNULL)
    except RuntimeError as e:
        sys.exit(str(e))


def to_us(value, unit):
    return float(value) * {"us": 1.0, "ms": 1e3, "s": 1e6}[unit]


def parse_wrk(out):
    """requests/s, and p50/p99 in µs when --latency was given."""
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            r[f"p{pct}"] = to_us(*m.groups())
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(errors.group(1)) if errors else 0
    return r


def wrk_command(url, connections, duration, latency=False):
    cmd = CLIENT_PREFIX + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s"]
    if latency:
        cmd.append("--latency")
    return cmd + [url]


def run_wrk(url, connections, duration, latency=False):
    out = subprocess.run(wrk_command(url, connections, duration, latency), capture_output=True, text=True,
                         timeout=duration + TIMEOUT, check=True).stdout
    return parse_wrk(out)


def loaded_ping(base, args):
    """/ping latency while /fib and /hash saturate both pools."""
    load_duration = args.duration + 2  # the load outlasts the measurement
    loads = [subprocess.Popen(wrk_command(f"{base}/fib?n={args.fib_n}", 2 * args.processes, load_duration),
                              stdout=subprocess.PIPE, text=True),
             subprocess.Popen(wrk_command(f"{base}/hash?n={args.hash_n}", 2 * args.threads, load_duration),
                              stdout=subprocess.PIPE, text=True)]
    try:
        ping = run_wrk(f"{base}/ping", 1, args.duration, latency=True)
        fib_out, _ = loads[0].communicate(timeout=load_duration + TIMEOUT)
        hash_out, _ = loads[1].communicate(timeout=load_duration + TIMEOUT)
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
                p.wait()
    ping["fib_rps"] = parse_wrk(fib_out)["rps"]
    ping["hash_rps"] = parse_wrk(hash_out)["rps"]
    return ping


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="path to the built examples/http_server")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; medians are printed (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="the server's --threads (default 1)")
    ap.add_argument("--processes", type=int, default=1, help="the server's --processes (default 1)")
    ap.add_argument("--pool-nice", type=int, default=0,
                    help="the server's --pool-nice: nice value of pool threads and workers (default 0)")
    ap.add_argument("--pin", action="store_true",
                    help="pools on the last CPU, the loop and the wrk clients on the others (needs 2 CPUs)")
    ap.add_argument("--connections", type=int, default=4, help="wrk connections for /ping throughput (default 4)")
    ap.add_argument("--fib-n", type=int, default=30, help="n of the /fib load (default 30)")
    ap.add_argument("--hash-n", type=int, default=2000000, help="n of the /hash load (default 2000000)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("http_server benchmark skipped: wrk not found (Debian: apt-get install wrk)")
        return 77  # meson's "skipped"

    proc, port = start_server(args.server, args.threads, args.processes, args.pool_nice, args.pin)
    base = f"http://127.0.0.1:{port}"
    try:
        run_wrk(f"{base}/ping", args.connections, 1)  # warm-up
        thr, idle, busy = [], [], []
        for rep in range(args.reps):
            thr.append(run_wrk(f"{base}/ping", args.connections, args.duration))
            if rep % 2 == 0:  # alternate which comes first
                idle.append(run_wrk(f"{base}/ping", 1, args.duration, latency=True))
                busy.append(loaded_ping(base, args))
            else:
                busy.append(loaded_ping(base, args))
                idle.append(run_wrk(f"{base}/ping", 1, args.duration, latency=True))
            print(f"rep {rep + 1}: /ping {thr[-1]['rps']:.0f}/s alone; p50/p99 unloaded "
                  f"{fmt_us(idle[-1]['p50'])}/{fmt_us(idle[-1]['p99'])}, saturated "
                  f"{fmt_us(busy[-1]['p50'])}/{fmt_us(busy[-1]['p99'])} "
                  f"(/fib {busy[-1]['fib_rps']:.1f}/s, /hash {busy[-1]['hash_rps']:.1f}/s)", flush=True)
        bad = sum(r["non2xx"] for r in thr + idle + busy)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(TIMEOUT)

    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    ratio = med(busy, "p99") / med(idle, "p99")
    print()
    print(f"http_server on 127.0.0.1: --threads {args.threads} --processes {args.processes} "
          f"--pool-nice {args.pool_nice}{' --pin (pools on CPU ' + cpu_split()[1] + ')' if args.pin else ''}, wrk -t1 -d{args.duration}s, "
          f"medians of {args.reps}; load: /fib?n={args.fib_n} on {2 * args.processes} and "
          f"/hash?n={args.hash_n} on {2 * args.threads} connection(s)")
    print()
    print("| measurement | requests/s | p50 | p99 |")
    print("|---|---|---|---|")
    print(f"| /ping alone, {args.connections} connections | {med(thr, 'rps'):.0f} | | |")
    print(f"| /ping, 1 connection, no pool work | {med(idle, 'rps'):.0f} | {fmt_us(med(idle, 'p50'))} | "
          f"{fmt_us(med(idle, 'p99'))} |")
    print(f"| /ping, 1 connection, both pools saturated | {med(busy, 'rps'):.0f} | {fmt_us(med(busy, 'p50'))} | "
          f"{fmt_us(med(busy, 'p99'))} |")
    print(f"| the load meanwhile: /fib, /hash | {med(busy, 'fib_rps'):.1f}, {med(busy, 'hash_rps'):.1f} | | |")
    print()
    print(f"ratio p99 saturated / p99 unloaded: {ratio:.2f} (goal <= 2: {'met' if ratio <= 2 else 'not met'})")
    print(f"RESULT http_ping rps={med(thr, 'rps'):.0f} p99_idle_us={med(idle, 'p99'):.0f} "
          f"p99_busy_us={med(busy, 'p99'):.0f} ratio={ratio:.2f}")
    if bad:
        print(f"error: {bad} answer(s) were not 2xx")
        return 1
    if rc != 0:
        print(f"error: http_server exited with status {rc} after SIGTERM")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
