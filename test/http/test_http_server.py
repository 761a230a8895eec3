#!/usr/bin/env python3
"""End-to-end test of examples/http_server: starts the built server on port 0,
talks HTTP/1.1 to it over real TCP, then stops it with SIGTERM while a long
/fib runs. Every wait is bounded; nothing sleeps to synchronise.

usage: test_http_server.py PATH_TO_HTTP_SERVER
"""
import os
import re
import signal
import socket
import sys
import threading
import time

import server_process  # beside this file

TIMEOUT = 30.0  # seconds: the bound on every wait (sanitizer builds are slow)
MASK = (1 << 64) - 1


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def hash_rounds(n):
    """The server's /hash: n rounds of splitmix64 from 0."""
    h = 0
    for _ in range(n):
        z = (h + 0x9E3779B97F4A7C15) & MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        h = z ^ (z >> 31)
    return h


def get(path, version="1.1", extra=""):
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


class Client:
    """One TCP connection; reads responses (status, headers, body) in order."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed by the server")
        self.buf += data

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3}) ", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(m.group(1)), headers, body.decode()

    def request(self, path, **kw):
        self.send(get(path, **kw))
        return self.response()

    def at_eof(self):
        """True if the server closed the connection (after what was read)."""
        try:
            self._fill()
        except EOFError:
            return True
        return False

    def close(self):
        self.sock.close()


def start_server(exe, *args):
    return server_process.start_server(exe, args, TIMEOUT)


def descendants(pid):
    """pids of the processes below pid, from /proc."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def process_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None  # gone


def wait_running(workers):
    """Waits, bounded, for the event "a worker is computing": its state in
    /proc turns R (an idle worker sleeps in read). It polls that state; it
    does not sleep for a guessed time."""
    deadline = time.monotonic() + TIMEOUT
    while not any(process_state(w) == "R" for w in workers):
        if time.monotonic() >= deadline:
            raise AssertionError(f"no worker of {workers} started computing in time")
        time.sleep(0.001)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def test_requests(exe):
    proc, port = start_server(exe, "--threads", "2", "--processes", "2")
    try:
        # Keep-alive: several requests, one after the other, on one connection.
        c = Client(port)
        status, headers, body = c.request("/ping")
        check(status == 200 and body == "pong\n" and "connection" not in headers, "/ping answers pong, kept alive")
        status, _, body = c.request("/fib?n=25")
        check(status == 200 and int(body) == fib(25), "/fib?n=25 on the same connection")
        status, _, body = c.request("/hash?n=1000")
        check(status == 200 and int(body) == hash_rounds(1000), "/hash?n=1000 on the same connection")
        status, _, body = c.request("/hash?n=0")
        check(status == 200 and int(body) == 0, "/hash?n=0")

        # Bad requests keep the connection open; each gets its status.
        for path, want in [("/nowhere", 404), ("/fib", 400), ("/fib?n=", 400), ("/fib?n=x", 400),
                           ("/fib?n=46", 400), ("/fib?n=-1", 400), ("/hash?n=100000001", 400),
                           ("/fib?n=3&n=4", 400), ("/ping", 200)]:
            status, _, _ = c.request(path)
            check(status == want, f"{path} is answered {want}")
        c.send(b"POST /ping HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        status, headers, _ = c.response()
        check(status == 405 and headers.get("allow") == "GET", "POST is answered 405 with Allow: GET")
        check(c.request("/ping")[0] == 200, "the connection serves on after a 405")

        # Pipelined: the answers come back in request order, whatever finishes first.
        c.send(get("/fib?n=27") + get("/ping") + get("/hash?n=5000") + get("/fib?n=3") + get("/nowhere"))
        got = [c.response() for _ in range(5)]
        check([(s, b) for s, _, b in got] == [(200, f"{fib(27)}\n"), (200, "pong\n"), (200, f"{hash_rounds(5000)}\n"),
                                               (200, "2\n"), (404, got[4][2])], "five pipelined requests, in order")
        c.close()

        # HTTP/1.0: closed after the answer unless keep-alive is asked for.
        c = Client(port)
        status, headers, _ = c.request("/ping", version="1.0")
        check(status == 200 and headers.get("connection") == "close" and c.at_eof(), "HTTP/1.0 closes")
        c = Client(port)
        status, headers, _ = c.request("/ping", version="1.0", extra="Connection: keep-alive\r\n")
        check(headers.get("connection") == "keep-alive" and c.request("/ping")[0] == 200, "HTTP/1.0 keep-alive")
        c.close()

        # Malformed: 400, Connection: close, and the server closes.
        for junk in [b"GARBAGE\r\n\r\n", b"GET /ping HTTP/9.x\r\n\r\n", b"GET /ping HTTP/1.1\r\nBad Header\r\n\r\n"]:
            c = Client(port)
            c.send(junk)
            status, headers, _ = c.response()
            check(status == 400 and headers.get("connection") == "close" and c.at_eof(), f"malformed {junk!r}: 400, closed")
        # A URL over --max-line (4096) bytes.
        c = Client(port)
        status, _, _ = c.request("/ping?" + "x" * 5000)
        check(status == 400 and c.request("/ping")[0] == 200, "an over-long URL is answered 400")
        c.close()

        # Concurrent clients, each with its own keep-alive connection.
        errors = []

        def client(i):
            try:
                cl = Client(port)
                for j in range(5):
                    n = (i + j) % 20
                    assert cl.request(f"/fib?n={n}")[2] == f"{fib(n)}\n"
                    assert cl.request(f"/hash?n={n * 100}")[2] == f"{hash_rounds(n * 100)}\n"
                    assert cl.request("/ping")[2] == "pong\n"
                cl.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"client {i}: {e!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        check(not errors and not any(t.is_alive() for t in threads), f"20 concurrent clients x 15 requests {errors}")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(TIMEOUT)
    check(rc == 0, f"exit status 0 after SIGTERM (got {rc})")


def test_sigterm_during_work(exe):
    proc, port = start_server(exe, "--threads", "1", "--processes", "1", "--grace", "20")
    c = Client(port)
    check(c.request("/fib?n=1")[2] == "1\n", "the worker process is up")
    workers = descendants(proc.pid)
    check(len(workers) >= 1, f"worker processes {workers}")
    idle = Client(port)  # an idle keep-alive connection: closed at once on SIGTERM
    check(idle.request("/ping")[0] == 200, "an idle keep-alive connection")

    n = 38  # about 0.3 s at -O2: long enough to be running when SIGTERM comes
    c.send(get(f"/fib?n={n}"))
    wait_running(workers)
    proc.send_signal(signal.SIGTERM)
    status, headers, body = c.response()
    check(status == 200 and int(body) == fib(n), "the /fib running at SIGTERM is answered")
    check(headers.get("connection") == "close" and c.at_eof(), "... with Connection: close, then closed")
    check(idle.at_eof(), "the idle connection was closed")
    rc = proc.wait(TIMEOUT)
    err = proc.stderr.read().decode()
    check(rc == 0, f"exit status 0 (got {rc}); stderr: {err}")
    check(all(process_state(w) in (None,) for w in workers), f"no worker process left, zombie or not {workers}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        check(False, "nothing listens after exit")
    except ConnectionRefusedError:
        check(True, "nothing listens after exit")


def test_grace_over(exe):
    """A call longer than --grace: the server cancels it, kills the worker, and still exits 0."""
    proc, port = start_server(exe, "--threads", "1", "--processes", "1", "--grace", "1")
    c = Client(port)
    check(c.request("/fib?n=1")[2] == "1\n", "the worker process is up")
    workers = descendants(proc.pid)
    c.send(get("/fib?n=45"))  # about 10 s at -O2, far over the grace
    wait_running(workers)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    check(c.at_eof(), "the client's connection is closed without an answer")
    rc = proc.wait(TIMEOUT)
    took = time.monotonic() - started
    check(rc == 0, f"exit status 0 after the grace period (got {rc})")
    check(took < 8, f"stopped after the 1 s grace, not after the call ({took:.1f} s)")
    check(all(process_state(w) is None for w in workers), f"the worker was killed and reaped {workers}")


def nice_of(stat_path):
    with open(stat_path) as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19, nice


def test_pool_nice(exe):
    """--pool-nice: the worker processes and the pool's threads run that much nicer than the loop."""
    proc, port = start_server(exe, "--threads", "1", "--processes", "1", "--pool-nice", "7")
    try:
        c = Client(port)
        check(c.request("/fib?n=10")[2] == "55\n" and c.request("/hash?n=10")[0] == 200, "answers with --pool-nice")
        base = os.getpriority(os.PRIO_PROCESS, 0)  # the server's own nice: the suite may run under nice(1)
        pool = min(19, base + 7)
        workers = descendants(proc.pid)
        check(workers and all(nice_of(f"/proc/{w}/stat") == pool for w in workers), f"worker processes at nice {pool}")
        threads = {int(t): nice_of(f"/proc/{proc.pid}/task/{t}/stat") for t in os.listdir(f"/proc/{proc.pid}/task")}
        check(threads[proc.pid] == base and pool in threads.values(),
              f"the loop thread at {base}, a pool thread at {pool} {threads}")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(TIMEOUT)
    check(rc == 0, "exit status 0")


def cpus_allowed(status_path):
    """Cpus_allowed_list of a /proc status file, as a set of CPU numbers."""
    with open(status_path) as f:
        text = re.search(r"^Cpus_allowed_list:\s*(\S+)$", f.read(), re.M).group(1)
    cpus = set()
    for item in text.split(","):
        first, _, last = item.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def test_pool_cpus(exe):
    """--pool-cpus and --loop-cpus: the worker processes and the pool's threads
    run on the pool's CPUs, the loop thread on its own."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("test_pool_cpus skipped: needs two CPUs")
        return
    loop_cpu, pool_cpu = cpus[0], cpus[-1]
    proc, port = start_server(exe, "--threads", "1", "--processes", "1", "--pool-cpus", str(pool_cpu),
                              "--loop-cpus", str(loop_cpu))
    try:
        c = Client(port)
        check(c.request("/fib?n=10")[2] == "55\n" and c.request("/hash?n=10")[0] == 200, "answers with --pool-cpus")
        workers = descendants(proc.pid)
        check(workers and all(cpus_allowed(f"/proc/{w}/status") == {pool_cpu} for w in workers),
              f"worker processes on CPU {pool_cpu}")
        threads = {int(t): cpus_allowed(f"/proc/{proc.pid}/task/{t}/status")
                   for t in os.listdir(f"/proc/{proc.pid}/task")}
        check(threads[proc.pid] == {loop_cpu} and {pool_cpu} in threads.values(),
              f"the loop thread on CPU {loop_cpu}, a pool thread on CPU {pool_cpu}: {threads}")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(TIMEOUT)
    check(rc == 0, "exit status 0")


def metric(text, name, pool):
    """The value of sample `name{pool="pool"}` in Prometheus text, or None."""
    m = re.search(rf'^{name}\{{pool="{pool}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_metrics_and_busy(exe):
    """/metrics serves both pools' stats as Prometheus text; with --max-queue 1
    a pool that already holds a call not yet started answers 503."""
    proc, port = start_server(exe, "--threads", "1", "--processes", "1", "--max-queue", "1")
    try:
        c = Client(port)
        check(c.request("/hash?n=10")[0] == 200 and c.request("/fib?n=10")[2] == "55\n", "work before /metrics")
        status, headers, text = c.request("/metrics")
        check(status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"),
              "/metrics: 200, Prometheus text 0.0.4")
        check(metric(text, "uvexec_calls_completed_total", "threads") == 1.0
              and metric(text, "uvexec_calls_completed_total", "processes") == 1.0,
              "/metrics counts the completed /hash and /fib")
        check(metric(text, "uvexec_worker_starts_total", "processes") == 1.0, "/metrics: one worker started")
        check('uvexec_call_run_seconds_bucket{pool="threads",le="+Inf"} 1' in text, "/metrics: a run-time histogram")
        try:
            from prometheus_client.parser import text_string_to_metric_families
            names = {f.name for f in text_string_to_metric_families(text)}
            check("uvexec_calls_completed" in names, "/metrics parsed by prometheus_client")
        except ImportError:
            print("note: prometheus_client is not importable here; its parse is skipped (test_process_flow runs it)")
        # Four long /hash pipelined at once on one thread with room for one
        # waiting call: one runs, one waits, the rest are refused.
        c.send(get("/hash?n=30000000") * 4)
        answers = [c.response() for _ in range(4)]
        busy = [a for a in answers if a[0] == 503]
        done = [a for a in answers if a[0] == 200]
        check(len(busy) >= 1 and len(busy) + len(done) == 4, f"503 when the queue is full ({len(busy)} of 4)")
        check(all(a[1].get("retry-after") == "1" for a in busy), "503 says Retry-After: 1")
        check(len({a[2] for a in done}) == 1, "the accepted ones agree")
        text = c.request("/metrics")[2]
        check(metric(text, "uvexec_calls_rejected_total", "threads") == float(len(busy)),
              "/metrics counts the refused calls")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(TIMEOUT)
    check(rc == 0, "exit status 0")


def main():
    exe = sys.argv[1]
    test_requests(exe)
    test_sigterm_during_work(exe)
    test_grace_over(exe)
    test_pool_nice(exe)
    test_pool_cpus(exe)
    test_metrics_and_busy(exe)
    print("all passed")


if __name__ == "__main__":
    main()
