"""Canonical records: units, UTC instants, idempotency keys, the code table, the JSON form."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.records import (
    CODINGS,
    MEAL_MDC,
    RECORD_TYPES,
    Annunciation,
    BloodGlucoseReading,
    BolusPhase,
    BolusType,
    CgmReading,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
    MealContext,
    RecordError,
    RecordKind,
    SampleType,
    TempBasalStart,
    TempBasalType,
    TotalDailyInsulin,
    Trend,
    device_info_from_json,
    mg_dl_to_mmol_l,
    mmol_l_to_mg_dl,
    record_from_json,
    record_to_json,
)

T0 = dt.datetime(2026, 11, 30, 7, 15, tzinfo=dt.UTC)


def test_unit_conversion_uses_glucose_molar_mass() -> None:
    assert mmol_l_to_mg_dl(5.5) == pytest.approx(99.09, abs=0.01)
    assert mg_dl_to_mmol_l(180.156) == pytest.approx(10.0)
    reading = BloodGlucoseReading(device_id="m", time=T0, glucose_mg_dl=126.0)
    assert reading.glucose_mmol_l == pytest.approx(6.994, abs=1e-3)


def test_instants_must_be_aware_and_become_utc() -> None:
    with pytest.raises(RecordError, match="no time zone"):
        BloodGlucoseReading(device_id="m", time=dt.datetime(2026, 1, 1), glucose_mg_dl=100.0)
    cet = dt.timezone(dt.timedelta(hours=1))
    r = BloodGlucoseReading(device_id="m", time=dt.datetime(2026, 1, 1, 8, tzinfo=cet),
                            glucose_mg_dl=100.0)
    assert r.time == dt.datetime(2026, 1, 1, 7, tzinfo=dt.UTC)
    assert r.time.utcoffset() == dt.timedelta(0)
    with pytest.raises(RecordError, match="naive"):
        BloodGlucoseReading(device_id="m", time=T0, device_time=T0, glucose_mg_dl=1.0)


def test_values_are_validated() -> None:
    with pytest.raises(RecordError, match="glucose_mg_dl"):
        BloodGlucoseReading(device_id="m", time=T0, glucose_mg_dl=-5.0)
    with pytest.raises(RecordError, match="quality"):
        CgmReading(device_id="c", time=T0, glucose_mg_dl=90.0, quality_percent=120.0)
    with pytest.raises(RecordError, match="device_id"):
        CgmReading(device_id="", time=T0, glucose_mg_dl=90.0)
    with pytest.raises(RecordError, match="fast_iu"):
        InsulinBolus(device_id="p", time=T0, bolus_id=1, phase=BolusPhase.DELIVERED,
                     fast_iu=-1.0)


def test_idempotency_keys() -> None:
    a = BloodGlucoseReading(device_id="meter-1", time=T0, sequence=42, glucose_mg_dl=100.0)
    later = BloodGlucoseReading(device_id="meter-1", time=T0 + dt.timedelta(minutes=3),
                                sequence=42, glucose_mg_dl=100.0)
    assert a.idempotency_key() == later.idempotency_key() == "meter-1|blood-glucose|seq:42"
    by_time = BloodGlucoseReading(device_id="meter-1", time=T0, glucose_mg_dl=1.0,
                                  device_time=dt.datetime(2026, 11, 30, 8, 15))
    assert by_time.idempotency_key().endswith("dt:2026-11-30T08:15:00")
    start = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    c1 = CgmReading(device_id="cgm", time=T0, glucose_mg_dl=100.0, session_start=start,
                    time_offset_min=5)
    c2 = CgmReading(device_id="cgm", time=T0, glucose_mg_dl=100.0,
                    session_start=start + dt.timedelta(days=14), time_offset_min=5)
    assert c1.idempotency_key() != c2.idempotency_key()


def test_code_table_covers_every_kind() -> None:
    assert set(CODINGS) == set(RecordKind) == set(RECORD_TYPES)
    bg = CODINGS[RecordKind.BLOOD_GLUCOSE]
    assert (bg.loinc, bg.ucum, bg.mdc) == ("41653-7", "mg/dL", (2 << 16) | 29112)
    cgm = CODINGS[RecordKind.CGM_GLUCOSE]
    assert (cgm.loinc, cgm.loinc_mmol) == ("99504-3", "105272-9")
    assert MEAL_MDC[MealContext.PREPRANDIAL] == (128 << 16) | 29260


def test_trend_bands() -> None:
    assert Trend.from_rate(-3) is Trend.FALLING_RAPIDLY
    assert Trend.from_rate(-1.5) is Trend.FALLING
    assert Trend.from_rate(0.2) is Trend.STABLE
    assert Trend.from_rate(1.0) is Trend.RISING
    assert Trend.from_rate(2.5) is Trend.RISING_RAPIDLY


EXAMPLES: list[Any] = [
    BloodGlucoseReading(device_id="m", time=T0, sequence=7, glucose_mg_dl=None,
                        annunciations=frozenset({Annunciation.RESULT_TOO_HIGH}),
                        meal=MealContext.POSTPRANDIAL, sample_type=SampleType.CAPILLARY_PLASMA,
                        device_time=dt.datetime(2026, 11, 30, 8, 16, 2)),
    CgmReading(device_id="c", time=T0, glucose_mg_dl=71.0, trend_mg_dl_per_min=-0.6,
               quality_percent=98.0, session_start=T0 - dt.timedelta(days=3),
               time_offset_min=4320),
    InsulinBolus(device_id="p", time=T0, sequence=1234, bolus_id=17,
                 phase=BolusPhase.PROGRAMMED, bolus_type=BolusType.MULTIWAVE,
                 fast_iu=2.5, extended_iu=1.5, extended_duration_min=90),
    TempBasalStart(device_id="p", time=T0, temp_basal_type=TempBasalType.RELATIVE,
                   value=70.0, duration_min=120),
    TotalDailyInsulin(device_id="p", time=T0, day=dt.date(2026, 11, 29), bolus_iu=21.3,
                      basal_iu=18.05),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: r.kind.value)
def test_json_round_trip(record: Any) -> None:
    wire = json.loads(json.dumps(record_to_json(record)))
    assert wire["kind"] == record.kind.value
    assert record_from_json(wire) == record


def test_device_info_round_trip() -> None:
    info = DeviceInfo(device_id="0011223344556677", kind=DeviceKind.CGM, manufacturer="ACME",
                      model="G-1", serial_number="SN1", system_id="0011223344556677")
    assert device_info_from_json(record_to_json(info)) == info


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "weather"}, "unknown record kind"),
        ({"glucose_mg_dl": "high"}, "must be a number"),
        ({"glucose_mg_dl": True}, "must be a number"),
        ({"time": "yesterday"}, "not ISO 8601"),
        ({"time": "2026-11-30T07:15:00"}, "no time zone"),
        ({"meal": "lunch"}, "is not one of"),
        ({"annunciations": "battery-low"}, "must be a list"),
        ({"sequence": 1.5}, "must be an integer"),
        ({"colour": "red"}, "unknown field"),
        ({"device_id": None}, "must not be null"),
    ],
)
def test_bad_payloads_get_specific_errors(change: dict[str, Any], message: str) -> None:
    payload = record_to_json(EXAMPLES[0]) | change
    with pytest.raises(RecordError, match=message):
        record_from_json(payload)


def test_missing_field_is_named() -> None:
    payload = record_to_json(EXAMPLES[0])
    del payload["glucose_mg_dl"]
    with pytest.raises(RecordError, match="missing field 'glucose_mg_dl'"):
        record_from_json(payload)
    with pytest.raises(RecordError):
        record_from_json([1, 2])  # type: ignore[arg-type]


@given(st.floats(0, 1000), st.integers(0, 0xFFFF),
       st.datetimes(timezones=st.just(dt.UTC)), st.sets(st.sampled_from(list(Annunciation))))
def test_cgm_json_round_trip_property(glucose: float, seq: int, when: dt.datetime,
                                      ann: set[Annunciation]) -> None:
    r = CgmReading(device_id="x", time=when, sequence=seq, glucose_mg_dl=glucose,
                   annunciations=frozenset(ann))
    assert record_from_json(json.loads(json.dumps(record_to_json(r)))) == r
