"""Opening BLE devices by configuration: the profile client on the chosen GATT backend.

``profile`` names the Bluetooth profile the device speaks: ``glucose`` (GLS), ``cgm``
(CGMS) or ``insulin-pump`` (IDS). ``backend`` is ``bleak`` (BlueZ through D-Bus, the
production path on a Raspberry Pi) or ``bumble`` (a bumble host on ``transport`` — a spec
string such as ``tcp-client:127.0.0.1:9102`` or ``usb:0`` — or on an in-process ``link``).
``options`` are the per-device settings of :class:`~bridge.devices.device_information.BleOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bumble.link import LocalLink

from bridge.devices import gatt_bumble
from bridge.devices.base import DeviceDriver
from bridge.devices.cgm import CgmDriver
from bridge.devices.device_information import BleDriver, BleOptions, TransferInterrupted
from bridge.devices.gatt import (
    Advertisement,
    ForbiddenWrite,
    GattCentral,
    WritePolicy,
    normalize_uuid,
)
from bridge.devices.glucose import GlucoseMeterDriver
from bridge.devices.insulin_pump import InsulinPumpDriver
from bridge.protocols.cgms import CGM_SERVICE_UUID
from bridge.protocols.gls import GLUCOSE_SERVICE_UUID
from bridge.protocols.ids import INSULIN_DELIVERY_SERVICE_UUID

__all__ = ["BACKENDS", "PROFILES", "BleOptions", "ForbiddenWrite", "ScanResult",
           "TransferInterrupted", "open_ble_driver", "open_central", "scan_ble"]

#: Profile name → (its service UUID, its client class).
PROFILES: Final[Mapping[str, tuple[int, type[BleDriver]]]] = {
    "glucose": (GLUCOSE_SERVICE_UUID, GlucoseMeterDriver),
    "cgm": (CGM_SERVICE_UUID, CgmDriver),
    "insulin-pump": (INSULIN_DELIVERY_SERVICE_UUID, InsulinPumpDriver),
}

BACKENDS: Final = ("bleak", "bumble")


def _check_backend(backend: str, transport: str | None, link: object | None) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown BLE backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "bumble" and transport is None and link is None:
        raise ValueError("the bumble backend needs a transport (e.g. tcp-client:HOST:PORT, "
                         "usb:0) or an in-process link")
    if link is not None and not isinstance(link, LocalLink):
        raise ValueError(f"link must be a bumble LocalLink, not {type(link).__name__}")


async def open_central(address: str, *, backend: str = "bleak", transport: str | None = None,
                       link: object | None = None,
                       options: BleOptions | None = None) -> GattCentral:
    """A (not yet connected) GATT central toward ``address`` with the device's write policy."""
    _check_backend(backend, transport, link)
    opts = options or BleOptions()
    policy = WritePolicy(allow_time_write=opts.allow_time_write)
    if backend == "bumble":
        where: str | LocalLink = link if isinstance(link, LocalLink) else str(transport)
        return await gatt_bumble.BumbleCentral.open(address, where, policy=policy,
                                        timeout_s=opts.timeout_s,
                                        connect_timeout_s=opts.connect_timeout_s,
                                        mtu=opts.mtu, own_address=opts.own_address,
                                        keystore=opts.keystore)
    from bridge.devices.gatt_bleak import BleakCentral  # noqa: PLC0415 -- bleak is optional
    return BleakCentral(address, adapter=opts.adapter, policy=policy, timeout_s=opts.timeout_s,
                        connect_timeout_s=opts.connect_timeout_s)


async def open_ble_driver(profile: str, address: str, *, backend: str = "bleak",
                          transport: str | None = None, link: object | None = None,
                          options: Mapping[str, Any] | None = None) -> DeviceDriver:
    """The profile client for one device. The link is set up on first use (and again after
    a drop), so opening never waits for the device. Close it with ``await driver.close()``.
    """
    entry = PROFILES.get(profile)
    if entry is None:
        raise ValueError(f"unknown BLE profile {profile!r}; choose one of {sorted(PROFILES)}")
    opts = BleOptions.from_mapping(options)
    central = await open_central(address, backend=backend, transport=transport, link=link,
                                 options=opts)
    return entry[1](central, opts)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """A device seen advertising one of the supported profiles' services."""

    address: str
    name: str | None
    rssi: int | None
    profiles: tuple[str, ...]
    appearance: int | None = None


def profiles_of(advertisement: Advertisement) -> tuple[str, ...]:
    return tuple(name for name, (uuid, _) in PROFILES.items() if advertisement.offers(uuid))


async def scan_ble(*, backend: str = "bleak", transport: str | None = None,
                   link: object | None = None, timeout_s: float = 5.0,
                   profiles: Sequence[str] | None = None,
                   adapter: str | None = None) -> list[ScanResult]:
    """Devices nearby that advertise GLS, CGMS or IDS (or only ``profiles``), strongest
    signal first. Devices that do not list their service in the advertisement are missed:
    scanning looks at advertising data only, it connects to nothing."""
    _check_backend(backend, transport, link)
    wanted = tuple(profiles) if profiles is not None else tuple(PROFILES)
    unknown = sorted(set(wanted) - set(PROFILES))
    if unknown:
        raise ValueError(f"unknown BLE profile(s) {unknown}")
    if backend == "bumble":
        where: str | LocalLink = link if isinstance(link, LocalLink) else str(transport)
        seen = await gatt_bumble.scan(where, timeout_s)
    else:
        from bridge.devices import gatt_bleak  # noqa: PLC0415 -- bleak is optional
        seen = await gatt_bleak.scan(timeout_s, service_uuids=[
            normalize_uuid(PROFILES[p][0]) for p in wanted], adapter=adapter)
    results = []
    for adv in seen:
        matched = tuple(p for p in profiles_of(adv) if p in wanted)
        if matched:
            results.append(ScanResult(adv.address, adv.name, adv.rssi, matched, adv.appearance))
    results.sort(key=lambda r: (-(r.rssi if r.rssi is not None else -999), r.address))
    return results
