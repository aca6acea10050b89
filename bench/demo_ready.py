"""Time to a working demo: ``hddt-bridge demo`` on its defaults until a DiGA's first FHIR search.

    python bench/demo_ready.py [--history-days 30] [--patients 3]

Starts the demo as the README's first command does (embedded broker, SQLite, three
simulated patients, 30 days of history backfilled through the virtual devices and the
agents), in a fresh state folder on free ports, and measures:

1. seconds from start to the demo's ``ready`` line (the backfill is stored);
2. seconds to pair the demo DiGA through the portal's login and consent forms
   (``hddt-bridge diga pair``);
3. seconds for a DiGA's first poll of 30 days of blood glucose and CGM
   (``hddt-bridge diga fetch --days 30``) and how many readings it returned;
4. the demo's peak resident memory (VmHWM of the process).

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--patients", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="demo-ready-") as tmp:
        state = Path(tmp) / "state"
        started = time.monotonic()
        demo = subprocess.Popen(
            [sys.executable, "-m", "bridge", "demo", "--state-dir", str(state),
             "--history-days", str(args.history_days), "--patients", str(args.patients),
             "--port", "0", "--http-port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert demo.stdout is not None
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:
            assert demo.stdout is not None
            for line in demo.stdout:
                lines.append(line.rstrip())
                print(line.rstrip(), flush=True)
                if line.startswith("ready"):
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            if not ready.wait(1800):
                print("the demo did not become ready", file=sys.stderr)
                return 1
            ready_s = time.monotonic() - started
            connection = str(state / "connection.json")
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "bridge", "diga", "pair", "--connection",
                            connection, "--patient", "demo-patient-1"], cwd=ROOT, check=True,
                           capture_output=True, text=True)
            pair_s = time.monotonic() - t0
            t0 = time.monotonic()
            fetched = subprocess.run(
                [sys.executable, "-m", "bridge", "diga", "fetch", "--connection", connection,
                 "--patient", "demo-patient-1", "--days", str(args.history_days),
                 "--format", "json"], cwd=ROOT, check=True, capture_output=True, text=True)
            fetch_s = time.monotonic() - t0
            readings = sum(1 for line in fetched.stdout.splitlines() if line.startswith("{"))
            rss = _peak_rss_mb(demo.pid)
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(120)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
            reader.join(10)
            demo.stdout.close()
    print(f"ready after {ready_s:.1f} s; pairing {pair_s:.2f} s; first fetch of "
          f"{args.history_days} days: {readings} readings in {fetch_s:.2f} s")
    print(json.dumps({"history_days": args.history_days, "patients": args.patients,
                      "ready_s": round(ready_s, 1), "pair_s": round(pair_s, 2),
                      "first_fetch_s": round(fetch_s, 2), "first_fetch_readings": readings,
                      "demo_peak_rss_mb": None if rss is None else round(rss, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
