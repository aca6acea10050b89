"""The CGM summary: parameters, metrics against a plain re-computation, the result Bundle."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import statistics
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import given
from hypothesis import strategies as st

from bridge.hddt.errors import HddtError
from bridge.hddt.profiles import check_resource
from bridge.hddt.summary import (
    CGM_SUMMARY_PROFILE,
    HDDT_CGM_SUMMARY_PROFILE,
    CgmPoint,
    SummaryNoMatch,
    SummaryParameterError,
    SummaryRequest,
    cgm_summary_bundle,
    compute_cgm_metrics,
    parse_fhir_datetime,
    parse_summary_parameters,
)
from bridge.records import CgmReading
from simulators.physiology import standard_patients
from simulators.run import CohortResult, simulate_cohort

UTC = dt.UTC
NOW = dt.datetime(2027, 7, 20, 9, 30, 15, 250000, tzinfo=UTC)


def params(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(entries)}


def uuids() -> Callable[[], str]:
    return lambda: str(uuid.uuid4())


# --- a realistic series -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort() -> CohortResult:
    # Two simulated patients, 8 days, with CGM records (sensor noise, warm-up gaps, LO/HI).
    return simulate_cohort(standard_patients()[:2], "random-day", days=8, seed=7,
                           sensors=True, records=True, progress=None)


def cgm_points(cohort: CohortResult, patient: int) -> list[CgmPoint]:
    assert cohort.devices is not None
    devices = cohort.devices[patient]
    assert devices.cgm is not None
    return [CgmPoint(r.time, r.glucose_mg_dl, r.device_id)
            for r in devices.cgm.records if isinstance(r, CgmReading)]


def reference_metrics(points: list[CgmPoint], start: dt.datetime, end: dt.datetime,
                      interval_min: float) -> dict[str, Any]:
    """The metrics by plain loops, straight from the definitions in docs/hddt-cgm-summary.md."""
    inside = [p for p in points if start <= p.time < end]
    values = [p.mg_dl for p in inside if p.mg_dl is not None]
    counts = [0, 0, 0, 0, 0]
    for v in values:
        if v < 54:
            counts[0] += 1
        elif v < 70:
            counts[1] += 1
        elif v <= 180:
            counts[2] += 1
        elif v <= 250:
            counts[3] += 1
        else:
            counts[4] += 1
    total = 0.0
    for v in values:
        total += v
    mean = total / len(values) if values else None
    squares = 0.0
    for v in values:
        assert mean is not None
        squares += (v - mean) ** 2
    sd = math.sqrt(squares / (len(values) - 1)) if len(values) > 1 else None
    days = set()
    for p in inside:
        days.add(int((p.time - start).total_seconds() // 86400))
    expected = (end - start).total_seconds() / 60 / interval_min
    return {
        "readings": len(inside), "valid": len(values), "mean": mean,
        "tir": [100 * c / len(values) for c in counts] if values else None,
        "gmi": None if mean is None else 3.31 + 0.02392 * mean,
        "cv": None if sd is None or mean is None else 100 * sd / mean,
        "days": len(days), "active": min(100.0, 100 * len(inside) / expected),
    }


def test_metrics_match_a_plain_recomputation_on_simulated_patients(
        cohort: CohortResult) -> None:
    for patient in range(2):
        points = cgm_points(cohort, patient)
        first = min(p.time for p in points)
        for start, days in ((first, 7), (first + dt.timedelta(hours=13), 3)):
            end = start + dt.timedelta(days=days)
            got = compute_cgm_metrics(points, start=start, end=end)
            ref = reference_metrics(points, start, end, float(cohort.cgm_interval_min))
            assert got.readings == ref["readings"] > 0
            assert got.valid_readings == ref["valid"]
            assert got.expected_interval_min == pytest.approx(cohort.cgm_interval_min)
            assert got.mean_mg_dl == pytest.approx(ref["mean"], rel=1e-12)
            assert got.gmi_percent == pytest.approx(ref["gmi"], rel=1e-12)
            assert got.cv_percent == pytest.approx(ref["cv"], rel=1e-9)
            assert got.times_in_ranges is not None
            assert list(got.times_in_ranges.as_tuple()) == pytest.approx(ref["tir"])
            assert sum(got.times_in_ranges.as_tuple()) == pytest.approx(100.0)
            assert got.days_of_wear == ref["days"]
            assert got.sensor_active_percent == pytest.approx(ref["active"])


def test_simulated_series_has_gaps_and_the_active_share_shows_them(cohort: CohortResult) -> None:
    points = cgm_points(cohort, 0)
    start = min(p.time for p in points)
    end = start + dt.timedelta(days=7)
    metrics = compute_cgm_metrics(points, start=start, end=end, expected_interval_min=5)
    slots = 7 * 24 * 12
    assert metrics.sensor_active_percent == pytest.approx(100 * metrics.readings / slots)
    assert metrics.sensor_active_percent < 100  # warm-up and dropouts leave holes


def test_hand_made_series_with_known_metrics() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    values = [40.0, 53.9, 54.0, 69.9, 70.0, 180.0, 180.4, 250.0, 250.1, None]
    points = [CgmPoint(start + dt.timedelta(minutes=5 * i), v, "s1")
              for i, v in enumerate(values)]
    m = compute_cgm_metrics(points, start=start, end=start + dt.timedelta(days=1),
                            expected_interval_min=5)
    assert m.readings == 10 and m.valid_readings == 9
    assert m.times_in_ranges is not None
    assert m.times_in_ranges.as_tuple() == pytest.approx(
        (200 / 9, 200 / 9, 200 / 9, 200 / 9, 100 / 9))
    numbers = [v for v in values if v is not None]
    assert m.mean_mg_dl == pytest.approx(sum(numbers) / 9)
    assert m.cv_percent == pytest.approx(100 * statistics.stdev(numbers) / statistics.mean(numbers))
    assert m.days_of_wear == 1
    assert m.sensor_active_percent == pytest.approx(100 * 10 / 288)


def test_points_outside_the_period_are_ignored_and_days_count_from_the_start() -> None:
    start = dt.datetime(2027, 1, 1, 6, tzinfo=UTC)
    points = [CgmPoint(start - dt.timedelta(seconds=1), 300, "s1"),
              CgmPoint(start, 100, "s1"),
              CgmPoint(start + dt.timedelta(hours=23, minutes=59), 110, "s1"),
              CgmPoint(start + dt.timedelta(hours=48, minutes=1), 120, "s2"),
              CgmPoint(start + dt.timedelta(days=3), 500, "s2")]
    m = compute_cgm_metrics(points, start=start, end=start + dt.timedelta(days=3))
    assert m.readings == 3
    assert m.mean_mg_dl == pytest.approx(110)
    assert m.days_of_wear == 2  # slices 0 and 2 hold readings, slice 1 none
    assert m.device_ids == ("s1", "s2")


def test_no_data_and_all_out_of_range() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    end = start + dt.timedelta(days=7)
    empty = compute_cgm_metrics([], start=start, end=end)
    assert (empty.readings, empty.valid_readings, empty.days_of_wear) == (0, 0, 0)
    assert empty.mean_mg_dl is None and empty.times_in_ranges is None
    assert empty.sensor_active_percent == 0.0
    flagged = [CgmPoint(start + dt.timedelta(minutes=5 * i), None, "s1") for i in range(24)]
    m = compute_cgm_metrics(flagged, start=start, end=end)
    assert (m.readings, m.valid_readings) == (24, 0)
    assert m.mean_mg_dl is None and m.gmi_percent is None and m.cv_percent is None
    assert m.times_in_ranges is None
    assert m.expected_interval_min == pytest.approx(5)
    assert m.sensor_active_percent == pytest.approx(100 * 24 / (7 * 288))


def test_metric_arguments_are_checked() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="empty period"):
        compute_cgm_metrics([], start=start, end=start)
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_cgm_metrics([], start=start.replace(tzinfo=None), end=start)
    with pytest.raises(ValueError, match="positive"):
        compute_cgm_metrics([], start=start, end=start + dt.timedelta(days=1),
                            expected_interval_min=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        CgmPoint(dt.datetime(2027, 1, 1), 100, "s")
    with pytest.raises(ValueError, match="finite"):
        CgmPoint(start, math.nan, "s")


# --- parameters ---------------------------------------------------------------------------------

def test_defaults_cover_seven_days_back_from_now() -> None:
    for body in (params(), {"resourceType": "Parameters"}):
        req = parse_summary_parameters(body, now=NOW)
        assert (req.start, req.end, req.related) == (NOW - dt.timedelta(days=7), NOW, False)
        assert not req.start_given and not req.end_given


def test_only_end_or_only_start() -> None:
    req = parse_summary_parameters(
        params({"name": "effectivePeriodEnd", "valueDateTime": "2027-07-10"}), now=NOW)
    assert req.end == dt.datetime(2027, 7, 11, tzinfo=UTC)
    assert req.start == dt.datetime(2027, 7, 4, tzinfo=UTC)
    req = parse_summary_parameters(
        params({"name": "effectivePeriodStart", "valueDateTime": "2027-07-01T10:00:00+02:00"}),
        now=NOW)
    assert req.start == dt.datetime(2027, 7, 1, 8, tzinfo=UTC) and req.end == NOW
    assert req.start_given and not req.end_given


def test_the_spec_example_request() -> None:
    req = parse_summary_parameters(params(
        {"name": "effectivePeriodStart", "valueDateTime": "2025-08-01T00:00:00Z"},
        {"name": "effectivePeriodEnd", "valueDateTime": "2025-08-31T23:59:59Z"},
        {"name": "related", "valueBoolean": True}), now=NOW)
    assert req == SummaryRequest(dt.datetime(2025, 8, 1, tzinfo=UTC),
                                 dt.datetime(2025, 9, 1, tzinfo=UTC), True, True, True)
    assert req.duration == dt.timedelta(days=31)


def test_end_in_the_future_is_cut_to_now() -> None:
    req = parse_summary_parameters(
        params({"name": "effectivePeriodEnd", "valueDateTime": "2030"}), now=NOW)
    assert req.end == NOW


@pytest.mark.parametrize(("text", "first", "after"), [
    ("2025", "2025-01-01T00:00:00", "2026-01-01T00:00:00"),
    ("2025-12", "2025-12-01T00:00:00", "2026-01-01T00:00:00"),
    ("2025-02", "2025-02-01T00:00:00", "2025-03-01T00:00:00"),
    ("2025-02-28", "2025-02-28T00:00:00", "2025-03-01T00:00:00"),
    ("2025-02-28T23:30Z", "2025-02-28T23:30:00", "2025-02-28T23:31:00"),
    ("2025-02-28T23:30:05-01:00", "2025-03-01T00:30:05", "2025-03-01T00:30:06"),
    ("2025-02-28T23:30:05.5Z", "2025-02-28T23:30:05.500000", "2025-02-28T23:30:05.600000"),
])
def test_fhir_datetime_precision(text: str, first: str, after: str) -> None:
    lo, hi = parse_fhir_datetime(text)
    assert lo == dt.datetime.fromisoformat(first).replace(tzinfo=UTC)
    assert hi == dt.datetime.fromisoformat(after).replace(tzinfo=UTC)


def outcome_of(exc: pytest.ExceptionInfo[SummaryParameterError]) -> dict[str, Any]:
    body = exc.value.operation_outcome()
    OperationOutcome.model_validate(body)
    return body


@pytest.mark.parametrize(("body", "code", "text"), [
    ([], "MSG_BAD_SYNTAX", "must be a FHIR Parameters"),
    ({"resourceType": "Bundle"}, "MSG_BAD_SYNTAX", "must be a FHIR Parameters"),
    ({"resourceType": "Parameters", "parameter": {"name": "related"}}, "MSG_BAD_SYNTAX",
     "must be a list"),
    (params({"valueBoolean": True}), "MSG_BAD_SYNTAX", "parameter #1 has no name"),
    (params({"name": "foo", "valueString": "x"}), "MSG_PARAM_UNKNOWN",
     "Unknown input parameter 'foo'."),
    (params({"name": "subject", "valueString": "Patient/1"}), "MSG_PARAM_UNKNOWN",
     "Unknown input parameter 'subject'."),
    (params({"name": "effectivePeriodStart", "valueDateTime": "01.08.2025"}),
     "MSG_PARAM_INVALID", "Invalid date format in effectivePeriodStart."),
    (params({"name": "effectivePeriodEnd", "valueDateTime": "2025-08-01T10:00:00"}),
     "MSG_PARAM_INVALID", "Invalid date format in effectivePeriodEnd."),
    (params({"name": "effectivePeriodEnd", "valueDateTime": "2025-02-30"}),
     "MSG_PARAM_INVALID", "Invalid date format in effectivePeriodEnd."),
    (params({"name": "effectivePeriodStart", "valueDate": "2025-08-01"}),
     "MSG_PARAM_INVALID", "must carry a valueDateTime"),
    (params({"name": "related", "valueString": "true"}), "MSG_PARAM_INVALID",
     "must carry a valueBoolean"),
    (params({"name": "related", "valueBoolean": True}, {"name": "related", "valueBoolean": True}),
     "MSG_PARAM_INVALID", "more than once"),
    (params({"name": "effectivePeriodStart", "valueDateTime": "2025-08-10"},
            {"name": "effectivePeriodEnd", "valueDateTime": "2025-08-01"}),
     "MSG_PARAM_INVALID", "must lie before"),
    (params({"name": "effectivePeriodStart", "valueDateTime": "2027-07-21"}),
     "MSG_PARAM_INVALID", "before the current time"),
])
def test_each_parameter_error(body: Any, code: str, text: str) -> None:
    with pytest.raises(SummaryParameterError) as exc:
        parse_summary_parameters(body, now=NOW)
    assert isinstance(exc.value, HddtError)
    assert exc.value.http_status == 400
    assert exc.value.message_code == code
    assert text in exc.value.text
    issue = outcome_of(exc)["issue"][0]
    assert (issue["severity"], issue["code"]) == ("error", "invalid")
    assert issue["details"]["coding"][0]["code"] == code


# --- bundle ------------------------------------------------------------------------------------

def by_profile(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        key = resource.get("meta", {}).get("profile", [resource["resourceType"]])[0]
        out[key.rsplit("/", 1)[-1]] = resource
    return out


def device_resource(device_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Device", "id": device_id,
        "meta": {"profile": ["https://gematik.de/fhir/hddt/StructureDefinition/"
                             "hddt-personal-health-device"]},
        "status": "active", "serialNumber": f"SN-{device_id}",
        "deviceName": [{"name": "Virtual CGM", "type": "user-friendly-name"}],
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "700585005"}]},
    }


def test_bundle_from_a_simulated_week(cohort: CohortResult) -> None:
    points = cgm_points(cohort, 1)
    start = min(p.time for p in points)
    now = start + dt.timedelta(days=7, hours=1)
    req = parse_summary_parameters(params(
        {"name": "effectivePeriodStart", "valueDateTime": start.isoformat()},
        {"name": "effectivePeriodEnd", "valueDateTime": (start + dt.timedelta(days=7))
         .isoformat().replace("+00:00", "Z")},
        {"name": "related", "valueBoolean": True}), now=now)
    ids = {p.device_id for p in points}
    bundle = cgm_summary_bundle(
        req, points, patient_reference="Patient/p-1",
        device_references={d: f"https://bridge.example/fhir/Device/{d}" for d in ids},
        devices={d: device_resource(d) for d in ids}, now=now, id_factory=uuids())
    Bundle.model_validate(bundle)
    assert check_resource(bundle) == []
    assert bundle["type"] == "collection"
    assert bundle["meta"]["profile"] == [HDDT_CGM_SUMMARY_PROFILE]
    assert bundle["timestamp"] == now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    found = by_profile(bundle)
    metrics = compute_cgm_metrics(points, start=req.start, end=req.end)
    assert found["cgm-summary-mean-glucose-mass-per-volume"]["valueQuantity"] == {
        "value": round(metrics.mean_mg_dl or 0, 1), "unit": "mg/dl",
        "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    assert found["cgm-summary-gmi"]["valueQuantity"]["value"] == round(
        3.31 + 0.02392 * (metrics.mean_mg_dl or 0), 2)
    assert found["cgm-summary-days-of-wear"]["valueQuantity"]["code"] == "d"
    tir = found["cgm-summary-times-in-ranges"]["component"]
    assert [c["code"]["coding"][0]["code"] for c in tir] == [
        "104642-4", "104641-6", "97510-2", "104640-8", "104639-0"]
    summary = found["cgm-summary"]
    assert summary["code"]["coding"][0]["code"] == "107931-8"
    members = {m["reference"] for m in summary["hasMember"]}
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(members) == 7 and members <= full_urls
    for resource in found.values():
        if resource["resourceType"] == "Observation":
            assert resource["subject"] == {"reference": "Patient/p-1"}
            assert resource["effectivePeriod"] == {
                "start": start.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                # A second-precision end covers its whole second (FHIR Period.end).
                "end": (start + dt.timedelta(days=7)).replace(
                    microsecond=0).isoformat().replace("+00:00", "Z")}
    devices = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"]
    assert {e["fullUrl"] for e in devices} == {
        f"https://bridge.example/fhir/Device/{d}" for d in ids}


def test_without_related_no_devices_and_ids_come_from_the_factory() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    points = [CgmPoint(start + dt.timedelta(minutes=5 * i), 100 + i % 40, "s1")
              for i in range(7 * 288)]
    counter = itertools.count(1)
    made = lambda: f"00000000-0000-4000-8000-{next(counter):012d}"  # noqa: E731
    req = SummaryRequest(start, start + dt.timedelta(days=7))
    bundle = cgm_summary_bundle(req, points, patient_reference=None, device_references={},
                                now=start + dt.timedelta(days=7), id_factory=made)
    Bundle.model_validate(bundle)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Observation"] * 8
    assert bundle["entry"][0]["fullUrl"] == "urn:uuid:00000000-0000-4000-8000-000000000001"
    assert bundle["id"] == "00000000-0000-4000-8000-000000000009"
    # Without a patient reference the HL7 CGM profiles' subject 1..1 is all that fails.
    assert all("subject" not in e["resource"] for e in bundle["entry"])
    violations = check_resource(bundle)
    assert len(violations) == 8
    assert all(v.endswith(".resource.subject: 0 found, cardinality 1..1") for v in violations)
    found = by_profile(bundle)
    assert found["cgm-summary-sensor-active-percentage"]["valueQuantity"]["value"] == 100.0
    assert found["cgm-summary-days-of-wear"]["valueQuantity"]["value"] == 7


def test_all_out_of_range_gives_absent_values_but_wear() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    points = [CgmPoint(start + dt.timedelta(minutes=5 * i), None, "s1") for i in range(100)]
    req = SummaryRequest(start, start + dt.timedelta(days=7), related=True)
    bundle = cgm_summary_bundle(req, points, patient_reference="Patient/p-2",
                                device_references={"s1": "https://h/fhir/Device/s1"},
                                devices={"s1": device_resource("s1")},
                                now=req.end, id_factory=uuids())
    Bundle.model_validate(bundle)
    assert check_resource(bundle) == []
    found = by_profile(bundle)
    for name in ("cgm-summary-mean-glucose-mass-per-volume", "cgm-summary-gmi",
                 "cgm-summary-coefficient-of-variation"):
        assert "valueQuantity" not in found[name]
        assert found[name]["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert all("dataAbsentReason" in c
               for c in found["cgm-summary-times-in-ranges"]["component"])
    assert found["cgm-summary-days-of-wear"]["valueQuantity"]["value"] == 1
    assert found["hddt-personal-health-device"]["id"] == "s1"


def test_no_readings_is_no_match() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    req = SummaryRequest(start, start + dt.timedelta(days=7))
    outside = [CgmPoint(start - dt.timedelta(minutes=1), 100, "s1")]
    with pytest.raises(SummaryNoMatch) as exc:
        cgm_summary_bundle(req, outside, patient_reference=None, device_references={},
                           now=req.end, id_factory=uuids())
    assert exc.value.http_status == 404
    body = exc.value.operation_outcome()
    OperationOutcome.model_validate(body)
    issue = body["issue"][0]
    assert (issue["severity"], issue["code"]) == ("information", "not-found")
    assert issue["details"]["coding"][0]["code"] == "MSG_NO_MATCH"
    assert "2027-01-01T00:00:00Z" in issue["details"]["text"]


def test_related_device_missing_from_the_mappings_is_refused() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    req = SummaryRequest(start, start + dt.timedelta(days=7), related=True)
    with pytest.raises(KeyError):
        cgm_summary_bundle(req, [CgmPoint(start, 100, "s9")], patient_reference=None,
                           device_references={}, devices={}, now=req.end, id_factory=uuids())


def test_broken_bundle_fails_the_checker() -> None:
    start = dt.datetime(2027, 1, 1, tzinfo=UTC)
    req = SummaryRequest(start, start + dt.timedelta(days=7))
    bundle = cgm_summary_bundle(req, [CgmPoint(start, 100, "s1")], patient_reference=None,
                                device_references={}, now=req.end, id_factory=uuids())
    bundle["type"] = "searchset"
    assert any("Bundle.type" in v for v in check_resource(bundle))
    bundle["type"] = "collection"
    bundle["entry"][0]["resource"]["meta"]["profile"] = [CGM_SUMMARY_PROFILE + "-x"]
    assert any("Bundle.entry[0].resource" in v for v in check_resource(bundle))
    bundle["entry"] = []
    assert any("Bundle.entry" in v and "1..*" in v for v in check_resource(bundle))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12)
parameter_entries = st.fixed_dictionaries(
    {"name": st.sampled_from(["effectivePeriodStart", "effectivePeriodEnd", "related", "x"])},
    optional={"valueDateTime": st.text(max_size=30) | st.sampled_from(
        ["2025", "2025-13", "2025-02-29", "9999-12-31", "0000-01-01", "2025-01-01T24:00:00Z",
         "2025-01-01T10:00:60+01:00"]),
        "valueBoolean": json_values, "valueString": json_values})


@given(st.one_of(json_values, st.fixed_dictionaries(
    {"resourceType": st.just("Parameters"),
     "parameter": st.lists(parameter_entries, max_size=4) | json_values})))
def test_any_body_gives_a_request_or_a_parameter_error(body: Any) -> None:
    try:
        req = parse_summary_parameters(body, now=NOW)
    except SummaryParameterError as exc:
        OperationOutcome.model_validate(exc.operation_outcome())
    else:
        assert req.start < req.end <= NOW
