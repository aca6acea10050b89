"""``hddt-bridge demo``: the whole path on embedded defaults, no external services.

Simulated patients → virtual BLE and serial devices → one edge agent per patient (their
gateway: real drivers, read-only guard, clock correction, SQLite outbox) → MQTT (an
in-process broker) → the backend ingest (acknowledge after commit, SQLite store) → the HDDT
FHIR resource server and authorization server over TLS (sandbox PKI, a registered demo
DiGA, a portal login per patient) and the dashboard.

The state folder fixes the simulated world at its first run (start date, horizon, seed): a
restart re-simulates the same records, the agents' outboxes remember what they read, and the
backend's unique keys drop anything it already holds, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy
from bumble.link import LocalLink

from bridge.auth.settings import AuthSettings
from bridge.auth.tables import portal_accounts
from bridge.backend.config import parse_config as parse_backend_config
from bridge.backend.embedded_broker import EmbeddedBroker
from bridge.backend.ingest import IngestWorker
from bridge.backend.registry import provision_gateway, provision_patient
from bridge.backend.store import Store
from bridge.edge.agent import IN_PROCESS_TRANSPORT, Agent
from bridge.edge.config import parse_config as parse_agent_config
from bridge.edge.outbox import DeviceStats
from bridge.errors import BridgeError
from bridge.hddt.access import (
    MIV_BLOOD_GLUCOSE,
    MIV_CONTINUOUS_GLUCOSE,
    PROJECT_INSULIN_DELIVERY,
    SCOPE_DEVICE,
    SCOPE_DEVICE_METRIC,
    observation_scope,
)
from bridge.records import BloodGlucoseReading, CgmReading
from bridge.web import (
    HttpsServer,
    TlsFiles,
    client_trust_bundle,
    create_app,
    create_portal_account,
    issue_pki,
    register_diga,
)
from simulators.fleet import (
    BleAttachment,
    DeviceSpec,
    Fleet,
    FleetConfig,
    PatientSpec,
    RunningDevice,
    start_fleet,
)

DEMO_PORT = 18830
DEMO_HTTP_PORT = 8443

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
    #: Days of device history the agent backfills at start (accelerated).
    history_days: int = 30
    #: Days simulated ahead of the start for live streaming (fixed with the state folder).
    live_days: int = 14
    #: Simulated time per real time for live records (1 = real time).
    speed: float = 1.0
    duration_s: float | None = None
    #: Stop as soon as the backfill is stored (scripts, CI).
    exit_when_ready: bool = False
    port: int = DEMO_PORT
    http_port: int = DEMO_HTTP_PORT
    poll_interval_s: float = 5.0
    #: An external broker (``mqtt://HOST:PORT``, anonymous) instead of the embedded one.
    broker_url: str | None = None
    #: An external database (``postgresql+psycopg://USER@HOST/DB``) instead of SQLite.
    database_url: str | None = None
    seed: int = 0
    #: Real BLE devices read through bleak (BlueZ) by one more gateway, for the patient
    #: ``demo-patient-ble``: (profile, address) pairs, e.g. ("glucose", "C0:26:DA:01:02:03").
    ble_devices: tuple[tuple[str, str], ...] = ()


class DemoError(BridgeError):
    """The demo cannot start as asked (state folder of other settings, port, URL)."""


#: What a state folder fixes at its first run: a restart must simulate the same world.
_STATE_FILE = "demo.json"
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class DemoState:
    start_date: dt.date
    history_days: int
    live_days: int
    patients: int
    seed: int
    #: The simulated instant reached when the demo last ran (resume from here or now).
    sim_time: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "start_date": self.start_date.isoformat(),
                "history_days": self.history_days, "live_days": self.live_days,
                "patients": self.patients, "seed": self.seed,
                "sim_time": self.sim_time.isoformat()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: Path) -> DemoState:
        try:
            if doc.get("version") != _STATE_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            return cls(dt.date.fromisoformat(doc["start_date"]), int(doc["history_days"]),
                       int(doc["live_days"]), int(doc["patients"]), int(doc["seed"]),
                       dt.datetime.fromisoformat(doc["sim_time"]).astimezone(dt.UTC))
        except (KeyError, TypeError, ValueError) as exc:
            raise DemoError(f"{where}: not a demo state file ({exc}); use another "
                            "--state-dir or remove the folder") from None


def load_or_create_state(options: DemoOptions, now: dt.datetime) -> tuple[DemoState, bool]:
    """The state folder's fixed settings (created on first use); True when resumed.

    A resumed folder must be run with the settings it was created with: the simulation is
    re-run from the same start date, horizon and seed, so every record keeps its identity
    and the backend's unique keys drop what it already holds.
    """
    path = options.state_dir / _STATE_FILE
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DemoError(f"{path}: cannot read ({exc})") from None
        state = DemoState.from_json(doc, path)
        for name, given, kept in (("--patients", options.patients, state.patients),
                                  ("--history-days", options.history_days,
                                   state.history_days),
                                  ("--seed", options.seed, state.seed)):
            if given != kept:
                raise DemoError(f"{options.state_dir} was created with {name} {kept}, not "
                                f"{given}: run with {name} {kept}, or use a new --state-dir")
        return state, True
    state = DemoState((now - dt.timedelta(days=options.history_days)).date(),
                      options.history_days, options.live_days, options.patients,
                      options.seed, now)
    save_state(options.state_dir, state)
    return state, False


def save_state(state_dir: Path, state: DemoState) -> None:
    path = state_dir / _STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


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


def _agent_doc(devices_of: Sequence[RunningDevice], gateway_id: str, broker_url: str,
               state: Path, options: DemoOptions) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    for d in devices_of:
        entry: dict[str, Any] = {"name": d.log.info.device_id,
                                 "poll_interval_s": options.poll_interval_s,
                                 "retry_min_s": 1.0, "retry_max_s": 10.0}
        if d.spec.transport == "ble":
            entry |= {"transport": "ble", "profile": _PROFILES[d.spec.kind],
                      "address": d.spec.address, "backend": "bumble",
                      "bumble_transport": IN_PROCESS_TRANSPORT}
        else:
            assert d.serial is not None and d.spec.protocol is not None
            entry |= {"transport": "serial", "protocol": d.spec.protocol,
                      "port": d.serial.url}
        devices.append(entry)
    broker: dict[str, Any] = {"url": broker_url, "batch_size": 100,
                              "reconnect_min_s": 0.5, "reconnect_max_s": 5.0}
    if options.broker_url is None:
        broker |= {"protocol": "3.1.1", "username": gateway_id,
                   "password_file": str(state / f"{gateway_id}.password")}
    return {
        "agent": {"gateway_id": gateway_id, "timezone": "Europe/Berlin"},
        "broker": broker,
        "outbox": {"path": str(state / f"{gateway_id}-outbox.sqlite")},
        "devices": devices,
    }


def _backend_doc(broker_url: str, state: Path, options: DemoOptions) -> dict[str, Any]:
    store: dict[str, Any] = ({"path": str(state / "backend.sqlite")}
                             if options.database_url is None else {"url": options.database_url})
    if options.broker_url is None:
        # amqtt speaks MQTT 3.1.1 and has no shared subscriptions: one plain subscriber.
        broker: dict[str, Any] = {"url": broker_url, "protocol": "3.1.1",
                                  "client_id": "demo-ingest", "shared_group": "",
                                  "username": "ingest",
                                  "password_file": str(state / "ingest.password")}
    else:
        broker = {"url": broker_url, "client_id": "demo-ingest"}
    return {"store": store, "broker": broker, "ingest": {"batch_ms": 100}}


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


#: Backend patient ids and descriptions of the demo patients, in DEMO_PATIENTS order.
DEMO_PATIENT_IDS = ("demo-patient-1", "demo-patient-2", "demo-patient-3")
#: Each patient's own gateway (their Pi or phone), with its own agent and outbox.
DEMO_GATEWAY_IDS = ("demo-gateway-1", "demo-gateway-2", "demo-gateway-3")
#: The patient and gateway of real BLE devices (``--ble-device``), read through bleak.
BLE_PATIENT_ID = "demo-patient-ble"
BLE_GATEWAY_ID = "demo-gateway-ble"
DEMO_PATIENT_NAMES = ("Type 1 adult: insulin pump, CGM and meter",
                      "Type 1 adolescent: CGM",
                      "Type 2 adult: serial blood glucose meter")


def _patient_index(spec: str) -> int:
    return [p.patient for p in DEMO_PATIENTS].index(spec)


def _ble_agent_doc(ble_devices: Sequence[tuple[str, str]], broker_url: str, state: Path,
                   options: DemoOptions) -> dict[str, Any]:
    """The agent of the real-device gateway: the production BLE path (bleak on BlueZ)."""
    doc = _agent_doc([], BLE_GATEWAY_ID, broker_url, state, options)
    doc["devices"] = [{"name": f"ble-{profile}-{i}", "transport": "ble", "profile": profile,
                       "address": address, "backend": "bleak",
                       "poll_interval_s": max(options.poll_interval_s, 30.0)}
                      for i, (profile, address) in enumerate(ble_devices, start=1)]
    return doc


def _provision(store: Store, fleet: Fleet, *, ble: bool = False) -> None:
    """Register the demo patients and each one's gateway; devices follow their gateway."""
    with store.begin() as conn:
        if ble:
            provision_patient(conn, BLE_PATIENT_ID, actor="demo",
                              display_name="Real BLE devices (bleak)")
            provision_gateway(conn, BLE_GATEWAY_ID, patient_id=BLE_PATIENT_ID, actor="demo")
        for spec in fleet.config.patients:
            i = _patient_index(spec.patient)
            provision_patient(conn, DEMO_PATIENT_IDS[i], actor="demo",
                              display_name=DEMO_PATIENT_NAMES[i])
            provision_gateway(conn, DEMO_GATEWAY_IDS[i], patient_id=DEMO_PATIENT_IDS[i],
                              actor="demo")


def _device_history_count(d: RunningDevice, until: dt.datetime) -> int:
    """Records the virtual device holds at ``until`` (what a full backfill must read)."""
    kept = {"meter": BloodGlucoseReading, "cgm": CgmReading}.get(d.spec.kind)
    return sum(1 for r in d.log.records
               if r.time <= until and (isinstance(r, kept) if kept is not None
                                       else not isinstance(r, BloodGlucoseReading | CgmReading)))


class _ProgressBar:
    """One line that redraws on a terminal and prints every few seconds otherwise."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self._last = 0.0

    def show(self, label: str, fraction: float, detail: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not (final or self.tty) and now - self._last < 5.0:
            return
        self._last = now
        fraction = min(max(fraction, 0.0), 1.0)
        filled = round(fraction * self.width)
        line = (f"{label:11} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{fraction * 100:5.1f}%  {detail}")
        if self.tty:
            self.out.write("\r" + line + ("\n" if final else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout,
                   stop: asyncio.Event | None = None) -> DemoSummary:
    """Run the demo until ``duration_s`` has passed (or ``stop`` is set, or Ctrl-C; or the
    backfill is stored, with ``exit_when_ready``)."""
    state_dir = options.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    options = dataclasses.replace(options, state_dir=state_dir)
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    demo_state, resumed = load_or_create_state(options, dt.datetime.now(dt.UTC))
    # Local credentials of the demo broker (it refuses anonymous clients, as a real one would).
    gateway_ids = [DEMO_GATEWAY_IDS[_patient_index(p.patient)]
                   for p in DEMO_PATIENTS[:options.patients]]
    users: dict[str, str] = {}
    for name in [*gateway_ids, *([BLE_GATEWAY_ID] if options.ble_devices else []), "ingest"]:
        secret = state_dir / f"{name}.password"
        if not secret.exists():
            secret.touch(mode=0o600)
            secret.write_text(secrets.token_urlsafe(18) + "\n", encoding="utf-8")
        users[name] = secret.read_text(encoding="utf-8").strip()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        if options.broker_url is None:
            broker = await stack.enter_async_context(
                EmbeddedBroker(port=_port_or_free(options.port), users=users))
            broker_url = broker.url
            say(f"broker      {broker_url} (embedded, MQTT 3.1.1)")
        else:
            broker_url = options.broker_url
            say(f"broker      {broker_url} (external, MQTT 5)")
        backend_config = parse_backend_config(
            _backend_doc(broker_url, state_dir, options), "demo", state_dir)
        store = Store.open(backend_config.store.url)
        stack.callback(store.close)
        say(f"backend     store {_redacted(backend_config.store.url)}")

        fleet_config = FleetConfig(DEMO_PATIENTS[:options.patients],
                                   history_days=demo_state.history_days,
                                   live_days=demo_state.live_days, speed=options.speed,
                                   seed=demo_state.seed)
        origin = max(dt.datetime.now(dt.UTC), demo_state.sim_time)
        link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves it unannotated
        say(f"simulating  {len(fleet_config.patients)} patient(s) from "
            f"{demo_state.start_date}, {demo_state.history_days} day(s) of history, live at "
            f"{options.speed:g}x" + (" (resumed)" if resumed else ""))
        fleet = await start_fleet(fleet_config, BleAttachment(link=link), now=origin,
                                  start=demo_state.start_date,
                                  on_device=lambda d: say(f"device      {_describe(d, origin)}"))
        stack.push_async_callback(fleet.close)
        await asyncio.to_thread(_provision, store, fleet, ble=bool(options.ble_devices))

        worker = IngestWorker(backend_config, store)
        worker.start()
        stack.push_async_callback(asyncio.to_thread, worker.stop, 10.0)
        if not await asyncio.to_thread(worker.wait_subscribed, 15.0):
            raise DemoError(f"the ingest worker did not subscribe to {broker_url}")

        agent_stop = asyncio.Event()
        agents: list[Agent] = []
        for spec, gateway_id in zip(fleet_config.patients, gateway_ids, strict=True):
            own = [d for d in fleet.devices if d.patient == spec.patient]
            agent_config = parse_agent_config(
                _agent_doc(own, gateway_id, broker_url, state_dir, options), "demo",
                state_dir)
            agents.append(Agent(agent_config, link=link))
        if options.ble_devices:
            agents.append(Agent(parse_agent_config(
                _ble_agent_doc(options.ble_devices, broker_url, state_dir, options), "demo",
                state_dir)))
            say(f"ble         {len(options.ble_devices)} real device(s) through bleak for "
                f"{BLE_PATIENT_ID}: " + ", ".join(f"{p} {a}" for p, a in options.ble_devices))
        agent_tasks = [asyncio.create_task(a.run(agent_stop, handle_signals=False))
                       for a in agents]

        async def _stop_agents() -> None:
            agent_stop.set()
            await asyncio.gather(*agent_tasks, return_exceptions=True)
        stack.push_async_callback(_stop_agents)

        hddt = await _start_hddt(stack, store, options, fleet, say)
        _write_connection(state_dir, broker_url, fleet, backend_config.store.url, hddt)

        ready = await _backfill(store, agents, fleet, origin, stop=stop, out=out)
        if ready:
            say(f"ready       {_ready_line(hddt)}; state in {state_dir}")
            for line in _try_lines(hddt, state_dir):
                say(line)
        started = time.monotonic()
        while ready and not stop.is_set() and not options.exit_when_ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            save_state(state_dir, dataclasses.replace(demo_state, sim_time=fleet.clock.now()))
            say(f"progress    {await _progress(store, agents)}")
            if options.duration_s is not None and \
                    time.monotonic() - started >= options.duration_s:
                stop.set()
        # Finish cleanly: no more live records; every device is synced once more and the
        # outbox drains; then the backend must hold everything the agent read.
        fleet.stop_feeding()
        save_state(state_dir, dataclasses.replace(demo_state, sim_time=fleet.clock.now()))
        say("finishing   last syncs, then draining the gateway's outbox")
        read = await _drain(store, agents, options, live=ready and not options.exit_when_ready)
        await _stop_agents()
        stored = await asyncio.to_thread(_stored_by_device, store)
    results = [DeviceResult(d.patient, d.spec.name, d.log.info.device_id,
                            read.get(d.log.info.device_id, 0)) for d in fleet.devices]
    say("summary     patient         device          records read by the agent")
    for r in results:
        say(f"            {r.patient:15} {r.device:15} {r.read:10}")
    total_read, total_stored = sum(r.read for r in results), sum(stored.values())
    say(f"            {total_read} read at the gateway, {total_stored} stored in the backend "
        f"({len(stored)} devices)")
    return DemoSummary(results, total_read, total_stored)


def _stats(agents: Sequence[Agent]) -> tuple[int, dict[str, DeviceStats]]:
    """Records queued at the gateways, and every device's counters."""
    queued, devices = 0, dict[str, DeviceStats]()
    for agent in agents:
        stats = agent.outbox.stats()
        queued += stats.queued
        devices.update(stats.devices)
    return queued, devices


async def _backfill(store: Store, agents: Sequence[Agent], fleet: Fleet, origin: dt.datetime, *,
                    stop: asyncio.Event, out: TextIO) -> bool:
    """Wait until every device was synced since the start and the backend holds what the
    agent read, drawing a progress bar; False when stopped first."""
    started = dt.datetime.now(dt.UTC)
    expected = sum(_device_history_count(d, origin) for d in fleet.devices)
    names = {d.log.info.device_id for d in fleet.devices}
    bar = _ProgressBar(out)
    while not stop.is_set():
        queued, devices = _stats(agents)
        # Real BLE devices may be out of range: the backfill waits for the simulated ones.
        synced = sum(1 for name, s in devices.items()
                     if name in names and s.last_sync is not None and s.last_sync >= started)
        read = sum(s.records_synced for s in devices.values())
        stored = sum((await asyncio.to_thread(_stored_by_device, store)).values())
        done = synced >= len(names) and queued == 0 and stored >= read
        fraction = 1.0 if done else min(0.99, stored / expected) if expected else 0.0
        bar.show("backfill", fraction, f"{stored:,} of ~{expected:,} records stored, "
                 f"{synced}/{len(names)} devices synced", final=done)
        if done:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    return False


async def _drain(store: Store, agents: Sequence[Agent], options: DemoOptions, *,
                 live: bool) -> dict[str, int]:
    if live:  # let every device finish one more sync of what streamed in
        await asyncio.sleep(min(options.poll_interval_s * 2 + 1, 12.0))
    deadline = time.monotonic() + 30
    while True:
        queued, devices = _stats(agents)
        read = {name: d.records_synced for name, d in devices.items()}
        stored_total = sum((await asyncio.to_thread(_stored_by_device, store)).values())
        if (queued == 0 and stored_total >= sum(read.values())) \
                or time.monotonic() > deadline:
            return read
        await asyncio.sleep(0.5)


def _redacted(url: str) -> str:
    return sqlalchemy.make_url(url).render_as_string(hide_password=True)


async def _progress(store: Store, agents: Sequence[Agent]) -> str:
    stats = await asyncio.to_thread(store.status)
    total = sum(stats.records_total.values())
    return f"{total} records stored, {_stats(agents)[0]} queued at the gateways"


def _describe(d: RunningDevice, origin: dt.datetime) -> str:
    where = d.serial.url if d.serial is not None else d.spec.address
    # The records its profile conveys as records (a CGM's annunciations travel as status
    # flags of its readings: CGMS, CGM Measurement, Sensor Status Annunciation), so that the
    # figures add up to the backfill's total.
    return (f"{d.patient:15} {d.spec.name:13} {where}  "
            f"({_device_history_count(d, origin)} records stored)")


@dataclass(frozen=True, slots=True)
class HddtEndpoints:
    """Where the demo's HDDT interface answers, and what a DiGA needs to pair with it."""

    fhir_base_url: str
    issuer: str
    portal_url: str
    dashboard_url: str
    ca_certificate: Path
    diga: Mapping[str, Any]
    patients: Sequence[Mapping[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {"fhir_base_url": self.fhir_base_url, "issuer": self.issuer,
                "portal_url": self.portal_url, "dashboard_url": self.dashboard_url,
                "ca_certificate": str(self.ca_certificate), "diga": dict(self.diga),
                "patients": [dict(p) for p in self.patients]}


#: The demo DiGA: a sandbox entry of the DiGA directory stand-in.
DEMO_DIGA_ID = "urn:diga:bfarm:99001"
DEMO_DIGA_NAME = "Demo Diabetes DiGA (sandbox)"
#: Where the portal sends the browser after consent; nothing answers there: a person copies
#: the address (it carries code and state) into ``hddt-bridge diga pair --redirected-to``.
DEMO_DIGA_REDIRECT_URI = "https://diga.example/hddt/callback"
DEMO_DIGA_SCOPES = (observation_scope(MIV_BLOOD_GLUCOSE),
                    observation_scope(MIV_CONTINUOUS_GLUCOSE),
                    observation_scope(PROJECT_INSULIN_DELIVERY),
                    SCOPE_DEVICE, SCOPE_DEVICE_METRIC)


def _portal_logins(state_dir: Path, patient_ids: Sequence[str]) -> list[dict[str, str]]:
    """Each demo patient's portal login, generated once and kept in the state folder."""
    path = state_dir / "portal-logins.json"
    logins: dict[str, dict[str, str]] = {}
    if path.exists():
        logins = {entry["id"]: entry for entry in json.loads(path.read_text("utf-8"))}
    for i, patient_id in enumerate(patient_ids, start=1):
        logins.setdefault(patient_id, {"id": patient_id, "portal_username": f"patient{i}",
                                       "portal_password": secrets.token_urlsafe(12)})
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(list(logins.values()), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return [logins[p] for p in patient_ids]


def _hddt_setup(store: Store, state_dir: Path, patient_ids: Sequence[str],
                port: int) -> tuple[Any, TlsFiles, HddtEndpoints]:
    """Sandbox PKI, the demo DiGA, portal logins and the web application (blocking)."""
    base_url = f"https://127.0.0.1:{port}"
    pki = issue_pki(state_dir / "pki", [DEMO_DIGA_ID], server_names=["localhost", "127.0.0.1"])
    diga = pki.diga(DEMO_DIGA_ID)
    register_diga(store, DEMO_DIGA_ID, name=DEMO_DIGA_NAME,
                  redirect_uris=[DEMO_DIGA_REDIRECT_URI], scopes=DEMO_DIGA_SCOPES,
                  certificate_pem=diga.cert.read_text(encoding="ascii"))
    logins = _portal_logins(state_dir, patient_ids)
    with store.begin() as conn:
        existing = set(conn.execute(sqlalchemy.select(portal_accounts.c.username)).scalars())
    for login in logins:
        if login["portal_username"] not in existing:
            create_portal_account(store, login["portal_username"], login["portal_password"],
                                  patient_id=login["id"])
    settings = AuthSettings(issuer=base_url, audience=f"{base_url}/fhir",
                            state_dir=state_dir / "auth")
    app = create_app(store, settings)
    tls = TlsFiles(pki.server.cert, pki.server.key,
                   client_trust_bundle(store, [pki.ca.cert], state_dir / "auth" /
                                       "client-trust.pem"))
    endpoints = HddtEndpoints(
        fhir_base_url=f"{base_url}/fhir", issuer=base_url,
        portal_url=f"{base_url}/portal/pairings", dashboard_url=f"{base_url}/dashboard/",
        ca_certificate=pki.ca.cert,
        diga={"client_id": DEMO_DIGA_ID, "name": DEMO_DIGA_NAME,
              "certificate": str(diga.cert), "private_key": str(diga.key),
              "redirect_uri": DEMO_DIGA_REDIRECT_URI, "scopes": list(DEMO_DIGA_SCOPES)},
        patients=logins)
    return app, tls, endpoints


async def _start_hddt(stack: contextlib.AsyncExitStack, store: Store, options: DemoOptions,
                      fleet: Fleet, say: Callable[[str], None]) -> HddtEndpoints:
    """The HDDT resource server, authorization server, portal and dashboard over TLS."""
    patient_ids = [DEMO_PATIENT_IDS[_patient_index(p.patient)] for p in fleet.config.patients]
    if options.ble_devices:
        patient_ids.append(BLE_PATIENT_ID)
    port = _port_or_free(options.http_port) if options.http_port else _free_port()
    app, tls, endpoints = await asyncio.to_thread(
        _hddt_setup, store, options.state_dir, patient_ids, port)
    server = HttpsServer(app, tls=tls, port=port, store=store)
    await asyncio.to_thread(server.start)
    stack.callback(server.stop)
    say(f"hddt        FHIR {endpoints.fhir_base_url} (TLS; CA {endpoints.ca_certificate})")
    say(f"            authorization server {endpoints.issuer}, DiGA {DEMO_DIGA_ID}")
    return endpoints


def _ready_line(hddt: HddtEndpoints | None) -> str:
    if hddt is None:
        return "backfill stored"
    return f"FHIR {hddt.fhir_base_url}  dashboard {hddt.dashboard_url}"


def _try_lines(hddt: HddtEndpoints | None, state_dir: Path) -> list[str]:
    if hddt is None:
        return []
    connection = state_dir / "connection.json"
    return [f"portal      {hddt.portal_url}",
            f"try         hddt-bridge diga pair --connection {connection} --patient "
            f"{hddt.patients[0]['id']}",
            f"            hddt-bridge diga fetch --connection {connection} --patient "
            f"{hddt.patients[0]['id']}"]


def _write_connection(state: Path, broker_url: str, fleet: Fleet, database_url: str,
                      hddt: HddtEndpoints | None) -> None:
    doc: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "broker_url": broker_url,
        "gateways": [{"id": DEMO_GATEWAY_IDS[_patient_index(p.patient)],
                      "patient": DEMO_PATIENT_IDS[_patient_index(p.patient)],
                      "outbox": str(state / f"{DEMO_GATEWAY_IDS[_patient_index(p.patient)]}"
                                            "-outbox.sqlite")}
                     for p in fleet.config.patients],
        "backend_database": _redacted(database_url),
        "devices": [dataclasses.asdict(dataclasses.replace(d.log.info)) | {
            "patient": DEMO_PATIENT_IDS[_patient_index(d.patient)],
            "simulated_patient": d.patient,
            "where": d.serial.url if d.serial is not None else d.spec.address}
            for d in fleet.devices],
    }
    if hddt is not None:
        doc |= hddt.to_json()
    path = state / "connection.json"
    tmp = path.with_suffix(".tmp")
    # It holds the demo DiGA's key path and the patients' portal passwords.
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
