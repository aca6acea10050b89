"""IDD History Data (0x2B28, IDS 1.0 §3.9) and the payloads of its history events.

A history record is ``event type u16``, ``sequence number u32``, ``relative offset u16``
(seconds since the latest Reference Time event) and the event data, followed by the E2E
trailer when E2E-Protection is on (registered as ``ids-history`` and ``ids-history-e2e``).
The records are reported after an IDD RACP Report Stored Records request.

Event data is decoded for every event type whose layout is modelled below; the decoders are
strict (``TrailingBytes`` when more data follows than the layout announces). Defined event
types whose payload is not modelled (the profile-template events), and reserved event types,
keep their data as raw bytes. Amounts are kept as SFLOAT for byte-exactness; every class
also offers properties in canonical units (float IU, IU/h, minutes, seconds).

Where a payload layout could not be confirmed against the specification text, the class
docstring says UNCONFIRMED and names the source the layout follows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Self

from bridge.errors import ValueOutOfRange
from bridge.protocols.codec import known
from bridge.protocols.date_time import DateTime
from bridge.protocols.ids import (
    AnnunciationStatus,
    AnnunciationType,
    BolusActivationType,
    BolusFlags,
    BolusType,
    DeliveryContext,
    E2EValue,
    OperationalState,
    TbrType,
    TherapyControlState,
    check_optional,
    check_uint,
    e2e_codecs,
    read_sfloat,
    write_sfloat,
)
from bridge.protocols.mder_float import SFloat
from bridge.protocols.wire import Reader, Writer


class HistoryEventType(IntEnum):
    """Event Type of an IDD History Data record (IDS 1.0 §3.9, event type table)."""

    REFERENCE_TIME = 0x000F
    REFERENCE_TIME_BASE_OFFSET = 0x0033
    BOLUS_CALCULATED_PART_1_OF_2 = 0x003C
    BOLUS_CALCULATED_PART_2_OF_2 = 0x0055
    BOLUS_PROGRAMMED_PART_1_OF_2 = 0x005A
    BOLUS_PROGRAMMED_PART_2_OF_2 = 0x0066
    BOLUS_DELIVERED_PART_1_OF_2 = 0x0069
    BOLUS_DELIVERED_PART_2_OF_2 = 0x0096
    DELIVERED_BASAL_RATE_CHANGED = 0x0099
    TBR_ADJUSTMENT_STARTED = 0x00A5
    TBR_ADJUSTMENT_ENDED = 0x00AA
    TBR_ADJUSTMENT_CHANGED = 0x00C3
    PROFILE_TEMPLATE_ACTIVATED = 0x00CC
    BASAL_RATE_PROFILE_TEMPLATE_TIME_BLOCK_CHANGED = 0x00F0
    TOTAL_DAILY_INSULIN_DELIVERY = 0x00FF
    THERAPY_CONTROL_STATE_CHANGED = 0x0303
    OPERATIONAL_STATE_CHANGED = 0x030C
    RESERVOIR_REMAINING_AMOUNT_CHANGED = 0x0330
    ANNUNCIATION_STATUS_CHANGED_PART_1_OF_2 = 0x033F
    ANNUNCIATION_STATUS_CHANGED_PART_2_OF_2 = 0x0356
    ISF_PROFILE_TEMPLATE_TIME_BLOCK_CHANGED = 0x0359
    I2CHO_RATIO_PROFILE_TEMPLATE_TIME_BLOCK_CHANGED = 0x0365
    TARGET_GLUCOSE_RANGE_PROFILE_TEMPLATE_TIME_BLOCK_CHANGED = 0x036A
    PRIMING_STARTED = 0x0395
    PRIMING_DONE = 0x039A
    DATA_CORRUPTION = 0x03A6
    POINTER_EVENT = 0x03A9
    BOLUS_TEMPLATE_CHANGED_PART_1_OF_2 = 0x03C0
    BOLUS_TEMPLATE_CHANGED_PART_2_OF_2 = 0x03CF
    TBR_TEMPLATE_CHANGED = 0x03F3
    MAX_BOLUS_AMOUNT_CHANGED = 0x03FC


class RecordingReason(IntEnum):
    """Why a Reference Time event was recorded (IDS 1.0 §3.9, Reference Time)."""

    UNDETERMINED = 0x0F
    SET_DATE_TIME = 0x33
    PERIODIC_RECORDING = 0x3C
    DATE_TIME_LOSS = 0x55


class BolusEndReason(IntEnum):
    """Bolus End Reason (IDS 1.0 §3.9, Bolus Delivered Part 2 of 2)."""

    UNDETERMINED = 0x0F
    PROGRAMMED_AMOUNT_REACHED = 0x33
    CANCELED = 0x3C
    ERROR_ABORT = 0x55


class TbrEndReason(IntEnum):
    """TBR End Reason (IDS 1.0 §3.9, TBR Adjustment Ended)."""

    UNDETERMINED = 0x0F
    PROGRAM_DURATION_OVER = 0x33
    CANCELED = 0x3C
    ERROR_ABORT = 0x55


class PrimingTerminationReason(IntEnum):
    """Termination Reason of Priming Done (IDS 1.0 §3.9)."""

    UNDETERMINED = 0x0F
    ABORTED_BY_USER = 0x33
    PROGRAMMED_AMOUNT_REACHED = 0x3C
    ERROR_ABORT = 0x55


def _u8_enum(obj: Any, name: str, enum_cls: type[IntEnum]) -> None:
    value = getattr(obj, name)
    if value is None:
        return
    check_uint(int(value), 8, name)
    object.__setattr__(obj, name, known(enum_cls, value))


def _flags(obj: Any, flag_cls: type[IntFlag]) -> int:
    flags = int(obj.flags)
    check_uint(flags, 8, "flags")
    object.__setattr__(obj, "flags", flag_cls(flags))
    return flags


def _sfloats(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, SFloat):
            raise ValueOutOfRange(f"{name} must be an SFloat, not {type(value).__name__}")


class HistoryEventData:
    """Base of the event payload classes: ``read`` consumes one payload, ``write`` emits it."""

    __slots__ = ()

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = ()

    @classmethod
    def read(cls, r: Reader) -> Self:
        raise NotImplementedError

    def write(self, w: Writer) -> None:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        w = Writer()
        self.write(w)
        return bytes(w)


# --------------------------------------------------------------------------------------------
# Time events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReferenceTime(HistoryEventData):
    """Reference Time (0x000F): ``recording reason u8``, Date Time (7 bytes), ``time zone
    s8`` (15-minute units, -128 = unknown), ``DST offset u8`` (as in the Local Time
    Information characteristic: 0, 2, 4, 8; 255 = unknown). Later events count their
    relative offset in seconds from the latest Reference Time."""

    recording_reason: RecordingReason | int
    date_time: DateTime
    time_zone: int
    dst_offset: int

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.REFERENCE_TIME,)

    def __post_init__(self) -> None:
        _u8_enum(self, "recording_reason", RecordingReason)
        if not -128 <= self.time_zone <= 127:
            raise ValueOutOfRange(f"time zone {self.time_zone} does not fit sint8")
        check_uint(self.dst_offset, 8, "DST offset")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(r.u8("recording reason"), DateTime.read(r), r.s8("time zone"),
                   r.u8("DST offset"))

    def write(self, w: Writer) -> None:
        w.u8(int(self.recording_reason), "recording reason")
        self.date_time.write(w)
        w.s8(self.time_zone, "time zone").u8(self.dst_offset, "DST offset")

    @property
    def utc_offset(self) -> dt.timedelta | None:
        """Time zone plus DST as one offset, or ``None`` when either is unknown."""
        if self.time_zone == -128 or self.dst_offset == 255:
            return None
        return dt.timedelta(minutes=15 * (self.time_zone + self.dst_offset))


@dataclass(frozen=True, slots=True)
class ReferenceTimeBaseOffset(HistoryEventData):
    """Reference Time Base Offset (0x0033): ``recording reason u8``, base Date Time
    (7 bytes), ``time offset s16`` (minutes). UNCONFIRMED layout (follows the public
    Android IDD parser)."""

    recording_reason: RecordingReason | int
    base_time: DateTime
    time_offset: int

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.REFERENCE_TIME_BASE_OFFSET,)

    def __post_init__(self) -> None:
        _u8_enum(self, "recording_reason", RecordingReason)
        if not -32768 <= self.time_offset <= 32767:
            raise ValueOutOfRange(f"time offset {self.time_offset} does not fit sint16")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(r.u8("recording reason"), DateTime.read(r), r.s16("time offset"))

    def write(self, w: Writer) -> None:
        w.u8(int(self.recording_reason), "recording reason")
        self.base_time.write(w)
        w.s16(self.time_offset, "time offset")


# --------------------------------------------------------------------------------------------
# Bolus events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BolusCalculated(HistoryEventData):
    meal_fast_amount: SFloat
    meal_extended_amount: SFloat
    correction_fast_amount: SFloat
    correction_extended_amount: SFloat

    def __post_init__(self) -> None:
        _sfloats(self, "meal_fast_amount", "meal_extended_amount", "correction_fast_amount",
                 "correction_extended_amount")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_sfloat(r, "meal fast amount"), read_sfloat(r, "meal extended amount"),
                   read_sfloat(r, "correction fast amount"),
                   read_sfloat(r, "correction extended amount"))

    def write(self, w: Writer) -> None:
        write_sfloat(w, self.meal_fast_amount, "meal fast amount")
        write_sfloat(w, self.meal_extended_amount, "meal extended amount")
        write_sfloat(w, self.correction_fast_amount, "correction fast amount")
        write_sfloat(w, self.correction_extended_amount, "correction extended amount")

    @property
    def meal_iu(self) -> float:
        return float(self.meal_fast_amount) + float(self.meal_extended_amount)

    @property
    def correction_iu(self) -> float:
        return float(self.correction_fast_amount) + float(self.correction_extended_amount)

    @property
    def total_iu(self) -> float:
        return self.meal_iu + self.correction_iu


@dataclass(frozen=True, slots=True)
class BolusCalculatedPart1(_BolusCalculated):
    """Bolus Calculated Part 1 of 2 (0x003C): the bolus calculator's recommendation —
    meal fast, meal extended, correction fast, correction extended, four SFLOAT in IU.
    UNCONFIRMED layout (follows the public Android IDD parser)."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.BOLUS_CALCULATED_PART_1_OF_2,)


@dataclass(frozen=True, slots=True)
class BolusCalculatedPart2(_BolusCalculated):
    """Bolus Calculated Part 2 of 2 (0x0055): the amounts the user confirmed, same four
    SFLOAT as part 1. UNCONFIRMED layout (follows the public Android IDD parser)."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.BOLUS_CALCULATED_PART_2_OF_2,)


@dataclass(frozen=True, slots=True)
class _BolusPart1(HistoryEventData):
    bolus_id: int
    bolus_type: BolusType | int
    fast_amount: SFloat
    extended_amount: SFloat
    duration: int

    def __post_init__(self) -> None:
        check_uint(self.bolus_id, 16, "bolus id")
        _u8_enum(self, "bolus_type", BolusType)
        _sfloats(self, "fast_amount", "extended_amount")
        check_uint(self.duration, 16, "bolus duration")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(r.u16("bolus id"), r.u8("bolus type"), read_sfloat(r, "fast amount"),
                   read_sfloat(r, "extended amount"), r.u16("bolus duration"))

    def write(self, w: Writer) -> None:
        w.u16(self.bolus_id, "bolus id").u8(int(self.bolus_type), "bolus type")
        write_sfloat(w, self.fast_amount, "fast amount")
        write_sfloat(w, self.extended_amount, "extended amount")
        w.u16(self.duration, "bolus duration")

    @property
    def fast_amount_iu(self) -> float:
        return float(self.fast_amount)

    @property
    def extended_amount_iu(self) -> float:
        return float(self.extended_amount)

    @property
    def total_iu(self) -> float:
        return self.fast_amount_iu + self.extended_amount_iu


@dataclass(frozen=True, slots=True)
class BolusProgrammedPart1(_BolusPart1):
    """Bolus Programmed Part 1 of 2 (0x005A): ``bolus id u16``, ``bolus type u8``,
    programmed fast and extended amount SFLOAT (IU), ``duration u16`` (min)."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.BOLUS_PROGRAMMED_PART_1_OF_2,)


@dataclass(frozen=True, slots=True)
class BolusDeliveredPart1(_BolusPart1):
    """Bolus Delivered Part 1 of 2 (0x0069): ``bolus id u16``, ``bolus type u8``,
    delivered fast and extended amount SFLOAT (IU), effective ``duration u16`` (min)."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.BOLUS_DELIVERED_PART_1_OF_2,)


@dataclass(frozen=True, slots=True)
class BolusProgrammedPart2(HistoryEventData):
    """Bolus Programmed Part 2 of 2 (0x0066): ``flags u8`` (:class:`BolusFlags`: delay,
    template, activation type present; delivery reason correction / meal), then
    ``[delay time u16 min]``, ``[template number u8]``, ``[activation type u8]``."""

    flags: BolusFlags
    delay_time: int | None = None
    template_number: int | None = None
    activation_type: BolusActivationType | int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.BOLUS_PROGRAMMED_PART_2_OF_2,)

    def __post_init__(self) -> None:
        flags = _flags(self, BolusFlags)
        check_optional(flags, BolusFlags.BOLUS_DELAY_TIME_PRESENT, self.delay_time,
                       "delay_time")
        check_optional(flags, BolusFlags.BOLUS_TEMPLATE_NUMBER_PRESENT, self.template_number,
                       "template_number")
        check_optional(flags, BolusFlags.BOLUS_ACTIVATION_TYPE_PRESENT, self.activation_type,
                       "activation_type")
        check_uint(self.delay_time, 16, "delay time")
        check_uint(self.template_number, 8, "template number")
        _u8_enum(self, "activation_type", BolusActivationType)

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        delay = r.u16("delay time") if flags & BolusFlags.BOLUS_DELAY_TIME_PRESENT else None
        template = (r.u8("template number")
                    if flags & BolusFlags.BOLUS_TEMPLATE_NUMBER_PRESENT else None)
        activation = (r.u8("activation type")
                      if flags & BolusFlags.BOLUS_ACTIVATION_TYPE_PRESENT else None)
        return cls(BolusFlags(flags), delay, template, activation)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags")
        if self.delay_time is not None:
            w.u16(self.delay_time, "delay time")
        if self.template_number is not None:
            w.u8(self.template_number, "template number")
        if self.activation_type is not None:
            w.u8(int(self.activation_type), "activation type")


class BolusDeliveredFlags(IntFlag):
    """Flags of Bolus Delivered Part 2 of 2; bits 3–7 reserved."""

    BOLUS_ACTIVATION_TYPE_PRESENT = 1 << 0
    BOLUS_END_REASON_PRESENT = 1 << 1
    ANNUNCIATION_INSTANCE_ID_PRESENT = 1 << 2


@dataclass(frozen=True, slots=True)
class BolusDeliveredPart2(HistoryEventData):
    """Bolus Delivered Part 2 of 2 (0x0096): ``flags u8``, ``start time offset u32``
    (seconds after the matching Bolus Programmed Part 1), ``[activation type u8]``,
    ``[end reason u8]``, ``[annunciation instance id u16]``."""

    flags: BolusDeliveredFlags
    start_time_offset: int
    activation_type: BolusActivationType | int | None = None
    end_reason: BolusEndReason | int | None = None
    annunciation_instance_id: int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.BOLUS_DELIVERED_PART_2_OF_2,)

    def __post_init__(self) -> None:
        flags = _flags(self, BolusDeliveredFlags)
        check_uint(self.start_time_offset, 32, "start time offset")
        check_optional(flags, BolusDeliveredFlags.BOLUS_ACTIVATION_TYPE_PRESENT,
                       self.activation_type, "activation_type")
        check_optional(flags, BolusDeliveredFlags.BOLUS_END_REASON_PRESENT, self.end_reason,
                       "end_reason")
        check_optional(flags, BolusDeliveredFlags.ANNUNCIATION_INSTANCE_ID_PRESENT,
                       self.annunciation_instance_id, "annunciation_instance_id")
        _u8_enum(self, "activation_type", BolusActivationType)
        _u8_enum(self, "end_reason", BolusEndReason)
        check_uint(self.annunciation_instance_id, 16, "annunciation instance id")

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        offset = r.u32("start time offset")
        activation = (r.u8("activation type")
                      if flags & BolusDeliveredFlags.BOLUS_ACTIVATION_TYPE_PRESENT else None)
        reason = (r.u8("end reason")
                  if flags & BolusDeliveredFlags.BOLUS_END_REASON_PRESENT else None)
        annunciation = (r.u16("annunciation instance id")
                        if flags & BolusDeliveredFlags.ANNUNCIATION_INSTANCE_ID_PRESENT
                        else None)
        return cls(BolusDeliveredFlags(flags), offset, activation, reason, annunciation)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags").u32(self.start_time_offset, "start time offset")
        if self.activation_type is not None:
            w.u8(int(self.activation_type), "activation type")
        if self.end_reason is not None:
            w.u8(int(self.end_reason), "end reason")
        if self.annunciation_instance_id is not None:
            w.u16(self.annunciation_instance_id, "annunciation instance id")


# --------------------------------------------------------------------------------------------
# Basal and TBR events
# --------------------------------------------------------------------------------------------


class BasalRateChangedFlags(IntFlag):
    """Flags of Delivered Basal Rate Changed; bits 1–7 reserved."""

    BASAL_DELIVERY_CONTEXT_PRESENT = 1 << 0


@dataclass(frozen=True, slots=True)
class DeliveredBasalRateChanged(HistoryEventData):
    """Delivered Basal Rate Changed (0x0099): ``flags u8``, old and new basal rate SFLOAT
    (IU/h), ``[basal delivery context u8]``."""

    flags: BasalRateChangedFlags
    old_rate: SFloat
    new_rate: SFloat
    delivery_context: DeliveryContext | int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.DELIVERED_BASAL_RATE_CHANGED,)

    def __post_init__(self) -> None:
        flags = _flags(self, BasalRateChangedFlags)
        _sfloats(self, "old_rate", "new_rate")
        check_optional(flags, BasalRateChangedFlags.BASAL_DELIVERY_CONTEXT_PRESENT,
                       self.delivery_context, "delivery_context")
        _u8_enum(self, "delivery_context", DeliveryContext)

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        old = read_sfloat(r, "old basal rate")
        new = read_sfloat(r, "new basal rate")
        context = (r.u8("basal delivery context")
                   if flags & BasalRateChangedFlags.BASAL_DELIVERY_CONTEXT_PRESENT else None)
        return cls(BasalRateChangedFlags(flags), old, new, context)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags")
        write_sfloat(w, self.old_rate, "old basal rate")
        write_sfloat(w, self.new_rate, "new basal rate")
        if self.delivery_context is not None:
            w.u8(int(self.delivery_context), "basal delivery context")

    @property
    def old_rate_iu_per_h(self) -> float:
        return float(self.old_rate)

    @property
    def new_rate_iu_per_h(self) -> float:
        return float(self.new_rate)


class TbrEventFlags(IntFlag):
    """Flags of TBR Adjustment Started / Changed; bits 2–7 reserved."""

    TBR_TEMPLATE_NUMBER_PRESENT = 1 << 0
    TBR_DELIVERY_CONTEXT_PRESENT = 1 << 1


def _check_tbr_event(obj: Any) -> None:
    flags = _flags(obj, TbrEventFlags)
    _u8_enum(obj, "tbr_type", TbrType)
    _sfloats(obj, "adjustment_value")
    check_uint(obj.duration_programmed, 16, "TBR duration programmed")
    check_optional(flags, TbrEventFlags.TBR_TEMPLATE_NUMBER_PRESENT, obj.template_number,
                   "template_number")
    check_optional(flags, TbrEventFlags.TBR_DELIVERY_CONTEXT_PRESENT, obj.delivery_context,
                   "delivery_context")
    check_uint(obj.template_number, 8, "TBR template number")
    _u8_enum(obj, "delivery_context", DeliveryContext)


@dataclass(frozen=True, slots=True)
class TbrAdjustmentStarted(HistoryEventData):
    """TBR Adjustment Started (0x00A5): ``flags u8``, ``TBR type u8`` (absolute /
    relative), ``adjustment value SFLOAT`` (IU/h when absolute, a dimensionless factor when
    relative), ``duration programmed u16`` (min), ``[template number u8]``, ``[delivery
    context u8]``. The delivery-context flag (bit 1) mirrors Set TBR Adjustment and is
    UNCONFIRMED for this event."""

    flags: TbrEventFlags
    tbr_type: TbrType | int
    adjustment_value: SFloat
    duration_programmed: int
    template_number: int | None = None
    delivery_context: DeliveryContext | int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.TBR_ADJUSTMENT_STARTED,)

    def __post_init__(self) -> None:
        _check_tbr_event(self)

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        tbr_type = r.u8("TBR type")
        value = read_sfloat(r, "TBR adjustment value")
        programmed = r.u16("TBR duration programmed")
        template = (r.u8("TBR template number")
                    if flags & TbrEventFlags.TBR_TEMPLATE_NUMBER_PRESENT else None)
        context = (r.u8("TBR delivery context")
                   if flags & TbrEventFlags.TBR_DELIVERY_CONTEXT_PRESENT else None)
        return cls(TbrEventFlags(flags), tbr_type, value, programmed, template, context)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags").u8(int(self.tbr_type), "TBR type")
        write_sfloat(w, self.adjustment_value, "TBR adjustment value")
        w.u16(self.duration_programmed, "TBR duration programmed")
        if self.template_number is not None:
            w.u8(self.template_number, "TBR template number")
        if self.delivery_context is not None:
            w.u8(int(self.delivery_context), "TBR delivery context")

    @property
    def adjustment(self) -> float:
        """IU/h for an absolute TBR, the scaling factor for a relative one."""
        return float(self.adjustment_value)

    @property
    def absolute_rate_iu_per_h(self) -> float | None:
        """The temporary basal rate in IU/h, or ``None`` unless the TBR is absolute."""
        return float(self.adjustment_value) if self.tbr_type == TbrType.ABSOLUTE else None


@dataclass(frozen=True, slots=True)
class TbrAdjustmentChanged(HistoryEventData):
    """TBR Adjustment Changed (0x00C3): as TBR Adjustment Started plus ``duration elapsed
    u16`` (min) after the programmed duration. UNCONFIRMED layout (follows the public
    Android IDD parser; the delivery-context flag as for TBR Adjustment Started)."""

    flags: TbrEventFlags
    tbr_type: TbrType | int
    adjustment_value: SFloat
    duration_programmed: int
    duration_elapsed: int
    template_number: int | None = None
    delivery_context: DeliveryContext | int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.TBR_ADJUSTMENT_CHANGED,)

    def __post_init__(self) -> None:
        _check_tbr_event(self)
        check_uint(self.duration_elapsed, 16, "TBR duration elapsed")

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        tbr_type = r.u8("TBR type")
        value = read_sfloat(r, "TBR adjustment value")
        programmed = r.u16("TBR duration programmed")
        elapsed = r.u16("TBR duration elapsed")
        template = (r.u8("TBR template number")
                    if flags & TbrEventFlags.TBR_TEMPLATE_NUMBER_PRESENT else None)
        context = (r.u8("TBR delivery context")
                   if flags & TbrEventFlags.TBR_DELIVERY_CONTEXT_PRESENT else None)
        return cls(TbrEventFlags(flags), tbr_type, value, programmed, elapsed, template,
                   context)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags").u8(int(self.tbr_type), "TBR type")
        write_sfloat(w, self.adjustment_value, "TBR adjustment value")
        w.u16(self.duration_programmed, "TBR duration programmed")
        w.u16(self.duration_elapsed, "TBR duration elapsed")
        if self.template_number is not None:
            w.u8(self.template_number, "TBR template number")
        if self.delivery_context is not None:
            w.u8(int(self.delivery_context), "TBR delivery context")

    @property
    def adjustment(self) -> float:
        return float(self.adjustment_value)

    @property
    def absolute_rate_iu_per_h(self) -> float | None:
        return float(self.adjustment_value) if self.tbr_type == TbrType.ABSOLUTE else None


class TbrEndedFlags(IntFlag):
    """Flags of TBR Adjustment Ended; bits 2–7 reserved."""

    LAST_SET_TBR_TEMPLATE_NUMBER_PRESENT = 1 << 0
    ANNUNCIATION_INSTANCE_ID_PRESENT = 1 << 1


@dataclass(frozen=True, slots=True)
class TbrAdjustmentEnded(HistoryEventData):
    """TBR Adjustment Ended (0x00AA): ``flags u8``, ``last set TBR type u8``, ``effective
    duration u16`` (min), ``end reason u8``, ``[last set template number u8]``,
    ``[annunciation instance id u16]``. UNCONFIRMED layout (follows the public Android IDD
    parser)."""

    flags: TbrEndedFlags
    tbr_type: TbrType | int
    effective_duration: int
    end_reason: TbrEndReason | int
    template_number: int | None = None
    annunciation_instance_id: int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.TBR_ADJUSTMENT_ENDED,)

    def __post_init__(self) -> None:
        flags = _flags(self, TbrEndedFlags)
        _u8_enum(self, "tbr_type", TbrType)
        check_uint(self.effective_duration, 16, "effective TBR duration")
        _u8_enum(self, "end_reason", TbrEndReason)
        check_optional(flags, TbrEndedFlags.LAST_SET_TBR_TEMPLATE_NUMBER_PRESENT,
                       self.template_number, "template_number")
        check_optional(flags, TbrEndedFlags.ANNUNCIATION_INSTANCE_ID_PRESENT,
                       self.annunciation_instance_id, "annunciation_instance_id")
        check_uint(self.template_number, 8, "TBR template number")
        check_uint(self.annunciation_instance_id, 16, "annunciation instance id")

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        tbr_type = r.u8("TBR type")
        duration = r.u16("effective TBR duration")
        reason = r.u8("TBR end reason")
        template = (r.u8("TBR template number")
                    if flags & TbrEndedFlags.LAST_SET_TBR_TEMPLATE_NUMBER_PRESENT else None)
        annunciation = (r.u16("annunciation instance id")
                        if flags & TbrEndedFlags.ANNUNCIATION_INSTANCE_ID_PRESENT else None)
        return cls(TbrEndedFlags(flags), tbr_type, duration, reason, template, annunciation)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags").u8(int(self.tbr_type), "TBR type")
        w.u16(self.effective_duration, "effective TBR duration")
        w.u8(int(self.end_reason), "TBR end reason")
        if self.template_number is not None:
            w.u8(self.template_number, "TBR template number")
        if self.annunciation_instance_id is not None:
            w.u16(self.annunciation_instance_id, "annunciation instance id")


# --------------------------------------------------------------------------------------------
# Totals, states, reservoir, priming, annunciations
# --------------------------------------------------------------------------------------------


class TotalDailyInsulinFlags(IntFlag):
    """Flags of Total Daily Insulin Delivery; bits 1–7 reserved."""

    DATE_TIME_CHANGED_WARNING = 1 << 0


@dataclass(frozen=True, slots=True)
class TotalDailyInsulinDelivery(HistoryEventData):
    """Total Daily Insulin Delivery (0x00FF), recorded at midnight: ``flags u8``, sum of
    bolus and sum of basal delivered SFLOAT (IU), the day it covers as ``year u16``,
    ``month u8``, ``day u8``. UNCONFIRMED layout (follows the public Android IDD parser;
    the project reference suggests a third bolus + basal SFLOAT as in the Status Reader's
    Total Daily Insulin Status Response)."""

    flags: TotalDailyInsulinFlags
    bolus_delivered: SFloat
    basal_delivered: SFloat
    year: int
    month: int
    day: int

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.TOTAL_DAILY_INSULIN_DELIVERY,)

    def __post_init__(self) -> None:
        _flags(self, TotalDailyInsulinFlags)
        _sfloats(self, "bolus_delivered", "basal_delivered")
        check_uint(self.year, 16, "year")
        check_uint(self.month, 8, "month")
        check_uint(self.day, 8, "day")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(TotalDailyInsulinFlags(r.u8("flags")), read_sfloat(r, "sum of bolus"),
                   read_sfloat(r, "sum of basal"), r.u16("year"), r.u8("month"),
                   r.u8("day"))

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags")
        write_sfloat(w, self.bolus_delivered, "sum of bolus")
        write_sfloat(w, self.basal_delivered, "sum of basal")
        w.u16(self.year, "year").u8(self.month, "month").u8(self.day, "day")

    @property
    def bolus_iu(self) -> float:
        return float(self.bolus_delivered)

    @property
    def basal_iu(self) -> float:
        return float(self.basal_delivered)

    @property
    def total_iu(self) -> float:
        return self.bolus_iu + self.basal_iu

    @property
    def date(self) -> dt.date:
        """The day this total covers; ``ValueOutOfRange`` if it is not a calendar date."""
        try:
            return dt.date(self.year, self.month, self.day)
        except ValueError as exc:
            raise ValueOutOfRange(f"{self.year}-{self.month}-{self.day} is not a date: "
                                  f"{exc}") from None


@dataclass(frozen=True, slots=True)
class TherapyControlStateChanged(HistoryEventData):
    """Therapy Control State Changed (0x0303): ``old state u8``, ``new state u8``."""

    old_state: TherapyControlState | int
    new_state: TherapyControlState | int

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.THERAPY_CONTROL_STATE_CHANGED,)

    def __post_init__(self) -> None:
        _u8_enum(self, "old_state", TherapyControlState)
        _u8_enum(self, "new_state", TherapyControlState)

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(r.u8("old therapy control state"), r.u8("new therapy control state"))

    def write(self, w: Writer) -> None:
        w.u8(int(self.old_state), "old state").u8(int(self.new_state), "new state")


@dataclass(frozen=True, slots=True)
class OperationalStateChanged(HistoryEventData):
    """Operational State Changed (0x030C): ``old state u8``, ``new state u8``."""

    old_state: OperationalState | int
    new_state: OperationalState | int

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.OPERATIONAL_STATE_CHANGED,)

    def __post_init__(self) -> None:
        _u8_enum(self, "old_state", OperationalState)
        _u8_enum(self, "new_state", OperationalState)

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(r.u8("old operational state"), r.u8("new operational state"))

    def write(self, w: Writer) -> None:
        w.u8(int(self.old_state), "old state").u8(int(self.new_state), "new state")


@dataclass(frozen=True, slots=True)
class ReservoirRemainingAmountChanged(HistoryEventData):
    """Reservoir Remaining Amount Changed (0x0330): ``remaining amount SFLOAT`` (IU).

    UNCONFIRMED layout: the public Android IDD parser reads the amount alone; the project
    reference suggested a leading flags octet. A frame with a flags octet therefore fails
    with ``TrailingBytes`` rather than being misread.
    """

    remaining_amount: SFloat

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.RESERVOIR_REMAINING_AMOUNT_CHANGED,)

    def __post_init__(self) -> None:
        _sfloats(self, "remaining_amount")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_sfloat(r, "reservoir remaining amount"))

    def write(self, w: Writer) -> None:
        write_sfloat(w, self.remaining_amount, "reservoir remaining amount")

    @property
    def remaining_iu(self) -> float:
        return float(self.remaining_amount)


class AnnunciationChangedPart1Flags(IntFlag):
    """Flags of Annunciation Status Changed Part 1 of 2; bits 2–7 reserved."""

    AUX_INFO_1_PRESENT = 1 << 0
    AUX_INFO_2_PRESENT = 1 << 1


@dataclass(frozen=True, slots=True)
class AnnunciationStatusChangedPart1(HistoryEventData):
    """Annunciation Status Changed Part 1 of 2 (0x033F): ``flags u8``, ``instance id u16``,
    ``type u16``, ``status u8``, ``[aux info 1 u16]``, ``[aux info 2 u16]``."""

    flags: AnnunciationChangedPart1Flags
    annunciation_instance_id: int
    annunciation_type: AnnunciationType | int
    annunciation_status: AnnunciationStatus | int
    aux_info_1: int | None = None
    aux_info_2: int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.ANNUNCIATION_STATUS_CHANGED_PART_1_OF_2,)

    def __post_init__(self) -> None:
        flags = _flags(self, AnnunciationChangedPart1Flags)
        check_uint(self.annunciation_instance_id, 16, "annunciation instance id")
        check_uint(int(self.annunciation_type), 16, "annunciation type")
        object.__setattr__(self, "annunciation_type",
                           known(AnnunciationType, self.annunciation_type))
        _u8_enum(self, "annunciation_status", AnnunciationStatus)
        check_optional(flags, AnnunciationChangedPart1Flags.AUX_INFO_1_PRESENT,
                       self.aux_info_1, "aux_info_1")
        check_optional(flags, AnnunciationChangedPart1Flags.AUX_INFO_2_PRESENT,
                       self.aux_info_2, "aux_info_2")
        check_uint(self.aux_info_1, 16, "aux info 1")
        check_uint(self.aux_info_2, 16, "aux info 2")

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        ident = r.u16("annunciation instance id")
        a_type = r.u16("annunciation type")
        status = r.u8("annunciation status")
        aux1 = (r.u16("aux info 1")
                if flags & AnnunciationChangedPart1Flags.AUX_INFO_1_PRESENT else None)
        aux2 = (r.u16("aux info 2")
                if flags & AnnunciationChangedPart1Flags.AUX_INFO_2_PRESENT else None)
        return cls(AnnunciationChangedPart1Flags(flags), ident, a_type, status, aux1, aux2)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags")
        w.u16(self.annunciation_instance_id, "annunciation instance id")
        w.u16(int(self.annunciation_type), "annunciation type")
        w.u8(int(self.annunciation_status), "annunciation status")
        if self.aux_info_1 is not None:
            w.u16(self.aux_info_1, "aux info 1")
        if self.aux_info_2 is not None:
            w.u16(self.aux_info_2, "aux info 2")


class AnnunciationChangedPart2Flags(IntFlag):
    """Flags of Annunciation Status Changed Part 2 of 2; bits 3–7 reserved."""

    AUX_INFO_3_PRESENT = 1 << 0
    AUX_INFO_4_PRESENT = 1 << 1
    AUX_INFO_5_PRESENT = 1 << 2


@dataclass(frozen=True, slots=True)
class AnnunciationStatusChangedPart2(HistoryEventData):
    """Annunciation Status Changed Part 2 of 2 (0x0356): ``flags u8``, then aux info 3–5
    (u16 each) as flagged."""

    flags: AnnunciationChangedPart2Flags
    aux_info_3: int | None = None
    aux_info_4: int | None = None
    aux_info_5: int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.ANNUNCIATION_STATUS_CHANGED_PART_2_OF_2,)

    _BITS: ClassVar[tuple[AnnunciationChangedPart2Flags, ...]] = (
        AnnunciationChangedPart2Flags.AUX_INFO_3_PRESENT,
        AnnunciationChangedPart2Flags.AUX_INFO_4_PRESENT,
        AnnunciationChangedPart2Flags.AUX_INFO_5_PRESENT)

    def __post_init__(self) -> None:
        flags = _flags(self, AnnunciationChangedPart2Flags)
        for i, (bit, value) in enumerate(zip(self._BITS, self._values(), strict=True), 3):
            check_optional(flags, bit, value, f"aux_info_{i}")
            check_uint(value, 16, f"aux info {i}")

    def _values(self) -> tuple[int | None, int | None, int | None]:
        return self.aux_info_3, self.aux_info_4, self.aux_info_5

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        a3, a4, a5 = (r.u16(f"aux info {i}") if flags & bit else None
                      for i, bit in enumerate(cls._BITS, 3))
        return cls(AnnunciationChangedPart2Flags(flags), a3, a4, a5)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags")
        for i, value in enumerate(self._values(), 3):
            if value is not None:
                w.u16(value, f"aux info {i}")


@dataclass(frozen=True, slots=True)
class PrimingStarted(HistoryEventData):
    """Priming Started (0x0395): ``programmed amount SFLOAT`` (IU)."""

    amount: SFloat

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.PRIMING_STARTED,)

    def __post_init__(self) -> None:
        _sfloats(self, "amount")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_sfloat(r, "priming amount"))

    def write(self, w: Writer) -> None:
        write_sfloat(w, self.amount, "priming amount")

    @property
    def amount_iu(self) -> float:
        return float(self.amount)


class PrimingDoneFlags(IntFlag):
    """Flags of Priming Done; bits 1–7 reserved."""

    ANNUNCIATION_INSTANCE_ID_PRESENT = 1 << 0


@dataclass(frozen=True, slots=True)
class PrimingDone(HistoryEventData):
    """Priming Done (0x039A): ``flags u8``, ``delivered amount SFLOAT`` (IU),
    ``termination reason u8``, ``[annunciation instance id u16]``."""

    flags: PrimingDoneFlags
    delivered_amount: SFloat
    termination_reason: PrimingTerminationReason | int
    annunciation_instance_id: int | None = None

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.PRIMING_DONE,)

    def __post_init__(self) -> None:
        flags = _flags(self, PrimingDoneFlags)
        _sfloats(self, "delivered_amount")
        _u8_enum(self, "termination_reason", PrimingTerminationReason)
        check_optional(flags, PrimingDoneFlags.ANNUNCIATION_INSTANCE_ID_PRESENT,
                       self.annunciation_instance_id, "annunciation_instance_id")
        check_uint(self.annunciation_instance_id, 16, "annunciation instance id")

    @classmethod
    def read(cls, r: Reader) -> Self:
        flags = r.u8("flags")
        amount = read_sfloat(r, "delivered priming amount")
        reason = r.u8("termination reason")
        annunciation = (r.u16("annunciation instance id")
                        if flags & PrimingDoneFlags.ANNUNCIATION_INSTANCE_ID_PRESENT else None)
        return cls(PrimingDoneFlags(flags), amount, reason, annunciation)

    def write(self, w: Writer) -> None:
        w.u8(int(self.flags), "flags")
        write_sfloat(w, self.delivered_amount, "delivered priming amount")
        w.u8(int(self.termination_reason), "termination reason")
        if self.annunciation_instance_id is not None:
            w.u16(self.annunciation_instance_id, "annunciation instance id")

    @property
    def delivered_iu(self) -> float:
        return float(self.delivered_amount)


@dataclass(frozen=True, slots=True)
class DataCorruption(HistoryEventData):
    """Data Corruption (0x03A6): no event data. The device records it in place of events
    it found corrupt in its history memory (its sequence number is then 0xFFFFFFFF)."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.DATA_CORRUPTION,)

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls()

    def write(self, w: Writer) -> None:
        return None


@dataclass(frozen=True, slots=True)
class PointerEvent(HistoryEventData):
    """Pointer Event (0x03A9): no event data; a placeholder that keeps sequence numbers
    aligned with a manufacturer-specific history."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.POINTER_EVENT,)

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls()

    def write(self, w: Writer) -> None:
        return None


@dataclass(frozen=True, slots=True)
class MaxBolusAmountChanged(HistoryEventData):
    """Max Bolus Amount Changed (0x03FC): old and new maximum SFLOAT (IU)."""

    old_amount: SFloat
    new_amount: SFloat

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.MAX_BOLUS_AMOUNT_CHANGED,)

    def __post_init__(self) -> None:
        _sfloats(self, "old_amount", "new_amount")

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_sfloat(r, "old max bolus amount"), read_sfloat(r, "new max bolus amount"))

    def write(self, w: Writer) -> None:
        write_sfloat(w, self.old_amount, "old max bolus amount")
        write_sfloat(w, self.new_amount, "new max bolus amount")

    @property
    def old_amount_iu(self) -> float:
        return float(self.old_amount)

    @property
    def new_amount_iu(self) -> float:
        return float(self.new_amount)


_EVENT_CLASSES: tuple[type[HistoryEventData], ...] = (
    ReferenceTime, ReferenceTimeBaseOffset, BolusCalculatedPart1, BolusCalculatedPart2,
    BolusProgrammedPart1, BolusProgrammedPart2, BolusDeliveredPart1, BolusDeliveredPart2,
    DeliveredBasalRateChanged, TbrAdjustmentStarted, TbrAdjustmentEnded, TbrAdjustmentChanged,
    TotalDailyInsulinDelivery, TherapyControlStateChanged, OperationalStateChanged,
    ReservoirRemainingAmountChanged, AnnunciationStatusChangedPart1,
    AnnunciationStatusChangedPart2, PrimingStarted, PrimingDone, DataCorruption, PointerEvent,
    MaxBolusAmountChanged,
)

#: The payload class of each modelled event type; other event types keep raw bytes.
EVENT_DATA_CLASSES: Mapping[int, type[HistoryEventData]] = {
    int(event_type): cls for cls in _EVENT_CLASSES for event_type in cls.EVENT_TYPES
}

#: Defined event types whose payload is kept raw (profile-template changes).
RAW_EVENT_TYPES = frozenset(t for t in HistoryEventType if t not in EVENT_DATA_CLASSES)


@dataclass(frozen=True, slots=True)
class HistoryData(E2EValue):
    """One IDD History Data record (0x2B28).

    ``event_data`` is the decoded payload for a modelled event type (see
    ``EVENT_DATA_CLASSES``) and the raw bytes otherwise. ``relative_offset`` is in seconds
    since the latest Reference Time event.
    """

    event_type: HistoryEventType | int
    sequence_number: int
    relative_offset: int
    event_data: HistoryEventData | bytes
    e2e_counter: int | None = None

    WHAT: ClassVar[str] = "IDD History Data"

    def __post_init__(self) -> None:
        check_uint(int(self.event_type), 16, "event type")
        check_uint(self.sequence_number, 32, "sequence number")
        check_uint(self.relative_offset, 16, "relative offset")
        object.__setattr__(self, "event_type", known(HistoryEventType, self.event_type))
        expected = EVENT_DATA_CLASSES.get(int(self.event_type))
        if expected is None:
            if not isinstance(self.event_data, bytes | bytearray):
                raise ValueOutOfRange(f"event type 0x{int(self.event_type):04X} keeps its "
                                      "data as raw bytes")
            object.__setattr__(self, "event_data", bytes(self.event_data))
        elif type(self.event_data) is not expected:
            raise ValueOutOfRange(f"event type {self.event_type!r} carries {expected.__name__}, "
                                  f"not {type(self.event_data).__name__}")

    @classmethod
    def read(cls, r: Reader, e2e_counter: int | None = None) -> Self:
        event_type = r.u16("event type")
        sequence = r.u32("sequence number")
        offset = r.u16("relative offset")
        data_cls = EVENT_DATA_CLASSES.get(event_type)
        event_data: HistoryEventData | bytes = (r.rest() if data_cls is None
                                                else data_cls.read(r))
        return cls(event_type, sequence, offset, event_data, e2e_counter)

    def write(self, w: Writer) -> None:
        w.u16(int(self.event_type), "event type")
        w.u32(self.sequence_number, "sequence number")
        w.u16(self.relative_offset, "relative offset")
        if isinstance(self.event_data, bytes):
            w.raw(self.event_data)
        else:
            self.event_data.write(w)

    @property
    def relative_offset_time(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.relative_offset)


def _history(data: bytes, e2e: bool) -> HistoryData:
    return HistoryData.from_bytes(data, e2e)


CODECS = (
    *e2e_codecs("ids-history", "IDD History Data (0x2B28), one history event", _history),
)
