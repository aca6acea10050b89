"""A fleet of virtual devices fed by simulated patients: what ``hddt-bridge sim-devices`` runs.

A fleet file (TOML, see ``configs/sim-devices.toml``) names patients and, for each, the devices
to serve: BLE peripherals (glucose meter, CGM, insulin pump) on one bumble HCI transport, and
serial meter emulators on ptys or TCP. Each patient is simulated with its scenario from
``history_days`` before now to ``live_days`` after; records up to now become the devices' stored
history, later ones are fed to the devices as their time comes. With ``speed`` > 1 the fleet's
clock runs faster than the wall clock (60 = an hour a minute), and the devices' clocks with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport import open_transport

from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    CgmReading,
    DeviceKind,
    Record,
)
from simulators.ble.cgm_sensor import DEFAULT_CAPACITY as CGM_DEFAULT_CAPACITY
from simulators.ble.cgm_sensor import CgmSensorPeripheral
from simulators.ble.common import (
    HciTransport,
    PairingMode,
    PeripheralConfig,
    SecurityConfig,
    VirtualPeripheral,
)
from simulators.ble.glucose_meter import GlucoseMeterPeripheral
from simulators.ble.insulin_pump import InsulinPumpPeripheral, PumpConfig, PumpRecord
from simulators.cli import resolve_patients
from simulators.device_clock import DeviceLog
from simulators.errors import SimulatorError
from simulators.faults import FaultConfig
from simulators.run import simulate_cohort
from simulators.scenario import load_scenario
from simulators.serial import PROTOCOLS, RunningEmulator, SerialEmulatorConfig
from simulators.serial import start_serial_emulator as _start_serial

PUMP_RECORDS = typing.get_args(PumpRecord)
KINDS = {"meter": DeviceKind.BLOOD_GLUCOSE_METER, "cgm": DeviceKind.CGM,
         "pump": DeviceKind.INSULIN_PUMP}


class FleetConfigError(SimulatorError):
    """A fleet file that cannot work; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    kind: str                    # meter | cgm | pump
    transport: str               # ble | serial
    name: str
    address: str | None = None   # BLE address
    protocol: str | None = None  # serial protocol
    port: str = "pty"            # serial: pty | tcp
    tcp_port: int = 0
    e2e_crc: bool = False
    passkey: int | None = None
    bonding: bool = True
    faults: FaultConfig = field(default_factory=FaultConfig)


@dataclass(frozen=True, slots=True)
class PatientSpec:
    patient: str
    scenario: str
    devices: tuple[DeviceSpec, ...]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    patients: tuple[PatientSpec, ...]
    history_days: int = 2
    live_days: int = 1
    speed: float = 1.0
    seed: int = 0


# --- parsing ------------------------------------------------------------------------------

class _Table:
    """Typed access to one TOML table, naming ``file: path.key`` in every error."""

    def __init__(self, data: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        self.data, self.where = data, where
        unknown = set(data) - allowed
        if unknown:
            raise FleetConfigError(f"{where}: unknown key(s) {sorted(unknown)}; "
                                   f"allowed: {sorted(allowed)}")

    def get(self, key: str, kind: type[Any], default: Any = None, *,
            required: bool = False) -> Any:
        if key not in self.data:
            if required:
                raise FleetConfigError(f"{self.where}.{key}: required")
            return default
        value = self.data[key]
        is_bool = isinstance(value, bool)
        ok = ((isinstance(value, kind) and not (kind is int and is_bool))
              or (kind is float and isinstance(value, int) and not is_bool))
        if not ok:
            raise FleetConfigError(f"{self.where}.{key}: expected {kind.__name__}, got "
                                   f"{type(value).__name__} {value!r}")
        return float(value) if kind is float else value


_FAULT_KEYS = {f.name for f in dataclasses.fields(FaultConfig)} - {"clock_reset_to",
                                                                    "clock_epoch"}


def _faults(data: Any, where: str) -> FaultConfig:
    if data is None:
        return FaultConfig()
    if not isinstance(data, dict):
        raise FleetConfigError(f"{where}: expected a table")
    t = _Table(data, where, _FAULT_KEYS)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(FaultConfig):
        if f.name not in data:
            continue
        if f.name == "annunciations":
            names = t.get("annunciations", list)
            try:
                kwargs["annunciations"] = frozenset(Annunciation(n) for n in names)
            except ValueError as exc:
                raise FleetConfigError(f"{where}.annunciations: {exc}; known: "
                                       f"{[a.value for a in Annunciation]}") from None
        elif f.name in ("battery_low",):
            kwargs[f.name] = t.get(f.name, bool)
        elif f.name in ("seed", "disconnect_after_records", "clock_reset_at_record",
                        "sequence_reset_at_record"):
            kwargs[f.name] = t.get(f.name, int)
        else:
            kwargs[f.name] = t.get(f.name, float)
    try:
        return FaultConfig(**kwargs)
    except (ValueError, SimulatorError) as exc:
        raise FleetConfigError(f"{where}: {exc}") from None


def _device(data: Any, where: str) -> DeviceSpec:
    if not isinstance(data, dict):
        raise FleetConfigError(f"{where}: expected a table")
    t = _Table(data, where, {"kind", "transport", "name", "address", "protocol", "port",
                             "tcp_port", "e2e_crc", "passkey", "bonding", "faults"})
    kind = t.get("kind", str, required=True)
    if kind not in KINDS:
        raise FleetConfigError(f"{where}.kind: expected one of {sorted(KINDS)}, got {kind!r}")
    transport = t.get("transport", str, "ble")
    if transport not in ("ble", "serial"):
        raise FleetConfigError(f"{where}.transport: expected 'ble' or 'serial', "
                               f"got {transport!r}")
    protocol = t.get("protocol", str)
    port = t.get("port", str, "pty")
    if transport == "serial":
        if kind != "meter":
            raise FleetConfigError(f"{where}.kind: serial emulators are meters, got {kind!r}")
        if protocol not in PROTOCOLS:
            raise FleetConfigError(f"{where}.protocol: expected one of {list(PROTOCOLS)}, "
                                   f"got {protocol!r}")
        if port not in ("pty", "tcp"):
            raise FleetConfigError(f"{where}.port: expected 'pty' or 'tcp', got {port!r}")
    elif t.get("address", str) is None:
        raise FleetConfigError(f"{where}.address: required for a BLE device")
    return DeviceSpec(kind=kind, transport=transport,
                      name=t.get("name", str, f"Virtual {kind}"), address=t.get("address", str),
                      protocol=protocol, port=port, tcp_port=t.get("tcp_port", int, 0),
                      e2e_crc=t.get("e2e_crc", bool, False), passkey=t.get("passkey", int),
                      bonding=t.get("bonding", bool, True),
                      faults=_faults(data.get("faults"), f"{where}.faults"))


def parse_fleet(data: Mapping[str, Any], source: str = "<fleet>") -> FleetConfig:
    top = _Table(data, source, {"simulation", "patient"})
    sim = _Table(data.get("simulation", {}), f"{source}: simulation",
                 {"history_days", "live_days", "speed", "seed"})
    history = sim.get("history_days", int, 2)
    live = sim.get("live_days", int, 1)
    speed = sim.get("speed", float, 1.0)
    if history < 0 or live < 0 or history + live < 1:
        raise FleetConfigError(f"{source}: simulation.history_days + live_days must be >= 1")
    if not 0 < speed <= 100_000:
        raise FleetConfigError(f"{source}: simulation.speed must be in (0, 100000]")
    patients = []
    for i, raw in enumerate(top.get("patient", list, [])):
        where = f"{source}: patient[{i}]"
        if not isinstance(raw, dict):
            raise FleetConfigError(f"{where}: expected a table")
        pt = _Table(raw, where, {"name", "scenario", "device"})
        devices = tuple(_device(d, f"{where}.device[{j}]")
                        for j, d in enumerate(pt.get("device", list, [])))
        if not devices:
            raise FleetConfigError(f"{where}.device: a patient needs at least one device")
        patients.append(PatientSpec(pt.get("name", str, required=True),
                                    pt.get("scenario", str, "three-meals"), devices))
    if not patients:
        raise FleetConfigError(f"{source}: no [[patient]] entries")
    addresses = [d.address for p in patients for d in p.devices if d.address]
    if len(addresses) != len(set(addresses)):
        raise FleetConfigError(f"{source}: BLE addresses must be unique")
    return FleetConfig(tuple(patients), history, live, speed, sim.get("seed", int, 0))


def load_fleet(path: Path) -> FleetConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FleetConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_fleet(data, str(path))


# --- time ---------------------------------------------------------------------------------

class FleetClock:
    """True (simulated) time: ``origin`` at start, advancing ``speed`` × the wall clock."""

    def __init__(self, origin: dt.datetime, speed: float,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.origin = origin
        self.speed = speed
        self._monotonic = monotonic or asyncio.get_running_loop().time
        self._wall0 = self._monotonic()

    def now(self) -> dt.datetime:
        return self.origin + dt.timedelta(seconds=(self._monotonic() - self._wall0) * self.speed)

    def wall_seconds_until(self, t: dt.datetime) -> float:
        return max(0.0, (t - self.now()).total_seconds() / self.speed)


# --- running ------------------------------------------------------------------------------

@dataclass
class RunningDevice:
    spec: DeviceSpec
    patient: str
    log: DeviceLog
    peripheral: VirtualPeripheral | None = None
    serial: RunningEmulator | None = None
    pending: list[Record] = field(default_factory=list)
    stored: int = 0
    fed: int = 0

    @property
    def where(self) -> str:
        if self.serial is not None:
            return self.serial.url
        return self.spec.address or "?"

    def add(self, record: Record) -> None:
        target = self.peripheral
        self.fed += 1
        if isinstance(record, BloodGlucoseReading):
            if self.serial is not None:
                self.serial.add_record(record)
            elif isinstance(target, GlucoseMeterPeripheral):
                target.add_record(record)
        elif isinstance(record, CgmReading):
            if isinstance(target, CgmSensorPeripheral):
                target.add_record(record)
        elif isinstance(target, InsulinPumpPeripheral) and isinstance(record, PUMP_RECORDS):
            target.add_record(record)


@dataclass
class Fleet:
    config: FleetConfig
    clock: FleetClock
    devices: list[RunningDevice]
    _feeder: asyncio.Task[None] | None = None
    _link_port: Any = None  # the transport of the central's virtual controller

    async def close(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)
        for d in self.devices:
            if d.peripheral is not None:
                await d.peripheral.stop()
            if d.serial is not None:
                await d.serial.close()
        if self._link_port is not None:
            await self._link_port.close()
            self._link_port = None

    def stop_feeding(self) -> None:
        """Stop handing live records to the devices (what they hold stays)."""
        if self._feeder is not None:
            self._feeder.cancel()

    async def _feed(self) -> None:
        queue = sorted(((r.time, i, r) for i, d in enumerate(self.devices) for r in d.pending),
                       key=lambda x: (x[0], x[1]))
        for t, i, record in queue:
            await asyncio.sleep(self.clock.wall_seconds_until(t))
            self.devices[i].add(record)


@dataclass(frozen=True, slots=True)
class BleAttachment:
    """Where the fleet's BLE peripherals go.

    * ``link``: all on one in-process virtual link (tests hold the link and add a central);
    * ``link_server``: all on an in-process virtual link, plus one virtual controller on this
      bumble transport (``tcp-server:127.0.0.1:9102``) for a central in another process;
    * ``transports``: one bumble HCI transport per BLE device, in fleet order (``usb:0`` for a
      dongle, ``tcp-client:…`` toward ``bumble.apps.controllers``).
    """

    link: LocalLink | None = None
    link_server: str | None = None
    transports: tuple[str, ...] = ()


def _simulate(spec: PatientSpec, config: FleetConfig, start: dt.date) -> dict[DeviceKind,
                                                                             DeviceLog]:
    try:
        patients = resolve_patients([spec.patient], None, config.seed)
        scenario = dataclasses.replace(load_scenario(spec.scenario), start_date=start)
    except SimulatorError as exc:
        raise FleetConfigError(f"patient {spec.patient!r}: {exc}") from None
    days = config.history_days + config.live_days + 1
    result = simulate_cohort(patients, scenario, days, seed=config.seed, records=True)
    assert result.devices is not None
    devices = result.devices[0]
    logs = {DeviceKind.INSULIN_PUMP: devices.pump, DeviceKind.CGM: devices.cgm,
            DeviceKind.BLOOD_GLUCOSE_METER: devices.meter}
    return {k: v for k, v in logs.items() if v is not None}


def ble_device_names(config: FleetConfig) -> list[str]:
    return [d.name for p in config.patients for d in p.devices if d.transport == "ble"]


async def start_fleet(config: FleetConfig, ble: BleAttachment | None = None, *,
                      now: dt.datetime | None = None, start: dt.date | None = None,
                      on_device: Callable[[RunningDevice], None] | None = None) -> Fleet:
    """Simulate every patient, start every device, feed history, and keep feeding live.

    The simulation covers ``history_days + live_days + 1`` days from ``start`` (by default
    ``history_days`` before ``now``). Records up to ``now`` are the devices' stored history.
    A resumed run passes the first run's ``start`` with the same config and a later ``now``:
    the simulation is then identical (same seed, same horizon), so every record keeps its
    identity and the devices hold what they held before plus what happened since.
    """
    ble = ble or BleAttachment()
    radios = ble_device_names(config)
    if radios and ble.link is None and ble.link_server is None and \
            len(ble.transports) != len(radios):
        raise FleetConfigError(f"{len(radios)} BLE device(s) ({', '.join(radios)}) need a "
                               f"virtual link or one HCI transport each; "
                               f"{len(ble.transports)} given")
    origin = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    clock = FleetClock(origin, config.speed)
    if start is None:
        start = (origin - dt.timedelta(days=config.history_days)).date()
    fleet = Fleet(config, clock, [])
    link = ble.link
    if link is None and ble.link_server is not None and radios:
        link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves it unannotated
        try:
            fleet._link_port = await open_transport(ble.link_server)
        except Exception as exc:  # bumble raises plain exceptions for bad specs/busy ports
            raise FleetConfigError(f"cannot open {ble.link_server!r}: {exc}") from None
        Controller("central-port", host_source=fleet._link_port.source,
                   host_sink=fleet._link_port.sink, link=link)
    transports = iter(ble.transports)
    try:
        for spec in config.patients:
            logs = await asyncio.to_thread(_simulate, spec, config, start)
            for dev in spec.devices:
                kind = KINDS[dev.kind]
                if kind not in logs:
                    raise FleetConfigError(
                        f"patient {spec.patient!r} with scenario {spec.scenario!r} has no "
                        f"{dev.kind} (check the scenario's therapy mode and sensors)")
                log = logs[kind]
                history = [r for r in log.records if r.time <= origin]
                running = RunningDevice(dev, spec.patient, log,
                                        pending=[r for r in log.records if r.time > origin],
                                        stored=len(history))
                hci: HciTransport | None = None
                if dev.transport == "ble":
                    hci = link if link is not None else next(transports)
                await _start_device(running, history, hci, clock)
                fleet.devices.append(running)
                if on_device is not None:
                    on_device(running)
        fleet._feeder = asyncio.create_task(fleet._feed())
    except BaseException:
        await fleet.close()
        raise
    return fleet


async def _start_device(running: RunningDevice, history: Sequence[Record],
                        ble_transport: HciTransport | None, clock: FleetClock) -> None:
    dev, log = running.spec, running.log
    info = dataclasses.replace(log.info, transport=dev.transport, address=dev.address)
    if dev.transport == "serial":
        assert dev.protocol is not None
        running.serial = await _start_serial(SerialEmulatorConfig(
            protocol=dev.protocol, port="tcp" if dev.port == "tcp" else "pty",
            records=[r for r in history if isinstance(r, BloodGlucoseReading)],
            info=dataclasses.replace(info, address=None), clock=log.clock, now=clock.now,
            faults=dev.faults, tcp_port=dev.tcp_port))
        return
    assert ble_transport is not None
    assert dev.address is not None
    security = SecurityConfig(
        bonding_required=dev.bonding,
        mode=PairingMode.PASSKEY if dev.passkey is not None else PairingMode.JUST_WORKS,
        passkey=dev.passkey if dev.passkey is not None else 123456)
    config = PeripheralConfig(name=dev.name, address=dev.address, info=info, security=security,
                              faults=dev.faults, clock=log.clock, now=clock.now)
    peripheral: VirtualPeripheral
    if dev.kind == "meter":
        peripheral = GlucoseMeterPeripheral(
            config, ble_transport,
            records=[r for r in history if isinstance(r, BloodGlucoseReading)])
    elif dev.kind == "cgm":
        cgm = [r for r in history if isinstance(r, CgmReading)]
        # A fleet stands for a gateway that has been collecting all along: the sensor's
        # memory holds the whole simulated history (a real one keeps about ten days).
        peripheral = CgmSensorPeripheral(config, ble_transport, records=cgm,
                                         e2e_crc=dev.e2e_crc,
                                         capacity=max(CGM_DEFAULT_CAPACITY, len(cgm)))
    else:
        peripheral = InsulinPumpPeripheral(
            config, ble_transport, records=[r for r in history if isinstance(r, PUMP_RECORDS)],
            pump=PumpConfig(e2e=dev.e2e_crc))
    await peripheral.start()
    running.peripheral = peripheral


def describe(device: RunningDevice) -> str:
    spec = device.spec
    what = spec.protocol if spec.transport == "serial" else f"BLE {spec.kind}"
    return (f"{device.patient:12} {spec.name:24} {what:22} {device.where}  "
            f"({device.stored} stored, {len(device.pending)} to come)")
