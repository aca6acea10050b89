"""Edge agent benchmark: resident memory with three devices, and sync/uplink throughput.

    python bench/agent.py [--seconds 20] [--records 1000]

1. Memory: the agent runs as its own process (``python -m bridge.edge.cli agent run``) with
   three virtual BLE devices — insulin pump, CGM and glucose meter of
   ``configs/sim-devices.toml``, served by ``hddt-bridge sim-devices --link-server`` on a
   virtual radio the agent reaches over TCP — and a private Mosquitto when one is
   installed. Its resident set size (VmRSS) is sampled every half second; the steady state
   is the largest sample of the second half of the run.
   Target: at most 80 MB on a Raspberry Pi.
2. Sync throughput: a virtual glucose meter holding ``--records`` readings on an in-process
   bumble link; one full sync through the real GLS driver, clock correction and outbox
   commit, as records per second.
3. Uplink throughput: the same records drained from the outbox to Mosquitto at QoS 1, each
   batch deleted only after its PUBACK, as records per second.

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The private Mosquitto runner and the TOML writer live with the tests; run from a checkout.
from bumble.link import LocalLink  # noqa: E402

from bridge.edge.agent import Agent  # noqa: E402
from bridge.edge.config import parse_config  # noqa: E402
from bridge.edge.outbox import Outbox  # noqa: E402
from bridge.edge.uplink import Uplink, UplinkSettings  # noqa: E402
from bridge.records import DeviceKind  # noqa: E402
from simulators.ble.glucose_meter import GlucoseMeterPeripheral  # noqa: E402
from simulators.ble.runner import demo_meter_readings, peripheral_config  # noqa: E402
from tests.edge.mosquitto import Mosquitto, free_port, mosquitto_available  # noqa: E402
from tests.edge.test_agent import to_toml  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure_memory(workdir: Path, seconds: float, broker_port: int | None) -> dict[str, Any]:
    """RSS of an agent process syncing the three virtual BLE devices of sim-devices.toml."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    radio = free_port()
    procs: list[subprocess.Popen[str]] = []
    try:
        # The fleet process hosts the virtual radio and opens a controller for the agent.
        devices = subprocess.Popen(
            [sys.executable, "-m", "bridge", "sim-devices", "--config",
             str(ROOT / "configs" / "sim-devices.toml"), "--link-server",
             f"tcp-server:127.0.0.1:{radio}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(devices)
        assert devices.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = devices.stdout.readline()
            if not line:
                raise RuntimeError("the virtual devices did not start")
            if line.startswith("READY"):
                break
        transport = f"tcp-client:127.0.0.1:{radio}"

        def ble(name: str, profile: str, address: str) -> dict[str, Any]:
            return {"name": name, "transport": "ble", "profile": profile,
                    "address": address, "backend": "bumble", "bumble_transport": transport,
                    "poll_interval_s": 5, "retry_min_s": 1, "retry_max_s": 5}

        doc = {"agent": {"gateway_id": "bench-gw", "status_interval_s": 10},
               "broker": {"url": f"mqtt://127.0.0.1:{broker_port or 1}", "protocol": "5",
                          "reconnect_min_s": 1, "reconnect_max_s": 5},
               "outbox": {"path": str(workdir / "memory-outbox.sqlite")},
               "devices": [ble("pump", "insulin-pump", "F0:00:00:00:01:01"),
                           ble("cgm", "cgm", "F0:00:00:00:01:02"),
                           ble("meter", "glucose", "F0:00:00:00:01:03")]}
        config_path = workdir / "memory-agent.toml"
        config_path.write_text(to_toml(doc), encoding="utf-8")
        agent = subprocess.Popen(
            [sys.executable, "-m", "bridge.edge.cli", "agent", "run", "--config",
             str(config_path), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        procs.append(agent)
        samples: list[tuple[float, float]] = []
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(0.5)
            value = rss_mb(agent.pid)
            if value is not None:
                samples.append((time.monotonic() - start, value))
        with Outbox(workdir / "memory-outbox.sqlite", create=False) as outbox:
            stats = outbox.stats()
        late = [v for t, v in samples if t >= seconds / 2] or [v for _, v in samples]
        return {"rss_mb": round(max(late), 1),
                "rss_peak_mb": round(max(v for _, v in samples), 1),
                "synced": {n: s.records_synced for n, s in stats.devices.items()},
                "sync_errors": {n: s.errors for n, s in stats.devices.items()}}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def measure_sync(workdir: Path, count: int, broker_port: int | None) -> dict[str, Any]:
    """One full sync of a ``count``-record virtual meter through the GLS driver, then the
    uplink drain of those records."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    link = LocalLink()  # type: ignore[no-untyped-call]
    meter = GlucoseMeterPeripheral(
        peripheral_config(DeviceKind.BLOOD_GLUCOSE_METER, name="Bench Meter",
                          address="F0:00:00:00:0B:01"), link,
        records=demo_meter_readings(count, start=now - dt.timedelta(hours=6 * count + 1)),
        capacity=count)
    await meter.start()
    try:
        doc = {"agent": {"gateway_id": "bench-gw"},
               "broker": {"url": f"mqtt://127.0.0.1:{broker_port or 1}", "batch_size": 100},
               "outbox": {"path": str(workdir / "sync-outbox.sqlite")},
               "devices": [{"name": "meter", "transport": "ble", "profile": "glucose",
                            "address": "F0:00:00:00:0B:01", "backend": "bumble",
                            "bumble_transport": "tcp-client:127.0.0.1:1", "timezone": "UTC"}]}
        config = parse_config(doc)
        agent = Agent(config, link=link)
        t0 = time.perf_counter()
        outcome = await agent.sync_once(config.devices[0])
        sync_s = time.perf_counter() - t0
        result: dict[str, Any] = {"records": outcome.inserted,
                                  "records_per_s": round(outcome.inserted / sync_s, 1),
                                  "sync_s": round(sync_s, 3)}
        if broker_port is not None:
            uplink = Uplink(UplinkSettings(host="127.0.0.1", port=broker_port,
                                           batch_size=100), "bench-gw", agent.outbox)
            stop = asyncio.Event()
            t0 = time.perf_counter()
            task = asyncio.create_task(uplink.run(stop))
            while agent.outbox.stats().queued:
                await asyncio.sleep(0.005)
            drain_s = time.perf_counter() - t0
            stop.set()
            await task
            result |= {"uplink_records_per_s": round(outcome.inserted / drain_s, 1),
                       "uplink_s": round(drain_s, 3), "uplink_messages": uplink.stats.messages}
        agent.outbox.close()
        return result
    finally:
        await meter.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the memory run lasts (default 20)")
    parser.add_argument("--records", type=int, default=1000,
                        help="readings stored in the benchmark meter (default 1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            port: int | None = None
            if mosquitto_available():
                port = stack.enter_context(Mosquitto(workdir / "mosquitto")).port
            else:
                print("mosquitto not installed: no broker; uplink throughput not measured")
            sync = asyncio.run(measure_sync(workdir, args.records, port))
            print(f"sync: {sync['records']} records from a virtual GLS meter in "
                  f"{sync['sync_s']} s = {sync['records_per_s']} records/s "
                  "(GLS driver over an in-process bumble link, clock fix, outbox commit)")
            if "uplink_records_per_s" in sync:
                print(f"uplink: {sync['records']} records in {sync['uplink_messages']} "
                      f"QoS 1 messages in {sync['uplink_s']} s = "
                      f"{sync['uplink_records_per_s']} records/s (delete after PUBACK)")
            memory = measure_memory(workdir, args.seconds, port)
            print(f"memory: agent process with 3 BLE devices: steady {memory['rss_mb']} MB "
                  f"RSS (peak {memory['rss_peak_mb']} MB; target <= 80 MB); synced "
                  f"{memory['synced']}, sync errors {memory['sync_errors']}")
    print(json.dumps({"rss_mb": memory["rss_mb"], "rss_peak_mb": memory["rss_peak_mb"],
                      "records_per_s": sync["records_per_s"],
                      "uplink_records_per_s": sync.get("uplink_records_per_s"),
                      "records": sync["records"], "devices": 3}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
