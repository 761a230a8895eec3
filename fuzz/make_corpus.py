#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: valid frames and archives
(and a few deliberately broken ones). Run from anywhere; idempotent."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CALL, INIT, HELLO, RESULT, ERROR, INIT_FAILED = 1, 2, 16, 17, 18, 19


def frame(kind, ident, payload=b""):
    return struct.pack("<IBQ", len(payload) + 9, kind, ident) + payload


def s(text):  # cereal binary std::string: u64 size, bytes
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def vec_int(xs):
    return struct.pack("<Q", len(xs)) + b"".join(struct.pack("<i", x) for x in xs)


def vec_str(xs):
    return struct.pack("<Q", len(xs)) + b"".join(s(x) for x in xs)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# fuzz_frame: FuzzedDataProvider input is (bool, chunk size, bytes)*; a
# stream of frames fed whole is a good start: bool byte 1, size byte, bytes.
def chunks(stream, size):
    out = b""
    for i in range(0, len(stream), size):
        part = stream[i:i + size]
        out += b"\x01" + bytes([len(part)]) + part
    return out

hello = frame(HELLO, 1234, struct.pack("<I", 1))
call = frame(CALL, 1, struct.pack("<Q", 0x1122334455667788) + struct.pack("<i", 7))
result = frame(RESULT, 1, struct.pack("<i", 49))
error = frame(ERROR, 2, s("std::runtime_error") + s("boom"))
write("fuzz_frame", "hello_call_result", chunks(hello + call + result + error, 40))
write("fuzz_frame", "byte_by_byte", chunks(hello + result, 1))
write("fuzz_frame", "too_short", chunks(struct.pack("<I", 3) + b"xxxx", 8))
write("fuzz_frame", "too_long", chunks(struct.pack("<I", 0x7fffffff) + b"\x11" * 12, 16))
write("fuzz_frame", "near_max", chunks(struct.pack("<I", (1 << 20)) + b"\x11" * 200, 100))

# fuzz_decode: first byte selects the type (see fuzz_decode.cpp).
write("fuzz_decode", "string", b"\x00" + s("hello"))
write("fuzz_decode", "vector_int", b"\x01" + vec_int([1, 2, 3, -4]))
write("fuzz_decode", "map", b"\x02" + struct.pack("<Q", 2) + s("a") + vec_str(["x", "y"]) + s("b") + vec_str([]))
write("fuzz_decode", "optional_some", b"\x03" + b"\x01" + struct.pack("<i", 5) + s("five"))
write("fuzz_decode", "optional_none", b"\x03" + b"\x00")
write("fuzz_decode", "remote_error", b"\x04" + s("std::runtime_error") + s("it broke"))
write("fuzz_decode", "version", b"\x05" + struct.pack("<I", 1))
write("fuzz_decode", "nested", b"\x06" + struct.pack("<Q", 2) + vec_str(["a"]) + vec_str(["b", "c"]))
write("fuzz_decode", "huge_length", b"\x00" + struct.pack("<Q", 1 << 62) + b"abc")

# fuzz_worker: what the worker writes after its hello, answering call #1
# (fuzzfn::square(7)).
write("fuzz_worker", "correct_result", frame(RESULT, 1, struct.pack("<i", 49)))
write("fuzz_worker", "wrong_value", frame(RESULT, 1, struct.pack("<i", 50)))
write("fuzz_worker", "short_result", frame(RESULT, 1, b"\x01"))
write("fuzz_worker", "long_result", frame(RESULT, 1, struct.pack("<ii", 49, 0)))
write("fuzz_worker", "remote_error", frame(ERROR, 1, s("std::runtime_error") + s("boom")))
write("fuzz_worker", "bad_error", frame(ERROR, 1, b"\xff" * 12))
write("fuzz_worker", "wrong_id", frame(RESULT, 2, struct.pack("<i", 49)))
write("fuzz_worker", "second_hello", frame(HELLO, 1, struct.pack("<I", 1)))
write("fuzz_worker", "init_failed", frame(INIT_FAILED, 0, s("std::runtime_error") + s("init")))
write("fuzz_worker", "unknown_kind", frame(99, 1, b""))
write("fuzz_worker", "call_kind", frame(CALL, 1, b""))
write("fuzz_worker", "truncated", frame(RESULT, 1, struct.pack("<i", 49))[:7])
write("fuzz_worker", "huge_length", struct.pack("<I", 0xffffffff) + b"\x11" * 9)
write("fuzz_worker", "result_then_junk", frame(RESULT, 1, struct.pack("<i", 49)) + b"junk")
write("fuzz_worker", "text", b"this is not a frame\n")
