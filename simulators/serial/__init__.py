"""Serial glucose-meter emulators a client opens exactly like a real meter.

Four meters, each holding canonical :class:`~bridge.records.BloodGlucoseReading` records, a
device clock and a :class:`~bridge.records.DeviceInfo`, and encoding everything with the
project's codecs:

========================  ============================================================
``phd``                   IEEE 11073-10417 glucose meter, IEEE 11073-20601 agent
``onetouch-ultra2``       LifeScan OneTouch Ultra 2, ASCII commands
``onetouch-ultra-easy``   LifeScan OneTouch Ultra Easy / Mini, binary link protocol
``contour-astm``          Contour-style meter, ASTM E1381 frames of E1394 records
========================  ============================================================

Each is served on a pseudo-terminal (the client opens a path such as ``/dev/pts/7``, like
``/dev/ttyUSB0``) or on TCP (the client opens ``socket://127.0.0.1:PORT`` with pyserial's
``serial_for_url``)::

    running = await start_serial_emulator(SerialEmulatorConfig(
        protocol="onetouch-ultra2", port="pty", records=history))
    ...  # a client opens running.url
    running.add_record(new_reading)   # live feeding, from the event loop's thread
    await running.close()

Fault injection comes from :class:`simulators.faults.FaultConfig`; protocol details and
timers from the per-protocol options classes (shorten timers in tests).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind
from simulators.device_clock import DeviceClock
from simulators.errors import SimulatorError
from simulators.faults import FaultConfig
from simulators.serial.contour_astm import CAPACITY as CONTOUR_CAPACITY
from simulators.serial.contour_astm import ContourAstmEmulator, ContourOptions
from simulators.serial.onetouch_ultra2 import CAPACITY as ULTRA2_CAPACITY
from simulators.serial.onetouch_ultra2 import Ultra2Emulator, Ultra2Options
from simulators.serial.onetouch_ultra_easy import CAPACITY as ULTRA_EASY_CAPACITY
from simulators.serial.onetouch_ultra_easy import UltraEasyEmulator, UltraEasyOptions
from simulators.serial.phd_meter import PhdGlucoseMeterEmulator, PhdOptions
from simulators.serial.ports import (
    DEFAULT_CAPACITY,
    DEFAULT_SETTLE_S,
    MeterCore,
    MeterWrite,
    PtyPort,
    SerialMeterEmulator,
    SerialPort,
    StoredReading,
    TcpPort,
)

__all__ = [
    "ALIASES",
    "PROTOCOLS",
    "ContourOptions",
    "MeterWrite",
    "PhdOptions",
    "PortKind",
    "RunningEmulator",
    "SerialEmulatorConfig",
    "SerialEmulatorError",
    "StoredReading",
    "Ultra2Options",
    "UltraEasyOptions",
    "build_emulator",
    "start_serial_emulator",
]

PortKind = Literal["pty", "tcp"]
ProtocolOptions = PhdOptions | Ultra2Options | UltraEasyOptions | ContourOptions
_O = TypeVar("_O", PhdOptions, Ultra2Options, UltraEasyOptions, ContourOptions)



@dataclass(frozen=True, slots=True)
class _Protocol:
    build: Callable[[MeterCore, ProtocolOptions | None], SerialMeterEmulator]
    options: type
    capacity: int
    model: str


def _options(options: ProtocolOptions | None, cls: type[_O]) -> _O | None:
    return options if isinstance(options, cls) else None


_PROTOCOLS: dict[str, _Protocol] = {
    PhdGlucoseMeterEmulator.PROTOCOL: _Protocol(
        lambda core, o: PhdGlucoseMeterEmulator(core, _options(o, PhdOptions)),
        PhdOptions, DEFAULT_CAPACITY, "Virtual 11073 glucose meter"),
    Ultra2Emulator.PROTOCOL: _Protocol(
        lambda core, o: Ultra2Emulator(core, _options(o, Ultra2Options)),
        Ultra2Options, ULTRA2_CAPACITY, "Virtual OneTouch Ultra 2"),
    UltraEasyEmulator.PROTOCOL: _Protocol(
        lambda core, o: UltraEasyEmulator(core, _options(o, UltraEasyOptions)),
        UltraEasyOptions, ULTRA_EASY_CAPACITY, "Virtual OneTouch Ultra Easy"),
    ContourAstmEmulator.PROTOCOL: _Protocol(
        lambda core, o: ContourAstmEmulator(core, _options(o, ContourOptions)),
        ContourOptions, CONTOUR_CAPACITY, "Virtual Contour (ASTM)"),
}

#: The protocol names :func:`start_serial_emulator` accepts.
PROTOCOLS = tuple(_PROTOCOLS)
#: Other names for the same protocols (the serial drivers call the 11073 agent ``ieee11073``).
ALIASES = {"ieee11073": PhdGlucoseMeterEmulator.PROTOCOL}


class SerialEmulatorError(SimulatorError):
    """A serial emulator configuration that cannot work (unknown protocol, wrong options)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialEmulatorConfig:
    """What :func:`start_serial_emulator` starts.

    * ``protocol``: one of :data:`PROTOCOLS` (or an :data:`ALIASES` name); ``port``:
      ``"pty"`` or ``"tcp"``.
    * ``records``: the meter's history, oldest first; ``info``: its identity (a default
      DeviceInfo otherwise); ``clock``: the device model's clock (``None``: exact, in UTC);
      ``now``: the TRUE time source (aware UTC; default the system clock); ``faults``.
    * ``options``: the protocol's options object (:class:`PhdOptions`,
      :class:`Ultra2Options`, :class:`UltraEasyOptions`, :class:`ContourOptions`).
    * ``capacity``: stored readings (default: the meter's own).
    * TCP: ``host``, ``tcp_port`` (0 = any free port). Pty: ``link_path``, a symbolic link
      kept pointing at the current pty (it moves after a simulated unplug).
    * ``settle_s``: pause after a client connects before the meter may speak first.
    """

    protocol: str
    port: PortKind = "pty"
    records: Sequence[BloodGlucoseReading] = ()
    info: DeviceInfo | None = None
    clock: DeviceClock | None = None
    now: Callable[[], dt.datetime] | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    options: ProtocolOptions | None = None
    capacity: int | None = None
    host: str = "127.0.0.1"
    tcp_port: int = 0
    link_path: str | None = None
    settle_s: float = DEFAULT_SETTLE_S


def default_info(protocol: str) -> DeviceInfo:
    model = _PROTOCOLS[protocol].model if protocol in _PROTOCOLS else protocol
    return DeviceInfo(device_id=f"serial-{protocol}", kind=DeviceKind.BLOOD_GLUCOSE_METER,
                      manufacturer="hddt-bridge simulators", model=model, transport="serial")


def build_emulator(config: SerialEmulatorConfig) -> SerialMeterEmulator:
    """The protocol emulator for ``config`` (not yet on a port)."""
    entry = _PROTOCOLS.get(ALIASES.get(config.protocol, config.protocol))
    if entry is None:
        raise SerialEmulatorError(f"unknown serial protocol {config.protocol!r}; "
                                  f"known: {', '.join(PROTOCOLS)}")
    options = config.options
    if options is not None and not isinstance(options, entry.options):
        raise SerialEmulatorError(f"protocol {config.protocol!r} takes {entry.options.__name__},"
                                  f" not {type(options).__name__}")
    core = MeterCore(config.info or default_info(config.protocol), config.records,
                     clock=config.clock, faults=config.faults,
                     capacity=config.capacity or entry.capacity, now=config.now)
    return entry.build(core, options)


class RunningEmulator:
    """An emulator serving on its port. ``url`` is what a client opens."""

    def __init__(self, emulator: SerialMeterEmulator, port: SerialPort) -> None:
        self.emulator = emulator
        self.port = port

    @property
    def url(self) -> str:
        """The pty path (or ``link_path``) or ``socket://host:port``."""
        return self.port.url

    @property
    def protocol(self) -> str:
        return self.emulator.PROTOCOL

    @property
    def core(self) -> MeterCore:
        return self.emulator.core

    @property
    def write_log(self) -> list[MeterWrite]:
        """Commands that changed the meter (set time, erase), in order."""
        return self.emulator.write_log

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions a session raised (an empty list when all went as designed)."""
        return self.port.errors

    def add_record(self, reading: BloodGlucoseReading) -> StoredReading:
        """Store a live reading (call from the event loop's thread)."""
        return self.emulator.add_record(reading)

    async def close(self) -> None:
        await self.port.close()

    async def __aenter__(self) -> RunningEmulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_serial_emulator(config: SerialEmulatorConfig) -> RunningEmulator:
    """Start the emulator ``config`` describes; the returned object's ``url`` is what a client
    opens (a pty path or ``socket://127.0.0.1:PORT``)."""
    emulator = build_emulator(config)
    port: SerialPort
    if config.port == "pty":
        port = PtyPort(link_path=config.link_path, settle_s=config.settle_s)
    elif config.port == "tcp":
        port = TcpPort(config.host, config.tcp_port, settle_s=config.settle_s)
    else:
        raise SerialEmulatorError(f"port kind {config.port!r} is neither 'pty' nor 'tcp'")
    await port.start(emulator.serve)
    return RunningEmulator(emulator, port)
