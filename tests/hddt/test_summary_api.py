"""``POST Observation/$hddt-cgm-summary`` over the interface, against metrics computed here
from the simulated readings, and its errors."""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

import pytest

from bridge.records import CgmReading
from tests.hddt.conftest import Fhir
from tests.hddt.helpers import assert_valid

JSON = {"Content-Type": "application/fhir+json"}


def params(start: str, end: str, related: bool | None = None) -> dict[str, Any]:
    parameter: list[dict[str, Any]] = [{"name": "effectivePeriodStart", "valueDateTime": start},
                                       {"name": "effectivePeriodEnd", "valueDateTime": end}]
    if related is not None:
        parameter.append({"name": "related", "valueBoolean": related})
    return {"resourceType": "Parameters", "parameter": parameter}


def value_of(bundle: dict[str, Any], loinc: str) -> Any:
    for entry in bundle["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == loinc:
            return r
    raise AssertionError(f"no {loinc}")


def test_summary_matches_metrics_computed_independently(fhir: Fhir) -> None:
    assert fhir.patient is not None
    _info, records = fhir.patient.of_kind("cgm")
    start = fhir.patient.start + dt.timedelta(hours=2)
    end = start + dt.timedelta(days=1)
    # A second-precision effectivePeriodEnd covers its whole second (FHIR dateTime).
    values = [r.glucose_mg_dl for r in records if isinstance(r, CgmReading)
              and start <= r.time < end + dt.timedelta(seconds=1)
              and r.glucose_mg_dl is not None]
    body = params(start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  related=True)
    r = fhir.post("/Observation/$hddt-cgm-summary", json=body, headers=JSON)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert_valid(bundle)
    mean = statistics.fmean(values)
    assert value_of(bundle, "97507-8")["valueQuantity"]["value"] == pytest.approx(mean, abs=0.05)
    assert value_of(bundle, "97506-0")["valueQuantity"]["value"] == pytest.approx(
        3.31 + 0.02392 * mean, abs=0.005)
    assert value_of(bundle, "104638-2")["valueQuantity"]["value"] == pytest.approx(
        100 * statistics.stdev(values) / mean, abs=0.005)
    in_range = 100 * sum(70 <= v <= 180 for v in values) / len(values)
    components = value_of(bundle, "106793-3")["component"]
    target = next(c for c in components if c["code"]["coding"][0]["code"] == "97510-2")
    assert target["valueQuantity"]["value"] == pytest.approx(in_range, abs=0.005)
    devices = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"]
    assert [d["type"]["coding"][0]["code"] for d in devices] == ["700585005"]


def test_summary_in_xml_and_its_errors(fhir: Fhir) -> None:
    xml = ('<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="effectivePeriodEnd"/>'
           '<valueDateTime value="2027-07-02T00:00:00Z"/></parameter></Parameters>')
    r = fhir.post("/Observation/$hddt-cgm-summary", content=xml,
                  headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 200, r.text
    unknown = {"resourceType": "Parameters", "parameter": [{"name": "subject",
                                                            "valueString": "Patient/1"}]}
    r = fhir.post("/Observation/$hddt-cgm-summary", json=unknown, headers=JSON)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = fhir.post("/Observation/$hddt-cgm-summary", content=b"a=b",
                  headers={"Content-Type": "text/turtle"})
    assert r.status_code == 415
    assert r.json()["issue"][0]["diagnostics"] == (
        "Content-Type not supported. Supported formats: application/fhir+json, "
        "application/fhir+xml")
    none = params("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z")
    assert fhir.post("/Observation/$hddt-cgm-summary", json=none,
                     headers=JSON).status_code == 404
    r = fhir.post("/Observation/$hddt-cgm-summary", json=none, headers=JSON, token="t-bg")
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
