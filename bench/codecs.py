"""Decode throughput of the Glucose and CGM measurement codecs.

Decodes every valid ``gls-measurement`` and ``cgm-measurement`` frame of the fixtures in a
loop and reports records per second. The baseline, run in the same process over the same
frames, is the cheapest possible read of the fixed fields with ``struct`` (no flags, no
optional fields, no validation): ``ratio_vs_struct`` says what the full, validating decoder
costs relative to it. Last line: one JSON object with the figures.

    python bench/codecs.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from collections.abc import Callable
from typing import Any

from bridge.protocols.fixtures import all_fixture_files, load_fixture_file
from bridge.protocols.registry import get_codec


def frames_of(message: str) -> list[bytes]:
    frames = []
    for path in all_fixture_files():
        for case in load_fixture_file(path).cases:
            if case.message == message and case.error is None:
                frames.append(case.frame)
    if not frames:
        raise SystemExit(f"no valid fixture frames for {message}")
    return frames


def measure(fn: Callable[[bytes], int], frames: list[bytes], seconds: float) -> float:
    """Records per second of ``fn`` (which returns the records in a frame)."""
    records = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for frame in frames:
            records += fn(frame)
        now = time.perf_counter()
        if now >= deadline:
            return records / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()

    gls = get_codec("gls-measurement").decode
    cgm = get_codec("cgm-measurement").decode

    def gls_full(frame: bytes) -> int:
        gls(frame)
        return 1

    def cgm_full(frame: bytes) -> int:
        value: Any = cgm(frame)
        return len(value.records)

    unpack_gls = struct.Struct("<BHHBBBBB").unpack_from

    def gls_struct(frame: bytes) -> int:
        unpack_gls(frame)
        return 1

    def cgm_struct(frame: bytes) -> int:
        n = offset = 0
        while offset + 6 <= len(frame):
            size = frame[offset]
            struct.unpack_from("<BBHH", frame, offset)
            offset += max(size, 6)
            n += 1
        return n

    results: dict[str, float] = {}
    for name, full, raw, message in (("gls", gls_full, gls_struct, "gls-measurement"),
                                     ("cgm", cgm_full, cgm_struct, "cgm-measurement")):
        frames = frames_of(message)
        rate = measure(full, frames, args.seconds)
        base = measure(raw, frames, args.seconds)
        print(f"{message:18} {rate:12,.0f} records/s   struct baseline {base:12,.0f} records/s"
              f"   ratio {rate / base:.3f}   ({len(frames)} fixture frames)")
        results[f"{name}_records_per_s"] = round(rate)
        results[f"{name}_struct_records_per_s"] = round(base)
        results[f"{name}_ratio_vs_struct"] = round(rate / base, 4)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
