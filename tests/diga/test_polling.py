"""The polling cursors over recorded recorder answers: each reading delivered exactly once."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.diga.errors import BundleError
from bridge.diga.polling import (
    CGM,
    ContinuousCursor,
    DedicatedCursor,
    PollResult,
    bundle_observations,
    code_parameter,
    iso,
    next_link,
    parse_datetime,
)
from tests.diga.recorder import CgmRecorder, MeterRecorder, Sample, bundle

T0 = dt.datetime(2027, 3, 1, 0, 0, tzinfo=dt.UTC)
FIVE_MIN = dt.timedelta(minutes=5)


def _poll_cgm(cursor: ContinuousCursor, recorder: CgmRecorder, now: dt.datetime,
              start: dt.datetime) -> PollResult:
    """What DigaClient.fetch_cgm does, against the recorded answers."""
    result = PollResult()
    for chunk_id in cursor.open_chunks():
        result.extend(cursor.take([recorder.read(chunk_id, now)], searched=False))
    if cursor.needs_search(now):
        result.extend(cursor.take(bundle_observations(
            recorder.search(cursor.search_date(start), now))))
    return result


# --- CGM ---------------------------------------------------------------------------------------

def test_spec_example_chunk_grows_then_next_chunk() -> None:
    # retrieving-data.md: a preliminary chunk is re-read and yields only its new samples;
    # once final, a search from its end finds the next chunk.
    recorder = CgmRecorder(origin=T0, span=dt.timedelta(hours=1), period=FIVE_MIN,
                           samples=[Sample(T0 + i * FIVE_MIN, 100 + i, T0 + i * FIVE_MIN)
                                    for i in range(30)])
    cursor = ContinuousCursor()
    first = _poll_cgm(cursor, recorder, T0 + dt.timedelta(minutes=20), T0)
    assert [r.value for r in first.readings] == [100, 101, 102, 103, 104]
    assert cursor.open_chunks() == ["cgm-0"]
    assert not cursor.needs_search(T0 + dt.timedelta(minutes=40))
    second = _poll_cgm(cursor, recorder, T0 + dt.timedelta(minutes=40), T0)
    assert [r.value for r in second.readings] == [105, 106, 107, 108]
    third = _poll_cgm(cursor, recorder, T0 + dt.timedelta(minutes=70), T0)
    assert [r.value for r in third.readings] == list(range(109, 115))
    assert third.readings[0].time == T0 + 9 * FIVE_MIN
    assert cursor.open_chunks() == ["cgm-1"]
    assert cursor.search_from == T0 + dt.timedelta(minutes=59, seconds=59)
    assert all(r.kind == CGM and r.unit == "mg/dL" for r in third.readings)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), inclusive=st.booleans(),
       span_h=st.sampled_from([1, 3, 24]), window_h=st.sampled_from([2, 24]))
def test_every_cgm_sample_exactly_once(seed: int, inclusive: bool, span_h: int,
                                       window_h: int) -> None:
    rng = random.Random(seed)
    samples: list[Sample] = []
    backlog_until = T0
    for i in range(12 * 30):
        time = T0 + i * FIVE_MIN
        if rng.random() < 0.05:
            continue  # never measured (sensor warm-up, signal loss)
        if rng.random() < 0.01:
            # The gateway goes offline: what follows arrives in one backlog, in order.
            backlog_until = time + dt.timedelta(hours=rng.choice([1, 5, 30]))
        arrives = max(time + FIVE_MIN * rng.choice([0, 0, 1]), backlog_until)
        if samples:
            arrives = max(arrives, samples[-1].arrives)
        samples.append(Sample(time, rng.randint(40, 350), arrives))
    recorder = CgmRecorder(origin=T0, span=dt.timedelta(hours=span_h), period=FIVE_MIN,
                           samples=samples, inclusive_end=inclusive,
                           pending_window=dt.timedelta(hours=window_h))
    cursor = ContinuousCursor()
    delivered: list[tuple[dt.datetime, float | None]] = []
    now = T0 + dt.timedelta(hours=2)
    end = max(s.arrives for s in samples) + dt.timedelta(hours=span_h + 1)
    while True:
        result = _poll_cgm(cursor, recorder, now, T0)
        assert not result.rejected
        delivered.extend((r.time, r.value) for r in result.readings)
        # The cursor survives a restart of the DiGA backend.
        cursor = _reloaded(cursor)
        if now >= end:
            break
        now = min(end, now + dt.timedelta(minutes=rng.choice([1, 7, 25, 61, 190])))
    expected = sorted((s.time, float(s.value)) for s in samples if s.arrives <= now)
    assert sorted(delivered) == expected


def _reloaded(cursor: ContinuousCursor) -> ContinuousCursor:
    from bridge.diga.state import PairingState

    state = PairingState(name="x", client_id="c", issuer="i", fhir_base_url="f", cgm=cursor)
    return PairingState.from_json(state.to_json()).cgm


def test_lo_hi_and_unit_checks() -> None:
    chunk: dict[str, Any] = {
        "resourceType": "Observation", "id": "c1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "effectivePeriod": {"start": "2027-03-01T00:00:00Z", "end": "2027-03-01T00:14:59Z"},
        "valueSampledData": {"origin": {"value": 0, "code": "mg/dL"}, "period": 300000,
                             "factor": 1, "dimensions": 1, "lowerLimit": 40,
                             "upperLimit": 400, "data": "L 120 U"}}
    result = ContinuousCursor().take([chunk])
    assert [(r.value, r.flag) for r in result.readings] == [(40, "L"), (120, ""), (400, "U")]
    wrong = dict(chunk, id="c2", valueSampledData=dict(chunk["valueSampledData"],
                                                       origin={"value": 0, "code": "mmol/L"}))
    cursor = ContinuousCursor()
    refused = cursor.take([wrong])
    assert refused.readings == []
    assert "does not match LOINC 99504-3" in refused.rejected[0].reason
    assert cursor.take([wrong]).rejected == []  # reported once, not at every poll


def test_chunk_without_data_stays_open() -> None:
    chunk = {"resourceType": "Observation", "id": "c1", "status": "preliminary",
             "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
             "effectivePeriod": {"start": "2027-03-01T08:00:00+02:00",
                                 "end": "2027-03-01T10:00:00+02:00"},
             "dataAbsentReason": {"coding": [{"code": "temp-unknown"}]}}
    cursor = ContinuousCursor()
    assert cursor.take([chunk]).readings == []
    assert cursor.open_chunks() == ["c1"]
    assert cursor.chunks["c1"].start == dt.datetime(2027, 3, 1, 6, tzinfo=dt.UTC)
    cursor.forget("c1")
    assert cursor.open_chunks() == []


# --- blood glucose -----------------------------------------------------------------------------

@given(seed=st.integers(0, 2**32 - 1), max_delay_min=st.sampled_from([0, 10, 60]))
def test_every_meter_reading_exactly_once(seed: int, max_delay_min: int) -> None:
    rng = random.Random(seed)
    samples = []
    time = T0
    for _ in range(80):
        time += dt.timedelta(minutes=rng.choice([0, 1, 30, 240]))  # same-instant readings too
        delay = dt.timedelta(minutes=rng.randint(0, max_delay_min))
        samples.append(Sample(time, rng.randint(40, 400), time + delay))
    recorder = MeterRecorder(samples)
    overlap = dt.timedelta(minutes=max_delay_min)
    cursor = DedicatedCursor()
    delivered: list[tuple[dt.datetime, float | None]] = []
    now = T0
    end = time + dt.timedelta(hours=2)
    while True:
        observations = bundle_observations(recorder.search(cursor.search_date(T0, overlap),
                                                           now))
        delivered.extend((r.time, r.value) for r in cursor.take(observations, overlap).readings)
        cursor = DedicatedCursor.from_json(cursor.to_json())
        if now >= end:
            break
        now = min(end, now + dt.timedelta(minutes=rng.choice([1, 13, 45, 300])))
    assert sorted(delivered) == sorted((s.time, float(s.value)) for s in samples)


def test_meter_lo_hi_absent_and_unit_mismatch() -> None:
    def obs(oid: str, **extra: Any) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": oid, "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                "effectiveDateTime": "2027-03-01T12:00:00+01:00", **extra}

    cursor = DedicatedCursor()
    result = cursor.take([
        obs("lo", valueQuantity={"value": 20, "comparator": "<", "code": "mg/dL"}),
        obs("ok", valueQuantity={"value": 5.5, "code": "mg/dL"}),
        obs("bad", valueQuantity={"value": 5.5, "code": "mmol/L"}),
        obs("gone", dataAbsentReason={"coding": [{"code": "error"}]}),
        {"resourceType": "Observation", "id": "other", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}},
    ], dt.timedelta(0))
    assert [(r.observation_id, r.flag) for r in result.readings] == [("lo", "<"), ("ok", "")]
    assert result.readings[0].time == dt.datetime(2027, 3, 1, 11, tzinfo=dt.UTC)
    assert {r.observation_id for r in result.rejected} == {"bad", "gone"}
    assert cursor.search_date(T0, dt.timedelta(0)) == "ge2027-03-01T11:00:00Z"


# --- FHIR helpers ------------------------------------------------------------------------------

def test_bundle_helpers() -> None:
    included = {"fullUrl": "x", "resource": {"resourceType": "Device", "id": "d"},
                "search": {"mode": "include"}}
    page = bundle([{"resourceType": "Observation", "id": "o1"}])
    page["entry"].append(included)
    page["link"] = [{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}]
    assert [o["id"] for o in bundle_observations(page)] == ["o1"]
    assert next_link(page) == "b"
    assert next_link(bundle([])) is None
    with pytest.raises(BundleError):
        bundle_observations({"resourceType": "OperationOutcome"})
    assert code_parameter(["99504-3", "105272-9"]) == (
        "http://loinc.org|105272-9,http://loinc.org|99504-3")


def test_datetimes() -> None:
    assert parse_datetime("2027-03-01") == T0
    assert parse_datetime("2027-03") == T0 - dt.timedelta(days=0)
    assert parse_datetime("2027-03-01T01:00:00+01:00") == T0
    assert iso(T0) == "2027-03-01T00:00:00Z"
    assert iso(T0 + dt.timedelta(microseconds=1500)) == "2027-03-01T00:00:00.001Z"
    for bad in ["", "yesterday", "2027-03-01T10:00:00"]:
        with pytest.raises(BundleError):
            parse_datetime(bad)
