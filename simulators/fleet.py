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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
from bridge.tomlconfig import TomlTable, Wording
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

class _Wording(Wording):
    """The fleet files' established wording (``expected int, got str '2'``)."""

    names: ClassVar[Mapping[str, str]] = {"string": "str", "integer": "int", "number": "float",
                                "boolean": "bool", "table": "a table", "array": "list",
                                "date": "date"}

    def describe(self, value: Any) -> str:
        return f"{type(value).__name__} {value!r}"

    def array_of_tables(self, key: str) -> str:
        return self.names["array"]

    def missing(self, what: str) -> str:
        return "required"

    def choice_type(self, choices: Sequence[str]) -> str:
        return self.names["string"]

    def not_a_choice(self, choices: Sequence[str], value: str) -> str:
        expected = (" or ".join(map(repr, choices)) if len(choices) <= 2
                    else f"one of {list(choices)}")
        return f"expected {expected}, got {value!r}"

    def unknown_keys(self, table_key: str, unknown: Sequence[str],
                     known: Iterable[str]) -> tuple[str, str]:
        return table_key, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}"


_FAULT_KEYS = {f.name for f in dataclasses.fields(FaultConfig)} - {"clock_reset_to",
                                                                    "clock_epoch"}
_FAULT_INTEGERS = ("seed", "disconnect_after_records", "clock_reset_at_record",
                   "sequence_reset_at_record")


def _faults(t: TomlTable) -> FaultConfig:
    t.refuse_unknown(_FAULT_KEYS)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(FaultConfig):
        if f.name not in t:
            continue
        if f.name == "annunciations":
            try:
                kwargs["annunciations"] = frozenset(
                    Annunciation(n) for n in t.array("annunciations") or [])
            except ValueError as exc:
                raise t.fail("annunciations", f"{exc}; known: "
                                              f"{[a.value for a in Annunciation]}") from None
        elif f.name == "battery_low":
            kwargs[f.name] = t.boolean(f.name, False)
        elif f.name in _FAULT_INTEGERS:
            kwargs[f.name] = t.opt_integer(f.name)
        else:
            kwargs[f.name] = t.opt_number(f.name)
    try:
        return FaultConfig(**kwargs)
    except (ValueError, SimulatorError) as exc:
        raise t.fail("", str(exc)) from None


def _device(t: TomlTable) -> DeviceSpec:
    t.refuse_unknown({"kind", "transport", "name", "address", "protocol", "port", "tcp_port",
                      "e2e_crc", "passkey", "bonding", "faults"})
    kind = t.choice("kind", sorted(KINDS))
    transport = t.choice("transport", ("ble", "serial"), "ble")
    if transport == "serial":
        if kind != "meter":
            raise t.fail("kind", f"serial emulators are meters, got {kind!r}")
        protocol: str | None = t.choice("protocol", list(PROTOCOLS))
        port = t.choice("port", ("pty", "tcp"), "pty")
    else:
        protocol = t.opt_text("protocol", allow_empty=True)
        port = t.text("port", "pty", allow_empty=True)
    address = t.opt_text("address", allow_empty=True)
    if transport == "ble" and address is None:
        raise t.fail("address", "required for a BLE device")
    return DeviceSpec(kind=kind, transport=transport,
                      name=t.text("name", f"Virtual {kind}", allow_empty=True),
                      address=address, protocol=protocol, port=port,
                      tcp_port=t.integer("tcp_port", 0), e2e_crc=t.boolean("e2e_crc", False),
                      passkey=t.opt_integer("passkey"), bonding=t.boolean("bonding", True),
                      faults=_faults(t.table("faults")))


def parse_fleet(data: Mapping[str, Any], source: str = "<fleet>") -> FleetConfig:
    """Check a parsed fleet file; every error names ``source`` and the key."""
    top = TomlTable(data, wording=_Wording(), error=lambda key, message: FleetConfigError(
        f"{source}: {key}: {message}" if key else f"{source}: {message}"))
    top.refuse_unknown({"simulation", "patient"})
    sim = top.table("simulation")
    sim.refuse_unknown({"history_days", "live_days", "speed", "seed"})
    history = sim.integer("history_days", 2)
    live = sim.integer("live_days", 1)
    speed = sim.number("speed", 1.0)
    if history < 0 or live < 0 or history + live < 1:
        raise FleetConfigError(f"{source}: simulation.history_days + live_days must be >= 1")
    if not 0 < speed <= 100_000:
        raise FleetConfigError(f"{source}: simulation.speed must be in (0, 100000]")
    patients = []
    for pt in top.tables("patient"):
        pt.refuse_unknown({"name", "scenario", "device"})
        devices = tuple(_device(d) for d in pt.tables("device"))
        if not devices:
            raise pt.fail("device", "a patient needs at least one device")
        patients.append(PatientSpec(pt.text("name", allow_empty=True),
                                    pt.text("scenario", "three-meals", allow_empty=True),
                                    devices))
    if not patients:
        raise FleetConfigError(f"{source}: no [[patient]] entries")
    addresses = [d.address for p in patients for d in p.devices if d.address]
    if len(addresses) != len(set(addresses)):
        raise FleetConfigError(f"{source}: BLE addresses must be unique")
    return FleetConfig(tuple(patients), history, live, speed, sim.integer("seed", 0))


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


def simulate_patient(spec: PatientSpec, config: FleetConfig,
                     start: dt.date) -> dict[DeviceKind, DeviceLog]:
    """Every device log of one fleet patient, simulated from ``start`` over the fleet's
    horizon (``history_days + live_days + 1`` days): what :func:`start_fleet` serves, so a
    test can compare what came out at the other end of the path."""
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
            logs = await asyncio.to_thread(simulate_patient, spec, config, start)
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
