"""The agent end to end: devices → clock fix → outbox → private Mosquitto → subscriber.

:class:`ListDriver` is a complete in-test implementation of the driver interface that serves
canonical records from a list (what a meter's memory would hold); the tests through the real
BLE/serial drivers and virtual devices are further down. The crash test runs the agent as a
separate process and kills it with SIGKILL in the middle of syncs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.devices.base import (
    ClockObservation,
    ClockSource,
    DeviceDisconnected,
    DeviceDriver,
    SyncResult,
    SyncState,
)
from bridge.edge.agent import Agent
from bridge.edge.config import AgentConfig, DeviceConfig, parse_config
from bridge.edge.outbox import Outbox
from bridge.messages import DeviceState, DeviceStatus, GatewayState, GatewayStatus
from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind, TimeQuality
from tests.edge.mosquitto import Mosquitto, Subscriber, mosquitto_available

# In CI a missing broker must fail the run, never skip the evidence silently.
needs_broker = pytest.mark.skipif(not mosquitto_available() and not os.environ.get("CI"),
                                  reason="mosquitto not installed")

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2027, 1, 4, 6, 0, tzinfo=dt.UTC)
BERLIN_WINTER = dt.timedelta(hours=1)


def meter_history(device_id: str, count: int, seed: int = 0) -> list[BloodGlucoseReading]:
    """A meter's memory: readings with sequence numbers and the device's (local) clock."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        true = T0 + dt.timedelta(minutes=37 * i + rng.randrange(0, 20))
        out.append(BloodGlucoseReading(
            device_id=device_id, time=true, sequence=i + 1,
            device_time=(true + BERLIN_WINTER).replace(tzinfo=None),
            glucose_mg_dl=float(rng.randrange(60, 250))))
    return out


class ListDriver(DeviceDriver):
    """A device whose memory is ``history``; each sync returns up to ``per_sync`` records
    after the stored ``last_seq``. ``clock_offset`` is how far the device clock is off;
    ``fail_every`` makes every n-th sync drop the link; ``delay_s`` slows each sync."""

    def __init__(self, info: DeviceInfo, history: Sequence[BloodGlucoseReading], *,
                 per_sync: int = 1000, clock_offset: dt.timedelta = dt.timedelta(0),
                 fail_every: int = 0, delay_s: float = 0.0,
                 on_sync: Callable[[int], None] | None = None) -> None:
        self.info = info
        self.history = list(history)
        self.per_sync = per_sync
        self.clock_offset = clock_offset
        self.fail_every = fail_every
        self.delay_s = delay_s
        self.on_sync = on_sync
        self.calls = 0
        self.closed = 0

    async def read_info(self) -> DeviceInfo:
        return self.info

    async def sync(self, state: SyncState) -> SyncResult:
        self.calls += 1
        if self.on_sync is not None:
            self.on_sync(self.calls)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise DeviceDisconnected("link supervision timeout", self.info.address)
        last = int(state.get("last_seq", 0))
        new = [r for r in self.history if (r.sequence or 0) > last][:self.per_sync]
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        now = dt.datetime.now(dt.UTC)
        # The device shows local (Berlin winter) time, off by clock_offset.
        shown = (now + BERLIN_WINTER + self.clock_offset).replace(tzinfo=None)
        clock = ClockObservation(shown, now, ClockSource.CURRENT_TIME)
        skewed = tuple(self.as_reported(r) for r in new)
        return SyncResult(self.info, skewed,
                          {"last_seq": new[-1].sequence if new else last}, clock)

    def as_reported(self, r: BloodGlucoseReading) -> BloodGlucoseReading:
        """The record as this device reports it: its timestamp off by ``clock_offset``."""
        if r.device_time is None:
            return r
        return dataclasses.replace(r, device_time=r.device_time + self.clock_offset)

    async def close(self) -> None:
        self.closed += 1


def config_doc(tmp_path: Path, broker_port: int, devices: list[dict[str, Any]],
               **sections: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "agent": {"gateway_id": "gw-home", "timezone": "Europe/Berlin",
                  "status_interval_s": 0.5},
        "broker": {"url": f"mqtt://127.0.0.1:{broker_port}", "batch_size": 50,
                   "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
                   "publish_timeout_s": 3, "connect_timeout_s": 3, "idle_poll_s": 0.2},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "devices": devices,
    }
    for name, table in sections.items():
        doc.setdefault(name, {}).update(table)
    return doc


def serial_device(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "transport": "serial", "protocol": "onetouch-ultra2",
            "port": f"socket://127.0.0.1:1/{name}", "poll_interval_s": 0.1,
            "retry_min_s": 0.05, "retry_max_s": 0.2, **kw}


async def run_agent(agent: Agent, until: Callable[[], bool], timeout_s: float = 30.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop, handle_signals=False))
    deadline = time.monotonic() + timeout_s
    try:
        while not until():
            if task.done():
                task.result()
                raise AssertionError("agent ended early")
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


# --- in-process ------------------------------------------------------------------------------

@needs_broker
def test_agent_delivers_every_record_once_with_corrected_clock_and_statuses(
        tmp_path: Path) -> None:
    meter_info = DeviceInfo(device_id="meter-a1", kind=DeviceKind.BLOOD_GLUCOSE_METER,
                            transport="serial")
    slow_info = DeviceInfo(device_id="meter-b2", kind=DeviceKind.BLOOD_GLUCOSE_METER,
                           transport="serial")
    history_a = meter_history("meter-a1", 260)
    history_b = meter_history("meter-b2", 90, seed=1)
    drivers = {
        "kitchen": ListDriver(meter_info, history_a, per_sync=60),
        # A meter whose clock runs 25 minutes slow and whose link drops every third sync.
        "bedroom": ListDriver(slow_info, history_b, per_sync=40,
                              clock_offset=dt.timedelta(minutes=-25), fail_every=3),
    }
    with Mosquitto(tmp_path / "mq") as broker, Subscriber(broker.port) as sub:
        config = parse_config(config_doc(tmp_path, broker.port,
                                         [serial_device("kitchen"), serial_device("bedroom")]))
        agent = Agent(config, driver_factory=lambda d: drivers[d.name])
        expected = ({drivers["kitchen"].as_reported(r).idempotency_key() for r in history_a}
                    | {drivers["bedroom"].as_reported(r).idempotency_key() for r in history_b})
        outbox = agent.outbox

        def done() -> bool:
            return (expected <= sub.snapshot()[0]
                    and "hddt/v1/gw/gw-home/devices/meter-b2/status" in sub.status
                    and outbox.stats().devices["bedroom"].errors >= 1)

        asyncio.run(run_agent(agent, done))
        keys, _ = sub.snapshot()
        assert keys == expected
        assert not sub.errors
        # Every driver was closed after each sync, failed or not.
        assert all(d.closed == d.calls for d in drivers.values())
        with Outbox(config.outbox_path) as reader:
            stats = reader.stats()
        assert stats.devices["kitchen"].records_synced == 260
        assert stats.devices["bedroom"].records_synced == 90
        assert stats.devices["bedroom"].errors >= 1
        assert stats.devices["bedroom"].clock.offset is not None
        assert abs(stats.devices["bedroom"].clock.offset + dt.timedelta(minutes=25)) \
            < dt.timedelta(seconds=5)
        status = DeviceStatus.from_bytes(
            sub.status["hddt/v1/gw/gw-home/devices/meter-b2/status"])
        assert status.device_id == "meter-b2"
        assert status.state in (DeviceState.CONNECTED, DeviceState.DISCONNECTED)
        # The clean stop was announced (forwarded by the broker a moment after its PUBACK).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and GatewayStatus.from_bytes(
                sub.status["hddt/v1/gw/gw-home/status"]).state is not GatewayState.OFFLINE:
            time.sleep(0.02)
        assert GatewayStatus.from_bytes(sub.status["hddt/v1/gw/gw-home/status"]).state \
            is GatewayState.OFFLINE


@needs_broker
def test_clock_correction_reaches_the_wire(tmp_path: Path) -> None:
    from bridge.messages import RecordsMessage

    info = DeviceInfo(device_id="meter-c3", kind=DeviceKind.BLOOD_GLUCOSE_METER)
    history = meter_history("meter-c3", 5)
    driver = ListDriver(info, history, clock_offset=dt.timedelta(hours=-2))
    received: list[RecordsMessage] = []
    with Mosquitto(tmp_path / "mq") as broker, Subscriber(broker.port) as sub:
        original = sub._on_message

        def capture(client: object, userdata: object, message: Any) -> None:
            if message.topic.endswith("/records"):
                received.append(RecordsMessage.from_bytes(message.payload))
            original(client, userdata, message)

        sub.client.on_message = capture
        config = parse_config(config_doc(tmp_path, broker.port, [serial_device("m")]))
        agent = Agent(config, driver_factory=lambda d: driver)
        asyncio.run(run_agent(agent, lambda: len(sub.snapshot()[0]) == 5))
    by_seq = {r.sequence: r for m in received for r in m.records}
    for original_record in history:
        wire = by_seq[original_record.sequence]
        # The device clock was 2 h slow; the wire carries the raw device time and the true
        # UTC instant (to within the observation's latency), flagged as corrected.
        assert original_record.device_time is not None
        assert wire.device_time == original_record.device_time - dt.timedelta(hours=2)
        assert abs(wire.time - original_record.time) < dt.timedelta(seconds=5)
        assert TimeQuality.DEVICE_CLOCK_CORRECTED in wire.time_quality


def test_agent_without_broker_keeps_syncing_and_applies_the_cap(tmp_path: Path) -> None:
    info = DeviceInfo(device_id="meter-d4", kind=DeviceKind.BLOOD_GLUCOSE_METER)
    driver = ListDriver(info, meter_history("meter-d4", 120), per_sync=30)
    # Nothing listens on the broker port: the uplink backs off while syncs go on.
    config = parse_config(config_doc(tmp_path, 1, [serial_device("m")],
                                     outbox={"max_rows": 50}))
    agent = Agent(config, driver_factory=lambda d: driver)
    asyncio.run(run_agent(agent, lambda: agent.outbox.device_stats("m").records_synced == 120))
    with Outbox(config.outbox_path) as reader:
        stats = reader.stats()
    assert stats.queued == 50
    assert stats.devices["m"].dropped_cap == 70
    assert agent.uplink.stats.failures >= 1 and agent.uplink.stats.connects == 0


def test_a_hanging_driver_is_timed_out_and_the_other_device_is_unaffected(
        tmp_path: Path) -> None:
    class Hang(ListDriver):
        async def sync(self, state: SyncState) -> SyncResult:
            self.calls += 1
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    info = DeviceInfo(device_id="meter-e5", kind=DeviceKind.BLOOD_GLUCOSE_METER)
    good = ListDriver(info, meter_history("meter-e5", 10))
    hang = Hang(DeviceInfo(device_id="x", kind=DeviceKind.CGM), [])
    config = parse_config(config_doc(tmp_path, 1, [
        serial_device("good"), serial_device("hang", sync_timeout_s=0.2)]))
    agent = Agent(config, driver_factory=lambda d: good if d.name == "good" else hang)
    asyncio.run(run_agent(agent, lambda: agent.outbox.device_stats("hang").errors >= 2
                          and agent.outbox.device_stats("good").records_synced == 10))
    with Outbox(config.outbox_path) as outbox:
        assert "DeviceTimeout" in (outbox.device_stats("hang").last_error or "")
        assert "within 0.2 s" in (outbox.device_stats("hang").last_error or "")
    assert hang.closed == hang.calls


def test_driver_options_and_clock_policy_come_from_the_config() -> None:
    doc = {"agent": {"gateway_id": "g", "timezone": "America/New_York"},
           "broker": {"url": "mqtt://localhost"},
           "clock": {"tolerance_s": 30, "not_before": "2020-06-01"},
           "devices": [{"name": "p", "transport": "ble", "profile": "insulin-pump",
                        "address": "F0:00:00:00:00:03", "backend": "bumble",
                        "bumble_transport": "usb:0", "passkey": 123456,
                        "allow_time_write": True, "options": {"mtu": 185}}]}
    config = parse_config(doc)
    device: DeviceConfig = config.devices[0]
    assert device.driver_options() == {"allow_time_write": True, "passkey": 123456,
                                       "mtu": 185}
    assert config.devices[0].timeout_s is None  # the driver's own default applies
    policy = device.clock_policy(config.clock)
    assert str(policy.zone) == "America/New_York"
    assert policy.tolerance == dt.timedelta(seconds=30)
    assert policy.not_before == dt.datetime(2020, 6, 1, tzinfo=dt.UTC)


# --- crash: SIGKILL in the middle of syncs ------------------------------------------------------

CRASH_RECORDS = 400


def crash_main(config_path: str) -> None:
    """Entry point of the agent process the crash test kills (runs in a child process)."""
    import logging

    from bridge.edge.config import load_config

    logging.basicConfig(level=logging.WARNING)
    config: AgentConfig = load_config(config_path)
    info = DeviceInfo(device_id="meter-crash", kind=DeviceKind.BLOOD_GLUCOSE_METER)

    def announce(call: int) -> None:
        print(f"SYNC {call}", flush=True)

    # Slow syncs of 25 records, so a kill most often lands while one is in progress.
    driver = ListDriver(info, meter_history("meter-crash", CRASH_RECORDS), per_sync=25,
                        delay_s=0.15, on_sync=announce)
    asyncio.run(Agent(config, driver_factory=lambda d: driver).run())


def start_crash_agent(config_path: Path) -> subprocess.Popen[str]:
    code = ("import sys; from tests.edge.test_agent import crash_main; "
            "crash_main(sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, str(config_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout_s: float = 20.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"agent exited {proc.returncode}: {err}")
    raise AssertionError(f"no {prefix!r} line in time")


def finish(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@needs_broker
def test_agent_killed_mid_sync_loses_nothing_and_syncs_nothing_twice(tmp_path: Path) -> None:
    rng = random.Random(7)
    with Mosquitto(tmp_path / "mq") as broker, Subscriber(broker.port) as sub:
        doc = config_doc(tmp_path, broker.port, [serial_device("meter", poll_interval_s=0.05)])
        config_path = tmp_path / "agent.toml"
        config_path.write_text(to_toml(doc), encoding="utf-8")
        kills = mid_sync_kills = 0
        committed = 0
        for _ in range(5):
            proc = start_crash_agent(config_path)
            try:
                # Let it commit a few syncs, then kill it while the next one is under way.
                call = rng.randrange(1, 4)
                wait_for_line(proc, f"SYNC {call}")
                time.sleep(rng.uniform(0.0, 0.14))
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL
                kills += 1
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                finish(proc)
            with Outbox(tmp_path / "outbox.sqlite") as outbox:
                device = outbox.device_stats("meter")
                # After every kill, records and sync state agree: each commit was whole.
                assert outbox.sync_state("meter") == {"last_seq": device.records_synced}
                assert outbox.seen_count() == device.records_synced
                if device.syncs - committed < call:
                    mid_sync_kills += 1  # sync number `call` was read but never committed
                committed = device.syncs
        assert mid_sync_kills >= 1
        # The broker published the will of the killed connections: the gateway went offline.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                GatewayStatus.from_bytes(p).state is GatewayState.OFFLINE
                for t, p in sub.status_log if t.endswith("gw-home/status")):
            time.sleep(0.05)
        assert any(GatewayStatus.from_bytes(p).state is GatewayState.OFFLINE
                   for t, p in sub.status_log if t.endswith("gw-home/status"))
        # A last, undisturbed run reads the rest, delivers it and stops on SIGTERM.
        expected = {r.idempotency_key() for r in meter_history("meter-crash", CRASH_RECORDS)}
        proc = start_crash_agent(config_path)
        try:
            keys = sub.wait_for_keys(expected, 40)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            finish(proc)
    assert kills == 5
    assert keys == expected, f"missing {len(expected - keys)}"
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        stats = outbox.stats()
        device = stats.devices["meter"]
        # Nothing synced twice into the outbox: the committed syncs add up to exactly the
        # device's memory, and every key was stored once.
        assert device.records_synced == CRASH_RECORDS
        assert outbox.seen_count() == CRASH_RECORDS
        assert outbox.sync_state("meter") == {"last_seq": CRASH_RECORDS}
        assert stats.queued == 0


def to_toml(doc: dict[str, Any]) -> str:
    """Just enough TOML writing for the configs these tests produce."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        raise TypeError(v)

    def table(header: str, body: dict[str, Any]) -> list[str]:
        out = [header]
        out += [f"{k} = {value(v)}" for k, v in body.items() if not isinstance(v, dict)]
        name = header.strip("[]")
        for k, v in body.items():
            if isinstance(v, dict):
                out += table(f"[{name}.{k}]", v)
        return out

    lines: list[str] = []
    for section, body in doc.items():
        if isinstance(body, list):
            for item in body:
                lines += table(f"[[{section}]]", item)
        else:
            lines += table(f"[{section}]", body)
    return "\n".join(lines) + "\n"


# --- through the real serial drivers and the virtual serial meters ----------------------------

def past_history(count: int, device_id: str = "virtual") -> list[BloodGlucoseReading]:
    """Readings every 6 h up to an hour ago, so none of them lies in the future."""
    from simulators.ble.runner import demo_meter_readings

    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=6 * count + 1)
    return demo_meter_readings(count, seed=3, device_id=device_id, start=start)


@needs_broker
def test_serial_meters_end_to_end_through_the_real_drivers(tmp_path: Path) -> None:
    from bridge.messages import RecordsMessage
    from simulators.faults import FaultConfig
    from simulators.serial import SerialEmulatorConfig, start_serial_emulator

    received: list[RecordsMessage] = []

    async def body(broker: Mosquitto, sub: Subscriber) -> None:
        # An Ultra 2 whose clock runs 30 minutes slow, and a Contour, both on TCP ports.
        ultra = await start_serial_emulator(SerialEmulatorConfig(
            protocol="onetouch-ultra2", port="tcp", records=past_history(150),
            faults=FaultConfig(clock_offset_s=-1800)))
        contour = await start_serial_emulator(SerialEmulatorConfig(
            protocol="contour-astm", port="tcp", records=past_history(120)))
        async with ultra, contour:
            devices = [serial_device("ultra", protocol="onetouch-ultra2", port=ultra.url,
                                     timezone="UTC", poll_interval_s=0.3),
                       serial_device("contour", protocol="contour-astm", port=contour.url,
                                     timezone="UTC", poll_interval_s=0.3)]
            agent = Agent(parse_config(config_doc(tmp_path, broker.port, devices)))

            def delivered() -> bool:
                return sum(len(m.records) for m in received) >= 270 and len(
                    {r.idempotency_key() for m in received for r in m.records}) == 270

            await run_agent(agent, delivered, timeout_s=40)
            # Read-only: the agent never changed either meter (no clock set, no erase).
            assert ultra.write_log == [] and contour.write_log == []
            assert ultra.errors == [] and contour.errors == []

    with Mosquitto(tmp_path / "mq") as broker, Subscriber(broker.port) as sub:
        original = sub._on_message

        def capture(client: object, userdata: object, message: Any) -> None:
            if message.topic.endswith("/records"):
                received.append(RecordsMessage.from_bytes(message.payload))
            original(client, userdata, message)

        sub.client.on_message = capture
        asyncio.run(body(broker, sub))
    by_device: dict[str, list[BloodGlucoseReading]] = {}
    for message in received:
        for record in message.records:
            assert isinstance(record, BloodGlucoseReading)
            by_device.setdefault(message.device.model or "", []).append(record)
    keys = [r.idempotency_key() for rs in by_device.values() for r in rs]
    assert len(keys) == len(set(keys)) == 270  # every record once, none twice
    ultra_records = next(rs for model, rs in by_device.items() if "Ultra 2" in model)
    truth = {r.time for r in past_history(150)}
    for record in ultra_records:
        # 30 minutes slow on the device, corrected to the true instant (± latency).
        assert TimeQuality.DEVICE_CLOCK_CORRECTED in record.time_quality
        assert record.device_time is not None
        assert min(abs(record.time - t) for t in truth) < dt.timedelta(seconds=5)


async def _poll(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@needs_broker
def test_agent_process_killed_mid_sync_through_a_virtual_11073_meter(tmp_path: Path) -> None:
    from simulators.serial import SerialEmulatorConfig, start_serial_emulator

    history = past_history(200)
    rng = random.Random(11)

    async def body(broker: Mosquitto, sub: Subscriber) -> None:
        meter = await start_serial_emulator(SerialEmulatorConfig(
            protocol="phd", port="tcp", records=history))
        async with meter:
            doc = config_doc(tmp_path, broker.port, [serial_device(
                "phd-meter", protocol="phd", port=meter.url, timezone="UTC",
                poll_interval_s=0.2)])
            config_path = tmp_path / "agent.toml"
            config_path.write_text(to_toml(doc), encoding="utf-8")
            argv = [sys.executable, "-m", "bridge.edge.cli", "agent", "run", "--config",
                    str(config_path), "--log-level", "info"]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}

            async def start() -> asyncio.subprocess.Process:
                return await asyncio.create_subprocess_exec(
                    *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)

            async def line_with(proc: asyncio.subprocess.Process, text: str) -> None:
                assert proc.stderr is not None
                while True:
                    line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
                    if not line:
                        raise AssertionError(f"agent ended before {text!r}")
                    if text in line:
                        return

            for _ in range(2):
                proc = await start()
                await line_with(proc, "phd-meter: sync started")
                # The 11073 transfer of 200 records takes about two seconds: kill inside it.
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                proc.kill()
                assert await proc.wait() == -signal.SIGKILL
                with Outbox(tmp_path / "outbox.sqlite") as outbox:
                    stats = outbox.device_stats("phd-meter")
                    assert stats.records_synced == 0 and outbox.seen_count() == 0
                    assert outbox.sync_state("phd-meter") == {}
            proc = await start()
            assert proc.stderr is not None
            # Keep reading the log so a full pipe can never stall the agent.
            drain = asyncio.create_task(proc.stderr.read())
            expected = {r.idempotency_key() for r in history}
            delivered: set[str] = set()

            def all_delivered() -> bool:
                delivered.update(sub.snapshot()[0])
                return len(delivered) == len(history)

            try:
                await _poll(all_delivered, 40)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 20) == 0
                log = (await drain).decode()
            assert "phd-meter: read 200 records, 200 new" in log
            assert meter.write_log == []
            assert len(expected) == len(delivered)

    with Mosquitto(tmp_path / "mq") as broker, Subscriber(broker.port) as sub:
        asyncio.run(body(broker, sub))
        keys, deliveries = sub.snapshot()
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        stats = outbox.device_stats("phd-meter")
        assert stats.records_synced == 200 == outbox.seen_count() == len(keys)
        assert deliveries == 200  # no outage, so no redelivery either
        assert outbox.stats().queued == 0


# --- through the real BLE drivers and the virtual peripherals -----------------------------------

def pump_history(days: int) -> list[Any]:
    """A pump's log in the past: basal changes and delivered boluses, three meals a day."""
    from bridge.records import BasalRateChange, BolusPhase, InsulinBolus, ReservoirLevel

    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days, hours=1)).replace(microsecond=0)
    out: list[Any] = [ReservoirLevel(device_id="pump", time=start, remaining_iu=250.0),
                      BasalRateChange(device_id="pump", time=start, rate_iu_per_h=0.9)]
    bolus_id = 1
    for day in range(days):
        for hour in (7, 12, 19):
            when = start + dt.timedelta(days=day, hours=hour)
            for phase, offset in ((BolusPhase.PROGRAMMED, 0), (BolusPhase.DELIVERED, 3)):
                out.append(InsulinBolus(device_id="pump", time=when + dt.timedelta(minutes=offset),
                                        bolus_id=bolus_id, phase=phase, fast_iu=4.0))
            bolus_id += 1
    return out


@needs_broker
def test_ble_devices_end_to_end_through_the_real_drivers(tmp_path: Path) -> None:
    from bumble.link import LocalLink

    from bridge.protocols.racp import RacpOpCode
    from simulators.ble.common import SecurityConfig
    from simulators.ble.insulin_pump import InsulinPumpPeripheral, PumpConfig
    from simulators.ble.runner import (
        build_cgm,
        build_meter,
        demo_cgm_readings,
        demo_meter_readings,
        peripheral_config,
    )

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    async def body(broker: Mosquitto, sub: Subscriber) -> None:
        link = LocalLink()  # type: ignore[no-untyped-call]
        meter = build_meter(link, demo_meter_readings(
            300, start=now - dt.timedelta(hours=6 * 300 + 1)), address="F0:00:00:00:00:01")
        cgm = build_cgm(link, demo_cgm_readings(
            200, start=now - dt.timedelta(minutes=5 * 200 + 5)), address="F0:00:00:00:00:02",
            e2e_crc=True)
        pump = InsulinPumpPeripheral(
            peripheral_config(DeviceKind.INSULIN_PUMP, name="Pump", address="F0:00:00:00:00:03",
                              security=SecurityConfig()), link,
            records=pump_history(4), pump=PumpConfig(e2e=True))
        peripherals = (meter, cgm, pump)
        for p in peripherals:
            await p.start()
        try:
            def ble(name: str, profile: str, address: str) -> dict[str, Any]:
                return {"name": name, "transport": "ble", "profile": profile,
                        "address": address, "backend": "bumble",
                        "bumble_transport": "tcp-client:127.0.0.1:1",  # replaced by the link
                        "timezone": "UTC", "poll_interval_s": 0.5, "retry_min_s": 0.1,
                        "retry_max_s": 0.5}

            config = parse_config(config_doc(tmp_path, broker.port, [
                ble("meter", "glucose", meter.config.address),
                ble("cgm", "cgm", cgm.config.address),
                ble("pump", "insulin-pump", pump.config.address)]))
            agent = Agent(config, link=link)

            def synced() -> bool:
                s = agent.outbox.stats()
                return (len(s.devices) == 3 and s.queued == 0
                        and all(d.records_synced > 0 for d in s.devices.values())
                        and len(sub.snapshot()[0]) == sum(
                            d.records_synced for d in s.devices.values()))

            await run_agent(agent, synced, timeout_s=40)
        finally:
            for p in peripherals:
                await p.stop()
        # The read-only guard held: report and count requests only, never a delete, and no
        # clock was written.
        for p in peripherals:
            assert all(w.characteristic != "current-time" for w in p.control_point_log)
        for p in (meter, cgm):
            ops = {w.value[0] for w in p.control_point_log if w.characteristic == "racp"}
            assert RacpOpCode.REPORT_STORED_RECORDS in ops  # the agent did read through RACP
            assert RacpOpCode.DELETE_STORED_RECORDS not in ops

    with Mosquitto(tmp_path / "mq") as broker, Subscriber(broker.port) as sub:
        asyncio.run(body(broker, sub))
        keys, _ = sub.snapshot()
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        stats = outbox.stats().devices
        assert stats["meter"].records_synced == 300
        assert stats["cgm"].records_synced == 200
        assert stats["pump"].records_synced >= 4 * 3 * 2
        assert len(keys) == sum(s.records_synced for s in stats.values())
        assert all(s.errors == 0 for s in stats.values())
