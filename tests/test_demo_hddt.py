"""The demo end to end as a DiGA sees it: simulated patient → devices → agent → MQTT →
backend → HDDT over TLS → the DiGA reference client, compared with what the simulator made."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
import zoneinfo
from collections import Counter
from pathlib import Path

from bridge.demo import DEMO_PATIENTS
from bridge.records import BloodGlucoseReading, CgmReading, DeviceKind
from simulators.fleet import FleetConfig, simulate_patient

REPO = Path(__file__).resolve().parents[1]
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


class _Lines:
    """A child's stdout, read by a thread (so a full pipe never blocks the child)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._stream = process.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip("\n"))

    def close(self) -> None:
        self._thread.join(timeout=10)
        self._stream.close()

    def wait_for(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            time.sleep(0.2)
        raise AssertionError(f"no line {prefix!r} within {timeout_s} s:\n" +
                             "\n".join(self.lines))


def _diga(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "bridge", "diga", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _expected(state: Path) -> tuple[dict[dt.datetime, float | None],
                                    dict[dt.datetime, float | None], dt.datetime]:
    """Meter and CGM readings of demo patient 1 as the simulator made them."""
    fixed = json.loads((state / "demo.json").read_text())
    config = FleetConfig(DEMO_PATIENTS, history_days=fixed["history_days"],
                         live_days=fixed["live_days"], seed=fixed["seed"])
    logs = simulate_patient(DEMO_PATIENTS[0], config,
                            dt.date.fromisoformat(fixed["start_date"]))
    # A meter reading's time is what the meter's clock showed (whole seconds, local time):
    # the agent takes it as it is while the clock is within its tolerance (2 min,
    # bridge/edge/clock.py), as it is for this meter.
    meter: dict[dt.datetime, float | None] = {}
    for r in logs[DeviceKind.BLOOD_GLUCOSE_METER].records:
        if isinstance(r, BloodGlucoseReading):
            assert r.device_time is not None
            shown = r.device_time.replace(microsecond=0, tzinfo=BERLIN).astimezone(dt.UTC)
            assert abs(shown - r.time) < dt.timedelta(minutes=2)
            meter[shown] = r.glucose_mg_dl
    cgm = {r.time: r.glucose_mg_dl for r in logs[DeviceKind.CGM].records
           if isinstance(r, CgmReading)}
    return meter, cgm, dt.datetime.fromisoformat(fixed["sim_time"])


def test_a_diga_pairs_and_fetches_exactly_what_the_simulator_made(tmp_path: Path) -> None:
    state = tmp_path / "state"
    demo = subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo", "--state-dir", str(state),
         "--history-days", "2", "--port", "0", "--http-port", "0", "--duration", "600"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = _Lines(demo)
    try:
        out.wait_for("ready", 240)
        connection = str(state / "connection.json")
        # Pairing through the portal's login and consent forms, as the DiGA client does it.
        paired = _diga("pair", "--connection", connection, "--patient", "demo-patient-1")
        assert "paired" in paired.stdout
        first = _diga("fetch", "--connection", connection, "--patient", "demo-patient-1",
                      "--days", "5", "--format", "json")
        second = _diga("fetch", "--connection", connection, "--patient", "demo-patient-1",
                       "--format", "json")
        demo.send_signal(signal.SIGINT)           # Ctrl-C: a clean shutdown
        assert demo.wait(120) == 0, "\n".join(out.lines)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        out.close()
    readings = [json.loads(line) for text in (first.stdout, second.stdout)
                for line in text.splitlines() if line.startswith("{")]
    meter, cgm, origin = _expected(state)
    got = {"blood-glucose": Counter[dt.datetime](), "cgm": Counter[dt.datetime]()}
    for r in readings:
        when = dt.datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
        got[r["kind"]][when] += 1
        expected = meter if r["kind"] == "blood-glucose" else cgm
        assert when in expected, f"{r} was never simulated"
        assert r["value"] == expected[when], r
        assert r["unit"] == "mg/dL"
    for kind, made in (("blood-glucose", meter), ("cgm", cgm)):
        assert all(n == 1 for n in got[kind].values()), f"{kind} delivered twice"
        backfilled = {t for t in made if t <= origin}
        missing = sorted(backfilled - set(got[kind]))
        assert not missing, f"{len(missing)} {kind} readings missing, e.g. {missing[:3]}"
    assert len(got["cgm"]) > 2 * 24 * 12 * 0.9 and len(got["blood-glucose"]) >= 8
