"""The canonical records every layer speaks.

Simulators emit them, drivers decode device traffic into them, the edge outbox stores them,
MQTT carries them as JSON, the backend stores them and the HDDT layer maps them to FHIR.

Canonical units: glucose in mg/dL, insulin in IU, basal rates in IU/h, instants in UTC.
Conversion to and from mmol/L is explicit (:func:`mg_dl_to_mmol_l`, :func:`mmol_l_to_mg_dl`).
Every record keeps the device's own timestamp (``device_time``, naive, as the device's clock
showed it) beside the corrected UTC instant (``time``), so a wrong device clock can always be
re-examined later.

:data:`CODINGS` is the one table of codes: for each record kind its IEEE 11073-10101 (MDC)
code, and where one exists the LOINC code and UCUM unit used in FHIR.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, ClassVar

from bridge.errors import BridgeError
from bridge.protocols.mdc import Dim, Partition, PhdDm, Scada, mdc


class RecordError(BridgeError):
    """A record that breaks the canonical model (bad unit, naive instant, bad payload)."""

    def __init__(self, message: str, payload: object = None) -> None:
        self.payload = payload
        super().__init__(message)


# --- units -------------------------------------------------------------------------------

#: mg/dL per mmol/L for glucose: molar mass of glucose 180.156 g/mol ÷ 10 dL/L.
MG_DL_PER_MMOL_L = 18.0156


def mmol_l_to_mg_dl(value: float) -> float:
    return value * MG_DL_PER_MMOL_L


def mg_dl_to_mmol_l(value: float) -> float:
    return value / MG_DL_PER_MMOL_L


# --- vocabularies ------------------------------------------------------------------------

class DeviceKind(StrEnum):
    BLOOD_GLUCOSE_METER = "blood-glucose-meter"
    CGM = "cgm"
    INSULIN_PUMP = "insulin-pump"


class RecordKind(StrEnum):
    BLOOD_GLUCOSE = "blood-glucose"
    CGM_GLUCOSE = "cgm-glucose"
    INSULIN_BOLUS = "insulin-bolus"
    BASAL_RATE_CHANGE = "basal-rate-change"
    TEMP_BASAL_START = "temp-basal-start"
    TEMP_BASAL_END = "temp-basal-end"
    TOTAL_DAILY_INSULIN = "total-daily-insulin"
    RESERVOIR_LEVEL = "reservoir-level"
    THERAPY_STATE_CHANGE = "therapy-state-change"
    OPERATIONAL_STATE_CHANGE = "operational-state-change"
    ANNUNCIATION = "annunciation"


class SampleType(StrEnum):
    """Specimen of a meter reading (GLS 1.0 Type field, IEEE 11073-10417 MDC_CONC_GLU_*)."""

    CAPILLARY_WHOLE_BLOOD = "capillary-whole-blood"
    CAPILLARY_PLASMA = "capillary-plasma"
    VENOUS_WHOLE_BLOOD = "venous-whole-blood"
    VENOUS_PLASMA = "venous-plasma"
    ARTERIAL_WHOLE_BLOOD = "arterial-whole-blood"
    ARTERIAL_PLASMA = "arterial-plasma"
    UNDETERMINED_WHOLE_BLOOD = "undetermined-whole-blood"
    UNDETERMINED_PLASMA = "undetermined-plasma"
    INTERSTITIAL_FLUID = "interstitial-fluid"
    CONTROL_SOLUTION = "control-solution"


class SampleLocation(StrEnum):
    FINGER = "finger"
    ALTERNATE_SITE = "alternate-site"
    EARLOBE = "earlobe"
    CONTROL_SOLUTION = "control-solution"
    SUBCUTANEOUS = "subcutaneous"
    NOT_AVAILABLE = "not-available"


class MealContext(StrEnum):
    """Meal relation of a meter reading (GLS Context "Meal", -10417 MDC_CTXT_GLU_MEAL_*)."""

    PREPRANDIAL = "preprandial"
    POSTPRANDIAL = "postprandial"
    FASTING = "fasting"
    CASUAL = "casual"
    BEDTIME = "bedtime"


class Trend(StrEnum):
    """Coarse trend arrows derived from the CGM rate of change (mg/dL/min)."""

    FALLING_RAPIDLY = "falling-rapidly"
    FALLING = "falling"
    STABLE = "stable"
    RISING = "rising"
    RISING_RAPIDLY = "rising-rapidly"

    @classmethod
    def from_rate(cls, mg_dl_per_min: float) -> Trend:
        # Bands of ±1 and ±2 mg/dL/min, the usual arrow thresholds of CGM displays.
        if mg_dl_per_min <= -2:
            return cls.FALLING_RAPIDLY
        if mg_dl_per_min <= -1:
            return cls.FALLING
        if mg_dl_per_min < 1:
            return cls.STABLE
        if mg_dl_per_min < 2:
            return cls.RISING
        return cls.RISING_RAPIDLY


class Annunciation(StrEnum):
    """Device conditions, across meters, CGMs and pumps (names after GLS/CGMS/IDS)."""

    BATTERY_LOW = "battery-low"
    BATTERY_EMPTY = "battery-empty"
    DEVICE_FAULT = "device-fault"
    SENSOR_MALFUNCTION = "sensor-malfunction"
    SAMPLE_SIZE_INSUFFICIENT = "sample-size-insufficient"
    STRIP_INSERTION_ERROR = "strip-insertion-error"
    STRIP_TYPE_INCORRECT = "strip-type-incorrect"
    RESULT_TOO_LOW = "result-too-low"
    RESULT_TOO_HIGH = "result-too-high"
    TEMPERATURE_TOO_HIGH = "temperature-too-high"
    TEMPERATURE_TOO_LOW = "temperature-too-low"
    READ_INTERRUPTED = "read-interrupted"
    TIME_FAULT = "time-fault"
    SESSION_STOPPED = "session-stopped"
    SENSOR_WARMUP = "sensor-warmup"
    CALIBRATION_REQUIRED = "calibration-required"
    CALIBRATION_RECOMMENDED = "calibration-recommended"
    BELOW_DEVICE_RANGE = "below-device-range"
    ABOVE_DEVICE_RANGE = "above-device-range"
    SIGNAL_LOSS = "signal-loss"
    OCCLUSION = "occlusion"
    RESERVOIR_LOW = "reservoir-low"
    RESERVOIR_EMPTY = "reservoir-empty"
    INFUSION_SET_DETACHED = "infusion-set-detached"
    TEMP_BASAL_OVER = "temp-basal-over"
    BOLUS_CANCELED = "bolus-canceled"


class AnnunciationStatus(StrEnum):
    PENDING = "pending"
    SNOOZED = "snoozed"
    CONFIRMED = "confirmed"


class BolusType(StrEnum):
    FAST = "fast"
    EXTENDED = "extended"
    MULTIWAVE = "multiwave"


class BolusPhase(StrEnum):
    PROGRAMMED = "programmed"
    DELIVERED = "delivered"


class TempBasalType(StrEnum):
    ABSOLUTE = "absolute"   # IU/h
    RELATIVE = "relative"   # percent of the programmed basal rate


class TherapyState(StrEnum):
    STOP = "stop"
    PAUSE = "pause"
    RUN = "run"


class OperationalState(StrEnum):
    OFF = "off"
    STANDBY = "standby"
    PREPARING = "preparing"
    PRIMING = "priming"
    WAITING = "waiting"
    READY = "ready"


class TimeQuality(StrEnum):
    """Why a record's UTC instant deserves suspicion (set by the edge clock correction)."""

    DEVICE_CLOCK_CORRECTED = "device-clock-corrected"
    IN_FUTURE = "in-future"
    BEFORE_DEVICE_EXISTED = "before-device-existed"
    CLOCK_JUMP = "clock-jump"
    DEVICE_TIME_UNKNOWN = "device-time-unknown"


# --- the code table ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KindCoding:
    """Codes of one record kind. ``mdc`` is the 32-bit IEEE 11073-10101 code."""

    mdc: int | None
    mdc_name: str | None
    ucum: str
    loinc: str | None = None
    loinc_display: str | None = None
    loinc_mmol: str | None = None  # LOINC code for the same quantity in mol/volume
    loinc_mmol_display: str | None = None


_GLU = Partition.SCADA

#: The one table of codes for every record kind. LOINC codes are those of the HDDT MIV value
#: sets (hddt-miv-blood-glucose-measurement, hddt-miv-continuous-glucose-measurement);
#: insulin has no HDDT v1 MIV and carries MDC codes only.
CODINGS: Mapping[RecordKind, KindCoding] = types.MappingProxyType({
    RecordKind.BLOOD_GLUCOSE: KindCoding(
        mdc(_GLU, Scada.MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD), "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD",
        "mg/dL", "41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer",
        "14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer"),
    RecordKind.CGM_GLUCOSE: KindCoding(
        mdc(_GLU, Scada.MDC_CONC_GLU_ISF), "MDC_CONC_GLU_ISF", "mg/dL",
        "99504-3", "Glucose [Mass/volume] in Interstitial fluid",
        "105272-9", "Glucose [Moles/volume] in Interstitial fluid"),
    RecordKind.INSULIN_BOLUS: KindCoding(
        mdc(_GLU, Scada.MDC_INS_BOLUS), "MDC_INS_BOLUS", "[iU]"),
    RecordKind.BASAL_RATE_CHANGE: KindCoding(
        mdc(_GLU, Scada.MDC_INS_BASAL), "MDC_INS_BASAL", "[iU]/h"),
    RecordKind.TEMP_BASAL_START: KindCoding(
        mdc(_GLU, Scada.MDC_INS_BASAL_TEMP_ABS), "MDC_INS_BASAL_TEMP_ABS", "[iU]/h"),
    RecordKind.TEMP_BASAL_END: KindCoding(
        mdc(_GLU, Scada.MDC_INS_BASAL_TEMP_ABS), "MDC_INS_BASAL_TEMP_ABS", "[iU]/h"),
    RecordKind.TOTAL_DAILY_INSULIN: KindCoding(None, None, "[iU]"),
    RecordKind.RESERVOIR_LEVEL: KindCoding(
        mdc(_GLU, Scada.MDC_INS_RESERVOIR), "MDC_INS_RESERVOIR", "[iU]"),
    RecordKind.THERAPY_STATE_CHANGE: KindCoding(None, None, "1"),
    RecordKind.OPERATIONAL_STATE_CHANGE: KindCoding(None, None, "1"),
    RecordKind.ANNUNCIATION: KindCoding(None, None, "1"),
})

#: MDC codes of the meal context (IEEE 11073-10417, PHD_DM partition).
MEAL_MDC: Mapping[MealContext, int] = types.MappingProxyType({
    MealContext.PREPRANDIAL: mdc(Partition.PHD_DM, PhdDm.MDC_CTXT_GLU_MEAL_PREPRANDIAL),
    MealContext.POSTPRANDIAL: mdc(Partition.PHD_DM, PhdDm.MDC_CTXT_GLU_MEAL_POSTPRANDIAL),
    MealContext.FASTING: mdc(Partition.PHD_DM, PhdDm.MDC_CTXT_GLU_MEAL_FASTING),
})

#: MDC unit codes of the canonical units.
UNIT_MDC: Mapping[str, int] = types.MappingProxyType({
    "mg/dL": mdc(Partition.DIM, Dim.MDC_DIM_MILLI_G_PER_DL),
    "mmol/L": mdc(Partition.DIM, Dim.MDC_DIM_MILLI_MOLE_PER_L),
    "%": mdc(Partition.DIM, Dim.MDC_DIM_PERCENT),
    "[iU]": mdc(Partition.DIM, Dim.MDC_DIM_INTL_UNIT),
    "[iU]/h": mdc(Partition.DIM, Dim.MDC_DIM_INTL_UNIT_PER_HR),
})


# --- records -----------------------------------------------------------------------------

def utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC instant; naive datetimes are refused (they are ambiguous)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise RecordError(f"instant {value.isoformat()} has no time zone; use UTC", value)
    return value.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Fields every reading and event has.

    ``device_id`` is the stable identity of the device (its system id or serial, as the edge
    registers it). ``sequence`` is the device's own record number where it has one (GLS
    sequence number, IDS history sequence number, meter record index). ``device_time`` is
    the naive timestamp as the device's clock showed it; ``time`` is the corrected UTC instant.
    """

    KIND: ClassVar[RecordKind]

    device_id: str
    time: dt.datetime
    sequence: int | None = None
    device_time: dt.datetime | None = None
    time_quality: frozenset[TimeQuality] = frozenset()

    def __post_init__(self) -> None:
        if not self.device_id:
            raise RecordError("device_id must not be empty")
        object.__setattr__(self, "time", utc(self.time))
        if self.device_time is not None and self.device_time.tzinfo is not None:
            raise RecordError("device_time is the device's naive wall-clock time")
        if self.sequence is not None and self.sequence < 0:
            raise RecordError(f"sequence {self.sequence} is negative")

    @property
    def kind(self) -> RecordKind:
        return self.KIND

    @property
    def coding(self) -> KindCoding:
        return CODINGS[self.KIND]

    def idempotency_key(self) -> str:
        """Stable across re-reads of the same record from the same device.

        Device sequence numbers identify a record where the device has them, together with the
        device's own timestamp: a meter or pump whose memory was cleared numbers from the start
        again, and its new records must not collide with the old ones. Without a sequence
        number the device timestamp alone identifies the record (never the corrected instant,
        which may be refined later).
        """
        if self.sequence is not None:
            ident = f"seq:{self.sequence}"
            if self.device_time is not None:
                ident += f"@{self.device_time.isoformat()}"
        elif self.device_time is not None:
            ident = f"dt:{self.device_time.isoformat()}"
        else:
            ident = f"utc:{self.time.isoformat()}"
        return f"{self.device_id}|{self.KIND.value}|{ident}"


def _check_nonneg(name: str, value: float | None) -> None:
    if value is not None and not value >= 0:
        raise RecordError(f"{name} must be a non-negative number, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BloodGlucoseReading(Record):
    """A capillary (or other specimen) blood glucose measurement from a meter.

    ``glucose_mg_dl`` is ``None`` when the meter reported no number (e.g. "HI"/"LO" beyond its
    range); ``below_range``/``above_range`` then say which way.
    """

    KIND: ClassVar[RecordKind] = RecordKind.BLOOD_GLUCOSE

    glucose_mg_dl: float | None
    sample_type: SampleType = SampleType.CAPILLARY_WHOLE_BLOOD
    sample_location: SampleLocation = SampleLocation.FINGER
    meal: MealContext | None = None
    annunciations: frozenset[Annunciation] = frozenset()

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        _check_nonneg("glucose_mg_dl", self.glucose_mg_dl)

    @property
    def glucose_mmol_l(self) -> float | None:
        return None if self.glucose_mg_dl is None else mg_dl_to_mmol_l(self.glucose_mg_dl)

    @property
    def is_control_solution(self) -> bool:
        return self.sample_type is SampleType.CONTROL_SOLUTION

    @property
    def below_range(self) -> bool:
        return Annunciation.RESULT_TOO_LOW in self.annunciations

    @property
    def above_range(self) -> bool:
        return Annunciation.RESULT_TOO_HIGH in self.annunciations


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmReading(Record):
    """One CGM sensor value (interstitial fluid glucose).

    ``session_start`` is the sensor session's start as a UTC instant and ``time_offset_min``
    the CGMS Time Offset of this value within the session, where the device reports them.
    """

    KIND: ClassVar[RecordKind] = RecordKind.CGM_GLUCOSE

    glucose_mg_dl: float | None
    trend_mg_dl_per_min: float | None = None
    quality_percent: float | None = None
    annunciations: frozenset[Annunciation] = frozenset()
    session_start: dt.datetime | None = None
    time_offset_min: int | None = None

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        _check_nonneg("glucose_mg_dl", self.glucose_mg_dl)
        if self.quality_percent is not None and not 0 <= self.quality_percent <= 100:
            raise RecordError(f"quality_percent {self.quality_percent} outside 0…100")
        if self.session_start is not None:
            object.__setattr__(self, "session_start", utc(self.session_start))

    @property
    def glucose_mmol_l(self) -> float | None:
        return None if self.glucose_mg_dl is None else mg_dl_to_mmol_l(self.glucose_mg_dl)

    @property
    def trend(self) -> Trend | None:
        t = self.trend_mg_dl_per_min
        return None if t is None else Trend.from_rate(t)

    def idempotency_key(self) -> str:
        # A CGM value is identified by its session and offset; sessions restart offsets at 0.
        if self.session_start is not None and self.time_offset_min is not None:
            return (f"{self.device_id}|{self.KIND.value}|"
                    f"session:{self.session_start.isoformat()}+{self.time_offset_min}")
        return Record.idempotency_key(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class InsulinBolus(Record):
    """A bolus as programmed or as delivered (IDS history Bolus Programmed/Delivered)."""

    KIND: ClassVar[RecordKind] = RecordKind.INSULIN_BOLUS

    bolus_id: int
    phase: BolusPhase
    bolus_type: BolusType = BolusType.FAST
    fast_iu: float = 0.0
    extended_iu: float = 0.0
    extended_duration_min: int = 0

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        _check_nonneg("fast_iu", self.fast_iu)
        _check_nonneg("extended_iu", self.extended_iu)
        _check_nonneg("extended_duration_min", self.extended_duration_min)

    @property
    def total_iu(self) -> float:
        return self.fast_iu + self.extended_iu


@dataclass(frozen=True, slots=True, kw_only=True)
class BasalRateChange(Record):
    KIND: ClassVar[RecordKind] = RecordKind.BASAL_RATE_CHANGE

    rate_iu_per_h: float
    previous_rate_iu_per_h: float | None = None

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        _check_nonneg("rate_iu_per_h", self.rate_iu_per_h)
        _check_nonneg("previous_rate_iu_per_h", self.previous_rate_iu_per_h)


@dataclass(frozen=True, slots=True, kw_only=True)
class TempBasalStart(Record):
    """A temporary basal rate: ``value`` in IU/h (absolute) or percent (relative)."""

    KIND: ClassVar[RecordKind] = RecordKind.TEMP_BASAL_START

    temp_basal_type: TempBasalType
    value: float
    duration_min: int

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        _check_nonneg("value", self.value)
        _check_nonneg("duration_min", self.duration_min)


@dataclass(frozen=True, slots=True, kw_only=True)
class TempBasalEnd(Record):
    KIND: ClassVar[RecordKind] = RecordKind.TEMP_BASAL_END

    effective_duration_min: int
    canceled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TotalDailyInsulin(Record):
    KIND: ClassVar[RecordKind] = RecordKind.TOTAL_DAILY_INSULIN

    day: dt.date
    bolus_iu: float
    basal_iu: float

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        _check_nonneg("bolus_iu", self.bolus_iu)
        _check_nonneg("basal_iu", self.basal_iu)

    @property
    def total_iu(self) -> float:
        return self.bolus_iu + self.basal_iu


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservoirLevel(Record):
    KIND: ClassVar[RecordKind] = RecordKind.RESERVOIR_LEVEL

    remaining_iu: float

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        _check_nonneg("remaining_iu", self.remaining_iu)


@dataclass(frozen=True, slots=True, kw_only=True)
class TherapyStateChange(Record):
    KIND: ClassVar[RecordKind] = RecordKind.THERAPY_STATE_CHANGE

    new_state: TherapyState
    previous_state: TherapyState | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationalStateChange(Record):
    KIND: ClassVar[RecordKind] = RecordKind.OPERATIONAL_STATE_CHANGE

    new_state: OperationalState
    previous_state: OperationalState | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnunciationEvent(Record):
    """A device condition raised (or its status changed) at ``time``."""

    KIND: ClassVar[RecordKind] = RecordKind.ANNUNCIATION

    annunciation: Annunciation
    status: AnnunciationStatus = AnnunciationStatus.PENDING
    instance_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """Identity of one device, as read from DIS, 11073 MDS attributes or serial commands."""

    device_id: str
    kind: DeviceKind
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    firmware_revision: str | None = None
    hardware_revision: str | None = None
    software_revision: str | None = None
    system_id: str | None = None  # EUI-64 as 16 hex digits
    transport: str | None = None  # "ble" or "serial"
    address: str | None = None    # BLE address or serial port URL

    def __post_init__(self) -> None:
        if not self.device_id:
            raise RecordError("device_id must not be empty")


AnyRecord = (BloodGlucoseReading | CgmReading | InsulinBolus | BasalRateChange | TempBasalStart
             | TempBasalEnd | TotalDailyInsulin | ReservoirLevel | TherapyStateChange
             | OperationalStateChange | AnnunciationEvent)

RECORD_TYPES: Mapping[RecordKind, type[Record]] = types.MappingProxyType({
    cls.KIND: cls for cls in typing.get_args(AnyRecord)
})


# --- JSON form (the MQTT payload and outbox form of a record) ----------------------------

def _to_plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, frozenset):
        return sorted(_to_plain(v) for v in value)
    return value


def record_to_json(record: Record | DeviceInfo) -> dict[str, Any]:
    """Plain JSON object; records carry ``"kind"``, every field is present."""
    out: dict[str, Any] = {}
    if isinstance(record, Record):
        out["kind"] = record.KIND.value
    for f in dataclasses.fields(record):
        out[f.name] = _to_plain(getattr(record, f.name))
    return out


def _from_plain(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) != len(typing.get_args(tp)):
            return None
        return _from_plain(args[0], value, name)
    if value is None:
        raise RecordError(f"field {name!r} must not be null")
    if origin is frozenset:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise RecordError(f"field {name!r} must be a list")
        return frozenset(_from_plain(inner, v, name) for v in value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise RecordError(f"field {name!r}: {value!r} is not one of "
                              f"{[m.value for m in tp]}") from None
    if tp is dt.datetime:
        if not isinstance(value, str):
            raise RecordError(f"field {name!r} must be an ISO 8601 string")
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            raise RecordError(f"field {name!r}: {value!r} is not ISO 8601") from None
    if tp is dt.date:
        try:
            return dt.date.fromisoformat(value)
        except (TypeError, ValueError):
            raise RecordError(f"field {name!r}: {value!r} is not an ISO date") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"field {name!r} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"field {name!r} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecordError(f"field {name!r} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecordError(f"field {name!r} must be a string, got {value!r}")
        return value
    raise RecordError(f"field {name!r} has an unsupported type {tp!r}")  # pragma: no cover


_FIELDS: dict[type[Any], tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]] = {}


def _fields_of(cls: type[Any]) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Resolved type hints and fields of a record class (resolving hints is slow: cached)."""
    if cls not in _FIELDS:
        _FIELDS[cls] = (typing.get_type_hints(cls),
                        {f.name: f for f in dataclasses.fields(cls)})
    return _FIELDS[cls]


def _build(cls: type[Any], payload: Mapping[str, Any], skip: frozenset[str]) -> Any:
    hints, known = _fields_of(cls)
    unknown = set(payload) - set(known) - skip
    if unknown:
        raise RecordError(f"unknown field(s) {sorted(unknown)} for {cls.__name__}", payload)
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name in payload:
            kwargs[name] = _from_plain(hints[name], payload[name], name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(f"missing field {name!r} for {cls.__name__}", payload)
    try:
        return cls(**kwargs)
    except RecordError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordError(f"invalid {cls.__name__}: {exc}", payload) from None


def record_from_json(payload: Mapping[str, Any]) -> AnyRecord:
    """The inverse of :func:`record_to_json`; a clear :class:`RecordError` for bad input."""
    if not isinstance(payload, Mapping):
        raise RecordError("a record is a JSON object", payload)
    try:
        kind = RecordKind(str(payload.get("kind")))
    except ValueError:
        raise RecordError(f"unknown record kind {payload.get('kind')!r}", payload) from None
    record: AnyRecord = _build(RECORD_TYPES[kind], payload, frozenset({"kind"}))
    return record


def device_info_from_json(payload: Mapping[str, Any]) -> DeviceInfo:
    if not isinstance(payload, Mapping):
        raise RecordError("device info is a JSON object", payload)
    info: DeviceInfo = _build(DeviceInfo, payload, frozenset())
    return info
