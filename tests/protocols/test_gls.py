"""Glucose Service codecs: field order, derived flags, unit conversions, round trips."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ProtocolError, TrailingBytes, TruncatedFrame, ValueOutOfRange
from bridge.protocols.codec import to_json
from bridge.protocols.date_time import DateTime
from bridge.protocols.gls import (
    MG_DL_PER_MMOL_L,
    TIME_OFFSET_OVERRUN,
    TIME_OFFSET_UNDERRUN,
    CarbohydrateId,
    ConcentrationUnit,
    GlucoseContextFlags,
    GlucoseFeature,
    GlucoseFeatureFlags,
    GlucoseHealth,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseMeasurementFlags,
    GlucoseSampleType,
    GlucoseTester,
    Meal,
    MedicationId,
    MedicationUnit,
    SampleLocation,
    SensorStatusAnnunciation,
)
from bridge.protocols.mder_float import SFloat, Special

BASE = DateTime(2024, 5, 17, 8, 30, 0)
EXAMPLE = bytes.fromhex("02 0100 e807 05 11 08 1e 00 5bb0 11")


# --- strategies ---------------------------------------------------------------------------

sfloats = st.builds(SFloat, st.integers(-2048, 2047), st.integers(-8, 7))
date_times = st.builds(
    DateTime,
    st.one_of(st.just(0), st.integers(1582, 9999)),
    st.integers(0, 12), st.integers(0, 31), st.integers(0, 23), st.integers(0, 59),
    st.integers(0, 59))
nibbles = st.integers(0, 15)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)


@st.composite
def measurements(draw: st.DrawFn) -> GlucoseMeasurement:
    has_conc = draw(st.booleans())
    return GlucoseMeasurement(
        sequence_number=draw(u16),
        base_time=draw(date_times),
        time_offset=draw(st.none() | st.integers(-0x8000, 0x7FFF)),
        concentration=draw(sfloats) if has_conc else None,
        units=draw(st.sampled_from(ConcentrationUnit)),
        sample_type=draw(nibbles) if has_conc else None,
        sample_location=draw(nibbles) if has_conc else None,
        sensor_status=draw(st.none() | u16.map(SensorStatusAnnunciation)),
        context_follows=draw(st.booleans()),
        reserved_flags=draw(st.integers(0, 7)) << 5,
    )


@st.composite
def contexts(draw: st.DrawFn) -> GlucoseMeasurementContext:
    carb, tester_health, exercise, medication = (draw(st.booleans()) for _ in range(4))
    return GlucoseMeasurementContext(
        sequence_number=draw(u16),
        extended_flags=draw(st.none() | u8),
        carbohydrate_id=draw(u8) if carb else None,
        carbohydrate_kg=draw(sfloats) if carb else None,
        meal=draw(st.none() | u8),
        tester=draw(nibbles) if tester_health else None,
        health=draw(nibbles) if tester_health else None,
        exercise_duration_s=draw(u16) if exercise else None,
        exercise_intensity_percent=draw(u8) if exercise else None,
        medication_id=draw(u8) if medication else None,
        medication=draw(sfloats) if medication else None,
        medication_units=draw(st.sampled_from(MedicationUnit)),
        hba1c_percent=draw(st.none() | sfloats),
    )


# --- Glucose Measurement ------------------------------------------------------------------


def test_documented_example_field_by_field() -> None:
    m = GlucoseMeasurement.from_bytes(EXAMPLE)
    assert m.flags == GlucoseMeasurementFlags.CONCENTRATION_TYPE_SAMPLE_LOCATION_PRESENT
    assert m.sequence_number == 1
    assert m.base_time == BASE
    assert m.time_offset is None  # flags bit 0 clear: no offset field
    assert m.concentration == SFloat(91, -5)
    assert m.units is ConcentrationUnit.KG_PER_L
    assert m.sample_type is GlucoseSampleType.CAPILLARY_WHOLE_BLOOD
    assert m.sample_location is SampleLocation.FINGER
    assert m.sensor_status is None
    assert not m.context_follows
    assert m.concentration_mg_dl() == Decimal(91)
    assert m.glucose_mg_dl() == Decimal(91)
    assert m.time() == dt.datetime(2024, 5, 17, 8, 30)
    assert bytes(m) == EXAMPLE


def test_type_is_low_nibble_location_high_nibble() -> None:
    m = GlucoseMeasurement.from_bytes(bytes.fromhex("02 0100 e807 05 11 08 1e 00 5bb0 4a"))
    assert m.sample_type is GlucoseSampleType.CONTROL_SOLUTION
    assert m.sample_location is SampleLocation.CONTROL_SOLUTION
    m = GlucoseMeasurement.from_bytes(bytes.fromhex("02 0100 e807 05 11 08 1e 00 5bb0 29"))
    assert m.sample_type is GlucoseSampleType.INTERSTITIAL_FLUID
    assert m.sample_location is SampleLocation.ALTERNATE_SITE_TEST


def test_reserved_nibbles_are_kept_as_ints() -> None:
    m = GlucoseMeasurement.from_bytes(bytes.fromhex("02 0100 e807 05 11 08 1e 00 5bb0 5b"))
    assert m.sample_type == 11 and type(m.sample_type) is int
    assert m.sample_location == 5 and type(m.sample_location) is int
    assert to_json(m)["sample_type"] == 11  # type: ignore[index,call-overload]


def test_known_nibbles_given_as_ints_become_members() -> None:
    m = GlucoseMeasurement(1, BASE, concentration=SFloat(91, -5), sample_type=2,
                           sample_location=15)
    assert m.sample_type is GlucoseSampleType.CAPILLARY_PLASMA
    assert m.sample_location is SampleLocation.NOT_AVAILABLE


def test_mmol_l_reading_and_conversion() -> None:
    m = GlucoseMeasurement.from_bytes(bytes.fromhex("06 0300 e807 05 11 08 1e 00 36c0 12"))
    assert m.units is ConcentrationUnit.MOL_PER_L
    assert m.concentration_mmol_l() == Decimal("5.4")
    assert m.glucose_mg_dl() == Decimal("5.4") * MG_DL_PER_MMOL_L
    assert m.glucose_mg_dl() == Decimal("97.28424")
    with pytest.raises(ValueOutOfRange):
        m.concentration_mg_dl()


def test_kg_l_reading_refuses_mmol_accessor() -> None:
    m = GlucoseMeasurement.from_bytes(EXAMPLE)
    with pytest.raises(ValueOutOfRange):
        m.concentration_mmol_l()


def test_conversion_factor_comes_from_molar_mass() -> None:
    # 180.156 g/mol: 1 mmol/L = 180.156 mg/L = 18.0156 mg/dL.
    assert Decimal("180.156") / 10 == MG_DL_PER_MMOL_L


@pytest.mark.parametrize("special", list(Special))
def test_special_concentration_has_no_mg_dl(special: Special) -> None:
    m = GlucoseMeasurement(1, BASE, concentration=SFloat.special_value(special),
                           sample_type=1, sample_location=1)
    assert GlucoseMeasurement.from_bytes(bytes(m)) == m
    with pytest.raises(ValueOutOfRange):
        m.glucose_mg_dl()


def test_no_concentration_has_no_mg_dl() -> None:
    with pytest.raises(ValueOutOfRange):
        GlucoseMeasurement(1, BASE).glucose_mg_dl()


def test_time_adds_offset_minutes() -> None:
    m = GlucoseMeasurement(1, BASE, time_offset=-90)
    assert m.time() == dt.datetime(2024, 5, 17, 7, 0)
    assert bytes(m) == bytes.fromhex("01 0100 e807 05 11 08 1e 00 a6ff")


@pytest.mark.parametrize("offset", [TIME_OFFSET_OVERRUN, TIME_OFFSET_UNDERRUN])
def test_time_offset_overrun_underrun_have_no_time(offset: int) -> None:
    m = GlucoseMeasurement(1, BASE, time_offset=offset)
    assert m.time_offset_overrun == (offset == 0x7FFF)
    assert m.time_offset_underrun == (offset == -0x8000)
    with pytest.raises(ValueOutOfRange):
        m.time()


def test_time_with_unknown_base_time() -> None:
    with pytest.raises(ValueOutOfRange):
        GlucoseMeasurement(1, DateTime(0, 0, 0, 0, 0, 0)).time()


def test_from_mg_dl_encodes_like_meters() -> None:
    m = GlucoseMeasurement.from_mg_dl(1, BASE, 91, sample_type=1)
    assert bytes(m) == EXAMPLE
    assert GlucoseMeasurement.from_mg_dl(1, BASE, "91.5").concentration == SFloat(915, -6)


def test_from_mmol_l_encodes_mol_per_l() -> None:
    m = GlucoseMeasurement.from_mmol_l(3, BASE, "5.4")
    assert bytes(m) == bytes.fromhex("06 0300 e807 05 11 08 1e 00 36c0 12")


def test_from_mg_dl_too_fine_is_refused() -> None:
    with pytest.raises(ValueOutOfRange):
        GlucoseMeasurement.from_mg_dl(1, BASE, "0.0001")


def test_from_mg_dl_nan_stays_special() -> None:
    m = GlucoseMeasurement.from_mg_dl(1, BASE, float("nan"))
    assert m.concentration is not None and m.concentration.special is Special.NAN


def test_flags_are_derived_from_fields() -> None:
    m = GlucoseMeasurement(
        7, BASE, time_offset=5, concentration=SFloat(54, -4), units=ConcentrationUnit.MOL_PER_L,
        sample_type=GlucoseSampleType.CAPILLARY_PLASMA, sample_location=SampleLocation.FINGER,
        sensor_status=SensorStatusAnnunciation.TIME_FAULT, context_follows=True)
    assert int(m.flags) == 0x1F
    assert dataclasses.replace(m, time_offset=None).flags == 0x1E
    assert dataclasses.replace(m, context_follows=False).flags == 0x0F


@pytest.mark.parametrize("kwargs", [
    {"concentration": SFloat(91, -5)},
    {"concentration": SFloat(91, -5), "sample_type": 1},
    {"sample_type": 1, "sample_location": 1},
    {"sample_location": 1},
])
def test_incomplete_concentration_group_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueOutOfRange):
        GlucoseMeasurement(1, BASE, **kwargs)  # type: ignore[arg-type]


def test_nibble_out_of_range_is_refused() -> None:
    with pytest.raises(ValueOutOfRange):
        GlucoseMeasurement(1, BASE, concentration=SFloat(1, 0), sample_type=16,
                           sample_location=1)


def test_reserved_flags_outside_bits_5_to_7_refused() -> None:
    with pytest.raises(ValueOutOfRange):
        GlucoseMeasurement(1, BASE, reserved_flags=0x01)


def test_encode_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueOutOfRange):
        bytes(GlucoseMeasurement(0x10000, BASE))
    with pytest.raises(ValueOutOfRange):
        bytes(GlucoseMeasurement(1, BASE, time_offset=0x8000))


def test_sensor_status_names_all_twelve_bits() -> None:
    assert len(SensorStatusAnnunciation) == 12
    assert int(SensorStatusAnnunciation(0x0FFF)) == sum(int(b) for b in SensorStatusAnnunciation)


def test_decode_errors() -> None:
    with pytest.raises(TruncatedFrame):
        GlucoseMeasurement.from_bytes(EXAMPLE[:-1])
    with pytest.raises(TrailingBytes):
        GlucoseMeasurement.from_bytes(EXAMPLE + b"\x00")
    with pytest.raises(ValueOutOfRange):  # month 13
        GlucoseMeasurement.from_bytes(bytes.fromhex("02 0100 e807 0d 11 08 1e 00 5bb0 11"))


def test_truncated_error_names_offset() -> None:
    with pytest.raises(TruncatedFrame) as info:
        GlucoseMeasurement.from_bytes(bytes.fromhex("01 0100 e807 05 11 08 1e 00"))
    assert info.value.offset == 10


@given(measurements())
def test_measurement_round_trip(m: GlucoseMeasurement) -> None:
    assert GlucoseMeasurement.from_bytes(bytes(m)) == m


@given(st.binary(max_size=24))
def test_any_decodable_measurement_reencodes_exactly(data: bytes) -> None:
    try:
        m = GlucoseMeasurement.from_bytes(data)
    except ProtocolError:
        return
    assert bytes(m) == data


# --- Glucose Measurement Context ----------------------------------------------------------


def test_context_all_fields() -> None:
    data = bytes.fromhex("ff 0900 00 01 32d0 02 51 0807 3c 02 32a0 41f0")
    c = GlucoseMeasurementContext.from_bytes(data)
    assert c.flags == GlucoseContextFlags(0xFF)
    assert c.extended_flags == 0
    assert c.carbohydrate_id is CarbohydrateId.BREAKFAST
    assert c.carbohydrate_kg == SFloat(50, -3)
    assert c.meal is Meal.POSTPRANDIAL
    assert c.tester is GlucoseTester.SELF
    assert c.health is GlucoseHealth.NO_HEALTH_ISSUES
    assert c.exercise_duration_s == 1800
    assert c.exercise_intensity_percent == 60
    assert c.medication_id is MedicationId.SHORT_ACTING_INSULIN
    assert c.medication == SFloat(50, -6)
    assert c.medication_units is MedicationUnit.LITERS
    assert c.hba1c_percent == SFloat(65, -1)
    assert bytes(c) == data


def test_context_tester_low_nibble_health_high_nibble() -> None:
    c = GlucoseMeasurementContext.from_bytes(bytes.fromhex("04 0700 32"))
    assert c.tester is GlucoseTester.HEALTH_CARE_PROFESSIONAL
    assert c.health is GlucoseHealth.DURING_MENSES


def test_context_exercise_overrun() -> None:
    c = GlucoseMeasurementContext.from_bytes(bytes.fromhex("08 0700 ffff 64"))
    assert c.exercise_duration_overrun
    assert not GlucoseMeasurementContext(1, exercise_duration_s=10,
                                         exercise_intensity_percent=1).exercise_duration_overrun


def test_context_extended_flags_come_before_carbohydrate() -> None:
    c = GlucoseMeasurementContext(3, extended_flags=0xAA, carbohydrate_id=CarbohydrateId.SNACK,
                                  carbohydrate_kg=SFloat(20, -3))
    assert bytes(c) == bytes.fromhex("81 0300 aa 04 14d0")


@pytest.mark.parametrize("kwargs", [
    {"carbohydrate_id": 1},
    {"carbohydrate_kg": SFloat(1, 0)},
    {"tester": 1},
    {"health": 1},
    {"exercise_duration_s": 1},
    {"exercise_intensity_percent": 1},
    {"medication_id": 1},
    {"medication": SFloat(1, 0)},
])
def test_context_half_of_a_pair_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueOutOfRange):
        GlucoseMeasurementContext(1, **kwargs)  # type: ignore[arg-type]


def test_context_reserved_values_kept() -> None:
    c = GlucoseMeasurementContext.from_bytes(bytes.fromhex("13 0700 00 32d0 09 09 02a0"))
    assert c.carbohydrate_id == 0 and type(c.carbohydrate_id) is int
    assert c.meal == 9 and type(c.meal) is int
    assert c.medication_id == 9 and type(c.medication_id) is int
    assert bytes(c) == bytes.fromhex("13 0700 00 32d0 09 09 02a0")


def test_context_errors() -> None:
    with pytest.raises(TruncatedFrame):
        GlucoseMeasurementContext.from_bytes(bytes.fromhex("40 0700 41"))
    with pytest.raises(TrailingBytes):
        GlucoseMeasurementContext.from_bytes(bytes.fromhex("00 0700 00"))


@given(contexts())
def test_context_round_trip(c: GlucoseMeasurementContext) -> None:
    assert GlucoseMeasurementContext.from_bytes(bytes(c)) == c


@given(st.binary(max_size=20))
def test_any_decodable_context_reencodes_exactly(data: bytes) -> None:
    try:
        c = GlucoseMeasurementContext.from_bytes(data)
    except ProtocolError:
        return
    assert bytes(c) == data


# --- Glucose Feature ----------------------------------------------------------------------


def test_feature_bits() -> None:
    f = GlucoseFeature.from_bytes(bytes.fromhex("0304"))
    assert f.features == (GlucoseFeatureFlags.LOW_BATTERY_DETECTION
                          | GlucoseFeatureFlags.SENSOR_MALFUNCTION_DETECTION
                          | GlucoseFeatureFlags.MULTIPLE_BOND)
    assert len(GlucoseFeatureFlags) == 11


@given(u16)
def test_feature_round_trip(raw: int) -> None:
    f = GlucoseFeature(GlucoseFeatureFlags(raw))
    assert GlucoseFeature.from_bytes(bytes(f)) == f
    assert bytes(f) == raw.to_bytes(2, "little")
