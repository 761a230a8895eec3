"""Starting examples/http_server for its test and its benchmark: on 127.0.0.1,
port 0, reading the port it prints, within a time bound."""
import os
import re
import selectors
import subprocess
import time


def start_server(exe, args, timeout, stderr=subprocess.PIPE):
    """Starts `exe --port 0 args...`; returns (process, port) once it has
    printed `listening on 127.0.0.1:PORT`. Raises RuntimeError if it exits or
    says nothing within `timeout` seconds (then it is killed)."""
    proc = subprocess.Popen([exe, "--port", "0", *args], stdout=subprocess.PIPE, stderr=stderr)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            proc.kill()
            proc.wait()
            raise RuntimeError("http_server did not say where it listens in time")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise RuntimeError(f"http_server exited with status {proc.wait()}")
        line += chunk
    m = re.match(rb"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"unexpected first line from http_server: {line!r}")
    return proc, int(m.group(1))
