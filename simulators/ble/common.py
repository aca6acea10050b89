"""What every virtual BLE peripheral shares: the HCI link, security, DIS, BAS, CTS, advertising.

A peripheral is a bumble :class:`~bumble.device.Device` on either

* an in-process :class:`~bumble.link.LocalLink` (tests: several devices, each with its own
  virtual controller and distinct address, on one link), or
* any bumble HCI transport given as a spec string: ``tcp-client:127.0.0.1:PORT`` toward
  ``python -m bumble.apps.controllers`` (other processes, other languages), ``usb:0`` for a
  real Bluetooth dongle, ``serial:/dev/ttyACM0`` for an HCI UART controller.

:class:`VirtualPeripheral` is the base of the glucose meter, CGM and insulin pump: it builds
the Device Information Service from a :class:`~bridge.records.DeviceInfo`, the Battery
Service and the Current Time Service, advertises the device's service UUIDs, appearance and
name, and enforces security (bonding and an encrypted link before the medical data can be
read). Subclasses add their own service via :meth:`VirtualPeripheral.build_services`.

All values are encoded with the project's codecs (:mod:`bridge.protocols`), never by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import weakref
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from bumble import hci
from bumble.att import (
    ATT_READ_NOT_PERMITTED_ERROR,
    ATT_WRITE_NOT_PERMITTED_ERROR,
    ATT_Error,
    Attribute,
    AttributeValue,
)
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device, DeviceConfiguration
from bumble.gatt import (
    GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
    Characteristic,
    Descriptor,
    Service,
)
from bumble.host import Host
from bumble.keys import MemoryKeyStore
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.profiles.gap import GenericAccessService
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, Transport

from bridge.errors import ProtocolError
from bridge.protocols.bas import BATTERY_LEVEL_UUID, BATTERY_SERVICE_UUID, BatteryLevel
from bridge.protocols.cts import (
    CURRENT_TIME_SERVICE_UUID,
    AdjustReason,
    CtsCharacteristic,
    CurrentTime,
    LocalTimeInformation,
)
from bridge.protocols.date_time import DateTime
from bridge.protocols.dis import (
    DEVICE_INFORMATION_SERVICE_UUID,
    DisCharacteristic,
    DisString,
    PnpId,
    SystemId,
    VendorIdSource,
)
from bridge.protocols.racp import (
    RACP_UUID,
    FilterValue,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpOperator,
    RacpRequest,
    RacpResponse,
    RacpResponseCode,
    RacpService,
    check_request,
)
from bridge.records import DeviceInfo
from simulators.device_clock import DeviceClock
from simulators.faults import FaultConfig, FaultInjector

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: Where a peripheral's HCI goes: a bumble transport spec string or an in-process link.
HciTransport = str | LocalLink

#: Seconds to wait for an indication's confirmation (ATT transaction timeout, Core Vol 3
#: Part F §3.3.3: 30 s).
INDICATION_TIMEOUT_S = 30.0


class Appearance(IntEnum):
    """GAP Appearance values (Assigned Numbers §2.6: category << 6 | subcategory)."""

    GENERIC_GLUCOSE_METER = 0x0400          # category 0x010 Glucose Meter
    CONTINUOUS_GLUCOSE_MONITOR = 0x0D00     # category 0x034
    INSULIN_PUMP = 0x0D40                   # category 0x035, generic
    INSULIN_PUMP_DURABLE = 0x0D41
    INSULIN_PUMP_PATCH = 0x0D42
    INSULIN_PEN = 0x0D43


class PairingMode(StrEnum):
    """How a peripheral pairs (Core Vol 3 Part H §2.3.5.1, chosen from IO capabilities)."""

    JUST_WORKS = "just-works"   # no input, no output: unauthenticated but encrypted
    PASSKEY = "passkey"         # the device "displays" a fixed passkey the central types in


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Security of a peripheral.

    ``bonding_required``: the device's own service (GLS, CGMS, IDS) can only be used on an
    encrypted link, as the GLP/CGMP/IDP profiles require of a bonded collector; reads and
    writes on an unencrypted link get ATT "Insufficient Encryption" (0x0F), which makes a
    central pair. DIS, BAS and CTS stay readable without pairing, so a collector can
    identify the device first.
    ``passkey`` is the fixed six-digit passkey of :attr:`PairingMode.PASSKEY` (tests type it).
    """

    bonding_required: bool = True
    mode: PairingMode = PairingMode.JUST_WORKS
    passkey: int = 123456
    secure_connections: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.passkey <= 999_999:
            raise ValueError(f"passkey {self.passkey} is not six decimal digits")


class FixedPasskeyDelegate(PairingDelegate):
    """Pairing delegate that accepts every request and shows a fixed passkey.

    Also usable by a central in tests: ``FixedPasskeyDelegate(passkey, central=True)`` types
    the passkey in instead.
    """

    def __init__(self, mode: PairingMode, passkey: int, *, central: bool = False) -> None:
        if mode is PairingMode.PASSKEY:
            io = (PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY if central
                  else PairingDelegate.IoCapability.DISPLAY_OUTPUT_ONLY)
        else:
            io = PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT
        super().__init__(io_capability=io)
        self.passkey = passkey
        self.displayed: list[int] = []

    async def generate_passkey(self) -> int:
        return self.passkey

    async def get_number(self) -> int | None:
        return self.passkey

    async def display_number(self, number: int, digits: int) -> None:
        self.displayed.append(number)


def pairing_config(security: SecurityConfig, *, central: bool = False) -> PairingConfig:
    """The bumble pairing configuration for ``security`` (bonding always requested)."""
    delegate = FixedPasskeyDelegate(security.mode, security.passkey, central=central)
    return PairingConfig(sc=security.secure_connections,
                         mitm=security.mode is PairingMode.PASSKEY, bonding=True,
                         delegate=delegate)


# --- opening a device on a link or a transport ------------------------------------------

_TRANSPORTS: weakref.WeakKeyDictionary[Device, Transport] = weakref.WeakKeyDictionary()
_CONTROLLERS: weakref.WeakKeyDictionary[Device, Controller] = weakref.WeakKeyDictionary()


async def open_device(name: str, address: str, transport: HciTransport, *,
                      config: DeviceConfiguration | None = None) -> Device:
    """A bumble Device (not yet powered on) on ``transport``.

    ``address`` is the LE random static address (``"F0:00:00:00:00:01"``: the two top bits
    set, Core Vol 6 Part B §1.3.2.1). On a :class:`LocalLink` each device gets its own virtual
    controller, so any number of devices (distinct addresses) share one link. Close with
    :func:`close_device`.
    """
    cfg = config or DeviceConfiguration()
    cfg.name = name
    cfg.address = hci.Address(address)
    if isinstance(transport, LocalLink):
        controller = Controller(f"{name}-controller", link=transport,
                                public_address=hci.Address(address))
        host = Host(controller, AsyncPipeSink(controller))
        device = Device(config=cfg, host=host)
        _CONTROLLERS[device] = controller
    else:
        hci_transport = await open_transport(transport)
        device = Device.from_config_with_hci(cfg, hci_transport.source, hci_transport.sink)
        _TRANSPORTS[device] = hci_transport
    device.keystore = MemoryKeyStore()
    return device


async def open_peripheral_device(name: str, address: str, transport: HciTransport) -> Device:
    """A Device for a peripheral; the GAP service is left to :class:`VirtualPeripheral`
    (which adds it with the right appearance)."""
    config = DeviceConfiguration()
    config.gap_service_enabled = False
    return await open_device(name, address, transport, config=config)


async def close_device(device: Device) -> None:
    """Disconnect, power off and release the link or transport of ``device``."""
    for connection in list(device.connections.values()):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.disconnect(), 2.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(device.power_off(), 2.0)
    controller = _CONTROLLERS.pop(device, None)
    if controller is not None and controller in controller.link.controllers:
        controller.link.remove_controller(controller)
    transport = _TRANSPORTS.pop(device, None)
    if transport is not None:
        await transport.close()


# --- attribute helpers ---------------------------------------------------------------------

def uuid16(value: int) -> UUID:
    return UUID.from_16_bits(value)


def read_permissions(encrypted: bool) -> Attribute.Permissions:
    perms = Attribute.Permissions.READABLE
    if encrypted:
        perms |= Attribute.Permissions.READ_REQUIRES_ENCRYPTION
    return perms


def write_permissions(encrypted: bool) -> Attribute.Permissions:
    perms = Attribute.Permissions.WRITEABLE
    if encrypted:
        perms |= Attribute.Permissions.WRITE_REQUIRES_ENCRYPTION
    return perms


Reader = Callable[[Connection], bytes]
Writer = Callable[[Connection, bytes], None]


def _read_not_permitted(_connection: Connection) -> bytes:
    # Core Vol 3 Part F §3.4.4: reading a value without the read property is refused.
    raise ATT_Error(ATT_READ_NOT_PERMITTED_ERROR)


def _write_not_permitted(_connection: Connection, _value: bytes) -> None:
    raise ATT_Error(ATT_WRITE_NOT_PERMITTED_ERROR)


@dataclass(frozen=True, slots=True)
class ControlPointWrite:
    """One value a central wrote to a control point (or to another writable characteristic).

    ``accepted`` is whether the device carried it out (a delete or a SOCP "set" is accepted
    like on a real device; a Current Time write is refused unless enabled).
    """

    characteristic: str
    value: bytes
    accepted: bool
    time: dt.datetime


@dataclass(frozen=True, slots=True)
class PeripheralConfig:
    """Identity and behaviour shared by every virtual peripheral.

    ``now`` gives the TRUE time (aware UTC): a feeder running in accelerated time passes its
    own clock. ``clock`` is the device model's clock (offset, drift, time zone; ``None``: a
    clock exact in ``timezone``). ``allow_time_write``: accept Current Time writes (real
    meters differ; the bridge never writes, so the default refuses and logs them).
    """

    name: str
    address: str
    info: DeviceInfo
    security: SecurityConfig = SecurityConfig()
    faults: FaultConfig = dataclasses.field(default_factory=FaultConfig)
    clock: DeviceClock | None = None
    now: Callable[[], dt.datetime] = dataclasses.field(default=lambda: dt.datetime.now(dt.UTC))
    battery_percent: int = 100
    allow_time_write: bool = False
    pnp_id: PnpId | None = None
    advertising_interval_ms: float = 100.0


def default_pnp_id() -> PnpId:
    # Company ID 0xFFFF is the Bluetooth SIG value reserved for tests and development
    # (Assigned Numbers, Company Identifiers): a simulator must not claim a real vendor.
    return PnpId(VendorIdSource.BLUETOOTH_SIG, 0xFFFF, 0x0001, 0x0100)


def system_id_from_info(info: DeviceInfo) -> SystemId | None:
    """The DIS System ID (DIS 1.1 §3.7) from ``DeviceInfo.system_id`` (16 hex digits)."""
    if not info.system_id:
        return None
    try:
        value = int(info.system_id, 16)
    except ValueError:
        return None
    if not 0 <= value < 1 << 64:
        return None
    return SystemId(value & ((1 << 40) - 1), value >> 40)


def build_device_information_service(info: DeviceInfo,
                                     pnp_id: PnpId | None = None) -> Service:
    """The Device Information Service (DIS 1.1) from ``info``; absent fields are left out."""
    characteristics: list[Characteristic[Any]] = []

    def add(uuid: DisCharacteristic, value: bytes) -> None:
        characteristics.append(Characteristic(uuid16(uuid), Characteristic.Properties.READ,
                                              read_permissions(False), value))

    strings = (
        (DisCharacteristic.MANUFACTURER_NAME_STRING, info.manufacturer),
        (DisCharacteristic.MODEL_NUMBER_STRING, info.model),
        (DisCharacteristic.SERIAL_NUMBER_STRING, info.serial_number),
        (DisCharacteristic.HARDWARE_REVISION_STRING, info.hardware_revision),
        (DisCharacteristic.FIRMWARE_REVISION_STRING, info.firmware_revision),
        (DisCharacteristic.SOFTWARE_REVISION_STRING, info.software_revision),
    )
    for uuid, text in strings:
        if text is not None:
            add(uuid, bytes(DisString(text)))
    system_id = system_id_from_info(info)
    if system_id is not None:
        add(DisCharacteristic.SYSTEM_ID, bytes(system_id))
    add(DisCharacteristic.PNP_ID, bytes(pnp_id or default_pnp_id()))
    return Service(uuid16(DEVICE_INFORMATION_SERVICE_UUID), characteristics)


# --- indications ---------------------------------------------------------------------------

class Indications:
    """Sends indications on one characteristic, one at a time, each confirmed before the next.

    ATT allows one outstanding indication per bearer (Core Vol 3 Part F §3.4.7.2); bumble
    already waits for the confirmation, this helper adds the per-characteristic ordering,
    the subscription check and a clean ``False`` when the link is gone.
    """

    def __init__(self, peripheral: VirtualPeripheral, characteristic: Characteristic[Any],
                 timeout_s: float = INDICATION_TIMEOUT_S) -> None:
        self.peripheral = peripheral
        self.characteristic = characteristic
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def send(self, connection: Connection, value: bytes) -> bool:
        """Indicate ``value``; ``True`` once confirmed, ``False`` if not subscribed or lost."""
        async with self._lock:
            if not self.peripheral.is_subscribed(connection, self.characteristic,
                                                 indicate=True):
                return False
            try:
                await asyncio.wait_for(
                    self.peripheral.require_device().indicate_subscriber(
                        connection, self.characteristic, value),
                    self.timeout_s)
            except (TimeoutError, ConnectionError, hci.HCI_Error) as exc:
                logger.info("indication not confirmed: %s", exc)
                return False
            return True


# --- the base peripheral ---------------------------------------------------------------

class VirtualPeripheral:
    """Base of the virtual BLE devices.

    Lifecycle: ``await start()`` opens the HCI, builds the GATT database, powers on and
    advertises (again after every disconnection); ``await stop()`` tears all down. Subclasses
    implement :meth:`build_services` (their own service(s), created with :meth:`cccd` for
    secured subscriptions) and may override :meth:`on_connection` / :meth:`on_disconnection`.
    """

    APPEARANCE: ClassVar[int] = 0
    #: 16-bit UUIDs of the services advertised (the device's own service first).
    ADVERTISED_SERVICES: ClassVar[tuple[int, ...]] = ()

    def __init__(self, config: PeripheralConfig, transport: HciTransport) -> None:
        self.config = config
        self.transport = transport
        self.faults = FaultInjector(config.faults)
        self.device: Device | None = None
        self.connections: list[Connection] = []
        self.control_point_log: list[ControlPointWrite] = []
        self._battery_percent = config.battery_percent
        self._time_adjust = dt.timedelta(0)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.battery_characteristic: Characteristic[bytes] | None = None
        self.current_time_characteristic: Characteristic[bytes] | None = None

    # --- to implement -------------------------------------------------------------------

    def build_services(self) -> Sequence[Service]:
        """The device's own GATT services (called once by :meth:`start`)."""
        raise NotImplementedError

    def on_connection(self, connection: Connection) -> None:
        """Called when a central connects."""

    def on_disconnection(self, connection: Connection) -> None:
        """Called when a central disconnects (procedures in progress must stop)."""

    # --- lifecycle ----------------------------------------------------------------------

    def require_device(self) -> Device:
        if self.device is None:
            raise RuntimeError("peripheral not started")
        return self.device

    @property
    def address(self) -> hci.Address:
        return hci.Address(self.config.address)

    async def start(self) -> None:
        if self.device is not None:
            return
        cfg = self.config
        device = await open_peripheral_device(cfg.name, cfg.address, self.transport)
        self.device = device
        security = cfg.security
        device.pairing_config_factory = lambda _connection: pairing_config(security)
        device.add_service(GenericAccessService(cfg.name, self.APPEARANCE))
        device.add_service(build_device_information_service(cfg.info, cfg.pnp_id))
        device.add_service(self._build_battery_service())
        device.add_service(self._build_current_time_service())
        for service in self.build_services():
            device.add_service(service)
        device.on(device.EVENT_CONNECTION, self._on_connection)
        await device.power_on()
        await self.advertise()

    def advertising_data(self) -> tuple[bytes, bytes]:
        """Advertising and scan-response data: flags, service UUIDs, appearance, name
        (Core Supplement Part A §1.1, §1.2, §1.3, §1.12); the name moves to the scan response
        when it does not fit the 31-octet advertising PDU."""
        flags = (AdvertisingData.LE_GENERAL_DISCOVERABLE_MODE_FLAG
                 | AdvertisingData.BR_EDR_NOT_SUPPORTED_FLAG)
        uuids = b"".join(int(u).to_bytes(2, "little") for u in self.ADVERTISED_SERVICES)
        fields: list[tuple[int, bytes]] = [
            (AdvertisingData.FLAGS, bytes([flags])),
            (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, uuids),
            (AdvertisingData.APPEARANCE, self.APPEARANCE.to_bytes(2, "little")),
        ]
        name_field = (AdvertisingData.COMPLETE_LOCAL_NAME, self.config.name.encode("utf-8"))
        adv = bytes(AdvertisingData(fields))
        with_name = bytes(AdvertisingData([*fields, name_field]))
        if len(with_name) <= 31:
            return with_name, b""
        return adv, bytes(AdvertisingData([name_field]))

    async def advertise(self) -> None:
        device = self.require_device()
        adv, scan_response = self.advertising_data()
        await device.start_advertising(
            auto_restart=True, advertising_data=adv, scan_response_data=scan_response,
            advertising_interval_min=self.config.advertising_interval_ms,
            advertising_interval_max=self.config.advertising_interval_ms)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        device = self.device
        if device is None:
            return
        with contextlib.suppress(Exception):
            await device.stop_advertising()
        await close_device(device)
        self.device = None
        self.connections.clear()

    async def __aenter__(self) -> VirtualPeripheral:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task owned by the peripheral (cancelled by :meth:`stop`)."""
        async def run() -> Any:
            return await coro
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("peripheral task failed", exc_info=task.exception())

    def _on_connection(self, connection: Connection) -> None:
        self.connections.append(connection)

        def gone(*_args: object) -> None:
            if connection in self.connections:
                self.connections.remove(connection)
            self.on_disconnection(connection)

        connection.on(connection.EVENT_DISCONNECTION, gone)
        self.on_connection(connection)

    # --- GATT helpers -------------------------------------------------------------------

    @property
    def secured(self) -> bool:
        return self.config.security.bonding_required

    def cccd(self, characteristic: Characteristic[Any]) -> Descriptor:
        """A CCCD whose writes need an encrypted link when bonding is required (GLP/CGMP:
        only a bonded collector may configure indications and notifications)."""
        server = self.require_device().gatt_server
        perms = read_permissions(False) | write_permissions(self.secured)
        return Descriptor(GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR, perms,
                          server.make_descriptor_value(characteristic))

    def characteristic(self, uuid: int, properties: Characteristic.Properties, *,
                       read: Reader | None = None, write: Writer | None = None,
                       secured: bool | None = None) -> Characteristic[bytes]:
        """A characteristic of the device's own service, secured unless told otherwise,
        with a secured CCCD when it notifies or indicates."""
        enc = self.secured if secured is None else secured
        perms = Attribute.Permissions(0)
        if read is not None:
            perms |= read_permissions(enc)
        if write is not None:
            perms |= write_permissions(enc)
        value: AttributeValue[bytes] = AttributeValue(read=read or _read_not_permitted,
                                                      write=write or _write_not_permitted)
        char: Characteristic[bytes] = Characteristic(uuid16(uuid), properties, perms, value)
        if properties & (Characteristic.Properties.NOTIFY | Characteristic.Properties.INDICATE):
            char.descriptors = [self.cccd(char)]
        return char

    def is_subscribed(self, connection: Connection, characteristic: Characteristic[Any], *,
                      indicate: bool = False) -> bool:
        """Whether the central enabled notifications (or indications) in the CCCD."""
        if self.device is None:
            return False
        cccds = self.device.gatt_server.subscribers.get(connection)
        value = cccds.get(characteristic.handle) if cccds else None
        if not value or len(value) != 2:
            return False
        return bool(value[0] & (0x02 if indicate else 0x01))

    async def notify(self, connection: Connection, characteristic: Characteristic[Any],
                     value: bytes) -> bool:
        """Notify ``value`` if the central subscribed; ``False`` when not sent."""
        if not self.is_subscribed(connection, characteristic):
            return False
        if value and len(value) > self.max_payload(connection):
            raise ValueError(f"{len(value)}-byte value does not fit the ATT MTU "
                             f"{connection.att_mtu}")
        await self.require_device().notify_subscriber(connection, characteristic, value)
        return True

    async def notify_all(self, characteristic: Characteristic[Any], value: bytes) -> int:
        """Notify every subscribed central; the number notified."""
        sent = 0
        for connection in list(self.connections):
            if await self.notify(connection, characteristic, value):
                sent += 1
        return sent

    @staticmethod
    def max_payload(connection: Connection) -> int:
        """Largest notification value: ATT_MTU − 3 (Core Vol 3 Part F §3.4.7.1)."""
        return int(connection.att_mtu) - 3

    async def disconnect(self, connection: Connection) -> None:
        with contextlib.suppress(Exception):
            await connection.disconnect(hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR)

    def log_write(self, characteristic: str, value: bytes, accepted: bool) -> None:
        self.control_point_log.append(
            ControlPointWrite(characteristic, bytes(value), accepted, self.true_now()))

    # --- time ---------------------------------------------------------------------------

    def true_now(self) -> dt.datetime:
        return self.config.now().astimezone(dt.UTC)

    def nominal_device_time(self, true_time: dt.datetime) -> dt.datetime:
        """What the device model's clock shows at ``true_time`` (naive local time)."""
        clock = self.config.clock
        if clock is not None:
            return clock.to_device(true_time)
        return true_time.astimezone(dt.UTC).replace(tzinfo=None)

    def device_now(self) -> dt.datetime:
        """The device clock now, with clock faults and any accepted time write."""
        now = self.true_now()
        shown = self.faults.device_time(self.nominal_device_time(now), now)
        return shown + self._time_adjust

    def local_time_information(self) -> LocalTimeInformation:
        clock = self.config.clock
        if clock is None:
            return LocalTimeInformation(0, 0)
        return LocalTimeInformation.from_datetime(self.true_now().astimezone(clock.zone.tzinfo))

    # --- battery ------------------------------------------------------------------------

    @property
    def battery_percent(self) -> int:
        return self.faults.battery_percent(self._battery_percent)

    async def set_battery_percent(self, percent: int) -> None:
        """Change the battery level and notify subscribed centrals (BAS 1.0 §3.1)."""
        BatteryLevel(percent)  # validates 0…100
        self._battery_percent = percent
        if self.battery_characteristic is not None:
            await self.notify_all(self.battery_characteristic,
                                  bytes(BatteryLevel(self.battery_percent)))

    def _build_battery_service(self) -> Service:
        char: Characteristic[bytes] = Characteristic(
            uuid16(BATTERY_LEVEL_UUID),
            Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
            read_permissions(False),
            AttributeValue(read=lambda _c: bytes(BatteryLevel(self.battery_percent))))
        self.battery_characteristic = char
        return Service(uuid16(BATTERY_SERVICE_UUID), [char])

    # --- current time -------------------------------------------------------------------

    def _read_current_time(self, _connection: Connection) -> bytes:
        return bytes(CurrentTime.from_datetime(self.device_now()))

    def _write_current_time(self, _connection: Connection, value: bytes) -> None:
        if not self.config.allow_time_write:
            self.log_write("current-time", value, accepted=False)
            # CTS 1.1 §3.1: a server that does not allow writing answers Write Not Permitted.
            raise ATT_Error(ATT_WRITE_NOT_PERMITTED_ERROR)
        try:
            written = CurrentTime.from_bytes(value).to_datetime()
        except ProtocolError:
            self.log_write("current-time", value, accepted=False)
            # CTS 1.1 §3.1.2.1: a value the server cannot use is ignored with error 0x80.
            raise ATT_Error(0x80) from None
        self.log_write("current-time", value, accepted=True)
        now = self.true_now()
        self._time_adjust = written - self.faults.device_time(self.nominal_device_time(now),
                                                              now)
        if self.current_time_characteristic is not None:
            value_now = bytes(CurrentTime.from_datetime(self.device_now(),
                                                        AdjustReason.MANUAL_TIME_UPDATE))
            self.spawn(self.notify_all(self.current_time_characteristic, value_now))

    def _build_current_time_service(self) -> Service:
        props = Characteristic.Properties.READ | Characteristic.Properties.NOTIFY
        if self.config.allow_time_write:
            props |= Characteristic.Properties.WRITE
        current: Characteristic[bytes] = Characteristic(
            uuid16(CtsCharacteristic.CURRENT_TIME), props,
            read_permissions(False) | write_permissions(self.secured),
            AttributeValue(read=self._read_current_time, write=self._write_current_time))
        self.current_time_characteristic = current
        local: Characteristic[bytes] = Characteristic(
            uuid16(CtsCharacteristic.LOCAL_TIME_INFORMATION), Characteristic.Properties.READ,
            read_permissions(False),
            AttributeValue(read=lambda _c: bytes(self.local_time_information())))
        return Service(uuid16(CURRENT_TIME_SERVICE_UUID), [current, local])


# --- Record Access Control Point (server side, shared by GLS and CGMS) ------------------------

#: ATT Application error "Procedure Already In Progress" (GLS 1.0 §1.6 / CGMS 1.0.1 §1.6;
#: CSS Part B §1.2 common profile and service error codes).
ATT_PROCEDURE_ALREADY_IN_PROGRESS = 0xFE
#: ATT Application error "Client Characteristic Configuration Descriptor Improperly
#: Configured" (CSS Part B §1.2).
ATT_CCCD_IMPROPERLY_CONFIGURED = 0xFD


class RacpServer(Generic[R]):
    """The server side of the Record Access Control Point (GLS 1.0 §3.4, CGMS 1.0.1 §3.6).

    Handles what every RACP server does alike: refusing a write when indications are not
    enabled (ATT 0xFD) or while a procedure runs (ATT 0xFE, abort excepted), answering bad
    requests with the Response Code of :func:`bridge.protocols.racp.check_request`, report
    and count and delete with the operators All, ≤, ≥, range, First, Last, abort, the
    number-of-records response, and the injected faults of the control point (delay, lost
    response). The device supplies its records, the filter key of a record, how a report is
    sent and how records are deleted.

    Every write is appended to the peripheral's ``control_point_log`` (a delete is carried
    out like on a real device, and logged, so tests can prove a client never sent one).
    """

    def __init__(self, peripheral: VirtualPeripheral, service: RacpService, *,
                 records: Callable[[], Sequence[R]],
                 filter_key: Callable[[R, int], FilterValue],
                 send_report: Callable[[Connection, Sequence[R]], Awaitable[bool]],
                 delete: Callable[[Sequence[R]], None],
                 supported_filter_types: Collection[int],
                 log_name: str = "racp") -> None:
        self.peripheral = peripheral
        self.service = service
        self._records = records
        self._filter_key = filter_key
        self._send_report = send_report
        self._delete = delete
        self.supported_filter_types = frozenset(int(f) for f in supported_filter_types)
        self.log_name = log_name
        self.characteristic = peripheral.characteristic(
            RACP_UUID, Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            write=self._on_write)
        self.indications = Indications(peripheral, self.characteristic)
        self._procedure: asyncio.Task[Any] | None = None
        self.abort_requested = False

    @property
    def in_progress(self) -> bool:
        return self._procedure is not None and not self._procedure.done()

    def cancel(self) -> None:
        """Stop any procedure (the link went down)."""
        if self._procedure is not None and not self._procedure.done():
            self._procedure.cancel()
        self._procedure = None
        self.abort_requested = False

    def _on_write(self, connection: Connection, value: bytes) -> None:
        data = bytes(value)
        if not self.peripheral.is_subscribed(connection, self.characteristic, indicate=True):
            self.peripheral.log_write(self.log_name, data, accepted=False)
            raise ATT_Error(ATT_CCCD_IMPROPERLY_CONFIGURED)
        is_abort = data[:1] == bytes([RacpOpCode.ABORT_OPERATION])
        previous = self._procedure if self.in_progress else None
        if previous is not None and not is_abort:
            self.peripheral.log_write(self.log_name, data, accepted=False)
            raise ATT_Error(ATT_PROCEDURE_ALREADY_IN_PROGRESS)
        if previous is not None:
            self.abort_requested = True
        self._procedure = self.peripheral.spawn(self._run(connection, data, previous))

    async def _respond(self, connection: Connection, value: bytes) -> None:
        faults = self.peripheral.faults
        if faults.should_drop():
            logger.info("RACP response dropped (fault injection)")
            return
        await self.indications.send(connection, value)

    def select(self, request: RacpRequest) -> list[R]:
        """The stored records a request's operator and filter pick, oldest first."""
        records = list(self._records())
        operator = request.operator
        if operator == RacpOperator.ALL_RECORDS:
            return records
        if operator == RacpOperator.FIRST_RECORD:
            return records[:1]
        if operator == RacpOperator.LAST_RECORD:
            return records[-1:]
        f = request.filter
        if f is None or not f.is_defined:
            return []
        ftype = int(f.filter_type)

        def key(value: FilterValue) -> tuple[int, ...]:
            if isinstance(value, DateTime):
                return (value.year, value.month, value.day, value.hours, value.minutes,
                        value.seconds)
            return (value,)

        lo = key(f.minimum) if f.minimum is not None else None
        hi = key(f.maximum) if f.maximum is not None else None
        return [rec for rec in records
                if (lo is None or key(self._filter_key(rec, ftype)) >= lo)
                and (hi is None or key(self._filter_key(rec, ftype)) <= hi)]

    async def _run(self, connection: Connection, data: bytes,
                   previous: asyncio.Task[Any] | None) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        self.abort_requested = False
        delay = self.peripheral.faults.response_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        code = check_request(data, self.service,
                             supported_filter_types=self.supported_filter_types)
        self.peripheral.log_write(self.log_name, data, accepted=code is None)
        if code is not None:
            await self._respond(connection, bytes(RacpResponse.for_request(data, code)))
            return
        request = RacpRequest.from_bytes(data, self.service)
        op = request.op_code
        if op == RacpOpCode.ABORT_OPERATION:
            # GLS 1.0 §3.4.2.3: the server stops the running procedure and confirms the abort.
            await self._respond(connection, bytes(RacpResponse(op, RacpResponseCode.SUCCESS)))
            return
        selected = self.select(request)
        if op == RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS:
            await self._respond(connection, bytes(RacpNumberOfRecords(len(selected))))
            return
        if not selected:
            await self._respond(connection, bytes(
                RacpResponse(op, RacpResponseCode.NO_RECORDS_FOUND)))
            return
        if op == RacpOpCode.DELETE_STORED_RECORDS:
            self._delete(selected)
            await self._respond(connection, bytes(RacpResponse(op, RacpResponseCode.SUCCESS)))
            return
        completed = await self._send_report(connection, selected)
        if self.abort_requested or not completed:
            # Aborted: the abort's own response ends the exchange. Disconnected: nobody left.
            return
        await self._respond(connection, bytes(RacpResponse(op, RacpResponseCode.SUCCESS)))
