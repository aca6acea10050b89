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
from typing import ClassVar, Self

from bridge.errors import ValueOutOfRange
from bridge.protocols.codec import known
from bridge.protocols.date_time import DateTime
from bridge.protocols.ids import (
    BOLUS_AMOUNT_FIELDS,
    BOLUS_OPTION_FIELDS,
    TBR_OPTION_FIELDS,
    AnnunciationStatus,
    AnnunciationType,
    BolusActivationType,
    BolusAmounts,
    BolusFlags,
    BolusType,
    DeliveryContext,
    E2EValue,
    OperationalState,
    TbrFlags,
    TbrType,
    TherapyControlState,
    e2e_codecs,
)
from bridge.protocols.layout import (
    AsFloat,
    Fields,
    LaidOut,
    Part,
    Sint,
    check_fields,
    check_uint,
    sfloat,
    u8,
    u16,
    u32,
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


class HistoryEventData(LaidOut):
    """Base of the event payload classes: ``FIELDS`` is the payload layout (see
    :mod:`bridge.protocols.layout`), checked on construction, read and written in order."""

    __slots__ = ()

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = ()

    def __post_init__(self) -> None:
        check_fields(self, self.FIELDS)

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
    FIELDS: ClassVar[Fields] = (u8("recording_reason", RecordingReason),
                                Part("date_time", DateTime.read), Sint("time_zone", 1),
                                u8("dst_offset", what="DST offset"))

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
    FIELDS: ClassVar[Fields] = (u8("recording_reason", RecordingReason),
                                Part("base_time", DateTime.read), Sint("time_offset", 2))


# --------------------------------------------------------------------------------------------
# Bolus events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BolusCalculated(HistoryEventData):
    meal_fast_amount: SFloat
    meal_extended_amount: SFloat
    correction_fast_amount: SFloat
    correction_extended_amount: SFloat

    FIELDS: ClassVar[Fields] = (sfloat("meal_fast_amount"), sfloat("meal_extended_amount"),
                                sfloat("correction_fast_amount"),
                                sfloat("correction_extended_amount"))

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
class _BolusPart1(HistoryEventData, BolusAmounts):
    bolus_id: int
    bolus_type: BolusType | int
    fast_amount: SFloat
    extended_amount: SFloat
    duration: int

    FIELDS: ClassVar[Fields] = (u16("bolus_id"), *BOLUS_AMOUNT_FIELDS)

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
    FIELDS: ClassVar[Fields] = (u8("flags", BolusFlags), *BOLUS_OPTION_FIELDS)


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
    FIELDS: ClassVar[Fields] = (
        u8("flags", BolusDeliveredFlags), u32("start_time_offset"),
        u8("activation_type", BolusActivationType,
           when=BolusDeliveredFlags.BOLUS_ACTIVATION_TYPE_PRESENT),
        u8("end_reason", BolusEndReason, when=BolusDeliveredFlags.BOLUS_END_REASON_PRESENT),
        u16("annunciation_instance_id",
            when=BolusDeliveredFlags.ANNUNCIATION_INSTANCE_ID_PRESENT))


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
    FIELDS: ClassVar[Fields] = (
        u8("flags", BasalRateChangedFlags), sfloat("old_rate"), sfloat("new_rate"),
        u8("delivery_context", DeliveryContext,
           when=BasalRateChangedFlags.BASAL_DELIVERY_CONTEXT_PRESENT))

    old_rate_iu_per_h = AsFloat("old_rate")
    new_rate_iu_per_h = AsFloat("new_rate")


class TbrEventFlags(IntFlag):
    """Flags of TBR Adjustment Started / Changed; bits 2–7 reserved."""

    TBR_TEMPLATE_NUMBER_PRESENT = 1 << 0
    TBR_DELIVERY_CONTEXT_PRESENT = 1 << 1


# The optional tail is Set TBR Adjustment's (IDS 1.0 §3.6): the same two flag bits.
assert [int(TbrEventFlags.TBR_TEMPLATE_NUMBER_PRESENT),
        int(TbrEventFlags.TBR_DELIVERY_CONTEXT_PRESENT)] == [
    int(TbrFlags.TBR_TEMPLATE_NUMBER_PRESENT), int(TbrFlags.TBR_DELIVERY_CONTEXT_PRESENT)]

#: Flags, TBR type, adjustment value and programmed duration of TBR Adjustment Started and
#: Changed.
_TBR_EVENT_FIELDS: Fields = (u8("flags", TbrEventFlags), u8("tbr_type", TbrType),
                             sfloat("adjustment_value"), u16("duration_programmed"))


class _TbrAdjustment:
    """The adjustment of a TBR event in its units."""

    __slots__ = ()

    tbr_type: TbrType | int
    adjustment_value: SFloat

    @property
    def adjustment(self) -> float:
        """IU/h for an absolute TBR, the scaling factor for a relative one."""
        return float(self.adjustment_value)

    @property
    def absolute_rate_iu_per_h(self) -> float | None:
        """The temporary basal rate in IU/h, or ``None`` unless the TBR is absolute."""
        return float(self.adjustment_value) if self.tbr_type == TbrType.ABSOLUTE else None


@dataclass(frozen=True, slots=True)
class TbrAdjustmentStarted(HistoryEventData, _TbrAdjustment):
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
    FIELDS: ClassVar[Fields] = (*_TBR_EVENT_FIELDS, *TBR_OPTION_FIELDS)


@dataclass(frozen=True, slots=True)
class TbrAdjustmentChanged(HistoryEventData, _TbrAdjustment):
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
    FIELDS: ClassVar[Fields] = (*_TBR_EVENT_FIELDS, u16("duration_elapsed"),
                                *TBR_OPTION_FIELDS)


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
    FIELDS: ClassVar[Fields] = (
        u8("flags", TbrEndedFlags), u8("tbr_type", TbrType), u16("effective_duration"),
        u8("end_reason", TbrEndReason),
        u8("template_number", when=TbrEndedFlags.LAST_SET_TBR_TEMPLATE_NUMBER_PRESENT),
        u16("annunciation_instance_id", when=TbrEndedFlags.ANNUNCIATION_INSTANCE_ID_PRESENT))


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
    FIELDS: ClassVar[Fields] = (
        u8("flags", TotalDailyInsulinFlags), sfloat("bolus_delivered", what="sum of bolus"),
        sfloat("basal_delivered", what="sum of basal"), u16("year"), u8("month"), u8("day"))

    bolus_iu = AsFloat("bolus_delivered")
    basal_iu = AsFloat("basal_delivered")

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
    FIELDS: ClassVar[Fields] = (u8("old_state", TherapyControlState),
                                u8("new_state", TherapyControlState))


@dataclass(frozen=True, slots=True)
class OperationalStateChanged(HistoryEventData):
    """Operational State Changed (0x030C): ``old state u8``, ``new state u8``."""

    old_state: OperationalState | int
    new_state: OperationalState | int

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.OPERATIONAL_STATE_CHANGED,)
    FIELDS: ClassVar[Fields] = (u8("old_state", OperationalState),
                                u8("new_state", OperationalState))


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
    FIELDS: ClassVar[Fields] = (sfloat("remaining_amount", what="reservoir remaining amount"),)

    remaining_iu = AsFloat("remaining_amount")


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
    FIELDS: ClassVar[Fields] = (
        u8("flags", AnnunciationChangedPart1Flags), u16("annunciation_instance_id"),
        u16("annunciation_type", AnnunciationType), u8("annunciation_status", AnnunciationStatus),
        u16("aux_info_1", when=AnnunciationChangedPart1Flags.AUX_INFO_1_PRESENT),
        u16("aux_info_2", when=AnnunciationChangedPart1Flags.AUX_INFO_2_PRESENT))


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
    FIELDS: ClassVar[Fields] = (
        u8("flags", AnnunciationChangedPart2Flags),
        u16("aux_info_3", when=AnnunciationChangedPart2Flags.AUX_INFO_3_PRESENT),
        u16("aux_info_4", when=AnnunciationChangedPart2Flags.AUX_INFO_4_PRESENT),
        u16("aux_info_5", when=AnnunciationChangedPart2Flags.AUX_INFO_5_PRESENT))


@dataclass(frozen=True, slots=True)
class PrimingStarted(HistoryEventData):
    """Priming Started (0x0395): ``programmed amount SFLOAT`` (IU)."""

    amount: SFloat

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.PRIMING_STARTED,)
    FIELDS: ClassVar[Fields] = (sfloat("amount", what="priming amount"),)

    amount_iu = AsFloat("amount")


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
    FIELDS: ClassVar[Fields] = (
        u8("flags", PrimingDoneFlags), sfloat("delivered_amount"),
        u8("termination_reason", PrimingTerminationReason),
        u16("annunciation_instance_id", when=PrimingDoneFlags.ANNUNCIATION_INSTANCE_ID_PRESENT))

    delivered_iu = AsFloat("delivered_amount")


@dataclass(frozen=True, slots=True)
class DataCorruption(HistoryEventData):
    """Data Corruption (0x03A6): no event data. The device records it in place of events
    it found corrupt in its history memory (its sequence number is then 0xFFFFFFFF)."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.DATA_CORRUPTION,)


@dataclass(frozen=True, slots=True)
class PointerEvent(HistoryEventData):
    """Pointer Event (0x03A9): no event data; a placeholder that keeps sequence numbers
    aligned with a manufacturer-specific history."""

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (HistoryEventType.POINTER_EVENT,)


@dataclass(frozen=True, slots=True)
class MaxBolusAmountChanged(HistoryEventData):
    """Max Bolus Amount Changed (0x03FC): old and new maximum SFLOAT (IU)."""

    old_amount: SFloat
    new_amount: SFloat

    EVENT_TYPES: ClassVar[tuple[HistoryEventType, ...]] = (
        HistoryEventType.MAX_BOLUS_AMOUNT_CHANGED,)
    FIELDS: ClassVar[Fields] = (sfloat("old_amount", what="old max bolus amount"),
                                sfloat("new_amount", what="new max bolus amount"))

    old_amount_iu = AsFloat("old_amount")
    new_amount_iu = AsFloat("new_amount")


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
