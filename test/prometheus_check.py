#!/usr/bin/env python3
"""Parses the metrics test_process_flow --prometheus prints with the
reference parser (Debian's python3-prometheus-client) and checks them."""
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

text = subprocess.run([sys.argv[1], "--prometheus"], check=True, capture_output=True, text=True).stdout
families = {f.name: f for f in text_string_to_metric_families(text)}


def value(family, pool, suffix="", **labels):
    for s in families[family].samples:
        if s.name == family + suffix and s.labels.get("pool") == pool and all(
                s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {family}{suffix} pool={pool} {labels}")


checks = [
    (families["uvexec_calls_submitted"].type, "counter"),
    (value("uvexec_calls_submitted", "threads", "_total"), 6),
    (value("uvexec_calls_completed", "threads", "_total"), 5),
    (value("uvexec_calls_failed", "threads", "_total"), 1),
    (value("uvexec_max_queue", "threads"), 8),
    (value("uvexec_calls_submitted", 'procs "p"', "_total"), 4),
    (value("uvexec_calls_failed", 'procs "p"', "_total"), 1),
    (value("uvexec_worker_starts", 'procs "p"', "_total"), 2),
    (value("uvexec_worker_recycles", 'procs "p"', "_total"), 2),
    (value("uvexec_worker_deaths", 'procs "p"', "_total", cause="crashed"), 0),
    (families["uvexec_call_run_seconds"].type, "histogram"),
    (value("uvexec_call_run_seconds", "threads", "_count"), 6),
    (value("uvexec_call_run_seconds", "threads", "_bucket", le="+Inf"), 6),
    (value("uvexec_call_wait_seconds", 'procs "p"', "_count"), 4),
]
failed = [(i, got, want) for i, (got, want) in enumerate(checks) if got != want]
for pool in ("threads", 'procs "p"'):
    for h in ("uvexec_call_run_seconds", "uvexec_call_wait_seconds"):
        buckets = [(float(s.labels["le"]), s.value) for s in families[h].samples
                   if s.name == h + "_bucket" and s.labels["pool"] == pool]
        counts = [c for _, c in sorted(buckets)]
        if counts != sorted(counts) or sorted(buckets)[-1][0] != float("inf"):
            failed.append((h, pool, buckets))
        if value(h, pool, "_sum") <= 0:
            failed.append((h, pool, "sum"))
if failed:
    print(text)
    print("FAILED:", failed)
    sys.exit(1)
print(f"ok: {len(families)} metric families parsed")
