"""Bluetooth Insulin Delivery Service (0x183A, IDS 1.0): status, features and control points.

Characteristics (IDS 1.0 §3, all little-endian):

* IDD Status Changed 0x2B20, IDD Status 0x2B21, IDD Annunciation Status 0x2B22,
  IDD Features 0x2B23 (read / notify / indicate);
* IDD Status Reader Control Point 0x2B24, IDD Command Control Point 0x2B25,
  IDD Command Data 0x2B26, IDD Record Access Control Point 0x2B27 (write + indicate/notify);
* IDD History Data 0x2B28 lives in :mod:`bridge.protocols.ids_history`.

Enumerations use the Hamming-distance codes of IDS 1.0 (0x0F, 0x33, 0x3C, 0x55, 0x5A, 0x66,
0x69, 0x96, 0x99, 0xA5, 0xAA, 0xC3, 0xCC, 0xF0, 0xFF, and 16-bit op codes built the same way):
a single bit error never turns one valid value into another. Values the specification
reserves are kept as plain ints so a frame still round-trips; unknown control-point op codes
raise ``UnknownOpCode``.

E2E-Protection (IDS 1.0 §3, E2E-Protection): when the IDD Features announce it, every value
except IDD Features ends with ``E2E-Counter u8`` and ``E2E-CRC u16`` (CRC-16/MCRF4XX over all
preceding bytes, counter included). Each message type is therefore registered twice, e.g.
``ids-status`` and ``ids-status-e2e``; the decoded value carries ``e2e_counter`` (``None`` for
the plain form) and the encoder recomputes the CRC. IDD Features is the exception: its own
E2E-CRC and E2E-Counter come first, and the CRC is 0xFFFF when E2E is not supported.

Flags are kept as given (an ``IntFlag`` that also keeps reserved bits); an optional field is
present exactly when its flag bit is set, which construction checks, so any valid frame
decodes and re-encodes byte-exactly.

Section numbers follow IDS v1.0 as best known; every citation also names the characteristic
or procedure so it can be found by name. Layout details that could not be confirmed against
the specification text are marked UNCONFIRMED.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from typing import Any, ClassVar, Self, TypeVar

from bridge.errors import (
    CrcMismatch,
    ProtocolError,
    TruncatedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.codec import MessageCodec, known
from bridge.protocols.crc import crc16_mcrf4xx
from bridge.protocols.layout import (
    AsFloat,
    Field,
    Fields,
    FloatField,
    Rest,
    Sint,
    check_fields,
    check_uint,
    read_fields,
    read_sfloat,
    sfloat,
    u8,
    u16,
    write_fields,
    write_sfloat,
)
from bridge.protocols.mder_float import MderFloat, SFloat
from bridge.protocols.wire import Reader, Writer

INSULIN_DELIVERY_SERVICE_UUID = 0x183A


class IdsCharacteristic(IntEnum):
    """16-bit UUIDs of the IDS characteristics (IDS 1.0 §3)."""

    IDD_STATUS_CHANGED = 0x2B20
    IDD_STATUS = 0x2B21
    IDD_ANNUNCIATION_STATUS = 0x2B22
    IDD_FEATURES = 0x2B23
    IDD_STATUS_READER_CONTROL_POINT = 0x2B24
    IDD_COMMAND_CONTROL_POINT = 0x2B25
    IDD_COMMAND_DATA = 0x2B26
    IDD_RECORD_ACCESS_CONTROL_POINT = 0x2B27
    IDD_HISTORY_DATA = 0x2B28


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


#: E2E-Counter (1 byte) + E2E-CRC (2 bytes) appended to every protected value.
E2E_TRAILER_SIZE = 3


def open_e2e(data: bytes, e2e: bool, what: str) -> tuple[Reader, int | None]:
    """A reader over the payload of ``data`` and its E2E-Counter (``None`` without E2E).

    With E2E the last two bytes are the E2E-CRC over everything before them (IDS 1.0 §3,
    E2E-Protection); it is checked before any field is trusted, and a mismatch raises
    ``CrcMismatch`` at the CRC's offset. The reader stops before the counter, so a field
    running into the trailer is a ``TruncatedFrame``.
    """
    data = bytes(data)
    if not e2e:
        return Reader(data), None
    n = len(data)
    if n < E2E_TRAILER_SIZE:
        raise TruncatedFrame(f"{what}: E2E-Counter and E2E-CRC need 3 bytes, only {n} present",
                             data, n)
    received = int.from_bytes(data[n - 2:], "little")
    computed = crc16_mcrf4xx(data[:n - 2])
    if received != computed:
        raise CrcMismatch(f"{what}: E2E-CRC does not match", data, n - 2,
                          expected=computed, received=received)
    return Reader(data, end=n - E2E_TRAILER_SIZE), data[n - 3]


def seal_e2e(payload: bytes, e2e_counter: int | None) -> bytes:
    """``payload`` plus E2E-Counter and E2E-CRC, or unchanged when ``e2e_counter`` is None."""
    if e2e_counter is None:
        return payload
    framed = bytes(Writer().raw(payload).u8(e2e_counter, "E2E-Counter"))
    return bytes(Writer().raw(framed).u16(crc16_mcrf4xx(framed), "E2E-CRC"))


class E2EValue:
    """Base of every IDS value that may carry the E2E trailer.

    Subclasses are frozen dataclasses with an ``e2e_counter`` field and implement ``read``
    (all payload fields, op code included) and ``write``.
    """

    __slots__ = ()

    e2e_counter: int | None
    WHAT: ClassVar[str] = "IDS value"

    @classmethod
    def read(cls, r: Reader, e2e_counter: int | None = None) -> Self:
        raise NotImplementedError

    def write(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def from_bytes(cls, data: bytes, e2e: bool = False) -> Self:
        r, counter = open_e2e(data, e2e, cls.WHAT)
        value = cls.read(r, counter)
        r.expect_end(cls.WHAT)
        return value

    def __bytes__(self) -> bytes:
        w = Writer()
        self.write(w)
        return seal_e2e(bytes(w), self.e2e_counter)


_V = TypeVar("_V")


def e2e_codecs(name: str, summary: str,
               decode: Callable[[bytes, bool], Any]) -> tuple[MessageCodec, MessageCodec]:
    """The plain and the ``-e2e`` message type of one characteristic."""

    def plain(data: bytes) -> Any:
        return decode(data, False)

    def protected(data: bytes) -> Any:
        return decode(data, True)

    return (MessageCodec(name, summary, plain),
            MessageCodec(f"{name}-e2e", f"{summary}, with E2E-Counter and E2E-CRC", protected))


def _read_op(r: Reader, allowed: Collection[int], what: str) -> int:
    start = r.offset
    op = r.u16("op code")
    if op not in allowed:
        raise UnknownOpCode(f"0x{op:04X} is not a {what} op code", r.data, start)
    return op


def _parse_by_op(data: bytes, e2e: bool, what: str,
                 table: Mapping[int, Callable[[Reader, int | None], _V]]) -> _V:
    r, counter = open_e2e(data, e2e, what)
    start = r.offset
    op = r.u16("op code")
    reader_fn = table.get(op)
    if reader_fn is None:
        raise UnknownOpCode(f"0x{op:04X} is not a {what} op code", r.data, start)
    r.offset = start
    value = reader_fn(r, counter)
    r.expect_end(what)
    return value


def _expect_op(r: Reader, op: int, what: str) -> None:
    _read_op(r, (op,), what)


class OpCodeOf(Field):
    """The ``op_code`` field of a class that serves several op codes: ``u16``, one of
    ``op_codes``, kept as a member of ``codes``. Reading any other op code raises
    ``UnknownOpCode``, constructing with one ``ValueOutOfRange``."""

    __slots__ = ("codes", "group", "op_codes")

    def __init__(self, op_codes: frozenset[int], codes: type[IntEnum], group: str) -> None:
        super().__init__("op_code")
        self.op_codes = op_codes
        self.codes = codes
        self.group = group

    def read(self, r: Reader) -> Any:
        return self.codes(_read_op(r, self.op_codes, self.group))

    def write(self, w: Writer, value: Any) -> None:
        w.u16(int(value), "op code")

    def check(self, value: Any) -> Any:
        if int(value) not in self.op_codes:
            raise ValueOutOfRange(f"op code 0x{int(value):04X} is not a {self.group} op code")
        return self.codes(value)


class E2EFields(E2EValue):
    """An IDS value laid out as ``FIELDS`` (see :mod:`bridge.protocols.layout`), after its
    ``u16`` op code when ``OP_CODE`` gives the one op code this class stands for."""

    __slots__ = ()

    OP_CODE: ClassVar[int | None] = None
    FIELDS: ClassVar[Fields] = ()

    def __post_init__(self) -> None:
        check_fields(self, self.FIELDS)

    @classmethod
    def read(cls, r: Reader, e2e_counter: int | None = None) -> Self:
        if cls.OP_CODE is not None:
            _expect_op(r, cls.OP_CODE, cls.WHAT)
        values = read_fields(r, cls.FIELDS)
        values["e2e_counter"] = e2e_counter
        return cls(**values)

    def write(self, w: Writer) -> None:
        if self.OP_CODE is not None:
            w.u16(self.OP_CODE, "op code")
        write_fields(w, self, self.FIELDS)


# --------------------------------------------------------------------------------------------
# Enumerations shared by several characteristics and the history events
# --------------------------------------------------------------------------------------------


class TherapyControlState(IntEnum):
    """Therapy Control State (IDS 1.0 §3.2, IDD Status)."""

    UNDETERMINED = 0x0F
    STOP = 0x33
    PAUSE = 0x3C
    RUN = 0x55


class OperationalState(IntEnum):
    """Operational State of the Insulin Delivery Device (IDS 1.0 §3.2, IDD Status)."""

    UNDETERMINED = 0x0F
    OFF = 0x33
    STANDBY = 0x3C
    PREPARING = 0x55
    PRIMING = 0x5A
    WAITING = 0x66
    READY = 0x96


class AnnunciationType(IntEnum):
    """Annunciation Type (IDS 1.0 §3.3, IDD Annunciation Status); others are reserved."""

    SYSTEM_ISSUE = 0x000F
    MECHANICAL_ISSUE = 0x0033
    OCCLUSION_DETECTED = 0x003C
    RESERVOIR_ISSUE = 0x0055
    RESERVOIR_EMPTY = 0x005A
    RESERVOIR_LOW = 0x0066
    PRIMING_ISSUE = 0x0069
    INFUSION_SET_INCOMPLETE = 0x0096
    INFUSION_SET_DETACHED = 0x0099
    POWER_SOURCE_INSUFFICIENT = 0x00A5
    BATTERY_EMPTY = 0x00AA
    BATTERY_LOW = 0x00C3
    BATTERY_MEDIUM = 0x00CC
    BATTERY_FULL = 0x00F0
    TEMPERATURE_OUT_OF_RANGE = 0x00FF
    AIR_PRESSURE_OUT_OF_RANGE = 0x0303
    BOLUS_CANCELED = 0x030C
    TBR_OVER = 0x0330
    TBR_CANCELED = 0x033F
    MAX_DELIVERY = 0x0356
    DATE_TIME_ISSUE = 0x0359
    TEMPERATURE = 0x0365


class AnnunciationStatus(IntEnum):
    """Annunciation Status (IDS 1.0 §3.3, IDD Annunciation Status)."""

    UNDETERMINED = 0x0F
    PENDING = 0x33
    SNOOZED = 0x3C
    CONFIRMED = 0x55


class BolusType(IntEnum):
    """Bolus Type (IDS 1.0 §3.6, Set Bolus; also the bolus history events)."""

    UNDETERMINED = 0x0F
    FAST = 0x33
    EXTENDED = 0x3C
    MULTIWAVE = 0x55


class BolusActivationType(IntEnum):
    """Bolus Activation Type (IDS 1.0 §3.6, Set Bolus)."""

    UNDETERMINED = 0x0F
    MANUAL_BOLUS = 0x33
    RECOMMENDED_BOLUS = 0x3C
    MANUALLY_CHANGED_RECOMMENDED_BOLUS = 0x55
    COMMANDED_BOLUS = 0x5A


class BolusFlags(IntFlag):
    """Flags of Set Bolus, the Get Active Bolus Delivery Response and Bolus Programmed
    Part 2 (IDS 1.0 §3.6, §3.5); bits 5–7 are reserved."""

    BOLUS_DELAY_TIME_PRESENT = 1 << 0
    BOLUS_TEMPLATE_NUMBER_PRESENT = 1 << 1
    BOLUS_ACTIVATION_TYPE_PRESENT = 1 << 2
    BOLUS_DELIVERY_REASON_CORRECTION = 1 << 3
    BOLUS_DELIVERY_REASON_MEAL = 1 << 4


#: Bolus type, fast and extended amount (IU) and duration (min) of Set Bolus, the Get Active
#: Bolus Delivery Response (IDS 1.0 §3.6, §3.5) and Bolus Programmed / Delivered Part 1.
BOLUS_AMOUNT_FIELDS: Fields = (u8("bolus_type", BolusType), sfloat("fast_amount"),
                               sfloat("extended_amount"), u16("duration"))

#: The optional tail of Set Bolus, the Get Active Bolus Delivery Response and Bolus
#: Programmed Part 2, each present as its :class:`BolusFlags` bit says.
BOLUS_OPTION_FIELDS: Fields = (
    u16("delay_time", when=BolusFlags.BOLUS_DELAY_TIME_PRESENT),
    u8("template_number", when=BolusFlags.BOLUS_TEMPLATE_NUMBER_PRESENT),
    u8("activation_type", BolusActivationType, when=BolusFlags.BOLUS_ACTIVATION_TYPE_PRESENT))


class BolusAmounts:
    """The fast and extended amount of a bolus value in IU."""

    __slots__ = ()

    fast_amount: SFloat
    extended_amount: SFloat

    fast_amount_iu = AsFloat("fast_amount")
    extended_amount_iu = AsFloat("extended_amount")


class TbrType(IntEnum):
    """TBR Type (IDS 1.0 §3.6, Set TBR Adjustment)."""

    UNDETERMINED = 0x0F
    ABSOLUTE = 0x33
    RELATIVE = 0x3C


class DeliveryContext(IntEnum):
    """Basal / TBR Delivery Context (IDS 1.0 §3.5, §3.6): who commanded the delivery."""

    UNDETERMINED = 0x0F
    DEVICE_BASED = 0x33
    REMOTE_CONTROL = 0x3C
    AP_CONTROLLER = 0x55


# --------------------------------------------------------------------------------------------
# IDD Status Changed 0x2B20 (IDS 1.0 §3.1)
# --------------------------------------------------------------------------------------------


class IddStatusChangedFlags(IntFlag):
    """Which status parts changed since the client last reset them; bits 8–15 reserved."""

    THERAPY_CONTROL_STATE_CHANGED = 1 << 0
    OPERATIONAL_STATE_CHANGED = 1 << 1
    RESERVOIR_STATUS_CHANGED = 1 << 2
    ANNUNCIATION_STATUS_CHANGED = 1 << 3
    TOTAL_DAILY_INSULIN_STATUS_CHANGED = 1 << 4
    ACTIVE_BASAL_RATE_STATUS_CHANGED = 1 << 5
    ACTIVE_BOLUS_STATUS_CHANGED = 1 << 6
    HISTORY_EVENT_RECORDED = 1 << 7


@dataclass(frozen=True, slots=True)
class IddStatusChanged(E2EFields):
    """IDD Status Changed: one u16 bit field (+ E2E trailer)."""

    flags: IddStatusChangedFlags
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD Status Changed"
    FIELDS: ClassVar[Fields] = (u16("flags", IddStatusChangedFlags),)


# --------------------------------------------------------------------------------------------
# IDD Status 0x2B21 (IDS 1.0 §3.2)
# --------------------------------------------------------------------------------------------


class IddStatusFlags(IntFlag):
    """IDD Status flags; bits 1–7 are reserved."""

    RESERVOIR_ATTACHED = 1 << 0


@dataclass(frozen=True, slots=True)
class IddStatus(E2EFields):
    """IDD Status: therapy control state, operational state, reservoir remaining (IU)."""

    therapy_control_state: TherapyControlState | int
    operational_state: OperationalState | int
    reservoir_remaining_amount: SFloat
    flags: IddStatusFlags
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD Status"
    FIELDS: ClassVar[Fields] = (
        u8("therapy_control_state", TherapyControlState),
        u8("operational_state", OperationalState),
        sfloat("reservoir_remaining_amount"), u8("flags", IddStatusFlags))

    reservoir_remaining_iu = AsFloat("reservoir_remaining_amount")

    @property
    def reservoir_attached(self) -> bool:
        return IddStatusFlags.RESERVOIR_ATTACHED in self.flags


# --------------------------------------------------------------------------------------------
# IDD Annunciation Status 0x2B22 (IDS 1.0 §3.3)
# --------------------------------------------------------------------------------------------


class AnnunciationFlags(IntFlag):
    """IDD Annunciation Status flags; bits 6–7 are reserved."""

    ANNUNCIATION_PRESENT = 1 << 0
    AUX_INFO_1_PRESENT = 1 << 1
    AUX_INFO_2_PRESENT = 1 << 2
    AUX_INFO_3_PRESENT = 1 << 3
    AUX_INFO_4_PRESENT = 1 << 4
    AUX_INFO_5_PRESENT = 1 << 5


_AUX_BITS = (AnnunciationFlags.AUX_INFO_1_PRESENT, AnnunciationFlags.AUX_INFO_2_PRESENT,
             AnnunciationFlags.AUX_INFO_3_PRESENT, AnnunciationFlags.AUX_INFO_4_PRESENT,
             AnnunciationFlags.AUX_INFO_5_PRESENT)


@dataclass(frozen=True, slots=True)
class IddAnnunciationStatus(E2EFields):
    """IDD Annunciation Status: the most recent annunciation and up to five AuxInfo words.

    Layout: ``flags u8``, then if Annunciation Present ``instance id u16``, ``type u16``,
    ``status u8``; then each AuxInfo ``u16`` whose bit is set (the AuxInfo meaning is
    manufacturer-defined). The status field is read as **one octet**: UNCONFIRMED — the
    project reference lists it as u16, but IDS 1.0 §3.3 as recalled, the public IDS
    simulator and one of the two public parsers use uint8; the other parser reads u16.
    """

    flags: AnnunciationFlags
    annunciation_instance_id: int | None = None
    annunciation_type: AnnunciationType | int | None = None
    annunciation_status: AnnunciationStatus | int | None = None
    aux_info_1: int | None = None
    aux_info_2: int | None = None
    aux_info_3: int | None = None
    aux_info_4: int | None = None
    aux_info_5: int | None = None
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD Annunciation Status"
    FIELDS: ClassVar[Fields] = (
        u8("flags", AnnunciationFlags),
        u16("annunciation_instance_id", when=AnnunciationFlags.ANNUNCIATION_PRESENT),
        u16("annunciation_type", AnnunciationType, when=AnnunciationFlags.ANNUNCIATION_PRESENT),
        u8("annunciation_status", AnnunciationStatus,
           when=AnnunciationFlags.ANNUNCIATION_PRESENT),
        *(u16(f"aux_info_{i}", when=bit) for i, bit in enumerate(_AUX_BITS, 1)))

    @property
    def aux_info(self) -> tuple[int, ...]:
        """The AuxInfo words that are present, in order."""
        return tuple(v for v in (self.aux_info_1, self.aux_info_2, self.aux_info_3,
                                 self.aux_info_4, self.aux_info_5) if v is not None)


# --------------------------------------------------------------------------------------------
# IDD Features 0x2B23 (IDS 1.0 §3.4)
# --------------------------------------------------------------------------------------------


class IddFeatureFlags(IntFlag):
    """IDD Features flags (u24); bits 16–22 are reserved, bit 23 announces more octets."""

    E2E_PROTECTION_SUPPORTED = 1 << 0
    BASAL_RATE_SUPPORTED = 1 << 1
    TBR_ABSOLUTE_SUPPORTED = 1 << 2
    TBR_RELATIVE_SUPPORTED = 1 << 3
    TBR_TEMPLATE_SUPPORTED = 1 << 4
    FAST_BOLUS_SUPPORTED = 1 << 5
    EXTENDED_BOLUS_SUPPORTED = 1 << 6
    MULTIWAVE_BOLUS_SUPPORTED = 1 << 7
    BOLUS_DELAY_TIME_SUPPORTED = 1 << 8
    BOLUS_TEMPLATE_SUPPORTED = 1 << 9
    BOLUS_ACTIVATION_TYPE_SUPPORTED = 1 << 10
    MULTIPLE_BOND_SUPPORTED = 1 << 11
    ISF_PROFILE_TEMPLATE_SUPPORTED = 1 << 12
    I2CHO_RATIO_PROFILE_TEMPLATE_SUPPORTED = 1 << 13
    TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE_SUPPORTED = 1 << 14
    INSULIN_ON_BOARD_SUPPORTED = 1 << 15
    FEATURE_EXTENSION = 1 << 23


#: E2E-CRC value of IDD Features when E2E-Protection is not supported (IDS 1.0 §3.4).
E2E_CRC_NOT_SUPPORTED = 0xFFFF


@dataclass(frozen=True, slots=True)
class IddFeatures:
    """IDD Features: ``E2E-CRC u16``, ``E2E-Counter u8``, insulin concentration SFLOAT
    (IU/mL), ``flags u24`` — the CRC and counter come first here (IDS 1.0 §3.4).

    When E2E-Protection Supported is set the CRC covers every byte after it: decoding checks
    it (``CrcMismatch`` at offset 0) and construction recomputes it, so a value always encodes
    with a valid CRC. Otherwise the field should be 0xFFFF and is kept as received. With
    Feature Extension (bit 23) set, further octets may follow; their layout is not defined in
    IDS 1.0 and they are kept in ``extension``.
    """

    insulin_concentration: SFloat
    flags: IddFeatureFlags
    e2e_counter: int = 0
    e2e_crc: int = E2E_CRC_NOT_SUPPORTED
    extension: bytes = b""

    def __post_init__(self) -> None:
        check_uint(int(self.flags), 24, "feature flags")
        check_uint(self.e2e_counter, 8, "E2E-Counter")
        check_uint(self.e2e_crc, 16, "E2E-CRC")
        object.__setattr__(self, "flags", IddFeatureFlags(self.flags))
        if self.extension and IddFeatureFlags.FEATURE_EXTENSION not in self.flags:
            raise ValueOutOfRange("extension octets need the Feature Extension flag")
        if self.e2e_supported:
            object.__setattr__(self, "e2e_crc", crc16_mcrf4xx(self._protected_part()))

    @classmethod
    def create(cls, insulin_concentration: SFloat, flags: IddFeatureFlags,
               e2e_counter: int = 0) -> Self:
        """A Features value with the right E2E-CRC for ``flags`` (0xFFFF without E2E)."""
        return cls(insulin_concentration, flags, e2e_counter)

    @property
    def e2e_supported(self) -> bool:
        return IddFeatureFlags.E2E_PROTECTION_SUPPORTED in self.flags

    insulin_concentration_iu_per_ml = AsFloat("insulin_concentration")

    def _protected_part(self) -> bytes:
        w = Writer().u8(self.e2e_counter, "E2E-Counter")
        write_sfloat(w, self.insulin_concentration, "insulin concentration")
        return bytes(w.u24(int(self.flags), "flags").raw(self.extension))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        crc = r.u16("E2E-CRC")
        counter = r.u8("E2E-Counter")
        concentration = read_sfloat(r, "insulin concentration")
        flags = IddFeatureFlags(r.u24("flags"))
        extension = r.rest() if IddFeatureFlags.FEATURE_EXTENSION in flags else b""
        r.expect_end("IDD Features")
        if IddFeatureFlags.E2E_PROTECTION_SUPPORTED in flags:
            computed = crc16_mcrf4xx(r.data[2:])
            if computed != crc:
                raise CrcMismatch("IDD Features: E2E-CRC does not match", r.data, 0,
                                  expected=computed, received=crc)
        return cls(concentration, flags, counter, crc, extension)

    def __bytes__(self) -> bytes:
        return bytes(Writer().u16(self.e2e_crc, "E2E-CRC").raw(self._protected_part()))


# --------------------------------------------------------------------------------------------
# Response codes of the IDD Status Reader and Command Control Points (IDS 1.0 §3.5, §3.6)
# --------------------------------------------------------------------------------------------


class IddResponseCode(IntEnum):
    """Response Code Value of the Status Reader CP and the Command CP."""

    SUCCESS = 0x0F
    OP_CODE_NOT_SUPPORTED = 0x70
    INVALID_OPERAND = 0x71
    PROCEDURE_NOT_COMPLETED = 0x72
    PARAMETER_OUT_OF_RANGE = 0x73
    PROCEDURE_NOT_APPLICABLE = 0x74
    PLAUSIBILITY_CHECK_FAILED = 0x75
    MAXIMUM_BOLUS_NUMBER_REACHED = 0x76


# --------------------------------------------------------------------------------------------
# IDD Status Reader Control Point 0x2B24 (IDS 1.0 §3.5)
# --------------------------------------------------------------------------------------------


class StatusReaderOpCode(IntEnum):
    """Op codes of the IDD Status Reader CP (IDS 1.0 §3.5, op code table).

    Requests and their responses alternate; both public IDS implementations agree on these
    values. Only RESET_STATUS changes anything on the device (it clears Status Changed bits).
    """

    RESPONSE_CODE = 0x0303
    RESET_STATUS = 0x030C
    GET_ACTIVE_BOLUS_IDS = 0x0330
    GET_ACTIVE_BOLUS_IDS_RESPONSE = 0x033F
    GET_ACTIVE_BOLUS_DELIVERY = 0x0356
    GET_ACTIVE_BOLUS_DELIVERY_RESPONSE = 0x0359
    GET_ACTIVE_BASAL_RATE_DELIVERY = 0x0365
    GET_ACTIVE_BASAL_RATE_DELIVERY_RESPONSE = 0x036A
    GET_TOTAL_DAILY_INSULIN_STATUS = 0x0395
    GET_TOTAL_DAILY_INSULIN_STATUS_RESPONSE = 0x039A
    GET_COUNTER = 0x03A6
    GET_COUNTER_RESPONSE = 0x03A9
    GET_DELIVERED_INSULIN = 0x03C0
    GET_DELIVERED_INSULIN_RESPONSE = 0x03CF
    GET_INSULIN_ON_BOARD = 0x03F3
    GET_INSULIN_ON_BOARD_RESPONSE = 0x03FC


#: Status Reader op codes that change device state (the read-only bridge never writes them).
STATUS_READER_ACTING_OP_CODES = frozenset({StatusReaderOpCode.RESET_STATUS})


class BolusValueSelection(IntEnum):
    """Which amounts Get Active Bolus Delivery reports (IDS 1.0 §3.5)."""

    PROGRAMMED = 0x0F
    REMAINING = 0x33
    DELIVERED = 0x3C


class CounterType(IntEnum):
    """Counter Type of Get Counter (IDS 1.0 §3.5). UNCONFIRMED beyond the first two."""

    LIFETIME = 0x0F
    WARRANTY_TIME = 0x33
    LOANER_TIME = 0x3C
    RESERVOIR_INSULIN_OPERATION_TIME = 0x55


class CounterValueSelection(IntEnum):
    """Counter Value Selection of Get Counter (IDS 1.0 §3.5). UNCONFIRMED."""

    REMAINING = 0x0F
    ELAPSED = 0x33


#: Counter type and value selection of Get Counter and its response (IDS 1.0 §3.5).
_COUNTER_FIELDS: Fields = (u8("counter_type", CounterType),
                           u8("value_selection", CounterValueSelection,
                              what="counter value selection"))


@dataclass(frozen=True, slots=True)
class StatusReaderRequest(E2EFields):
    """A Status Reader request without operand (the Get … procedures that take none)."""

    op_code: StatusReaderOpCode
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD Status Reader CP request"
    OP_CODES: ClassVar[frozenset[int]] = frozenset({
        StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS,
        StatusReaderOpCode.GET_ACTIVE_BASAL_RATE_DELIVERY,
        StatusReaderOpCode.GET_TOTAL_DAILY_INSULIN_STATUS,
        StatusReaderOpCode.GET_DELIVERED_INSULIN,
        StatusReaderOpCode.GET_INSULIN_ON_BOARD,
    })
    FIELDS: ClassVar[Fields] = (OpCodeOf(OP_CODES, StatusReaderOpCode, WHAT),)


@dataclass(frozen=True, slots=True)
class ResetStatus(E2EFields):
    """Reset Status (0x030C): clears the given IDD Status Changed bits. Acts on the device."""

    flags: IddStatusChangedFlags
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Reset Status"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.RESET_STATUS
    FIELDS: ClassVar[Fields] = (u16("flags", IddStatusChangedFlags, what="reset flags"),)


@dataclass(frozen=True, slots=True)
class GetActiveBolusDelivery(E2EFields):
    """Get Active Bolus Delivery (0x0356): ``bolus id u16``, ``value selection u8``."""

    bolus_id: int
    value_selection: BolusValueSelection | int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Active Bolus Delivery"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_ACTIVE_BOLUS_DELIVERY
    FIELDS: ClassVar[Fields] = (
        u16("bolus_id"), u8("value_selection", BolusValueSelection, what="bolus value selection"))


@dataclass(frozen=True, slots=True)
class GetCounter(E2EFields):
    """Get Counter (0x03A6): ``counter type u8``, ``counter value selection u8``."""

    counter_type: CounterType | int
    value_selection: CounterValueSelection | int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Counter"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_COUNTER
    FIELDS: ClassVar[Fields] = _COUNTER_FIELDS


@dataclass(frozen=True, slots=True)
class StatusReaderResponse(E2EFields):
    """Response Code (0x0303): ``request op code u16``, ``response code u8``."""

    request_op_code: StatusReaderOpCode | int
    response_code: IddResponseCode | int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Status Reader Response Code"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.RESPONSE_CODE
    FIELDS: ClassVar[Fields] = (u16("request_op_code", StatusReaderOpCode),
                                u8("response_code", IddResponseCode))


@dataclass(frozen=True, slots=True)
class ActiveBolusIdsResponse(E2EValue):
    """Get Active Bolus IDs Response (0x033F): ``count u8`` then ``bolus id u16`` each."""

    bolus_ids: tuple[int, ...]
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Active Bolus IDs Response"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bolus_ids", tuple(self.bolus_ids))
        check_uint(len(self.bolus_ids), 8, "number of active boluses")
        for b in self.bolus_ids:
            check_uint(b, 16, "bolus id")

    @classmethod
    def read(cls, r: Reader, e2e_counter: int | None = None) -> Self:
        _expect_op(r, StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS_RESPONSE, cls.WHAT)
        count = r.u8("number of active boluses")
        if 2 * count > r.remaining:
            raise TruncatedFrame(f"{count} bolus ids need {2 * count} bytes, "
                                 f"only {r.remaining} remain", r.data, r.offset)
        return cls(tuple(r.u16("bolus id") for _ in range(count)), e2e_counter)

    def write(self, w: Writer) -> None:
        w.u16(StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS_RESPONSE, "op code")
        w.u8(len(self.bolus_ids), "number of active boluses")
        for b in self.bolus_ids:
            w.u16(b, "bolus id")


@dataclass(frozen=True, slots=True)
class ActiveBolusDeliveryResponse(E2EFields, BolusAmounts):
    """Get Active Bolus Delivery Response (0x0359).

    ``flags u8`` (:class:`BolusFlags`), ``bolus id u16``, ``bolus type u8``, fast amount and
    extended amount SFLOAT (IU), ``duration u16`` (min), then ``[delay time u16 min]``,
    ``[template number u8]``, ``[activation type u8]`` as flagged.
    """

    flags: BolusFlags
    bolus_id: int
    bolus_type: BolusType | int
    fast_amount: SFloat
    extended_amount: SFloat
    duration: int
    delay_time: int | None = None
    template_number: int | None = None
    activation_type: BolusActivationType | int | None = None
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Active Bolus Delivery Response"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_ACTIVE_BOLUS_DELIVERY_RESPONSE
    FIELDS: ClassVar[Fields] = (u8("flags", BolusFlags), u16("bolus_id"), *BOLUS_AMOUNT_FIELDS,
                                *BOLUS_OPTION_FIELDS)


class ActiveBasalRateFlags(IntFlag):
    """Flags of the Get Active Basal Rate Delivery Response; bits 3–7 reserved."""

    TBR_PRESENT = 1 << 0
    TBR_TEMPLATE_NUMBER_PRESENT = 1 << 1
    BASAL_DELIVERY_CONTEXT_PRESENT = 1 << 2


@dataclass(frozen=True, slots=True)
class ActiveBasalRateDeliveryResponse(E2EFields):
    """Get Active Basal Rate Delivery Response (0x036A).

    ``flags u8``, ``active basal rate profile template number u8``, ``current config value
    SFLOAT`` (IU/h); with TBR Present: ``TBR type u8``, ``TBR adjustment value SFLOAT``,
    ``TBR duration programmed u16`` and ``TBR duration remaining u16`` (min); then
    ``[TBR template number u8]`` and ``[basal delivery context u8]`` as flagged.
    """

    flags: ActiveBasalRateFlags
    template_number: int
    current_config_value: SFloat
    tbr_type: TbrType | int | None = None
    tbr_adjustment_value: SFloat | None = None
    tbr_duration_programmed: int | None = None
    tbr_duration_remaining: int | None = None
    tbr_template_number: int | None = None
    basal_delivery_context: DeliveryContext | int | None = None
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Active Basal Rate Delivery Response"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_ACTIVE_BASAL_RATE_DELIVERY_RESPONSE
    FIELDS: ClassVar[Fields] = (
        u8("flags", ActiveBasalRateFlags), u8("template_number"), sfloat("current_config_value"),
        u8("tbr_type", TbrType, when=ActiveBasalRateFlags.TBR_PRESENT),
        sfloat("tbr_adjustment_value", when=ActiveBasalRateFlags.TBR_PRESENT),
        u16("tbr_duration_programmed", when=ActiveBasalRateFlags.TBR_PRESENT),
        u16("tbr_duration_remaining", when=ActiveBasalRateFlags.TBR_PRESENT),
        u8("tbr_template_number", when=ActiveBasalRateFlags.TBR_TEMPLATE_NUMBER_PRESENT),
        u8("basal_delivery_context", DeliveryContext,
           when=ActiveBasalRateFlags.BASAL_DELIVERY_CONTEXT_PRESENT))

    current_basal_rate_iu_per_h = AsFloat("current_config_value")


@dataclass(frozen=True, slots=True)
class TotalDailyInsulinStatusResponse(E2EFields):
    """Get Total Daily Insulin Status Response (0x039A): bolus, basal and bolus + basal
    delivered today, three SFLOAT in IU."""

    bolus_delivered: SFloat
    basal_delivered: SFloat
    bolus_and_basal_delivered: SFloat
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Total Daily Insulin Status Response"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_TOTAL_DAILY_INSULIN_STATUS_RESPONSE
    FIELDS: ClassVar[Fields] = (sfloat("bolus_delivered"), sfloat("basal_delivered"),
                                sfloat("bolus_and_basal_delivered"))

    bolus_iu = AsFloat("bolus_delivered")
    basal_iu = AsFloat("basal_delivered")
    total_iu = AsFloat("bolus_and_basal_delivered")


@dataclass(frozen=True, slots=True)
class CounterResponse(E2EFields):
    """Get Counter Response (0x03A9): ``counter type u8``, ``value selection u8``,
    ``counter value s32`` (minutes)."""

    counter_type: CounterType | int
    value_selection: CounterValueSelection | int
    counter_value: int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Counter Response"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_COUNTER_RESPONSE
    FIELDS: ClassVar[Fields] = (*_COUNTER_FIELDS, Sint("counter_value", 4))


@dataclass(frozen=True, slots=True)
class DeliveredInsulinResponse(E2EFields):
    """Get Delivered Insulin Response (0x03CF): bolus and basal amount delivered since the
    device was made, two 32-bit FLOAT in IU (IDS 1.0 §3.5)."""

    bolus_delivered: MderFloat
    basal_delivered: MderFloat
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Delivered Insulin Response"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_DELIVERED_INSULIN_RESPONSE
    FIELDS: ClassVar[Fields] = (FloatField("bolus_delivered", what="bolus amount delivered"),
                                FloatField("basal_delivered", what="basal amount delivered"))

    bolus_iu = AsFloat("bolus_delivered")
    basal_iu = AsFloat("basal_delivered")


class InsulinOnBoardFlags(IntFlag):
    """Flags of the Get Insulin On Board Response; bits 1–7 reserved."""

    REMAINING_DURATION_PRESENT = 1 << 0


@dataclass(frozen=True, slots=True)
class InsulinOnBoardResponse(E2EFields):
    """Get Insulin On Board Response (0x03FC): ``flags u8``, ``insulin on board SFLOAT``
    (IU), ``[remaining duration u16 min]``."""

    flags: InsulinOnBoardFlags
    insulin_on_board: SFloat
    remaining_duration: int | None = None
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Insulin On Board Response"
    OP_CODE: ClassVar[int | None] = StatusReaderOpCode.GET_INSULIN_ON_BOARD_RESPONSE
    FIELDS: ClassVar[Fields] = (
        u8("flags", InsulinOnBoardFlags), sfloat("insulin_on_board"),
        u16("remaining_duration", when=InsulinOnBoardFlags.REMAINING_DURATION_PRESENT))

    insulin_on_board_iu = AsFloat("insulin_on_board")


StatusReaderMessage = (StatusReaderRequest | ResetStatus | GetActiveBolusDelivery | GetCounter
                       | StatusReaderResponse | ActiveBolusIdsResponse
                       | ActiveBolusDeliveryResponse | ActiveBasalRateDeliveryResponse
                       | TotalDailyInsulinStatusResponse | CounterResponse
                       | DeliveredInsulinResponse | InsulinOnBoardResponse)

_STATUS_READER_CLASSES: dict[int, Callable[[Reader, int | None], StatusReaderMessage]] = {
    **{op: StatusReaderRequest.read for op in StatusReaderRequest.OP_CODES},
    StatusReaderOpCode.RESET_STATUS: ResetStatus.read,
    StatusReaderOpCode.GET_ACTIVE_BOLUS_DELIVERY: GetActiveBolusDelivery.read,
    StatusReaderOpCode.GET_COUNTER: GetCounter.read,
    StatusReaderOpCode.RESPONSE_CODE: StatusReaderResponse.read,
    StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS_RESPONSE: ActiveBolusIdsResponse.read,
    StatusReaderOpCode.GET_ACTIVE_BOLUS_DELIVERY_RESPONSE: ActiveBolusDeliveryResponse.read,
    StatusReaderOpCode.GET_ACTIVE_BASAL_RATE_DELIVERY_RESPONSE:
        ActiveBasalRateDeliveryResponse.read,
    StatusReaderOpCode.GET_TOTAL_DAILY_INSULIN_STATUS_RESPONSE:
        TotalDailyInsulinStatusResponse.read,
    StatusReaderOpCode.GET_COUNTER_RESPONSE: CounterResponse.read,
    StatusReaderOpCode.GET_DELIVERED_INSULIN_RESPONSE: DeliveredInsulinResponse.read,
    StatusReaderOpCode.GET_INSULIN_ON_BOARD_RESPONSE: InsulinOnBoardResponse.read,
}
assert set(_STATUS_READER_CLASSES) == set(StatusReaderOpCode)


def parse_status_reader_cp(data: bytes, e2e: bool = False) -> StatusReaderMessage:
    """Decode any IDD Status Reader CP value, choosing the class by op code."""
    return _parse_by_op(data, e2e, "IDD Status Reader CP", _STATUS_READER_CLASSES)


# --------------------------------------------------------------------------------------------
# IDD Command Control Point 0x2B25 and IDD Command Data 0x2B26 (IDS 1.0 §3.6, §3.7)
# --------------------------------------------------------------------------------------------


class CommandOpCode(IntEnum):
    """Op codes of the IDD Command CP (IDS 1.0 §3.6, op code table).

    The project reference notes a second source giving Cancel Bolus / Get Available Boluses
    as 0x11A4 / 0x11C3. Both public IDS implementations (the Python IDS simulator and the
    Android IDD parser) use 0x1178 / 0x1188, which also pair with their responses 0x1187 /
    0x11B4 in the same ascending sequence as every other request/response pair; those are
    used here. 0x11A4 and 0x11C3 are not op codes of this table and raise UnknownOpCode.
    """

    RESPONSE_CODE = 0x0F55
    SET_THERAPY_CONTROL_STATE = 0x0F5A
    SET_FLIGHT_MODE = 0x0F66
    SNOOZE_ANNUNCIATION = 0x0F69
    SNOOZE_ANNUNCIATION_RESPONSE = 0x0F96
    CONFIRM_ANNUNCIATION = 0x0F99
    CONFIRM_ANNUNCIATION_RESPONSE = 0x0FA5
    READ_BASAL_RATE_PROFILE_TEMPLATE = 0x0FAA
    READ_BASAL_RATE_PROFILE_TEMPLATE_RESPONSE = 0x0FC3
    WRITE_BASAL_RATE_PROFILE_TEMPLATE = 0x0FCC
    WRITE_BASAL_RATE_PROFILE_TEMPLATE_RESPONSE = 0x0FF0
    SET_TBR_ADJUSTMENT = 0x0FFF
    CANCEL_TBR_ADJUSTMENT = 0x1111
    GET_TBR_TEMPLATE = 0x111E
    GET_TBR_TEMPLATE_RESPONSE = 0x1122
    SET_TBR_TEMPLATE = 0x112D
    SET_TBR_TEMPLATE_RESPONSE = 0x1144
    SET_BOLUS = 0x114B
    SET_BOLUS_RESPONSE = 0x1177
    CANCEL_BOLUS = 0x1178
    CANCEL_BOLUS_RESPONSE = 0x1187
    GET_AVAILABLE_BOLUSES = 0x1188
    GET_AVAILABLE_BOLUSES_RESPONSE = 0x11B4
    GET_BOLUS_TEMPLATE = 0x11BB
    GET_BOLUS_TEMPLATE_RESPONSE = 0x11D2
    SET_BOLUS_TEMPLATE = 0x11DD
    SET_BOLUS_TEMPLATE_RESPONSE = 0x11E1
    GET_TEMPLATE_STATUS_AND_DETAILS = 0x11EE
    GET_TEMPLATE_STATUS_AND_DETAILS_RESPONSE = 0x1212
    RESET_TEMPLATE_STATUS = 0x121D
    RESET_TEMPLATE_STATUS_RESPONSE = 0x1221
    ACTIVATE_PROFILE_TEMPLATES = 0x122E
    ACTIVATE_PROFILE_TEMPLATES_RESPONSE = 0x1247
    GET_ACTIVATED_PROFILE_TEMPLATES = 0x1248
    GET_ACTIVATED_PROFILE_TEMPLATES_RESPONSE = 0x1274
    START_PRIMING = 0x127B
    STOP_PRIMING = 0x1284
    SET_INITIAL_RESERVOIR_FILL_LEVEL = 0x128B
    RESET_RESERVOIR_INSULIN_OPERATION_TIME = 0x12B7
    READ_ISF_PROFILE_TEMPLATE = 0x12B8
    READ_ISF_PROFILE_TEMPLATE_RESPONSE = 0x12D1
    WRITE_ISF_PROFILE_TEMPLATE = 0x12DE
    WRITE_ISF_PROFILE_TEMPLATE_RESPONSE = 0x12E2
    READ_I2CHO_RATIO_PROFILE_TEMPLATE = 0x12ED
    READ_I2CHO_RATIO_PROFILE_TEMPLATE_RESPONSE = 0x1414
    WRITE_I2CHO_RATIO_PROFILE_TEMPLATE = 0x141B
    WRITE_I2CHO_RATIO_PROFILE_TEMPLATE_RESPONSE = 0x1427
    READ_TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE = 0x1428
    READ_TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE_RESPONSE = 0x1441
    WRITE_TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE = 0x144E
    WRITE_TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE_RESPONSE = 0x1472
    GET_MAX_BOLUS_AMOUNT = 0x147D
    GET_MAX_BOLUS_AMOUNT_RESPONSE = 0x1482
    SET_MAX_BOLUS_AMOUNT = 0x148D


class CommandRole(Enum):
    """What a Command CP op code does, for the read-only guard and for logs."""

    ACTS = "sets, writes, starts, stops or cancels something on the device"
    READS = "asks the device for data; changes nothing"
    RESPONDS = "sent by the device in answer to a request"


_C = CommandOpCode

#: Every Command CP op code that changes therapy or device state. The bridge is read-only
#: and refuses every Command CP write anyway; this set names what was refused and why.
COMMAND_CP_ACTING_OP_CODES: frozenset[CommandOpCode] = frozenset({
    _C.SET_THERAPY_CONTROL_STATE, _C.SET_FLIGHT_MODE,
    _C.SNOOZE_ANNUNCIATION, _C.CONFIRM_ANNUNCIATION,
    _C.WRITE_BASAL_RATE_PROFILE_TEMPLATE,
    _C.SET_TBR_ADJUSTMENT, _C.CANCEL_TBR_ADJUSTMENT, _C.SET_TBR_TEMPLATE,
    _C.SET_BOLUS, _C.CANCEL_BOLUS, _C.SET_BOLUS_TEMPLATE,
    _C.RESET_TEMPLATE_STATUS, _C.ACTIVATE_PROFILE_TEMPLATES,
    _C.START_PRIMING, _C.STOP_PRIMING,
    _C.SET_INITIAL_RESERVOIR_FILL_LEVEL, _C.RESET_RESERVOIR_INSULIN_OPERATION_TIME,
    _C.WRITE_ISF_PROFILE_TEMPLATE, _C.WRITE_I2CHO_RATIO_PROFILE_TEMPLATE,
    _C.WRITE_TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE,
    _C.SET_MAX_BOLUS_AMOUNT,
})

#: Command CP requests that only read (still Command CP writes, so still refused).
COMMAND_CP_READING_OP_CODES: frozenset[CommandOpCode] = frozenset({
    _C.READ_BASAL_RATE_PROFILE_TEMPLATE, _C.GET_TBR_TEMPLATE, _C.GET_AVAILABLE_BOLUSES,
    _C.GET_BOLUS_TEMPLATE, _C.GET_TEMPLATE_STATUS_AND_DETAILS,
    _C.GET_ACTIVATED_PROFILE_TEMPLATES, _C.READ_ISF_PROFILE_TEMPLATE,
    _C.READ_I2CHO_RATIO_PROFILE_TEMPLATE, _C.READ_TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE,
    _C.GET_MAX_BOLUS_AMOUNT,
})

#: Op codes only the device sends (Response Code and the … Response op codes).
COMMAND_CP_RESPONSE_OP_CODES: frozenset[CommandOpCode] = frozenset(
    set(CommandOpCode) - COMMAND_CP_ACTING_OP_CODES - COMMAND_CP_READING_OP_CODES)

COMMAND_ROLES: Mapping[CommandOpCode, CommandRole] = {
    op: (CommandRole.ACTS if op in COMMAND_CP_ACTING_OP_CODES
         else CommandRole.READS if op in COMMAND_CP_READING_OP_CODES
         else CommandRole.RESPONDS)
    for op in CommandOpCode
}
assert all(op == _C.RESPONSE_CODE or op.name.endswith("_RESPONSE")
           for op in COMMAND_CP_RESPONSE_OP_CODES)


def describe_command_op_code(op_code: int) -> str:
    """``NAME (0xNNNN): role`` for logs and refusals; reserved codes are named as such."""
    member = CommandOpCode._value2member_map_.get(op_code)
    if not isinstance(member, CommandOpCode):
        return f"reserved Command CP op code 0x{op_code:04X}"
    return f"{member.name} (0x{op_code:04X}): {COMMAND_ROLES[member].value}"


def _op_group(*ops: CommandOpCode) -> frozenset[int]:
    return frozenset(int(op) for op in ops)


@dataclass(frozen=True, slots=True)
class CommandRequest(E2EFields):
    """A Command CP op code without operand (Set Flight Mode, Cancel TBR Adjustment, Stop
    Priming, Get Available Boluses, …)."""

    op_code: CommandOpCode
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD Command CP request without operand"
    OP_CODES: ClassVar[frozenset[int]] = _op_group(
        _C.SET_FLIGHT_MODE, _C.CANCEL_TBR_ADJUSTMENT, _C.GET_AVAILABLE_BOLUSES,
        _C.GET_TEMPLATE_STATUS_AND_DETAILS, _C.GET_ACTIVATED_PROFILE_TEMPLATES,
        _C.STOP_PRIMING, _C.RESET_RESERVOIR_INSULIN_OPERATION_TIME, _C.GET_MAX_BOLUS_AMOUNT)
    FIELDS: ClassVar[Fields] = (OpCodeOf(OP_CODES, CommandOpCode, WHAT),)


@dataclass(frozen=True, slots=True)
class SetTherapyControlState(E2EFields):
    """Set Therapy Control State (0x0F5A): ``state u8``. Acts on the device."""

    state: TherapyControlState | int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Set Therapy Control State"
    OP_CODE: ClassVar[int | None] = _C.SET_THERAPY_CONTROL_STATE
    FIELDS: ClassVar[Fields] = (
        u8("state", TherapyControlState, what="therapy control state"),)


@dataclass(frozen=True, slots=True)
class AnnunciationCommand(E2EFields):
    """Snooze / Confirm Annunciation and their responses: ``annunciation instance id u16``."""

    op_code: CommandOpCode
    annunciation_instance_id: int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "annunciation command"
    OP_CODES: ClassVar[frozenset[int]] = _op_group(
        _C.SNOOZE_ANNUNCIATION, _C.SNOOZE_ANNUNCIATION_RESPONSE,
        _C.CONFIRM_ANNUNCIATION, _C.CONFIRM_ANNUNCIATION_RESPONSE)
    FIELDS: ClassVar[Fields] = (OpCodeOf(OP_CODES, CommandOpCode, WHAT),
                                u16("annunciation_instance_id"))


class TbrFlags(IntFlag):
    """Flags of Set TBR Adjustment (IDS 1.0 §3.6); bits 3–7 reserved."""

    TBR_TEMPLATE_NUMBER_PRESENT = 1 << 0
    TBR_DELIVERY_CONTEXT_PRESENT = 1 << 1
    CHANGE_TBR = 1 << 2


#: The optional tail of Set TBR Adjustment and of the TBR Adjustment Started / Changed
#: history events (their flags give the same two bits).
TBR_OPTION_FIELDS: Fields = (
    u8("template_number", when=TbrFlags.TBR_TEMPLATE_NUMBER_PRESENT),
    u8("delivery_context", DeliveryContext, when=TbrFlags.TBR_DELIVERY_CONTEXT_PRESENT))


@dataclass(frozen=True, slots=True)
class SetTbrAdjustment(E2EFields):
    """Set TBR Adjustment (0x0FFF). Acts on the device.

    ``flags u8``, ``TBR type u8``, ``TBR adjustment value SFLOAT`` (IU/h when absolute, a
    dimensionless factor when relative), ``TBR duration u16`` (min), ``[TBR template
    number u8]``, ``[TBR delivery context u8]``.
    """

    flags: TbrFlags
    tbr_type: TbrType | int
    adjustment_value: SFloat
    duration: int
    template_number: int | None = None
    delivery_context: DeliveryContext | int | None = None
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Set TBR Adjustment"
    OP_CODE: ClassVar[int | None] = _C.SET_TBR_ADJUSTMENT
    FIELDS: ClassVar[Fields] = (u8("flags", TbrFlags), u8("tbr_type", TbrType),
                                sfloat("adjustment_value"), u16("duration"), *TBR_OPTION_FIELDS)


@dataclass(frozen=True, slots=True)
class SetBolus(E2EFields, BolusAmounts):
    """Set Bolus (0x114B). Acts on the device.

    ``flags u8`` (:class:`BolusFlags`), ``bolus type u8``, fast and extended amount SFLOAT
    (IU), ``duration u16`` (min), ``[delay time u16 min]``, ``[template number u8]``,
    ``[activation type u8]``.
    """

    flags: BolusFlags
    bolus_type: BolusType | int
    fast_amount: SFloat
    extended_amount: SFloat
    duration: int
    delay_time: int | None = None
    template_number: int | None = None
    activation_type: BolusActivationType | int | None = None
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Set Bolus"
    OP_CODE: ClassVar[int | None] = _C.SET_BOLUS
    FIELDS: ClassVar[Fields] = (u8("flags", BolusFlags), *BOLUS_AMOUNT_FIELDS,
                                *BOLUS_OPTION_FIELDS)


@dataclass(frozen=True, slots=True)
class BolusIdCommand(E2EFields):
    """Set Bolus Response, Cancel Bolus and Cancel Bolus Response: ``bolus id u16``."""

    op_code: CommandOpCode
    bolus_id: int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "bolus id command"
    OP_CODES: ClassVar[frozenset[int]] = _op_group(
        _C.SET_BOLUS_RESPONSE, _C.CANCEL_BOLUS, _C.CANCEL_BOLUS_RESPONSE)
    FIELDS: ClassVar[Fields] = (OpCodeOf(OP_CODES, CommandOpCode, WHAT), u16("bolus_id"))


class AvailableBolusesFlags(IntFlag):
    """Get Available Boluses Response flags (IDS 1.0 §3.6); bits 3–7 reserved."""

    FAST_BOLUS_AVAILABLE = 1 << 0
    EXTENDED_BOLUS_AVAILABLE = 1 << 1
    MULTIWAVE_BOLUS_AVAILABLE = 1 << 2


@dataclass(frozen=True, slots=True)
class AvailableBolusesResponse(E2EFields):
    """Get Available Boluses Response (0x11B4): ``flags u8``."""

    flags: AvailableBolusesFlags
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Get Available Boluses Response"
    OP_CODE: ClassVar[int | None] = _C.GET_AVAILABLE_BOLUSES_RESPONSE
    FIELDS: ClassVar[Fields] = (
        u8("flags", AvailableBolusesFlags, what="available boluses flags"),)


@dataclass(frozen=True, slots=True)
class AmountCommand(E2EFields):
    """Op codes whose operand is one SFLOAT in IU: Start Priming, Set Initial Reservoir Fill
    Level, Set Max Bolus Amount and the Get Max Bolus Amount Response."""

    op_code: CommandOpCode
    amount: SFloat
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "amount command"
    OP_CODES: ClassVar[frozenset[int]] = _op_group(
        _C.START_PRIMING, _C.SET_INITIAL_RESERVOIR_FILL_LEVEL, _C.SET_MAX_BOLUS_AMOUNT,
        _C.GET_MAX_BOLUS_AMOUNT_RESPONSE)
    FIELDS: ClassVar[Fields] = (OpCodeOf(OP_CODES, CommandOpCode, WHAT), sfloat("amount"))

    amount_iu = AsFloat("amount")


@dataclass(frozen=True, slots=True)
class CommandResponse(E2EFields):
    """Response Code (0x0F55): ``request op code u16``, ``response code u8``."""

    request_op_code: CommandOpCode | int
    response_code: IddResponseCode | int
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "Command CP Response Code"
    OP_CODE: ClassVar[int | None] = _C.RESPONSE_CODE
    FIELDS: ClassVar[Fields] = (u16("request_op_code", CommandOpCode),
                                u8("response_code", IddResponseCode))

    @property
    def is_success(self) -> bool:
        return self.response_code == IddResponseCode.SUCCESS


_MODELLED_COMMAND_OPS: frozenset[int] = (
    CommandRequest.OP_CODES | AnnunciationCommand.OP_CODES | BolusIdCommand.OP_CODES
    | AmountCommand.OP_CODES
    | _op_group(_C.SET_THERAPY_CONTROL_STATE, _C.SET_TBR_ADJUSTMENT, _C.SET_BOLUS,
                _C.GET_AVAILABLE_BOLUSES_RESPONSE, _C.RESPONSE_CODE))


@dataclass(frozen=True, slots=True)
class CommandRaw(E2EFields):
    """A Command CP value whose operand is not modelled (the template procedures): the op
    code and its operand bytes, kept exactly."""

    op_code: CommandOpCode
    operand: bytes = b""
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD Command CP"
    OP_CODES: ClassVar[frozenset[int]] = frozenset(
        int(op) for op in CommandOpCode if op not in _MODELLED_COMMAND_OPS)
    FIELDS: ClassVar[Fields] = (OpCodeOf(OP_CODES, CommandOpCode, WHAT), Rest("operand"))


CommandMessage = (CommandRequest | SetTherapyControlState | AnnunciationCommand
                  | SetTbrAdjustment | SetBolus | BolusIdCommand | AvailableBolusesResponse
                  | AmountCommand | CommandResponse | CommandRaw)

_COMMAND_CLASSES: dict[int, Callable[[Reader, int | None], CommandMessage]] = {
    **dict.fromkeys(CommandRequest.OP_CODES, CommandRequest.read),
    **dict.fromkeys(AnnunciationCommand.OP_CODES, AnnunciationCommand.read),
    **dict.fromkeys(BolusIdCommand.OP_CODES, BolusIdCommand.read),
    **dict.fromkeys(AmountCommand.OP_CODES, AmountCommand.read),
    **dict.fromkeys(CommandRaw.OP_CODES, CommandRaw.read),
    _C.SET_THERAPY_CONTROL_STATE: SetTherapyControlState.read,
    _C.SET_TBR_ADJUSTMENT: SetTbrAdjustment.read,
    _C.SET_BOLUS: SetBolus.read,
    _C.GET_AVAILABLE_BOLUSES_RESPONSE: AvailableBolusesResponse.read,
    _C.RESPONSE_CODE: CommandResponse.read,
}
assert set(_COMMAND_CLASSES) == {int(op) for op in CommandOpCode}


def parse_command_cp(data: bytes, e2e: bool = False) -> CommandMessage:
    """Decode any IDD Command CP value; a reserved op code raises UnknownOpCode."""
    return _parse_by_op(data, e2e, "IDD Command CP", _COMMAND_CLASSES)


@dataclass(frozen=True, slots=True)
class CommandData(E2EFields):
    """IDD Command Data (0x2B26): the device's notifications carrying template data.

    ``op code u16`` then the response data, kept as bytes (the template layouts are not
    modelled). Which responses travel here rather than on the Command CP is UNCONFIRMED
    (IDS 1.0 §3.7), so every response op code of the Command CP table is accepted.
    """

    op_code: CommandOpCode
    data: bytes = b""
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD Command Data"
    OP_CODES: ClassVar[frozenset[int]] = frozenset(
        int(op) for op in COMMAND_CP_RESPONSE_OP_CODES if op != _C.RESPONSE_CODE)
    FIELDS: ClassVar[Fields] = (OpCodeOf(OP_CODES, CommandOpCode, WHAT), Rest("data"))


# --------------------------------------------------------------------------------------------
# IDD Record Access Control Point 0x2B27 (IDS 1.0 §3.8)
# --------------------------------------------------------------------------------------------


class IddRacpOpCode(IntEnum):
    """IDD RACP op codes (IDS 1.0 §3.8); Hamming-coded, unlike the GLS/CGMS RACP."""

    RESPONSE_CODE = 0x0F
    REPORT_STORED_RECORDS = 0x33
    DELETE_STORED_RECORDS = 0x3C
    ABORT_OPERATION = 0x55
    REPORT_NUMBER_OF_STORED_RECORDS = 0x5A
    NUMBER_OF_STORED_RECORDS_RESPONSE = 0x66


#: Op codes a client writes (0x0F and 0x66 only ever come from the server).
IDD_RACP_REQUEST_OP_CODES = frozenset({
    IddRacpOpCode.REPORT_STORED_RECORDS, IddRacpOpCode.DELETE_STORED_RECORDS,
    IddRacpOpCode.ABORT_OPERATION, IddRacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS})

#: RACP op codes that change the device (the read-only bridge never writes them).
IDD_RACP_ACTING_OP_CODES = frozenset({IddRacpOpCode.DELETE_STORED_RECORDS})


class IddRacpOperator(IntEnum):
    """IDD RACP operators (IDS 1.0 §3.8)."""

    NULL = 0x0F
    ALL_RECORDS = 0x33
    LESS_THAN_OR_EQUAL_TO = 0x3C
    GREATER_THAN_OR_EQUAL_TO = 0x55
    WITHIN_RANGE_OF = 0x5A
    FIRST_RECORD = 0x66
    LAST_RECORD = 0x69


IDD_RACP_FILTERED_OPERATORS = frozenset({IddRacpOperator.LESS_THAN_OR_EQUAL_TO,
                                         IddRacpOperator.GREATER_THAN_OR_EQUAL_TO,
                                         IddRacpOperator.WITHIN_RANGE_OF})
IDD_RACP_UNFILTERED_OPERATORS = frozenset({IddRacpOperator.ALL_RECORDS,
                                           IddRacpOperator.FIRST_RECORD,
                                           IddRacpOperator.LAST_RECORD})


class IddRacpFilterType(IntEnum):
    """Operand filter types (IDS 1.0 §3.8); each is followed by u32 sequence number(s)."""

    SEQUENCE_NUMBER = 0x0F
    SEQUENCE_NUMBER_FILTERED_BY_REFERENCE_TIME_EVENT = 0x33
    SEQUENCE_NUMBER_FILTERED_BY_NON_REFERENCE_TIME_EVENT = 0x3C


class IddRacpResponseCode(IntEnum):
    """IDD RACP Response Code values (IDS 1.0 §3.8).

    SUCCESS (0xF0) is confirmed; the others follow the GLS RACP order mapped onto the
    Hamming codes and are UNCONFIRMED.
    """

    SUCCESS = 0xF0
    OP_CODE_NOT_SUPPORTED = 0x0F
    INVALID_OPERATOR = 0x33
    OPERATOR_NOT_SUPPORTED = 0x3C
    INVALID_OPERAND = 0x55
    NO_RECORDS_FOUND = 0x5A
    ABORT_UNSUCCESSFUL = 0x66
    PROCEDURE_NOT_COMPLETED = 0x69
    OPERAND_NOT_SUPPORTED = 0x96


@dataclass(frozen=True, slots=True)
class IddRacpFilter:
    """``filter type u8`` and its u32 sequence number(s): ``minimum`` for ≥ and range,
    ``maximum`` for ≤ and range. ``raw`` keeps the bytes after a reserved filter type."""

    filter_type: IddRacpFilterType | int
    minimum: int | None = None
    maximum: int | None = None
    raw: bytes = b""

    def __post_init__(self) -> None:
        check_uint(int(self.filter_type), 8, "filter type")
        object.__setattr__(self, "filter_type", known(IddRacpFilterType, self.filter_type))
        check_uint(self.minimum, 32, "minimum sequence number")
        check_uint(self.maximum, 32, "maximum sequence number")
        if self.raw and (self.minimum is not None or self.maximum is not None):
            raise ValueOutOfRange("a filter holds either decoded values or raw bytes, not both")
        if self.raw and isinstance(self.filter_type, IddRacpFilterType):
            raise ValueOutOfRange("raw filter bytes are only kept for reserved filter types")

    def write(self, w: Writer) -> None:
        w.u8(int(self.filter_type), "filter type")
        for value in (self.minimum, self.maximum):
            if value is not None:
                w.u32(value, "sequence number")
        w.raw(self.raw)


@dataclass(frozen=True, slots=True)
class IddRacpRequest(E2EValue):
    """Report / Delete / Abort / Report Number: ``op code u8``, ``operator u8``, operand.

    ``filter`` is present exactly for ≤, ≥ and range; ``operand`` keeps the bytes after a
    reserved operator.
    """

    op_code: IddRacpOpCode
    operator: IddRacpOperator | int
    filter: IddRacpFilter | None = None
    operand: bytes = b""
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD RACP request"

    def __post_init__(self) -> None:
        if self.op_code not in IDD_RACP_REQUEST_OP_CODES:
            raise ValueOutOfRange(f"RACP op code {self.op_code!r} is not a request")
        object.__setattr__(self, "op_code", IddRacpOpCode(self.op_code))
        check_uint(int(self.operator), 8, "operator")
        object.__setattr__(self, "operator", known(IddRacpOperator, self.operator))
        operator = self.operator
        if operator in IDD_RACP_FILTERED_OPERATORS:
            f = self.filter
            if f is None:
                raise ValueOutOfRange(f"operator {operator!r} needs a filter")
            if not f.raw:
                want_min = operator != IddRacpOperator.LESS_THAN_OR_EQUAL_TO
                want_max = operator != IddRacpOperator.GREATER_THAN_OR_EQUAL_TO
                if (f.minimum is not None) != want_min or (f.maximum is not None) != want_max:
                    raise ValueOutOfRange(f"operator {operator!r} takes "
                                          + ("minimum and maximum" if want_min and want_max
                                             else "a minimum" if want_min else "a maximum"))
        elif self.filter is not None:
            raise ValueOutOfRange(f"operator {operator!r} takes no filter")
        object.__setattr__(self, "operand", bytes(self.operand))
        if self.operand and isinstance(operator, IddRacpOperator):
            raise ValueOutOfRange("raw operand bytes are only kept for reserved operators")

    @classmethod
    def read(cls, r: Reader, e2e_counter: int | None = None) -> Self:
        start = r.offset
        op = r.u8("op code")
        if op not in IDD_RACP_REQUEST_OP_CODES:
            raise UnknownOpCode(f"IDD RACP op code 0x{op:02X} is not a request", r.data, start)
        operator = r.u8("operator")
        flt: IddRacpFilter | None = None
        operand = b""
        if operator in IDD_RACP_FILTERED_OPERATORS:
            filter_type = r.u8("filter type")
            if filter_type in IddRacpFilterType._value2member_map_:
                minimum = maximum = None
                if operator != IddRacpOperator.LESS_THAN_OR_EQUAL_TO:
                    minimum = r.u32("sequence number")
                if operator != IddRacpOperator.GREATER_THAN_OR_EQUAL_TO:
                    maximum = r.u32("sequence number")
                flt = IddRacpFilter(filter_type, minimum, maximum)
            else:
                flt = IddRacpFilter(filter_type, raw=r.rest())
        elif operator not in IddRacpOperator._value2member_map_:
            operand = r.rest()
        return cls(IddRacpOpCode(op), operator, flt, operand, e2e_counter)

    def write(self, w: Writer) -> None:
        w.u8(int(self.op_code), "op code").u8(int(self.operator), "operator")
        if self.filter is not None:
            self.filter.write(w)
        w.raw(self.operand)


@dataclass(frozen=True, slots=True)
class IddRacpNumberOfRecords(E2EValue):
    """Number of Stored Records Response (0x66): operator Null, ``count u32``."""

    count: int
    operator: IddRacpOperator | int = IddRacpOperator.NULL
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD RACP Number of Stored Records Response"

    def __post_init__(self) -> None:
        check_uint(self.count, 32, "number of records")
        check_uint(int(self.operator), 8, "operator")
        object.__setattr__(self, "operator", known(IddRacpOperator, self.operator))

    @classmethod
    def read(cls, r: Reader, e2e_counter: int | None = None) -> Self:
        start = r.offset
        op = r.u8("op code")
        if op != IddRacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
            raise UnknownOpCode(f"op code 0x{op:02X} is not a number-of-records response",
                                r.data, start)
        operator = r.u8("operator")
        return cls(r.u32("number of records"), operator, e2e_counter)

    def write(self, w: Writer) -> None:
        w.u8(IddRacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, "op code")
        w.u8(int(self.operator), "operator").u32(self.count, "number of records")


@dataclass(frozen=True, slots=True)
class IddRacpResponse(E2EValue):
    """Response Code (0x0F): operator Null, ``request op code u8``, ``response code u8``."""

    request_op_code: IddRacpOpCode | int
    response_code: IddRacpResponseCode | int
    operator: IddRacpOperator | int = IddRacpOperator.NULL
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD RACP Response Code"

    def __post_init__(self) -> None:
        check_uint(int(self.request_op_code), 8, "request op code")
        check_uint(int(self.response_code), 8, "response code")
        check_uint(int(self.operator), 8, "operator")
        object.__setattr__(self, "request_op_code", known(IddRacpOpCode, self.request_op_code))
        object.__setattr__(self, "response_code",
                           known(IddRacpResponseCode, self.response_code))
        object.__setattr__(self, "operator", known(IddRacpOperator, self.operator))

    @classmethod
    def for_request(cls, request: bytes | IddRacpRequest,
                    response_code: IddRacpResponseCode | int,
                    e2e_counter: int | None = None) -> Self:
        """The indication a server sends for the request it was written (value or payload
        bytes without E2E trailer)."""
        if isinstance(request, IddRacpRequest):
            return cls(request.op_code, response_code, e2e_counter=e2e_counter)
        return cls(request[0] if request else 0, response_code, e2e_counter=e2e_counter)

    @property
    def is_success(self) -> bool:
        return self.response_code == IddRacpResponseCode.SUCCESS

    @classmethod
    def read(cls, r: Reader, e2e_counter: int | None = None) -> Self:
        start = r.offset
        op = r.u8("op code")
        if op != IddRacpOpCode.RESPONSE_CODE:
            raise UnknownOpCode(f"op code 0x{op:02X} is not a response code", r.data, start)
        operator = r.u8("operator")
        return cls(r.u8("request op code"), r.u8("response code"), operator, e2e_counter)

    def write(self, w: Writer) -> None:
        w.u8(IddRacpOpCode.RESPONSE_CODE, "op code").u8(int(self.operator), "operator")
        w.u8(int(self.request_op_code), "request op code")
        w.u8(int(self.response_code), "response code")


IddRacpMessage = IddRacpRequest | IddRacpNumberOfRecords | IddRacpResponse

_RACP_READERS: dict[int, Callable[[Reader, int | None], IddRacpMessage]] = {
    **dict.fromkeys((int(op) for op in IDD_RACP_REQUEST_OP_CODES), IddRacpRequest.read),
    IddRacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE: IddRacpNumberOfRecords.read,
    IddRacpOpCode.RESPONSE_CODE: IddRacpResponse.read,
}


def parse_idd_racp(data: bytes, e2e: bool = False) -> IddRacpMessage:
    """Decode any IDD RACP value by op code; reserved op codes raise UnknownOpCode."""
    r, counter = open_e2e(data, e2e, "IDD RACP")
    op = r.u8("op code")
    reader_fn = _RACP_READERS.get(op)
    if reader_fn is None:
        raise UnknownOpCode(f"IDD RACP op code 0x{op:02X} is reserved", r.data, 0)
    r.offset = 0
    value = reader_fn(r, counter)
    r.expect_end("IDD RACP value")
    return value


def check_idd_racp_request(
    data: bytes,
    *,
    e2e: bool = False,
    supported_op_codes: Collection[int] = IDD_RACP_REQUEST_OP_CODES,
    supported_operators: Collection[int] = (IDD_RACP_FILTERED_OPERATORS
                                            | IDD_RACP_UNFILTERED_OPERATORS),
    supported_filter_types: Collection[int] = frozenset(IddRacpFilterType),
) -> IddRacpResponseCode | None:
    """The Response Code a compliant IDD server answers a written RACP request with, or
    ``None`` when the request is well-formed and supported (the server then carries it out
    and answers SUCCESS, NO_RECORDS_FOUND, ABORT_UNSUCCESSFUL or PROCEDURE_NOT_COMPLETED
    itself, which depend on its records and state).

    Pure: looks only at the bytes and the server's capabilities. With ``e2e`` the E2E trailer
    is checked first; a wrong E2E-CRC is not a RACP condition, so ``CrcMismatch`` (or
    ``TruncatedFrame`` for a frame too short for the trailer) propagates and the caller
    rejects the write. Checks, in this order (IDS 1.0 §3.8, following the RACP rules of
    GLS 1.0 §3.4.1):

    1. no op code, a reserved one, a server-to-client one (0x0F, 0x66) or one the server
       does not support → OP_CODE_NOT_SUPPORTED;
    2. no operator byte, Null for report/delete/count, or not Null for abort →
       INVALID_OPERATOR;
    3. a reserved operator or one the server does not support → OPERATOR_NOT_SUPPORTED;
    4. an operand after abort, All, First or Last, or a missing filter type → INVALID_OPERAND;
    5. a reserved or unsupported filter type → OPERAND_NOT_SUPPORTED;
    6. sequence numbers of the wrong length, or a range whose minimum is above its maximum →
       INVALID_OPERAND.
    """
    r, _ = open_e2e(data, e2e, "IDD RACP")
    payload = r.data[:r.end]
    if (not payload or payload[0] not in IDD_RACP_REQUEST_OP_CODES
            or payload[0] not in supported_op_codes):
        return IddRacpResponseCode.OP_CODE_NOT_SUPPORTED
    op_code = payload[0]
    if len(payload) < 2:
        return IddRacpResponseCode.INVALID_OPERATOR
    operator = payload[1]
    operand = payload[2:]
    if op_code == IddRacpOpCode.ABORT_OPERATION:
        if operator != IddRacpOperator.NULL:
            return IddRacpResponseCode.INVALID_OPERATOR
        return IddRacpResponseCode.INVALID_OPERAND if operand else None
    if operator == IddRacpOperator.NULL:
        return IddRacpResponseCode.INVALID_OPERATOR
    if operator not in IddRacpOperator._value2member_map_ or operator not in supported_operators:
        return IddRacpResponseCode.OPERATOR_NOT_SUPPORTED
    if operator in IDD_RACP_UNFILTERED_OPERATORS:
        return IddRacpResponseCode.INVALID_OPERAND if operand else None
    if not operand:
        return IddRacpResponseCode.INVALID_OPERAND
    filter_type = operand[0]
    if (filter_type not in IddRacpFilterType._value2member_map_
            or filter_type not in supported_filter_types):
        return IddRacpResponseCode.OPERAND_NOT_SUPPORTED
    try:
        request = IddRacpRequest.from_bytes(payload)
    except ProtocolError:
        return IddRacpResponseCode.INVALID_OPERAND
    f = request.filter
    if (f is not None and f.minimum is not None and f.maximum is not None
            and f.minimum > f.maximum):
        return IddRacpResponseCode.INVALID_OPERAND
    return None


def racp_report_all(e2e_counter: int | None = None) -> IddRacpRequest:
    """``33 33``: send every stored history event."""
    return IddRacpRequest(IddRacpOpCode.REPORT_STORED_RECORDS, IddRacpOperator.ALL_RECORDS,
                          e2e_counter=e2e_counter)


def racp_report_from_sequence(sequence_number: int,
                              e2e_counter: int | None = None) -> IddRacpRequest:
    """``33 55 0F <u32>``: events with sequence number ≥ N (incremental sync)."""
    return IddRacpRequest(IddRacpOpCode.REPORT_STORED_RECORDS,
                          IddRacpOperator.GREATER_THAN_OR_EQUAL_TO,
                          IddRacpFilter(IddRacpFilterType.SEQUENCE_NUMBER,
                                        minimum=sequence_number),
                          e2e_counter=e2e_counter)


def racp_count_all(e2e_counter: int | None = None) -> IddRacpRequest:
    """``5A 33``: ask for the number of stored events."""
    return IddRacpRequest(IddRacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS,
                          IddRacpOperator.ALL_RECORDS, e2e_counter=e2e_counter)


def racp_count_from_sequence(sequence_number: int,
                             e2e_counter: int | None = None) -> IddRacpRequest:
    """``5A 55 0F <u32>``: number of events with sequence number ≥ N."""
    return IddRacpRequest(IddRacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS,
                          IddRacpOperator.GREATER_THAN_OR_EQUAL_TO,
                          IddRacpFilter(IddRacpFilterType.SEQUENCE_NUMBER,
                                        minimum=sequence_number),
                          e2e_counter=e2e_counter)


def racp_abort(e2e_counter: int | None = None) -> IddRacpRequest:
    """``55 0F``: stop the report in progress."""
    return IddRacpRequest(IddRacpOpCode.ABORT_OPERATION, IddRacpOperator.NULL,
                          e2e_counter=e2e_counter)


# --------------------------------------------------------------------------------------------
# Registered message types
# --------------------------------------------------------------------------------------------


def _features(data: bytes) -> IddFeatures:
    return IddFeatures.from_bytes(data)


CODECS = (
    *e2e_codecs("ids-status-changed", "IDD Status Changed (0x2B20), u16 flags",
                IddStatusChanged.from_bytes),
    *e2e_codecs("ids-status", "IDD Status (0x2B21)", IddStatus.from_bytes),
    *e2e_codecs("ids-annunciation-status", "IDD Annunciation Status (0x2B22)",
                IddAnnunciationStatus.from_bytes),
    MessageCodec("ids-features", "IDD Features (0x2B23); E2E-CRC and counter come first",
                 _features),
    *e2e_codecs("ids-status-reader-cp", "IDD Status Reader Control Point (0x2B24)",
                parse_status_reader_cp),
    *e2e_codecs("ids-command-cp", "IDD Command Control Point (0x2B25)", parse_command_cp),
    *e2e_codecs("ids-command-data", "IDD Command Data (0x2B26), template data kept raw",
                CommandData.from_bytes),
    *e2e_codecs("ids-racp", "IDD Record Access Control Point (0x2B27)", parse_idd_racp),
)
