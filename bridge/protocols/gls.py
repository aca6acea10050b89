"""Bluetooth Glucose Service (0x1808, GLS 1.0): Measurement, Measurement Context and Feature.

Characteristics: Glucose Measurement 0x2A18 (notify), Glucose Measurement Context 0x2A34
(notify), Glucose Feature 0x2A51 (read). The Record Access Control Point 0x2A52 is shared with
the CGM Service and lives in :mod:`bridge.protocols.racp`. All fields are little-endian.

Flags are never stored as given: every "present" bit is derived from whether the matching
optional field is ``None``, and the bits that are not presence bits (concentration units,
context follows, medication units, the reserved bits) are fields of their own. So any valid
frame decodes and re-encodes byte-exactly, while a value object that could not exist on the
wire (a concentration without its type-sample location, say) is refused on construction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum, IntFlag
from typing import Self

from bridge.errors import ValueOutOfRange
from bridge.protocols.codec import MessageCodec, known
from bridge.protocols.date_time import DateTime
from bridge.protocols.mder_float import SFloat
from bridge.protocols.wire import Reader, Writer

GLUCOSE_SERVICE_UUID = 0x1808


class GlsCharacteristic(IntEnum):
    """16-bit UUIDs of the GLS characteristics (GLS 1.0 §3)."""

    GLUCOSE_MEASUREMENT = 0x2A18
    GLUCOSE_MEASUREMENT_CONTEXT = 0x2A34
    GLUCOSE_FEATURE = 0x2A51
    RECORD_ACCESS_CONTROL_POINT = 0x2A52






def _nibble(value: int | None, what: str) -> None:
    if value is not None and not 0 <= value <= 0x0F:
        raise ValueOutOfRange(f"{what}={value} does not fit a 4-bit nibble")


def _read_sfloat(r: Reader, what: str) -> SFloat:
    return SFloat.from_int(r.u16(what))


# --------------------------------------------------------------------------------------------
# Glucose Measurement (GLS 1.0 §3.1)
# --------------------------------------------------------------------------------------------


class GlucoseMeasurementFlags(IntFlag):
    """Flags octet of the Glucose Measurement (GLS 1.0 §3.1.1); bits 5–7 are reserved."""

    TIME_OFFSET_PRESENT = 0x01
    CONCENTRATION_TYPE_SAMPLE_LOCATION_PRESENT = 0x02
    CONCENTRATION_UNITS_MOL_PER_L = 0x04
    SENSOR_STATUS_ANNUNCIATION_PRESENT = 0x08
    CONTEXT_INFORMATION_FOLLOWS = 0x10


_MEASUREMENT_RESERVED_FLAGS = 0xE0


class ConcentrationUnit(IntEnum):
    """Flag bit 2: the unit of the Glucose Concentration SFLOAT (GLS 1.0 §3.1.5)."""

    KG_PER_L = 0
    MOL_PER_L = 1


class GlucoseSampleType(IntEnum):
    """Type nibble (low nibble of Type-Sample Location, GLS 1.0 §3.1.6); 0 and 11–15 reserved."""

    CAPILLARY_WHOLE_BLOOD = 1
    CAPILLARY_PLASMA = 2
    VENOUS_WHOLE_BLOOD = 3
    VENOUS_PLASMA = 4
    ARTERIAL_WHOLE_BLOOD = 5
    ARTERIAL_PLASMA = 6
    UNDETERMINED_WHOLE_BLOOD = 7
    UNDETERMINED_PLASMA = 8
    INTERSTITIAL_FLUID = 9
    CONTROL_SOLUTION = 10


class SampleLocation(IntEnum):
    """Sample Location nibble (high nibble, GLS 1.0 §3.1.6); 0 and 5–14 reserved."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    NOT_AVAILABLE = 15


class SensorStatusAnnunciation(IntFlag):
    """Sensor Status Annunciation (GLS 1.0 §3.1.7); bits 12–15 are reserved (kept as bitN)."""

    DEVICE_BATTERY_LOW = 1 << 0
    SENSOR_MALFUNCTION = 1 << 1
    SAMPLE_SIZE_INSUFFICIENT = 1 << 2
    STRIP_INSERTION_ERROR = 1 << 3
    STRIP_TYPE_INCORRECT = 1 << 4
    RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS = 1 << 5
    RESULT_LOWER_THAN_DEVICE_CAN_PROCESS = 1 << 6
    TEMPERATURE_TOO_HIGH = 1 << 7
    TEMPERATURE_TOO_LOW = 1 << 8
    READ_INTERRUPTED_STRIP_PULLED_TOO_SOON = 1 << 9
    GENERAL_DEVICE_FAULT = 1 << 10
    TIME_FAULT = 1 << 11


#: Time Offset values that carry no offset but say the offset left the sint16 range
#: (GLS 1.0 §3.1.4): the user-facing time is then not known from this record.
TIME_OFFSET_OVERRUN = 0x7FFF
TIME_OFFSET_UNDERRUN = -0x8000

#: mg/dL per kg/L: 1 kg/L = 10^6 mg / 10 dL.
MG_DL_PER_KG_L = Decimal(100000)
#: mg/dL per mmol/L for glucose: molar mass of glucose C6H12O6 = 180.156 g/mol, so
#: 1 mmol/L = 180.156 mg/L = 18.0156 mg/dL.
MG_DL_PER_MMOL_L = Decimal("18.0156")


@dataclass(frozen=True, slots=True)
class GlucoseMeasurement:
    """One Glucose Measurement record (0x2A18, GLS 1.0 §3.1).

    ``concentration`` is the raw SFLOAT in kg/L or mol/L as ``units`` says; use
    :meth:`glucose_mg_dl` for a clinical number. ``sample_type``/``sample_location`` are
    present exactly when ``concentration`` is. ``flags`` is derived, never passed.
    """

    flags: GlucoseMeasurementFlags = field(init=False)
    sequence_number: int
    base_time: DateTime
    time_offset: int | None = None
    concentration: SFloat | None = None
    units: ConcentrationUnit = ConcentrationUnit.KG_PER_L
    sample_type: GlucoseSampleType | int | None = None
    sample_location: SampleLocation | int | None = None
    sensor_status: SensorStatusAnnunciation | None = None
    context_follows: bool = False
    #: Reserved flag bits 5–7 exactly as received (shown in ``flags`` as bit5…bit7).
    reserved_flags: int = field(default=0, metadata={"json": False})

    def __post_init__(self) -> None:
        has_conc = self.concentration is not None
        if has_conc != (self.sample_type is not None) or has_conc != (
                self.sample_location is not None):
            raise ValueOutOfRange(
                "concentration, sample_type and sample_location are one optional group "
                "(GLS 1.0 §3.1.1 bit 1): give all three or none")
        if self.reserved_flags & ~_MEASUREMENT_RESERVED_FLAGS:
            raise ValueOutOfRange(
                f"reserved_flags=0x{self.reserved_flags:02X} may only hold bits 5–7")
        _nibble(self.sample_type, "sample_type")
        _nibble(self.sample_location, "sample_location")
        if self.sample_type is not None:
            object.__setattr__(self, "sample_type", known(GlucoseSampleType, self.sample_type))
        if self.sample_location is not None:
            object.__setattr__(self, "sample_location",
                               known(SampleLocation, self.sample_location))
        object.__setattr__(self, "units", ConcentrationUnit(self.units))
        if self.sensor_status is not None:
            object.__setattr__(self, "sensor_status",
                               SensorStatusAnnunciation(self.sensor_status))
        f = GlucoseMeasurementFlags(self.reserved_flags)
        if self.time_offset is not None:
            f |= GlucoseMeasurementFlags.TIME_OFFSET_PRESENT
        if has_conc:
            f |= GlucoseMeasurementFlags.CONCENTRATION_TYPE_SAMPLE_LOCATION_PRESENT
        if self.units is ConcentrationUnit.MOL_PER_L:
            f |= GlucoseMeasurementFlags.CONCENTRATION_UNITS_MOL_PER_L
        if self.sensor_status is not None:
            f |= GlucoseMeasurementFlags.SENSOR_STATUS_ANNUNCIATION_PRESENT
        if self.context_follows:
            f |= GlucoseMeasurementFlags.CONTEXT_INFORMATION_FOLLOWS
        object.__setattr__(self, "flags", f)

    # --- wire ---------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        flags = r.u8("flags")
        sequence_number = r.u16("sequence number")
        base_time = DateTime.read(r)
        time_offset = (r.s16("time offset")
                       if flags & GlucoseMeasurementFlags.TIME_OFFSET_PRESENT else None)
        concentration = sample_type = sample_location = None
        if flags & GlucoseMeasurementFlags.CONCENTRATION_TYPE_SAMPLE_LOCATION_PRESENT:
            concentration = _read_sfloat(r, "glucose concentration")
            type_location = r.u8("type-sample location")
            # Low nibble = Type, high nibble = Sample Location (GLS 1.0 §3.1.6).
            sample_type = type_location & 0x0F
            sample_location = type_location >> 4
        sensor_status = (
            SensorStatusAnnunciation(r.u16("sensor status annunciation"))
            if flags & GlucoseMeasurementFlags.SENSOR_STATUS_ANNUNCIATION_PRESENT else None)
        r.expect_end("Glucose Measurement")
        return cls(
            sequence_number=sequence_number,
            base_time=base_time,
            time_offset=time_offset,
            concentration=concentration,
            units=ConcentrationUnit(
                bool(flags & GlucoseMeasurementFlags.CONCENTRATION_UNITS_MOL_PER_L)),
            sample_type=sample_type,
            sample_location=sample_location,
            sensor_status=sensor_status,
            context_follows=bool(flags & GlucoseMeasurementFlags.CONTEXT_INFORMATION_FOLLOWS),
            reserved_flags=flags & _MEASUREMENT_RESERVED_FLAGS,
        )

    def __bytes__(self) -> bytes:
        w = Writer()
        w.u8(int(self.flags), "flags").u16(self.sequence_number, "sequence number")
        self.base_time.write(w)
        if self.time_offset is not None:
            w.s16(self.time_offset, "time offset")
        if self.concentration is not None:
            assert self.sample_type is not None and self.sample_location is not None
            w.raw(bytes(self.concentration))
            w.u8(int(self.sample_location) << 4 | int(self.sample_type), "type-sample location")
        if self.sensor_status is not None:
            w.u16(int(self.sensor_status), "sensor status annunciation")
        return bytes(w)

    # --- building -----------------------------------------------------------------------
    @classmethod
    def from_mg_dl(cls, sequence_number: int, base_time: DateTime,
                   mg_dl: float | int | Decimal | str, *,
                   sample_type: GlucoseSampleType | int = GlucoseSampleType.CAPILLARY_PLASMA,
                   sample_location: SampleLocation | int = SampleLocation.FINGER,
                   time_offset: int | None = None,
                   sensor_status: SensorStatusAnnunciation | None = None,
                   context_follows: bool = False) -> Self:
        """A kg/L record for a mg/dL reading, encoded as meters do: mantissa in mg/dL,
        exponent shifted by −5 (91 mg/dL → ``0xB05B`` = 91·10⁻⁵ kg/L)."""
        return cls(sequence_number, base_time, time_offset=time_offset,
                   concentration=_shift(SFloat.from_value(mg_dl), -5),
                   units=ConcentrationUnit.KG_PER_L, sample_type=sample_type,
                   sample_location=sample_location, sensor_status=sensor_status,
                   context_follows=context_follows)

    @classmethod
    def from_mmol_l(cls, sequence_number: int, base_time: DateTime,
                    mmol_l: float | int | Decimal | str, *,
                    sample_type: GlucoseSampleType | int = GlucoseSampleType.CAPILLARY_PLASMA,
                    sample_location: SampleLocation | int = SampleLocation.FINGER,
                    time_offset: int | None = None,
                    sensor_status: SensorStatusAnnunciation | None = None,
                    context_follows: bool = False) -> Self:
        """A mol/L record for a mmol/L reading (5.4 mmol/L → 54·10⁻⁴ mol/L)."""
        return cls(sequence_number, base_time, time_offset=time_offset,
                   concentration=_shift(SFloat.from_value(mmol_l), -3),
                   units=ConcentrationUnit.MOL_PER_L, sample_type=sample_type,
                   sample_location=sample_location, sensor_status=sensor_status,
                   context_follows=context_follows)

    # --- values -------------------------------------------------------------------------
    def _finite_concentration(self) -> Decimal:
        if self.concentration is None:
            raise ValueOutOfRange("this Glucose Measurement carries no concentration")
        return self.concentration.to_decimal()  # ValueOutOfRange for NaN, NRes, ±INF

    def concentration_mg_dl(self) -> Decimal:
        """The concentration in mg/dL; only for kg/L records (kg/L × 10⁵)."""
        if self.units is not ConcentrationUnit.KG_PER_L:
            raise ValueOutOfRange("concentration is in mol/L; use concentration_mmol_l() or "
                                  "glucose_mg_dl()")
        return self._finite_concentration() * MG_DL_PER_KG_L

    def concentration_mmol_l(self) -> Decimal:
        """The concentration in mmol/L; only for mol/L records (mol/L × 10³)."""
        if self.units is not ConcentrationUnit.MOL_PER_L:
            raise ValueOutOfRange("concentration is in kg/L; use concentration_mg_dl()")
        return self._finite_concentration().scaleb(3)

    def glucose_mg_dl(self) -> Decimal:
        """The reading in mg/dL whatever the unit: mol/L records are converted with
        :data:`MG_DL_PER_MMOL_L` (18.0156 mg/dL per mmol/L, from 180.156 g/mol)."""
        if self.units is ConcentrationUnit.KG_PER_L:
            return self.concentration_mg_dl()
        return self.concentration_mmol_l() * MG_DL_PER_MMOL_L

    @property
    def time_offset_overrun(self) -> bool:
        return self.time_offset == TIME_OFFSET_OVERRUN

    @property
    def time_offset_underrun(self) -> bool:
        return self.time_offset == TIME_OFFSET_UNDERRUN

    def time(self) -> dt.datetime:
        """User-facing time: Base Time + Time Offset minutes (GLS 1.0 §3.1.3–§3.1.4).

        Raises ``ValueOutOfRange`` when the base time has unknown parts or the offset is
        the overrun/underrun marker (the real time is then not known).
        """
        if self.time_offset_overrun or self.time_offset_underrun:
            kind = "overrun" if self.time_offset_overrun else "underrun"
            raise ValueOutOfRange(f"time offset {kind}: the user-facing time is not known")
        return self.base_time.to_datetime() + dt.timedelta(minutes=self.time_offset or 0)


def _shift(value: SFloat, exponent_delta: int) -> SFloat:
    """Rescale a finite SFLOAT by a power of ten; special values stay as they are."""
    if not value.is_finite:
        return value
    return SFloat(value.mantissa, value.exponent + exponent_delta)


# --------------------------------------------------------------------------------------------
# Glucose Measurement Context (GLS 1.0 §3.2)
# --------------------------------------------------------------------------------------------


class GlucoseContextFlags(IntFlag):
    """Flags octet of the Glucose Measurement Context (GLS 1.0 §3.2); all 8 bits defined."""

    CARBOHYDRATE_PRESENT = 0x01
    MEAL_PRESENT = 0x02
    TESTER_HEALTH_PRESENT = 0x04
    EXERCISE_PRESENT = 0x08
    MEDICATION_PRESENT = 0x10
    MEDICATION_UNITS_LITERS = 0x20
    HBA1C_PRESENT = 0x40
    EXTENDED_FLAGS_PRESENT = 0x80


class CarbohydrateId(IntEnum):
    """Carbohydrate ID (GLS 1.0 §3.2); 0 and 8–255 reserved."""

    BREAKFAST = 1
    LUNCH = 2
    DINNER = 3
    SNACK = 4
    DRINK = 5
    SUPPER = 6
    BRUNCH = 7


class Meal(IntEnum):
    """Meal (GLS 1.0 §3.2); 0 and 6–255 reserved."""

    PREPRANDIAL = 1
    POSTPRANDIAL = 2
    FASTING = 3
    CASUAL = 4
    BEDTIME = 5


class GlucoseTester(IntEnum):
    """Tester nibble (low nibble of Tester-Health, GLS 1.0 §3.2); 0 and 4–14 reserved."""

    SELF = 1
    HEALTH_CARE_PROFESSIONAL = 2
    LAB_TEST = 3
    NOT_AVAILABLE = 15


class GlucoseHealth(IntEnum):
    """Health nibble (high nibble of Tester-Health, GLS 1.0 §3.2); 0 and 6–14 reserved."""

    MINOR_HEALTH_ISSUES = 1
    MAJOR_HEALTH_ISSUES = 2
    DURING_MENSES = 3
    UNDER_STRESS = 4
    NO_HEALTH_ISSUES = 5
    NOT_AVAILABLE = 15


class MedicationId(IntEnum):
    """Medication ID (GLS 1.0 §3.2); 0 and 6–255 reserved."""

    RAPID_ACTING_INSULIN = 1
    SHORT_ACTING_INSULIN = 2
    INTERMEDIATE_ACTING_INSULIN = 3
    LONG_ACTING_INSULIN = 4
    PRE_MIXED_INSULIN = 5


class MedicationUnit(IntEnum):
    """Context flag bit 5: the unit of the Medication SFLOAT (GLS 1.0 §3.2)."""

    KILOGRAMS = 0
    LITERS = 1


#: Exercise Duration value meaning "longer than 65534 s" (GLS 1.0 §3.2).
EXERCISE_DURATION_OVERRUN = 0xFFFF


@dataclass(frozen=True, slots=True)
class GlucoseMeasurementContext:
    """One Glucose Measurement Context record (0x2A34, GLS 1.0 §3.2).

    It belongs to the Glucose Measurement with the same ``sequence_number``. Paired fields
    (carbohydrate ID + amount, tester + health, exercise duration + intensity, medication
    ID + amount) are both present or both ``None``. Carbohydrate is in kg, medication in kg
    or L per ``medication_units``, HbA1c in percent. ``flags`` is derived, never passed.
    """

    flags: GlucoseContextFlags = field(init=False)
    sequence_number: int
    extended_flags: int | None = None
    carbohydrate_id: CarbohydrateId | int | None = None
    carbohydrate_kg: SFloat | None = None
    meal: Meal | int | None = None
    tester: GlucoseTester | int | None = None
    health: GlucoseHealth | int | None = None
    exercise_duration_s: int | None = None
    exercise_intensity_percent: int | None = None
    medication_id: MedicationId | int | None = None
    medication: SFloat | None = None
    medication_units: MedicationUnit = MedicationUnit.KILOGRAMS
    hba1c_percent: SFloat | None = None

    def __post_init__(self) -> None:
        for a, b in (("carbohydrate_id", "carbohydrate_kg"), ("tester", "health"),
                     ("exercise_duration_s", "exercise_intensity_percent"),
                     ("medication_id", "medication")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ValueOutOfRange(f"{a} and {b} share one flag bit (GLS 1.0 §3.2): "
                                      "give both or neither")
        _nibble(self.tester, "tester")
        _nibble(self.health, "health")
        for name, enum_cls in (("carbohydrate_id", CarbohydrateId), ("meal", Meal),
                               ("tester", GlucoseTester), ("health", GlucoseHealth),
                               ("medication_id", MedicationId)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, known(enum_cls, value))
        object.__setattr__(self, "medication_units", MedicationUnit(self.medication_units))
        f = GlucoseContextFlags(0)
        if self.carbohydrate_id is not None:
            f |= GlucoseContextFlags.CARBOHYDRATE_PRESENT
        if self.meal is not None:
            f |= GlucoseContextFlags.MEAL_PRESENT
        if self.tester is not None:
            f |= GlucoseContextFlags.TESTER_HEALTH_PRESENT
        if self.exercise_duration_s is not None:
            f |= GlucoseContextFlags.EXERCISE_PRESENT
        if self.medication_id is not None:
            f |= GlucoseContextFlags.MEDICATION_PRESENT
        if self.medication_units is MedicationUnit.LITERS:
            f |= GlucoseContextFlags.MEDICATION_UNITS_LITERS
        if self.hba1c_percent is not None:
            f |= GlucoseContextFlags.HBA1C_PRESENT
        if self.extended_flags is not None:
            f |= GlucoseContextFlags.EXTENDED_FLAGS_PRESENT
        object.__setattr__(self, "flags", f)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        flags = GlucoseContextFlags(r.u8("flags"))
        sequence_number = r.u16("sequence number")
        # Field order is fixed by GLS 1.0 §3.2: extended flags come right after the sequence.
        extended_flags = (r.u8("extended flags")
                          if flags & GlucoseContextFlags.EXTENDED_FLAGS_PRESENT else None)
        carbohydrate_id = carbohydrate_kg = None
        if flags & GlucoseContextFlags.CARBOHYDRATE_PRESENT:
            carbohydrate_id = r.u8("carbohydrate ID")
            carbohydrate_kg = _read_sfloat(r, "carbohydrate")
        meal = r.u8("meal") if flags & GlucoseContextFlags.MEAL_PRESENT else None
        tester = health = None
        if flags & GlucoseContextFlags.TESTER_HEALTH_PRESENT:
            tester_health = r.u8("tester-health")
            tester, health = tester_health & 0x0F, tester_health >> 4
        duration = intensity = None
        if flags & GlucoseContextFlags.EXERCISE_PRESENT:
            duration = r.u16("exercise duration")
            intensity = r.u8("exercise intensity")
        medication_id = medication = None
        if flags & GlucoseContextFlags.MEDICATION_PRESENT:
            medication_id = r.u8("medication ID")
            medication = _read_sfloat(r, "medication")
        hba1c = (_read_sfloat(r, "HbA1c") if flags & GlucoseContextFlags.HBA1C_PRESENT
                 else None)
        r.expect_end("Glucose Measurement Context")
        return cls(
            sequence_number=sequence_number,
            extended_flags=extended_flags,
            carbohydrate_id=carbohydrate_id,
            carbohydrate_kg=carbohydrate_kg,
            meal=meal,
            tester=tester,
            health=health,
            exercise_duration_s=duration,
            exercise_intensity_percent=intensity,
            medication_id=medication_id,
            medication=medication,
            medication_units=MedicationUnit(
                bool(flags & GlucoseContextFlags.MEDICATION_UNITS_LITERS)),
            hba1c_percent=hba1c,
        )

    def __bytes__(self) -> bytes:
        w = Writer()
        w.u8(int(self.flags), "flags").u16(self.sequence_number, "sequence number")
        if self.extended_flags is not None:
            w.u8(self.extended_flags, "extended flags")
        if self.carbohydrate_id is not None and self.carbohydrate_kg is not None:
            w.u8(int(self.carbohydrate_id), "carbohydrate ID").raw(bytes(self.carbohydrate_kg))
        if self.meal is not None:
            w.u8(int(self.meal), "meal")
        if self.tester is not None and self.health is not None:
            w.u8(int(self.health) << 4 | int(self.tester), "tester-health")
        if self.exercise_duration_s is not None and self.exercise_intensity_percent is not None:
            w.u16(self.exercise_duration_s, "exercise duration")
            w.u8(self.exercise_intensity_percent, "exercise intensity")
        if self.medication_id is not None and self.medication is not None:
            w.u8(int(self.medication_id), "medication ID").raw(bytes(self.medication))
        if self.hba1c_percent is not None:
            w.raw(bytes(self.hba1c_percent))
        return bytes(w)

    @property
    def exercise_duration_overrun(self) -> bool:
        return self.exercise_duration_s == EXERCISE_DURATION_OVERRUN


# --------------------------------------------------------------------------------------------
# Glucose Feature (GLS 1.0 §3.3)
# --------------------------------------------------------------------------------------------


class GlucoseFeatureFlags(IntFlag):
    """Glucose Feature bits (GLS 1.0 §3.3); bits 11–15 are reserved (kept as bitN)."""

    LOW_BATTERY_DETECTION = 1 << 0
    SENSOR_MALFUNCTION_DETECTION = 1 << 1
    SENSOR_SAMPLE_SIZE = 1 << 2
    SENSOR_STRIP_INSERTION_ERROR_DETECTION = 1 << 3
    SENSOR_STRIP_TYPE_ERROR_DETECTION = 1 << 4
    SENSOR_RESULT_HIGH_LOW_DETECTION = 1 << 5
    SENSOR_TEMPERATURE_HIGH_LOW_DETECTION = 1 << 6
    SENSOR_READ_INTERRUPT_DETECTION = 1 << 7
    GENERAL_DEVICE_FAULT = 1 << 8
    TIME_FAULT = 1 << 9
    MULTIPLE_BOND = 1 << 10


@dataclass(frozen=True, slots=True)
class GlucoseFeature:
    """The Glucose Feature characteristic (0x2A51): what the sensor can detect and report."""

    features: GlucoseFeatureFlags

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", GlucoseFeatureFlags(self.features))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        value = cls(GlucoseFeatureFlags(r.u16("glucose feature")))
        r.expect_end("Glucose Feature")
        return value

    def __bytes__(self) -> bytes:
        return bytes(Writer().u16(int(self.features), "glucose feature"))


CODECS = (
    MessageCodec("gls-measurement", "GLS Glucose Measurement (0x2A18)",
                 GlucoseMeasurement.from_bytes),
    MessageCodec("gls-context", "GLS Glucose Measurement Context (0x2A34)",
                 GlucoseMeasurementContext.from_bytes),
    MessageCodec("gls-feature", "GLS Glucose Feature (0x2A51), u16 bit field",
                 GlucoseFeature.from_bytes),
)
