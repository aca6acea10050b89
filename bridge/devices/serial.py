"""Serial meter drivers by protocol name, and the USB-serial adapters a gateway can see.

:func:`open_serial_driver` is what the edge agent calls for each configured serial device::

    driver = open_serial_driver("onetouch-ultra2", "/dev/ttyUSB0",
                                options={"timeout_s": 2.0, "allow_time_write": False})

The port opens on the driver's first operation. ``url`` is anything pyserial's
``serial_for_url`` opens: a device path, ``socket://host:port``, a pty.

:func:`list_serial_adapters` lists the serial ports present and recognises the cables meters
ship with by their USB vendor:product id (``hddt-bridge scan`` shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from serial.tools import list_ports

from bridge.devices.base import DeviceDriver, DeviceError
from bridge.devices.contour_astm import ContourAstmDriver, ContourDriverOptions
from bridge.devices.onetouch_ultra2 import OneTouchUltra2Driver, Ultra2DriverOptions
from bridge.devices.onetouch_ultra_easy import OneTouchUltraEasyDriver, UltraEasyDriverOptions
from bridge.devices.serial_phd import PhdDriverOptions, PhdManagerDriver


def _phd(url: str, options: Mapping[str, Any] | None) -> DeviceDriver:
    return PhdManagerDriver(url, PhdDriverOptions.from_mapping(options, url))


#: Protocol names of the agent configuration and what each opens. ``phd`` is another name for
#: ``ieee11073`` (the name the serial emulators use).
SERIAL_PROTOCOLS: Mapping[str, Callable[[str, Mapping[str, Any] | None], DeviceDriver]] = {
    "ieee11073": _phd,
    "phd": _phd,
    "onetouch-ultra2": lambda url, o: OneTouchUltra2Driver(
        url, Ultra2DriverOptions.from_mapping(o, url)),
    "onetouch-ultra-easy": lambda url, o: OneTouchUltraEasyDriver(
        url, UltraEasyDriverOptions.from_mapping(o, url)),
    "contour-astm": lambda url, o: ContourAstmDriver(
        url, ContourDriverOptions.from_mapping(o, url)),
}


def open_serial_driver(protocol: str, url: str, *,
                       options: Mapping[str, Any] | None = None) -> DeviceDriver:
    """The driver for ``protocol`` on ``url``; ``options`` are the driver's option fields
    (unknown names or wrong types raise :class:`~bridge.devices.base.DeviceError`)."""
    factory = SERIAL_PROTOCOLS.get(protocol)
    if factory is None:
        raise DeviceError(f"unknown serial protocol {protocol!r}; known: "
                          f"{', '.join(SERIAL_PROTOCOLS)}", url)
    return factory(url, options)


# --- adapters --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KnownCable:
    """A USB-serial adapter meters are known to ship with."""

    vid: int
    pid: int | None  # None: any product of this vendor
    name: str
    protocols: tuple[str, ...]


#: Cables recognised by USB vendor:product id. A recognised id narrows the protocol down; it
#: never proves which meter is attached (a PL2303 cable also serves non-LifeScan meters).
KNOWN_CABLES: tuple[KnownCable, ...] = (
    KnownCable(0x067B, 0x2303, "Prolific PL2303 (LifeScan OneTouch cable)",
               ("onetouch-ultra2", "onetouch-ultra-easy")),
    KnownCable(0x1A79, None, "Bayer / Ascensia Diabetes Care (Contour)", ("contour-astm",)),
    KnownCable(0x0403, 0x6001, "FTDI FT232R USB-serial", ()),
    KnownCable(0x0403, 0x6015, "FTDI FT-X USB-serial", ()),
    KnownCable(0x0403, None, "FTDI USB-serial", ()),
)


@dataclass(frozen=True, slots=True)
class SerialAdapter:
    """A serial port found on this machine; ``cable`` names it when its USB id is known,
    ``protocols`` lists the driver protocols worth trying on it (all when unknown)."""

    device: str
    description: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    manufacturer: str | None
    cable: str | None
    protocols: tuple[str, ...]

    @property
    def usb_id(self) -> str | None:
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"


def identify_cable(vid: int | None, pid: int | None) -> KnownCable | None:
    """The first entry of :data:`KNOWN_CABLES` matching a USB id (exact product first)."""
    if vid is None:
        return None
    for cable in KNOWN_CABLES:
        if cable.vid == vid and (cable.pid is None or cable.pid == pid):
            return cable
    return None


def list_serial_adapters() -> list[SerialAdapter]:
    """The serial ports pyserial finds, known meter cables first, then by device name."""
    adapters: list[SerialAdapter] = []
    for port in list_ports.comports():
        vid = getattr(port, "vid", None)
        pid = getattr(port, "pid", None)
        cable = identify_cable(vid, pid)
        protocols = cable.protocols if cable is not None and cable.protocols \
            else tuple(SERIAL_PROTOCOLS)
        adapters.append(SerialAdapter(
            device=str(port.device), description=str(port.description or ""),
            vid=vid, pid=pid, serial_number=getattr(port, "serial_number", None),
            manufacturer=getattr(port, "manufacturer", None),
            cable=cable.name if cable is not None else None, protocols=protocols))
    adapters.sort(key=lambda a: (a.cable is None, a.device))
    return adapters
