"""``hddt-bridge demo``: the whole path on embedded defaults, no external services.

Simulated patients → virtual BLE and serial devices → the edge agent (real drivers, read-only
guard, clock correction, SQLite outbox) → MQTT (an in-process broker) → the backend ingest
(acknowledge after commit, SQLite store). At the end, what the agent read from the devices is
compared with what the backend stored.

The HDDT FHIR API and authorization server are the next stage and not part of this demo yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy
from bumble.link import LocalLink

from bridge.backend.config import parse_config as parse_backend_config
from bridge.backend.embedded_broker import EmbeddedBroker
from bridge.backend.ingest import IngestWorker
from bridge.backend.store import Store
from bridge.edge.agent import Agent
from bridge.edge.config import parse_config as parse_agent_config
from simulators.fleet import (
    BleAttachment,
    DeviceSpec,
    Fleet,
    FleetConfig,
    PatientSpec,
    RunningDevice,
    start_fleet,
)

GATEWAY_ID = "demo-gateway"
DEMO_PORT = 18830

#: The demo's patients: type 1 on a pump with CGM and meter, type 1 with a CGM, and a type 2
#: patient with a serial meter whose clock runs four minutes fast.
DEMO_PATIENTS = (
    PatientSpec("adult#001", "three-meals", (
        DeviceSpec("pump", "ble", "Demo Pump", address="F0:00:00:00:01:01"),
        DeviceSpec("cgm", "ble", "Demo CGM", address="F0:00:00:00:01:02", e2e_crc=True),
        DeviceSpec("meter", "ble", "Demo Meter", address="F0:00:00:00:01:03"))),
    PatientSpec("adolescent#002", "three-meals", (
        DeviceSpec("cgm", "ble", "Demo CGM 2", address="F0:00:00:00:02:02"),)),
    PatientSpec("type2#001", "three-meals", (
        DeviceSpec("meter", "serial", "Demo Ultra 2", protocol="onetouch-ultra2"),)),
)

_PROFILES = {"pump": "insulin-pump", "cgm": "cgm", "meter": "glucose"}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    state_dir: Path
    patients: int = 3
    history_days: int = 2
    speed: float = 60.0
    duration_s: float | None = None
    port: int = DEMO_PORT
    poll_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class DeviceResult:
    patient: str
    device: str
    device_id: str
    read: int


@dataclass(frozen=True, slots=True)
class DemoSummary:
    devices: list[DeviceResult]
    read: int
    stored: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_or_free(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return _free_port()
    return port


def _agent_doc(fleet: Fleet, broker_url: str, state: Path,
               poll_s: float) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    for d in fleet.devices:
        entry: dict[str, Any] = {"name": d.log.info.device_id, "poll_interval_s": poll_s,
                                 "retry_min_s": 1.0, "retry_max_s": 10.0}
        if d.spec.transport == "ble":
            entry |= {"transport": "ble", "profile": _PROFILES[d.spec.kind],
                      "address": d.spec.address, "backend": "bumble",
                      "bumble_transport": "in-process"}
        else:
            assert d.serial is not None and d.spec.protocol is not None
            entry |= {"transport": "serial", "protocol": d.spec.protocol,
                      "port": d.serial.url}
        devices.append(entry)
    return {
        "agent": {"gateway_id": GATEWAY_ID, "timezone": "Europe/Berlin"},
        "broker": {"url": broker_url, "protocol": "3.1.1", "username": GATEWAY_ID,
                   "password_file": str(state / "gateway.password"), "batch_size": 100,
                   "reconnect_min_s": 0.5, "reconnect_max_s": 5.0},
        "outbox": {"path": str(state / "agent-outbox.sqlite")},
        "devices": devices,
    }


def _backend_doc(broker_url: str, state: Path) -> dict[str, Any]:
    return {
        "store": {"path": str(state / "backend.sqlite")},
        # amqtt speaks MQTT 3.1.1 and has no shared subscriptions: one plain subscriber.
        "broker": {"url": broker_url, "protocol": "3.1.1", "client_id": "demo-ingest",
                   "shared_group": "", "username": "ingest",
                   "password_file": str(state / "ingest.password")},
        "ingest": {"auto_provision": True, "batch_ms": 100},
    }


_DATA_TABLES = ("glucose_readings", "cgm_readings", "insulin_events", "annunciations")


def _stored_by_device(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}
    with store.begin() as conn:
        for table in _DATA_TABLES:
            rows = conn.execute(sqlalchemy.text(
                f"SELECT device_id, COUNT(*) FROM {table} GROUP BY device_id"))
            for device_id, n in rows:
                counts[device_id] = counts.get(device_id, 0) + int(n)
    return counts


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout,
                   stop: asyncio.Event | None = None) -> DemoSummary:
    """Run the demo until ``duration_s`` has passed (or ``stop`` is set, or Ctrl-C)."""
    state = options.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    # Local credentials of the demo broker (it refuses anonymous clients, as a real one would).
    for name in ("gateway", "ingest"):
        secret = state / f"{name}.password"
        if not secret.exists():
            secret.write_text(f"demo-{name}-{int(time.time())}\n", encoding="utf-8")
            secret.chmod(0o600)
    users = {GATEWAY_ID: (state / "gateway.password").read_text().strip(),
             "ingest": (state / "ingest.password").read_text().strip()}
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    port = _port_or_free(options.port)
    async with EmbeddedBroker(port=port, users=users) as broker:
        say(f"broker      {broker.url} (embedded, MQTT 3.1.1)")
        backend_config = parse_backend_config(_backend_doc(broker.url, state), "demo", state)
        store = Store.open(backend_config.store.url)
        worker = IngestWorker(backend_config, store)
        worker.start()
        if not await asyncio.to_thread(worker.wait_subscribed, 15.0):
            raise RuntimeError("the ingest worker did not subscribe to the demo broker")
        say(f"backend     ingest -> {state / 'backend.sqlite'}")

        fleet_config = FleetConfig(DEMO_PATIENTS[:options.patients],
                                   history_days=options.history_days, live_days=1,
                                   speed=options.speed)
        link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves it unannotated
        say(f"simulating  {len(fleet_config.patients)} patient(s), "
            f"{options.history_days} day(s) of history, live at {options.speed:g}x")
        fleet = await start_fleet(fleet_config, BleAttachment(link=link),
                                  on_device=lambda d: say(f"device      {_describe(d)}"))
        agent_stop = asyncio.Event()
        try:
            agent_config = parse_agent_config(
                _agent_doc(fleet, broker.url, state, options.poll_interval_s), "demo", state)
            agent = Agent(agent_config, link=link)
            agent_task = asyncio.create_task(agent.run(agent_stop, handle_signals=False))
            _write_connection(state, broker.url, fleet)
            say(f"ready       state in {state}; Ctrl-C to stop")
            started = time.monotonic()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)
                say(f"progress    {await _progress(store, agent)}")
                if options.duration_s is not None and \
                        time.monotonic() - started >= options.duration_s:
                    stop.set()
            # Finish cleanly: no more live records; every device is synced once more and the
            # outbox drains; then the backend must hold everything the agent read.
            fleet.stop_feeding()
            say("finishing   last syncs, then draining the gateway's outbox")
            await asyncio.sleep(options.poll_interval_s * 2 + 1)
            deadline = time.monotonic() + 30
            read: dict[str, int] = {}
            while True:
                stats = agent.outbox.stats()
                read = {name: d.records_synced for name, d in stats.devices.items()}
                stored_total = sum((await asyncio.to_thread(_stored_by_device, store)).values())
                if (stats.queued == 0 and stored_total >= sum(read.values())) \
                        or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            agent_stop.set()
            await agent_task
        finally:
            agent_stop.set()
            await fleet.close()
            await asyncio.to_thread(worker.stop, 10.0)
        stored = await asyncio.to_thread(_stored_by_device, store)
        store.close()
    results = [DeviceResult(d.patient, d.spec.name, d.log.info.device_id,
                            read.get(d.log.info.device_id, 0)) for d in fleet.devices]
    say("summary     patient         device          records read by the agent")
    for r in results:
        say(f"            {r.patient:15} {r.device:15} {r.read:10}")
    total_read, total_stored = sum(r.read for r in results), sum(stored.values())
    say(f"            {total_read} read at the gateway, {total_stored} stored in the backend "
        f"({len(stored)} devices)")
    return DemoSummary(results, total_read, total_stored)


async def _progress(store: Store, agent: Agent) -> str:
    stats = await asyncio.to_thread(store.status)
    total = sum(stats.records_total.values())
    return f"{total} records stored, {agent.outbox.stats().queued} queued at the gateway"


def _describe(d: RunningDevice) -> str:
    where = d.serial.url if d.serial is not None else d.spec.address
    return f"{d.patient:15} {d.spec.name:13} {where}  ({d.stored} stored)"


def _write_connection(state: Path, broker_url: str, fleet: Fleet) -> None:
    doc = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "broker_url": broker_url,
        "gateway_id": GATEWAY_ID,
        "backend_database": str(state / "backend.sqlite"),
        "agent_outbox": str(state / "agent-outbox.sqlite"),
        "devices": [dataclasses.asdict(dataclasses.replace(d.log.info)) | {
            "patient": d.patient,
            "where": d.serial.url if d.serial is not None else d.spec.address}
            for d in fleet.devices],
        "hddt": None,  # the FHIR base URL and authorization server join in the next stage
    }
    (state / "connection.json").write_text(json.dumps(doc, indent=2, default=str) + "\n",
                                           encoding="utf-8")
