"""The GATT central interface the BLE profile clients use, and its read-only write guard.

One small interface (:class:`GattCentral`) sits in front of every BLE stack: connect, pair
or bond, discover services, read, write, subscribe to notifications or indications, MTU and
the disconnection event. Two implementations are chosen by configuration: bleak
(:mod:`bridge.devices.gatt_bleak`, BlueZ on the Raspberry Pi) and bumble
(:mod:`bridge.devices.gatt_bumble`, in-process virtual links, TCP virtual controllers, USB
dongles).

The write guard
    The bridge never changes a device. Every write a central makes — characteristic values,
    descriptors, the CCCD writes of a subscription — passes :meth:`GattCentral._guard` in
    this base class before the backend sees it. The public write methods are final: a
    backend implements only the raw primitives behind them, and a subclass that tries to
    override a guarded method is refused when the class is created; the raw primitives
    themselves are wrapped at class creation and refuse to run unless a guarded method
    called them. What may be written is an allowlist (:func:`classify_write`), decided by
    parsing the value with the project's codecs:

    * CCCD (0x2902) values 0x0000, 0x0001, 0x0002 — unsubscribe, notify, indicate;
    * GLS/CGMS Record Access Control Point (0x2A52): report stored records, abort, report
      number of stored records (op codes 1, 3, 4), well-formed;
    * IDD Record Access Control Point (0x2B27): the same three procedures (0x33, 0x55,
      0x5A), well-formed, with or without the E2E trailer;
    * IDD Status Reader Control Point (0x2B24): the Get… op codes only;
    * CGM Specific Ops Control Point (0x2AAC): the Get… op codes only;
    * CTS Current Time (0x2A2B) only when enabled per device (:class:`WritePolicy`).

    Everything else is refused with :class:`ForbiddenWrite` and logged at WARNING level:
    the IDD Command Control Point and Command Data (whatever the op code), RACP delete,
    Status Reader Reset Status, SOCP set / reset / start / stop, Bond Management, malformed
    control-point values, other descriptors and every characteristic not listed above. The
    therapy control points are refused before any policy is looked at, so no setting can
    open them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar, final

from bridge.devices.base import DeviceDisconnected, DeviceError, DeviceTimeout
from bridge.errors import ProtocolError
from bridge.protocols.cgms import CGM_SERVICE_UUID, SOCP_READ_OP_CODES, CgmSocp
from bridge.protocols.cts import CURRENT_TIME_SERVICE_UUID, CtsCharacteristic, CurrentTime
from bridge.protocols.gls import GLUCOSE_SERVICE_UUID
from bridge.protocols.ids import (
    INSULIN_DELIVERY_SERVICE_UUID,
    IddRacpOpCode,
    IdsCharacteristic,
    StatusReaderOpCode,
    check_idd_racp_request,
    describe_command_op_code,
    parse_status_reader_cp,
)
from bridge.protocols.racp import RACP_UUID, RacpOpCode, RacpService, check_request

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The Bluetooth Base UUID (Core Vol 3 Part B §2.5.1): a 16-bit UUID ``xxxx`` stands for
#: ``0000xxxx-0000-1000-8000-00805F9B34FB``.
_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

#: Client Characteristic Configuration descriptor (Core Vol 3 Part G §3.3.3.3).
CCCD_UUID: Final = 0x2902
#: CCCD values: notifications off, notify (bit 0), indicate (bit 1).
CCCD_OFF: Final = 0x0000
CCCD_NOTIFY: Final = 0x0001
CCCD_INDICATE: Final = 0x0002

#: Bond Management Service and its control point (BMS 1.0 §3.1): deleting bonds changes the
#: device, so it is never written.
BOND_MANAGEMENT_SERVICE_UUID: Final = 0x181E
BOND_MANAGEMENT_CONTROL_POINT_UUID: Final = 0x2AA4

#: ATT Application error "Procedure Already In Progress" (CSS Part B §1.2), answered to a
#: control-point write while the device still runs an earlier procedure.
ATT_PROCEDURE_ALREADY_IN_PROGRESS: Final = 0xFE
#: ATT Application error "Client Characteristic Configuration Descriptor Improperly
#: Configured" (CSS Part B §1.2): a control point written without its indications enabled.
ATT_CCCD_IMPROPERLY_CONFIGURED: Final = 0xFD

#: ATT_MTU every LE link starts with (Core Vol 3 Part F §3.2.8).
DEFAULT_ATT_MTU: Final = 23

#: Seconds a single GATT operation (read, write, subscribe) may take by default.
DEFAULT_TIMEOUT_S: Final = 10.0
#: Seconds to establish a link by default.
DEFAULT_CONNECT_TIMEOUT_S: Final = 20.0
#: Seconds a backend may overrun its own connect timeout before the central gives up on it.
CONNECT_GRACE_S: Final = 2.0


# --- UUIDs -----------------------------------------------------------------------------------

UuidLike = int | str


def normalize_uuid(value: UuidLike) -> str:
    """The 128-bit lower-case form of a UUID given as a 16/32-bit int or any string form."""
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"UUID 0x{value:X} is neither 16- nor 32-bit")
        return f"{value:08x}{_BASE_UUID_SUFFIX}"
    text = value.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) in (4, 8) and all(c in "0123456789abcdef" for c in text):
        return f"{int(text, 16):08x}{_BASE_UUID_SUFFIX}"
    return str(uuid_module.UUID(text))


def short_uuid(value: UuidLike | None) -> int | None:
    """The 16/32-bit value of a UUID built on the Bluetooth Base UUID, else ``None``."""
    if value is None:
        return None
    full = normalize_uuid(value)
    if not full.endswith(_BASE_UUID_SUFFIX):
        return None
    return int(full[:8], 16)


def uuid_name(value: UuidLike | None) -> str:
    """``0x2A52`` for SIG UUIDs, the full form otherwise (for logs and errors)."""
    short = short_uuid(value)
    if short is not None:
        return f"0x{short:04X}"
    return "unknown" if value is None else normalize_uuid(value)


# --- what a central discovers --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GattCharacteristic:
    """A discovered characteristic: UUIDs in normalized 128-bit form, the value handle,
    the properties as lower-case words (``read``, ``write``, ``write-without-response``,
    ``notify``, ``indicate``) and the backend's own object for it."""

    uuid: str
    service_uuid: str
    handle: int
    properties: frozenset[str]
    backend_object: Any = field(default=None, compare=False, repr=False)

    @property
    def uuid16(self) -> int | None:
        return short_uuid(self.uuid)

    @property
    def name(self) -> str:
        return uuid_name(self.uuid)


@dataclass(frozen=True, slots=True)
class GattService:
    uuid: str
    characteristics: tuple[GattCharacteristic, ...]

    @property
    def uuid16(self) -> int | None:
        return short_uuid(self.uuid)


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One advertising device seen by a scan (advertising and scan response data merged)."""

    address: str
    name: str | None
    rssi: int | None
    service_uuids: tuple[str, ...]
    appearance: int | None = None

    def offers(self, service: UuidLike) -> bool:
        return normalize_uuid(service) in self.service_uuids


NotifyCallback = Callable[[bytes], None]


# --- errors ----------------------------------------------------------------------------------

class AttError(DeviceError):
    """The device answered a GATT request with an ATT error (Core Vol 3 Part F §3.4.1.1):
    ``code`` is the ATT error code, e.g. 0x05 Insufficient Authentication, 0x0F Insufficient
    Encryption, 0xFD CCCD Improperly Configured, 0xFE Procedure Already In Progress."""

    def __init__(self, message: str, code: int, device: str | None = None) -> None:
        self.code = code
        super().__init__(f"{message} (ATT error 0x{code:02X})", device)


class ForbiddenWrite(DeviceError):
    """A write the read-only bridge refused before it reached the radio.

    ``characteristic`` is the UUID written to (``descriptor`` for descriptor writes),
    ``op_code`` the control-point op code when one could be read, ``reason`` why the
    allowlist does not hold it.
    """

    def __init__(self, reason: str, *, characteristic: str, op_code: int | None = None,
                 descriptor: str | None = None, value: bytes = b"",
                 device: str | None = None) -> None:
        self.reason = reason
        self.characteristic = characteristic
        self.op_code = op_code
        self.descriptor = descriptor
        self.value = bytes(value)
        target = uuid_name(characteristic)
        if descriptor is not None:
            target += f" descriptor {uuid_name(descriptor)}"
        op = f" op code 0x{op_code:02X}" if op_code is not None else ""
        super().__init__(f"write to {target}{op} refused: {reason}", device)


# --- the allowlist ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WritePolicy:
    """What a device's configuration may add to the read-only allowlist: nothing but the
    Current Time write (CTS 1.1 §3.1), for meters whose clock the operator wants the bridge
    to set. There is deliberately no switch for anything else."""

    allow_time_write: bool = False


READ_ONLY: Final = WritePolicy()


@dataclass(frozen=True, slots=True)
class WriteVerdict:
    """The guard's decision on one write: ``what`` names the procedure, ``op_code`` the
    control-point op code when the value has one."""

    allowed: bool
    what: str
    reason: str
    op_code: int | None = None


#: GLS/CGMS RACP procedures that only read (GLS 1.0 §3.4.2, CGMS 1.0.1 §3.6): report stored
#: records, abort, report number of stored records. Delete (2) changes the device.
RACP_READ_OP_CODES: Final = frozenset({
    RacpOpCode.REPORT_STORED_RECORDS, RacpOpCode.ABORT_OPERATION,
    RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS})

#: IDD RACP procedures that only read (IDS 1.0 §3.8): report, abort, report number.
IDD_RACP_READ_OP_CODES: Final = frozenset({
    IddRacpOpCode.REPORT_STORED_RECORDS, IddRacpOpCode.ABORT_OPERATION,
    IddRacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS})

#: IDD Status Reader requests that only read (IDS 1.0 §3.5): every Get… op code. Reset
#: Status (0x030C) clears the Status Changed bits and the response op codes are sent by the
#: pump, so neither is on the list.
STATUS_READER_READ_OP_CODES: Final = frozenset({
    StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS, StatusReaderOpCode.GET_ACTIVE_BOLUS_DELIVERY,
    StatusReaderOpCode.GET_ACTIVE_BASAL_RATE_DELIVERY,
    StatusReaderOpCode.GET_TOTAL_DAILY_INSULIN_STATUS, StatusReaderOpCode.GET_COUNTER,
    StatusReaderOpCode.GET_DELIVERED_INSULIN, StatusReaderOpCode.GET_INSULIN_ON_BOARD})

ALLOWED_CCCD_VALUES: Final = frozenset({CCCD_OFF, CCCD_NOTIFY, CCCD_INDICATE})

_RACP_SERVICES: Final = {GLUCOSE_SERVICE_UUID: RacpService.GLS, CGM_SERVICE_UUID: RacpService.CGM}


def _refuse(what: str, reason: str, op_code: int | None = None) -> WriteVerdict:
    return WriteVerdict(False, what, reason, op_code)


def _allow(what: str, op_code: int | None = None) -> WriteVerdict:
    return WriteVerdict(True, what, "on the read-only allowlist", op_code)


def _u16_op(data: bytes) -> int | None:
    return int.from_bytes(data[:2], "little") if len(data) >= 2 else None


def _in_service(service16: int | None, expected: int) -> bool:
    """A characteristic is judged by its service when the backend reports one."""
    return service16 is None or service16 == expected


def classify_write(characteristic_uuid: UuidLike, value: bytes, *,
                   service_uuid: UuidLike | None = None,
                   descriptor_uuid: UuidLike | None = None,
                   policy: WritePolicy = READ_ONLY) -> WriteVerdict:
    """Whether a read-only bridge may write ``value`` to a characteristic (or to one of its
    descriptors). Pure: looks at UUIDs and bytes only, never raises."""
    data = bytes(value)
    try:
        char16 = short_uuid(characteristic_uuid)
        service16 = short_uuid(service_uuid)
        descriptor16 = None if descriptor_uuid is None else short_uuid(descriptor_uuid)
    except ValueError:
        return _refuse("characteristic", "not a valid UUID")

    if descriptor_uuid is not None:
        return _classify_descriptor(descriptor16, data)

    # The floor first: the IDD Command Control Point and Command Data drive insulin delivery
    # (IDS 1.0 §3.6, §3.7). No op code and no policy makes them writable.
    if char16 == IdsCharacteristic.IDD_COMMAND_CONTROL_POINT:
        op = _u16_op(data)
        detail = describe_command_op_code(op) if op is not None else "empty value"
        return _refuse("IDD Command Control Point",
                       f"therapy control point, never written by a read-only bridge ({detail})",
                       op)
    if char16 == IdsCharacteristic.IDD_COMMAND_DATA:
        return _refuse("IDD Command Data",
                       "therapy command data, never written by a read-only bridge",
                       _u16_op(data))
    if char16 == IdsCharacteristic.IDD_STATUS_READER_CONTROL_POINT:
        return _classify_status_reader(data, service16)
    if char16 == IdsCharacteristic.IDD_RECORD_ACCESS_CONTROL_POINT:
        return _classify_idd_racp(data, service16)
    if char16 == RACP_UUID:
        return _classify_racp(data, service16)
    if char16 == 0x2AAC:  # CGM Specific Ops Control Point (CGMS 1.0.1 §3.7)
        return _classify_socp(data, service16)
    if char16 == BOND_MANAGEMENT_CONTROL_POINT_UUID:
        return _refuse("Bond Management Control Point",
                       "deleting bonds changes the device (BMS 1.0 §3.1)",
                       data[0] if data else None)
    if char16 == CtsCharacteristic.CURRENT_TIME:
        return _classify_current_time(data, service16, policy)
    return _refuse(f"characteristic {uuid_name(characteristic_uuid)}",
                   "not on the read-only allowlist")


def _classify_descriptor(descriptor16: int | None, data: bytes) -> WriteVerdict:
    if descriptor16 != CCCD_UUID:
        return _refuse("descriptor", "only the Client Characteristic Configuration descriptor "
                       "is written (to subscribe)")
    if len(data) != 2:
        return _refuse("CCCD", f"a CCCD value is two octets, not {len(data)} "
                       "(Core Vol 3 Part G §3.3.3.3)")
    bits = int.from_bytes(data, "little")
    if bits not in ALLOWED_CCCD_VALUES:
        return _refuse("CCCD", f"value 0x{bits:04X} is not off, notify or indicate", bits)
    return _allow("CCCD", bits)


def _classify_racp(data: bytes, service16: int | None) -> WriteVerdict:
    op = data[0] if data else None
    service = _RACP_SERVICES.get(service16) if service16 is not None else None
    if service is None:
        return _refuse("Record Access Control Point",
                       "RACP outside the Glucose or CGM Service is not on the allowlist", op)
    if op not in RACP_READ_OP_CODES:
        reason = ("delete stored records changes the device (GLS 1.0 §3.4.2.2)"
                  if op == RacpOpCode.DELETE_STORED_RECORDS
                  else "not a report, abort or count request")
        return _refuse("Record Access Control Point", reason, op)
    code = check_request(data, service)
    if code is not None:
        return _refuse("Record Access Control Point",
                       f"malformed request (a server would answer {code.name})", op)
    return _allow("Record Access Control Point", op)


def _e2e_forms_ok(check: Callable[[bool], bool]) -> bool:
    """True when the value is valid as sent without, or with, the IDS E2E trailer (the guard
    does not know whether the pump announced E2E-Protection; the op code, first in both
    forms, has already been checked)."""
    for e2e in (False, True):
        try:
            if check(e2e):
                return True
        except ProtocolError:
            continue
    return False


def _classify_idd_racp(data: bytes, service16: int | None) -> WriteVerdict:
    op = data[0] if data else None
    what = "IDD Record Access Control Point"
    if not _in_service(service16, INSULIN_DELIVERY_SERVICE_UUID):
        return _refuse(what, "outside the Insulin Delivery Service", op)
    if op not in IDD_RACP_READ_OP_CODES:
        reason = ("delete stored records changes the pump (IDS 1.0 §3.8)"
                  if op == IddRacpOpCode.DELETE_STORED_RECORDS
                  else "not a report, abort or count request")
        return _refuse(what, reason, op)
    if not _e2e_forms_ok(lambda e2e: check_idd_racp_request(data, e2e=e2e) is None):
        return _refuse(what, "malformed request or wrong E2E-CRC", op)
    return _allow(what, op)


def _classify_status_reader(data: bytes, service16: int | None) -> WriteVerdict:
    op = _u16_op(data)
    what = "IDD Status Reader Control Point"
    if not _in_service(service16, INSULIN_DELIVERY_SERVICE_UUID):
        return _refuse(what, "outside the Insulin Delivery Service", op)
    if op == StatusReaderOpCode.RESET_STATUS:
        return _refuse(what, "Reset Status changes the pump's status flags (IDS 1.0 §3.5)", op)
    if op not in STATUS_READER_READ_OP_CODES:
        return _refuse(what, "not a Get… request", op)

    def parses(e2e: bool) -> bool:
        parse_status_reader_cp(data, e2e)
        return True

    if not _e2e_forms_ok(parses):
        return _refuse(what, "malformed request or wrong E2E-CRC", op)
    return _allow(what, op)


def _classify_socp(data: bytes, service16: int | None) -> WriteVerdict:
    op = data[0] if data else None
    what = "CGM Specific Ops Control Point"
    if not _in_service(service16, CGM_SERVICE_UUID):
        return _refuse(what, "outside the CGM Service", op)
    if op not in SOCP_READ_OP_CODES:
        return _refuse(what, "only the Get… op codes are written; set, reset, start and stop "
                       "change the sensor (CGMS 1.0.1 §3.7)", op)

    def parses(e2e: bool) -> bool:
        CgmSocp.from_bytes(data, e2e)
        return True

    if not _e2e_forms_ok(parses):
        return _refuse(what, "malformed request or wrong E2E-CRC", op)
    return _allow(what, op)


def _classify_current_time(data: bytes, service16: int | None,
                           policy: WritePolicy) -> WriteVerdict:
    what = "Current Time"
    if not policy.allow_time_write:
        return _refuse(what, "setting the device clock is not enabled for this device "
                       "(allow_time_write)")
    if not _in_service(service16, CURRENT_TIME_SERVICE_UUID):
        return _refuse(what, "outside the Current Time Service")
    try:
        CurrentTime.from_bytes(data).to_datetime()
    except ProtocolError as exc:
        return _refuse(what, f"not a valid Current Time value ({exc.reason})")
    return _allow(what)


# --- reconnecting --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between connection attempts: ``initial_s``, then ×``factor`` up to ``max_s``.
    ``attempts`` counts every try (the first included); ``None`` tries forever."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    attempts: int | None = 3

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < 0 or self.factor < 1:
            raise ValueError("backoff delays must be non-negative and grow")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("at least one attempt")

    def delays(self) -> Iterator[float]:
        """The delay before each retry (one fewer than ``attempts``)."""
        delay = self.initial_s
        tried = 1
        while self.attempts is None or tried < self.attempts:
            yield min(delay, self.max_s)
            delay *= self.factor
            tried += 1


# --- the central -----------------------------------------------------------------------------

#: Set while a guarded method runs the raw primitive the guard allowed (tasks copy it).
_GUARD_PASSED: ContextVar[bool] = ContextVar("gatt_guard_passed", default=False)


def _after_guard_only(raw: Callable[..., Awaitable[None]],
                      name: str) -> Callable[..., Awaitable[None]]:
    """``raw`` refusing to run unless a guarded method of the base class called it."""

    @functools.wraps(raw)
    async def checked(self: GattCentral, characteristic: GattCharacteristic, *args: Any,
                      **kwargs: Any) -> None:
        if not _GUARD_PASSED.get():
            error = ForbiddenWrite(f"{name} called outside the guarded GATT methods",
                                   characteristic=characteristic.uuid, device=self.address)
            logger.warning("read-only guard: %s", error)
            self.refused_writes.append(error)
            raise error
        await raw(self, characteristic, *args, **kwargs)

    checked._guard_checked = True  # type: ignore[attr-defined]
    return checked


_UNSET: Any = object()


class GattCentral(abc.ABC):
    """A GATT client toward one peripheral, with every await bounded and every write guarded.

    Backends implement the underscore primitives; the public methods add the timeouts, the
    disconnection handling and the write guard, and may not be overridden (``write``,
    ``write_descriptor``, ``subscribe``, ``unsubscribe`` and the guard are final; defining
    them in a subclass raises ``TypeError``).

    ``timeout_s`` bounds each GATT operation, ``connect_timeout_s`` the link set-up; an
    operation that outlives it raises :class:`DeviceTimeout`, one cut off by a lost link
    :class:`DeviceDisconnected`.
    """

    _FINAL: ClassVar[frozenset[str]] = frozenset(
        {"write", "write_descriptor", "subscribe", "unsubscribe", "_guard", "policy",
         "bounded", "_run"})

    #: The backend primitives that put something on the air: they run only inside a
    #: guarded method (each subclass's versions are wrapped to check that).
    _RAW_WRITERS: ClassVar[tuple[str, ...]] = (
        "_write_value", "_write_descriptor_value", "_start_notify", "_stop_notify")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = sorted(GattCentral._FINAL & set(vars(cls)))
        if overridden:
            raise TypeError(f"{cls.__name__} may not override the guarded GATT methods "
                            f"{overridden}: every write goes through GattCentral's guard")
        for name in GattCentral._RAW_WRITERS:
            raw = vars(cls).get(name)
            if raw is not None and not getattr(raw, "_guard_checked", False):
                setattr(cls, name, _after_guard_only(raw, name))

    def __init__(self, address: str, *, policy: WritePolicy = READ_ONLY,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.address = address
        self.__policy = policy
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._services: tuple[GattService, ...] = ()
        self._connected = False
        self._link_down = asyncio.Event()
        self._link_down.set()
        self._listeners: list[Callable[[str], None]] = []
        self._subscriptions: dict[int, GattCharacteristic] = {}
        #: Every write the guard refused on this central, oldest first.
        self.refused_writes: list[ForbiddenWrite] = []

    @property
    def policy(self) -> WritePolicy:
        """The per-device write policy, fixed when the central is made."""
        return self.__policy

    # --- backend primitives ---------------------------------------------------------------

    @abc.abstractmethod
    async def _connect_link(self) -> None:
        """Establish the link (no pairing, no discovery)."""

    @abc.abstractmethod
    async def _disconnect_link(self) -> None:
        """Drop the link; must not fail when it is already down."""

    @abc.abstractmethod
    async def _secure_link(self, passkey: int | None) -> None:
        """Encrypt the link with a stored bond, or pair and bond (Just Works, or passkey)."""

    @abc.abstractmethod
    async def _discover_services(self) -> tuple[GattService, ...]:
        """All primary services with their characteristics."""

    @abc.abstractmethod
    async def _read_value(self, characteristic: GattCharacteristic) -> bytes:
        """Read a characteristic value."""

    @abc.abstractmethod
    async def _write_value(self, characteristic: GattCharacteristic, value: bytes,
                           with_response: bool) -> None:
        """Write a characteristic value. Called only after the guard allowed it."""

    @abc.abstractmethod
    async def _write_descriptor_value(self, characteristic: GattCharacteristic,
                                      descriptor_uuid: str, value: bytes) -> None:
        """Write a descriptor of a characteristic. Called only after the guard allowed it."""

    @abc.abstractmethod
    async def _start_notify(self, characteristic: GattCharacteristic, callback: NotifyCallback,
                            indicate: bool) -> None:
        """Enable notifications (or indications) and deliver each value to ``callback``.
        Called only after the guard allowed the CCCD value."""

    @abc.abstractmethod
    async def _stop_notify(self, characteristic: GattCharacteristic) -> None:
        """Disable notifications. Called only after the guard allowed CCCD 0x0000."""

    @property
    @abc.abstractmethod
    def mtu(self) -> int:
        """The ATT_MTU of the link (23 until an exchange raised it)."""

    def _translate_error(self, exc: Exception, what: str) -> DeviceError:
        """A backend exception as the matching :class:`DeviceError`."""
        if isinstance(exc, TimeoutError):
            return DeviceTimeout(f"{what}: timed out in the BLE stack", self.address)
        if isinstance(exc, ConnectionError):
            return DeviceDisconnected(f"{what}: {exc}", self.address)
        return DeviceError(f"{what} failed: {type(exc).__name__}: {exc}", self.address)

    def _link_lost(self, reason: str) -> None:
        """Backends call this when the link drops (from the event loop)."""
        if not self._connected:
            return
        self._connected = False
        self._link_down.set()
        self._subscriptions.clear()
        logger.info("%s: link lost (%s)", self.address, reason)
        for listener in list(self._listeners):
            try:
                listener(reason)
            except Exception:  # a listener must not break the others
                logger.exception("disconnection listener failed")

    # --- running operations ---------------------------------------------------------------

    async def bounded(self, awaitable: Awaitable[T], what: str,
                      timeout_s: float | None = _UNSET) -> T:
        """Await ``awaitable`` on the live link: :class:`DeviceTimeout` after ``timeout_s``
        (default: this central's ``timeout_s``; ``None``: no limit),
        :class:`DeviceDisconnected` if the link drops first, backend errors translated."""
        return await self._run(awaitable, what,
                               self.timeout_s if timeout_s is _UNSET else timeout_s,
                               need_link=True)

    async def _run(self, awaitable: Awaitable[T], what: str, timeout_s: float | None, *,
                   need_link: bool) -> T:
        task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        if need_link and not self._connected:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise DeviceDisconnected(f"{what}: not connected", self.address)
        lost: asyncio.Future[Any] | None = (
            asyncio.ensure_future(self._link_down.wait()) if need_link else None)
        waiting: set[asyncio.Future[Any]] = {task} if lost is None else {task, lost}
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            if lost is not None:
                lost.cancel()
        if task in done:
            try:
                return task.result()
            except DeviceError:
                raise
            except Exception as exc:
                raise self._translate_error(exc, what) from exc
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if lost is not None and lost in done:
            raise DeviceDisconnected(f"link lost during {what}", self.address)
        raise DeviceTimeout(f"{what}: no answer within {timeout_s} s", self.address)

    # --- link -----------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected

    def on_disconnect(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` whenever the link drops."""
        self._listeners.append(listener)

    async def wait_disconnected(self, timeout_s: float | None = None) -> None:
        """Return once the link is down (:class:`DeviceTimeout` after ``timeout_s``)."""
        try:
            await asyncio.wait_for(self._link_down.wait(), timeout_s)
        except TimeoutError:
            raise DeviceTimeout("link still up", self.address) from None

    async def connect(self) -> None:
        """Establish the link (bounded by ``connect_timeout_s``)."""
        if self._connected:
            return
        self._services = ()
        self._subscriptions.clear()
        # The backend is given ``connect_timeout_s`` itself, so it can cancel the pending
        # connection in the controller cleanly; this bound only catches a stack that hangs.
        await self._run(self._connect_link(), "connect",
                        self.connect_timeout_s + CONNECT_GRACE_S, need_link=False)
        self._link_down = asyncio.Event()
        self._connected = True
        logger.info("%s: connected", self.address)

    async def disconnect(self) -> None:
        """Drop the link; safe when it is already down."""
        if not self._connected:
            return
        try:
            await self._run(self._disconnect_link(), "disconnect", self.timeout_s,
                            need_link=False)
        finally:
            self._link_lost("disconnected by the bridge")

    async def pair(self, *, passkey: int | None = None) -> None:
        """Encrypt the link: with the stored bond, else by pairing and bonding (Just Works,
        or the device's passkey when one is given)."""
        if passkey is not None and not 0 <= passkey <= 999_999:
            raise ValueError("a passkey is six decimal digits")
        await self.bounded(self._secure_link(passkey), "pairing", self.connect_timeout_s)

    async def discover(self) -> tuple[GattService, ...]:
        self._services = await self.bounded(self._discover_services(), "service discovery",
                                            self.connect_timeout_s)
        return self._services

    @property
    def services(self) -> tuple[GattService, ...]:
        return self._services

    def find_service(self, service: UuidLike) -> GattService | None:
        wanted = normalize_uuid(service)
        return next((s for s in self._services if s.uuid == wanted), None)

    def find(self, characteristic: UuidLike,
             service: UuidLike | None = None) -> GattCharacteristic | None:
        """The first discovered characteristic with this UUID (inside ``service`` if given)."""
        wanted = normalize_uuid(characteristic)
        in_service = None if service is None else normalize_uuid(service)
        for s in self._services:
            if in_service is not None and s.uuid != in_service:
                continue
            for c in s.characteristics:
                if c.uuid == wanted:
                    return c
        return None

    def require(self, characteristic: UuidLike,
                service: UuidLike | None = None) -> GattCharacteristic:
        found = self.find(characteristic, service)
        if found is None:
            where = f" in service {uuid_name(service)}" if service is not None else ""
            raise DeviceError(f"characteristic {uuid_name(characteristic)}{where} not found",
                              self.address)
        return found

    # --- GATT operations ------------------------------------------------------------------

    async def read(self, characteristic: GattCharacteristic) -> bytes:
        return bytes(await self.bounded(self._read_value(characteristic),
                                        f"read of {characteristic.name}"))

    @final
    def _guard(self, characteristic: GattCharacteristic, value: bytes,
               descriptor_uuid: str | None = None) -> None:
        verdict = classify_write(characteristic.uuid, value,
                                 service_uuid=characteristic.service_uuid,
                                 descriptor_uuid=descriptor_uuid, policy=self.__policy)
        if verdict.allowed:
            return
        error = ForbiddenWrite(verdict.reason, characteristic=characteristic.uuid,
                               op_code=verdict.op_code, descriptor=descriptor_uuid,
                               value=value, device=self.address)
        self.refused_writes.append(error)
        logger.warning("read-only guard: %s [%s] value %s", error, verdict.what,
                       value[:32].hex(" ") or "(empty)")
        raise error

    @final
    async def write(self, characteristic: GattCharacteristic, value: bytes, *,
                    with_response: bool = True) -> None:
        """Write a characteristic value if the read-only allowlist holds it; otherwise
        :class:`ForbiddenWrite`, and nothing reaches the device."""
        data = bytes(value)
        self._guard(characteristic, data)
        with _guard_passed():
            await self.bounded(self._write_value(characteristic, data, with_response),
                               f"write to {characteristic.name}")

    @final
    async def write_descriptor(self, characteristic: GattCharacteristic,
                               descriptor: UuidLike, value: bytes) -> None:
        """Write a descriptor: only CCCD off / notify / indicate pass the guard."""
        data = bytes(value)
        descriptor_uuid = normalize_uuid(descriptor)
        self._guard(characteristic, data, descriptor_uuid)
        with _guard_passed():
            await self.bounded(
                self._write_descriptor_value(characteristic, descriptor_uuid, data),
                f"write to a descriptor of {characteristic.name}")

    @final
    async def subscribe(self, characteristic: GattCharacteristic, callback: NotifyCallback,
                        *, indicate: bool | None = None) -> None:
        """Enable notifications (``indicate=False``) or indications (``True``); ``None``
        picks notify when the characteristic has it. Each value goes to ``callback``."""
        if indicate is None:
            indicate = "notify" not in characteristic.properties
        bits = CCCD_INDICATE if indicate else CCCD_NOTIFY
        self._guard(characteristic, bits.to_bytes(2, "little"), normalize_uuid(CCCD_UUID))
        with _guard_passed():
            await self.bounded(self._start_notify(characteristic, callback, indicate),
                               f"subscription to {characteristic.name}")
        self._subscriptions[characteristic.handle] = characteristic

    @final
    async def unsubscribe(self, characteristic: GattCharacteristic) -> None:
        self._guard(characteristic, CCCD_OFF.to_bytes(2, "little"), normalize_uuid(CCCD_UUID))
        with _guard_passed():
            await self.bounded(self._stop_notify(characteristic),
                               f"unsubscription from {characteristic.name}")
        self._subscriptions.pop(characteristic.handle, None)

    def is_subscribed(self, characteristic: GattCharacteristic) -> bool:
        return characteristic.handle in self._subscriptions


@contextlib.contextmanager
def _guard_passed() -> Iterator[None]:
    token = _GUARD_PASSED.set(True)
    try:
        yield
    finally:
        _GUARD_PASSED.reset(token)


# --- receiving notifications -------------------------------------------------------------------

class Inbox:
    """Values notified or indicated to a central, one FIFO queue per tag.

    Subscribe with ``central.subscribe(char, inbox.sink("measurement"))``; values arrive in
    link order within a tag. Waiting is bounded and ends with :class:`DeviceDisconnected`
    when the link drops, but values that arrived before are still handed out first.
    """

    def __init__(self, central: GattCentral) -> None:
        self.central = central
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._counts: dict[str, int] = {}

    def _queue(self, tag: str) -> asyncio.Queue[bytes]:
        queue = self._queues.get(tag)
        if queue is None:
            queue = self._queues[tag] = asyncio.Queue()
        return queue

    def sink(self, tag: str) -> NotifyCallback:
        queue = self._queue(tag)

        def put(value: bytes) -> None:
            self._counts[tag] = self._counts.get(tag, 0) + 1
            queue.put_nowait(bytes(value))

        return put

    def received(self, *tags: str) -> int:
        """How many values arrived so far on ``tags`` (to tell a slow transfer from a dead one)."""
        return sum(self._counts.get(tag, 0) for tag in tags)

    async def next(self, tag: str, timeout_s: float | None, what: str) -> bytes:
        """The next value of ``tag``; ``timeout_s=None`` waits until one comes or the link
        drops."""
        queue = self._queue(tag)
        if not queue.empty():
            return queue.get_nowait()
        return await self.central.bounded(queue.get(), what, timeout_s)

    def take_all(self, tag: str) -> list[bytes]:
        queue = self._queue(tag)
        out: list[bytes] = []
        while not queue.empty():
            out.append(queue.get_nowait())
        return out

    def clear(self, *tags: str) -> None:
        for tag in tags or tuple(self._queues):
            self.take_all(tag)
