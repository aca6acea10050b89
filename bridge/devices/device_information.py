"""What every BLE medical device shares: identity (DIS), clock (CTS), battery (BAS), and the
connection life cycle of the profile clients.

* :func:`read_device_info` builds the canonical :class:`~bridge.records.DeviceInfo` from the
  Device Information Service (DIS 1.1): ``device_id`` is the System ID as 16 hex digits
  when the device has one (an EUI-64, stable across bonds and firmware updates), else the
  serial number, else the Bluetooth address.
* :func:`read_clock` reads CTS Current Time (and Local Time Information when present) into a
  :class:`~bridge.devices.base.ClockObservation`; the gateway time is the middle of the read.
* :class:`BleDriver` is the base of the glucose, CGM and insulin pump clients: options,
  connecting with retries and backoff, bonding, discovery, subscriptions, the per-device
  timeouts, and :class:`TransferInterrupted` for a link lost in the middle of a transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

from bridge.devices.base import (
    ClockObservation,
    ClockSource,
    DeviceDisconnected,
    DeviceDriver,
    DeviceError,
    DeviceTimeout,
    SyncResult,
)
from bridge.devices.gatt import (
    AttError,
    Backoff,
    ForbiddenWrite,
    GattCentral,
    GattCharacteristic,
    Inbox,
    UuidLike,
    uuid_name,
)
from bridge.errors import ProtocolError
from bridge.protocols.bas import BATTERY_LEVEL_UUID, BATTERY_SERVICE_UUID, BatteryLevel
from bridge.protocols.cts import (
    CURRENT_TIME_SERVICE_UUID,
    CtsCharacteristic,
    CurrentTime,
    LocalTimeInformation,
)
from bridge.protocols.dis import (
    DEVICE_INFORMATION_SERVICE_UUID,
    DisCharacteristic,
    DisString,
    SystemId,
)
from bridge.records import DeviceInfo, DeviceKind

logger = logging.getLogger(__name__)

V = TypeVar("V")


def lookup(mapping: Mapping[Any, V], key: object) -> V | None:
    """``mapping[key]`` or ``None``: decoded codes are enum members or, for values the
    specification reserves, plain ints that map to nothing."""
    try:
        return mapping.get(key)
    except TypeError:  # an unhashable key maps to nothing
        return None


# --- options -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BleOptions:
    """Per-device settings of a BLE driver (the ``options`` of the agent configuration).

    * ``timeout_s``: bound of each GATT operation (read, write, subscribe, a control-point
      answer); ``connect_timeout_s``: link set-up, pairing and discovery;
      ``procedure_timeout_s``: longest silence during a record transfer before it is
      abandoned (the transfer itself may take longer while records keep coming).
    * ``bond``: pair and bond (Just Works) or use the stored bond after connecting;
      ``passkey``: the device's six-digit passkey for passkey-entry pairing.
    * ``allow_time_write``: the one write the configuration can add to the read-only
      allowlist: CTS Current Time. Therapy control points stay closed whatever is set.
    * ``connect_attempts``, ``backoff_initial_s``, ``backoff_max_s``: connection retries.
    * ``mtu``: ATT_MTU to ask for (bumble; BlueZ negotiates on its own).
    * ``adapter``: BlueZ adapter (``hci0``) for bleak; ``own_address``, ``keystore``: the
      bumble host's address and the JSON file keeping its bonds.
    """

    timeout_s: float = 10.0
    connect_timeout_s: float = 20.0
    procedure_timeout_s: float = 30.0
    bond: bool = True
    passkey: int | None = None
    allow_time_write: bool = False
    connect_attempts: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    mtu: int = 247
    adapter: str | None = None
    own_address: str | None = None
    keystore: str | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_s", "connect_timeout_s", "procedure_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"option {name} must be positive")
        if self.passkey is not None and not 0 <= self.passkey <= 999_999:
            raise ValueError("option passkey must be six decimal digits (0…999999)")
        if self.connect_attempts < 1:
            raise ValueError("option connect_attempts must be at least 1")
        if not 23 <= self.mtu <= 517:
            raise ValueError("option mtu must lie in 23…517 (Core Vol 3 Part F §3.2.8)")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> BleOptions:
        """Options from configuration; unknown names and wrong types are refused (a typo in
        a safety setting must not pass silently)."""
        if not options:
            return cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(f"unknown BLE option(s) {unknown}; known: {sorted(fields)}")
        values: dict[str, Any] = {}
        for name, given in options.items():
            value = given
            kind = str(fields[name].type)
            if "bool" in kind:
                ok = isinstance(value, bool)
            elif "float" in kind:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                value = float(value) if ok else value
            elif "int" in kind:
                ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                    value is None and "None" in kind)
            else:
                ok = isinstance(value, str) or (value is None and "None" in kind)
            if not ok:
                raise ValueError(f"BLE option {name}={value!r} has the wrong type ({kind})")
            values[name] = value
        return cls(**values)

    @property
    def backoff(self) -> Backoff:
        return Backoff(initial_s=self.backoff_initial_s, max_s=self.backoff_max_s,
                       attempts=self.connect_attempts)


# --- reading the common services --------------------------------------------------------------

_DIS_FIELDS: Final = (
    ("manufacturer", DisCharacteristic.MANUFACTURER_NAME_STRING),
    ("model", DisCharacteristic.MODEL_NUMBER_STRING),
    ("serial_number", DisCharacteristic.SERIAL_NUMBER_STRING),
    ("hardware_revision", DisCharacteristic.HARDWARE_REVISION_STRING),
    ("firmware_revision", DisCharacteristic.FIRMWARE_REVISION_STRING),
    ("software_revision", DisCharacteristic.SOFTWARE_REVISION_STRING),
)


async def _read_optional(central: GattCentral, characteristic: UuidLike,
                         service: UuidLike) -> bytes | None:
    """A characteristic's value, or ``None`` when the device lacks it or refuses the read
    (an ATT error is an answer, not a broken link)."""
    found = central.find(characteristic, service)
    if found is None or "read" not in found.properties:
        return None
    try:
        return await central.read(found)
    except AttError as exc:
        logger.info("%s: reading %s refused: %s", central.address, uuid_name(characteristic),
                    exc)
        return None


async def read_device_info(central: GattCentral, kind: DeviceKind) -> DeviceInfo:
    """The device's identity from DIS 1.1 (§3.1–§3.7); fields it does not offer stay
    ``None``, values that do not decode are logged and left out."""
    service = DEVICE_INFORMATION_SERVICE_UUID
    strings: dict[str, str | None] = {}
    for name, uuid in _DIS_FIELDS:
        raw = await _read_optional(central, uuid, service)
        value: str | None = None
        if raw is not None:
            try:
                value = DisString.from_bytes(raw).value.strip("\x00 ") or None
            except ProtocolError as exc:
                logger.warning("%s: DIS %s unreadable: %s", central.address, name, exc)
        strings[name] = value
    system_id: str | None = None
    raw_id = await _read_optional(central, DisCharacteristic.SYSTEM_ID, service)
    if raw_id is not None:
        try:
            system_id = f"{SystemId.from_bytes(raw_id).value:016X}"
        except ProtocolError as exc:
            logger.warning("%s: DIS System ID unreadable: %s", central.address, exc)
    # The System ID is the one identity a device keeps across bonds and firmware updates;
    # an all-zero value is a placeholder, not an identity.
    if system_id is not None and int(system_id, 16) == 0:
        system_id = None
    device_id = system_id or strings["serial_number"] or central.address
    return DeviceInfo(device_id=device_id, kind=kind, system_id=system_id, transport="ble",
                      address=central.address, **strings)


async def read_clock(central: GattCentral) -> ClockObservation | None:
    """The device clock from CTS Current Time (CTS 1.1 §3.1) with its UTC offset from Local
    Time Information (§3.2) when offered; ``None`` without CTS or with an unknown time."""
    current = central.find(CtsCharacteristic.CURRENT_TIME, CURRENT_TIME_SERVICE_UUID)
    if current is None or "read" not in current.properties:
        return None
    before = dt.datetime.now(dt.UTC)
    try:
        raw = await central.read(current)
    except AttError as exc:
        logger.info("%s: Current Time read refused: %s", central.address, exc)
        return None
    after = dt.datetime.now(dt.UTC)
    try:
        device_time = CurrentTime.from_bytes(raw).to_datetime()
    except ProtocolError as exc:
        logger.warning("%s: Current Time unusable: %s", central.address, exc)
        return None
    offset: dt.timedelta | None = None
    lti = await _read_optional(central, CtsCharacteristic.LOCAL_TIME_INFORMATION,
                               CURRENT_TIME_SERVICE_UUID)
    if lti is not None:
        try:
            offset = LocalTimeInformation.from_bytes(lti).utc_offset
        except ProtocolError as exc:
            logger.warning("%s: Local Time Information unusable: %s", central.address, exc)
    return ClockObservation(device_time=device_time, gateway_time=before + (after - before) / 2,
                            source=ClockSource.CURRENT_TIME, utc_offset=offset)


async def read_battery(central: GattCentral) -> int | None:
    """Battery Level in percent (BAS 1.0 §3.1), or ``None``."""
    raw = await _read_optional(central, BATTERY_LEVEL_UUID, BATTERY_SERVICE_UUID)
    if raw is None:
        return None
    try:
        return BatteryLevel.from_bytes(raw).percent
    except ProtocolError as exc:
        logger.warning("%s: Battery Level unusable: %s", central.address, exc)
        return None


def provisional_utc(device_time: dt.datetime, utc_offset: dt.timedelta | None) -> dt.datetime:
    """A first UTC instant for a device timestamp: its own UTC offset applied when the device
    states one, else taken as UTC. The agent's clock correction replaces it."""
    return (device_time - (utc_offset or dt.timedelta(0))).replace(tzinfo=dt.UTC)


# --- the driver base ---------------------------------------------------------------------------

class TransferInterrupted(DeviceDisconnected):
    """The link dropped in the middle of a record transfer.

    ``partial`` holds what arrived completely before; its ``state`` is the state the sync
    started from, so storing the partial records never moves the sync position past records
    that were not read (the next sync reads them again; idempotency keys drop the repeats).
    """

    def __init__(self, message: str, partial: SyncResult, device: str | None = None) -> None:
        self.partial = partial
        super().__init__(message, device)


class BleDriver(DeviceDriver):
    """Base of the BLE profile clients: one device through one :class:`GattCentral`.

    The link is set up on first use and again after a drop: connect (with retries and
    backoff), encrypt with the bond or pair (``options.bond``), discover, check the
    profile's service is there, then the subclass's :meth:`_on_ready` (subscriptions).
    Every await on the device is bounded by the options' timeouts.
    """

    KIND: ClassVar[DeviceKind]
    #: The profile's own service (GLS, CGMS, IDS).
    SERVICE_UUID: ClassVar[int]

    def __init__(self, central: GattCentral, options: BleOptions | None = None) -> None:
        self.central = central
        self.options = options or BleOptions()
        self.inbox = Inbox(central)
        self._info: DeviceInfo | None = None
        self._ready = False
        self._closed = False
        self._connect_lock = asyncio.Lock()
        central.on_disconnect(self._on_link_lost)

    @property
    def address(self) -> str:
        return self.central.address

    def _on_link_lost(self, _reason: str) -> None:
        self._ready = False

    async def connect(self) -> None:
        """Make the device ready to use (no-op when it is); :class:`DeviceError` subclasses
        when every attempt failed."""
        async with self._connect_lock:
            if self._closed:
                raise DeviceError("driver closed", self.address)
            if self._ready and self.central.is_connected:
                return
            delays = self.options.backoff.delays()
            while True:
                try:
                    await self._set_up()
                    self._ready = True
                    return
                except (ForbiddenWrite, _NotThisProfile):
                    await self._drop()
                    raise
                except DeviceError as exc:
                    await self._drop()
                    delay = next(delays, None)
                    if delay is None:
                        raise
                    logger.info("%s: connection attempt failed (%s); retrying in %.1f s",
                                self.address, exc, delay)
                    await asyncio.sleep(delay)

    async def _drop(self) -> None:
        with contextlib.suppress(DeviceError):
            await self.central.disconnect()

    async def _set_up(self) -> None:
        central = self.central
        await central.connect()
        if self.options.bond:
            await central.pair(passkey=self.options.passkey)
        await central.discover()
        if central.find_service(self.SERVICE_UUID) is None:
            raise _NotThisProfile(f"offers no {uuid_name(self.SERVICE_UUID)} service",
                                  self.address)
        await self._on_ready()

    async def _on_ready(self) -> None:
        """Subclasses subscribe to their characteristics here."""

    def _char(self, uuid: UuidLike, service: UuidLike | None = None) -> GattCharacteristic:
        return self.central.require(uuid, self.SERVICE_UUID if service is None else service)

    async def read_info(self) -> DeviceInfo:
        await self.connect()
        if self._info is None:
            self._info = await read_device_info(self.central, self.KIND)
        return self._info

    async def read_clock(self) -> ClockObservation | None:
        await self.connect()
        return await read_clock(self.central)

    async def read_battery(self) -> int | None:
        await self.connect()
        return await read_battery(self.central)

    async def write_current_time(self, when: dt.datetime) -> None:
        """Set the device clock to the wall-clock time ``when`` (CTS 1.1 §3.1). Refused with
        :class:`ForbiddenWrite` unless the device's ``allow_time_write`` is set."""
        await self.connect()
        current = self.central.require(CtsCharacteristic.CURRENT_TIME,
                                       CURRENT_TIME_SERVICE_UUID)
        await self.central.write(current, bytes(CurrentTime.from_datetime(when)))

    async def _subscribe(self, uuid: UuidLike, tag: str, *, indicate: bool,
                         required: bool = True) -> GattCharacteristic | None:
        found = self.central.find(uuid, self.SERVICE_UUID)
        if found is None:
            if required:
                raise DeviceError(f"characteristic {uuid_name(uuid)} not found", self.address)
            return None
        await self.central.subscribe(found, self.inbox.sink(tag), indicate=indicate)
        return found

    async def close(self) -> None:
        self._closed = True
        self._ready = False
        closer = getattr(self.central, "close", None)
        if closer is not None:
            await closer()
        else:
            with contextlib.suppress(DeviceError):
                await self.central.disconnect()

    # --- shared pieces of a sync ----------------------------------------------------------

    async def _await_response(self, tag: str, data_tags: tuple[str, ...], what: str) -> bytes:
        """The next control-point answer on ``tag`` during a transfer whose records arrive on
        ``data_tags``: gives up after ``procedure_timeout_s`` without any value arriving."""
        seen = self.inbox.received(*data_tags)
        while True:
            try:
                return await self.inbox.next(tag, self.options.procedure_timeout_s, what)
            except DeviceTimeout:
                now = self.inbox.received(*data_tags)
                if now == seen:
                    raise
                seen = now


class _NotThisProfile(DeviceError):
    """The device connected but lacks the profile's service (retrying will not help)."""


def state_int(state: Mapping[str, Any], name: str, maximum: int) -> int | None:
    """An integer from a stored sync state, ``None`` when absent or unusable."""
    value = state.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        return None
    return value
