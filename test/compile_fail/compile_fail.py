#!/usr/bin/env python3
"""Compiles one source file and checks the outcome: that it fails with a
message containing the expected text, or (with --must-compile) that it compiles.
Usage: compile_fail.py EXPECTED SOURCE -- COMPILER ARGS..."""
import subprocess
import sys

expected, source = sys.argv[1], sys.argv[2]
compiler = sys.argv[sys.argv.index("--") + 1:]
cmd = compiler + ["-fsyntax-only", source]
proc = subprocess.run(cmd, capture_output=True, text=True)
if expected == "--must-compile":
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        print("FAIL: the control case does not compile")
        sys.exit(1)
    print("ok: compiles")
    sys.exit(0)
if proc.returncode == 0:
    print(f"FAIL: {source} compiled, but it must not")
    sys.exit(1)
if expected not in proc.stderr:
    print(proc.stderr[-4000:])
    print(f"FAIL: the error does not say: {expected}")
    sys.exit(1)
print(f"ok: refused with: {expected}")
