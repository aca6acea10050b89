"""Observation search and read over HTTP on SQLite and PostgreSQL filled through ingest:
every search parameter, includes, paging, both formats, scopes and the patient's isolation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B import get_fhir_model_class

from bridge.backend.store import Store
from bridge.hddt.observations import BG_LOINC_BY_SAMPLE
from bridge.records import BloodGlucoseReading, CgmReading, DeviceInfo, DeviceKind
from tests.hddt.conftest import (
    Fhir,
    included,
    ingest,
    make_fhir,
    matches,
    outcomes,
    provision,
)
from tests.hddt.helpers import assert_valid


def meter(fhir: Fhir) -> list[BloodGlucoseReading]:
    assert fhir.patient is not None
    _info, records = fhir.patient.of_kind("blood-glucose-meter")
    return [r for r in records if isinstance(r, BloodGlucoseReading)
            and r.sample_type.value in BG_LOINC_BY_SAMPLE]


def cgm(fhir: Fhir) -> list[CgmReading]:
    assert fhir.patient is not None
    _info, records = fhir.patient.of_kind("cgm")
    return [r for r in records if isinstance(r, CgmReading)]


def iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def times(resources: list[dict[str, Any]]) -> list[str]:
    return [r["effectiveDateTime"] for r in resources]


def all_pages(fhir: Fhir, path: str, token: str = "t-all") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bundle = fhir.bundle(path, token)
    while True:
        assert_valid(bundle)
        out += matches(bundle)
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return out
        url = urlsplit(nxt[0])
        bundle = fhir.bundle(url.path.removeprefix("/fhir") + "?" + url.query, token)


def test_blood_glucose_search_returns_every_meter_reading(fhir: Fhir) -> None:
    found = all_pages(fhir, "/Observation?code=41653-7,2339-0,2345-7&_count=4", "t-bg")
    expected = meter(fhir)
    assert times(found) == [iso(r.time) for r in expected]
    assert [f["valueQuantity"]["value"] for f in found] == [r.glucose_mg_dl for r in expected]
    assert {f["device"]["reference"].split("/")[0] for f in found} == {"DeviceMetric"}


@pytest.mark.parametrize(("code", "hits", "in_miv"), [
    ("41653-7", True, True), ("http://loinc.org|41653-7", True, True),
    ("|41653-7", False, False),  # |code: a code without system, which LOINC codes never are
    ("http://snomed.info/sct|41653-7", False, False), ("2339-0,41653-7", True, True),
    ("2339-0", False, True),
    ("14743-9", False, True),  # in the MIV, but values are served in mg/dL only
])
def test_code_token_forms(fhir: Fhir, code: str, hits: bool, in_miv: bool) -> None:
    bundle = fhir.bundle(f"/Observation?code={code}", "t-bg")
    assert bool(matches(bundle)) == hits
    assert [i["diagnostics"].split(" not in ")[0] for i in outcomes(bundle)] == (
        [] if in_miv else [f"Code {code}"])


def test_code_outside_the_miv_gives_an_empty_bundle_with_the_warning(fhir: Fhir) -> None:
    bundle = fhir.bundle("/Observation?code=99504-3", "t-bg")
    assert matches(bundle) == []
    (issue,) = outcomes(bundle)
    assert issue["severity"] == "warning" and issue["code"] == "processing"
    assert issue["diagnostics"].startswith("Code 99504-3 not in ValueSet https://gematik.de/")


def test_repeated_code_parameters_are_and(fhir: Fhir) -> None:
    both = fhir.bundle("/Observation?code=41653-7,99504-3&code=99504-3")
    assert {m["code"]["coding"][0]["code"] for m in matches(both)} == {"99504-3"}


def test_scopes_are_an_implicit_code_filter(fhir: Fhir) -> None:
    bg = all_pages(fhir, "/Observation?_count=500", "t-bg")
    cg = all_pages(fhir, "/Observation?_count=500", "t-cgm")
    assert {o["code"]["coding"][0]["code"] for o in bg} == {"41653-7"}
    assert {o["code"]["coding"][0]["code"] for o in cg} == {"99504-3"}
    both = all_pages(fhir, "/Observation?_count=500", "t-all")
    assert len(both) == len(bg) + len(cg)


def test_patient_comes_from_the_token_only(fhir: Fhir) -> None:
    mine = {o["id"] for o in all_pages(fhir, "/Observation?_count=500", "t-all")}
    theirs = {o["id"] for o in all_pages(fhir, "/Observation?_count=500", "t-p2")}
    assert mine and theirs and not mine & theirs
    some = sorted(mine)[0]
    assert fhir.get(f"/Observation/{some}", "t-p2").status_code == 404
    for name in ("subject", "patient", "subject:Patient"):
        r = fhir.get(f"/Observation?{name}=Patient/p-2")
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
def test_date_prefixes_on_meter_readings(fhir: Fhir, prefix: str) -> None:
    readings = meter(fhir)
    day = readings[0].time.date()
    lo = dt.datetime.combine(day, dt.time(), dt.UTC)
    hi = lo + dt.timedelta(days=1)
    expected: Callable[[dt.datetime], bool] = {
        "eq": lambda t: lo <= t < hi, "ne": lambda t: not lo <= t < hi,
        "gt": lambda t: t >= hi, "sa": lambda t: t >= hi, "lt": lambda t: t < lo,
        "eb": lambda t: t < lo, "ge": lambda t: t >= lo, "le": lambda t: t < hi,
        "ap": lambda t: True,
    }[prefix]
    found = fhir.bundle(f"/Observation?code=41653-7&date={prefix}{day.isoformat()}&_count=500")
    assert times(matches(found)) == [iso(r.time) for r in readings if expected(r.time)]


def test_date_ranges_by_repetition_and_partial_dates(fhir: Fhir) -> None:
    readings = meter(fhir)
    a, b = readings[1].time, readings[-2].time
    found = fhir.bundle(f"/Observation?code=41653-7&date=ge{iso(a)}&date=le{iso(b)}")
    assert times(matches(found)) == [iso(r.time) for r in readings if a <= r.time <= b]
    month = readings[0].time.strftime("%Y-%m")
    found = fhir.bundle(f"/Observation?code=41653-7&date={month}&_count=500")
    assert len(matches(found)) == sum(r.time.strftime("%Y-%m") == month for r in readings)
    assert matches(fhir.bundle("/Observation?date=1999")) == []


def test_malformed_dates_are_400(fhir: Fhir) -> None:
    for value in ("2025-13-01", "ge2025-07-10&date=le2025-07-01", "xy2025"):
        r = fhir.get(f"/Observation?date={value}")
        assert r.status_code == 400
        assert r.json()["issue"][0]["diagnostics"].startswith(
            "Invalid date/time format or date range:")


def test_value_quantity_for_blood_glucose(fhir: Fhir) -> None:
    readings = meter(fhir)
    value = readings[0].glucose_mg_dl
    assert value is not None
    eq = matches(fhir.bundle(f"/Observation?value-quantity={value:g}&_count=500"))
    assert {o["valueQuantity"]["value"] for o in eq} == {value}
    assert all(o["code"]["coding"][0]["code"] == "41653-7" for o in eq)  # no CGM chunks
    gt = matches(fhir.bundle("/Observation?valueQuantity=gt140|http://unitsofmeasure.org|mg/dL"
                             "&_count=500"))
    assert times(gt) == [iso(r.time) for r in readings if (r.glucose_mg_dl or 0) > 140]
    mmol = matches(fhir.bundle("/Observation?value-quantity=gt7.77|http://unitsofmeasure.org|"
                               "mmol/L&_count=500"))
    assert times(mmol) == [iso(r.time) for r in readings if (r.glucose_mg_dl or 0) > 140]


def test_id_and_last_updated(fhir: Fhir) -> None:
    found = matches(fhir.bundle("/Observation?_count=3"))
    ids = [o["id"] for o in found[:2]]
    by_id = matches(fhir.bundle(f"/Observation?_id={','.join(ids)}"))
    assert sorted(o["id"] for o in by_id) == sorted(ids)
    assert matches(fhir.bundle("/Observation?_id=bg-999999999")) == []
    assert len(matches(fhir.bundle("/Observation?_lastUpdated=ge2000-01-01&_count=5"))) == 5
    assert matches(fhir.bundle("/Observation?_lastUpdated=lt2000-01-01")) == []


def test_sort_and_count(fhir: Fhir) -> None:
    asc = matches(fhir.bundle("/Observation?_count=500"))
    desc = matches(fhir.bundle("/Observation?_sort=-date&_count=500"))
    assert [o["id"] for o in desc] == [o["id"] for o in reversed(asc)]
    (latest,) = matches(fhir.bundle("/Observation?_sort=-date&_count=1&code=99504-3"))
    assert latest["effectivePeriod"]["start"] == max(
        o["effectivePeriod"]["start"] for o in asc if "effectivePeriod" in o)


def test_paging_forward_and_back_visits_everything_once(fhir: Fhir) -> None:
    everything = [o["id"] for o in matches(fhir.bundle("/Observation?_count=500"))]
    pages = all_pages(fhir, "/Observation?_count=7")
    assert [o["id"] for o in pages] == everything
    bundle = fhir.bundle("/Observation?_count=7")
    nxt = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    second = fhir.bundle(urlsplit(nxt).path.removeprefix("/fhir") + "?" + urlsplit(nxt).query)
    prev = next(link["url"] for link in second["link"] if link["relation"] == "previous")
    first = fhir.bundle(urlsplit(prev).path.removeprefix("/fhir") + "?" + urlsplit(prev).query)
    assert [o["id"] for o in matches(first)] == everything[:7]
    assert not any(link["relation"] == "previous" for link in first["link"])


def test_paging_newest_first(fhir: Fhir) -> None:
    everything = [o["id"] for o in matches(fhir.bundle("/Observation?_sort=-date&_count=500"))]
    assert [o["id"] for o in all_pages(fhir, "/Observation?_sort=-date&_count=5")] == everything


def test_includes_follow_the_references(fhir: Fhir) -> None:
    plain = fhir.bundle("/Observation?_count=500")
    assert included(plain) == []
    one = fhir.bundle("/Observation?_count=500&_include=Observation:device")
    kinds = {r["resourceType"] for r in included(one)}
    assert kinds == {"DeviceMetric"}
    refs = {o["device"]["reference"] for o in matches(one)}
    assert {f"DeviceMetric/{r['id']}" for r in included(one)} == refs
    two = fhir.bundle("/Observation?_count=500&_include=Observation:device"
                      "&_include:iterate=DeviceMetric:source")
    devices = [r for r in included(two) if r["resourceType"] == "Device"]
    sources = {r["source"]["reference"] for r in included(two)
               if r["resourceType"] == "DeviceMetric"}
    assert {f"Device/{d['id']}" for d in devices} == sources and len(devices) == 2
    assert_valid(two)
    # Without the Device and DeviceMetric scopes nothing is included.
    bare = fhir.bundle("/Observation?_include=Observation:device"
                       "&_include:iterate=DeviceMetric:source", "t-cgm-only")
    assert matches(bare) and included(bare) == []


def test_invalid_include_and_unknown_parameter(fhir: Fhir) -> None:
    r = fhir.get("/Observation?_include=Observation:patient")
    assert r.status_code == 400
    assert r.json()["issue"][0]["diagnostics"] == (
        "Invalid _include parameter value: Observation:patient")
    r = fhir.get("/Observation?colour=blue")
    assert r.status_code == 400
    assert r.json()["issue"][0] == {"severity": "error", "code": "processing",
                                    "diagnostics": "Unknown search parameter colour"}


def test_post_search_equals_get(fhir: Fhir) -> None:
    got = matches(fhir.bundle("/Observation?code=41653-7"))
    posted = fhir.post("/Observation/_search", data={"code": "41653-7"})
    assert posted.status_code == 200
    assert [o["id"] for o in matches(posted.json())] == [o["id"] for o in got]
    wrong = fhir.post("/Observation/_search", json={"code": "41653-7"})
    assert wrong.status_code == 415


def test_read_each_kind_and_not_known(fhir: Fhir) -> None:
    for obs in matches(fhir.bundle("/Observation?_count=500"))[:60:7]:
        r = fhir.get(f"/Observation/{obs['id']}")
        assert r.status_code == 200 and r.json() == obs
        assert_valid(r.json())
    r = fhir.get("/Observation/bg-424242")
    assert r.status_code == 404
    assert r.json()["issue"][0] == {"severity": "error", "code": "processing",
                                    "diagnostics": "Resource Observation/bg-424242 is not known"}
    chunk = matches(fhir.bundle("/Observation?code=99504-3&_count=1"))[0]
    assert fhir.get(f"/Observation/{chunk['id']}", "t-bg").status_code == 404


def test_xml_by_format_parameter_and_accept(fhir: Fhir) -> None:
    kwargs: dict[str, Any]
    for kwargs in ({"params": {"_format": "xml"}},
                   {"headers": {"Accept": "application/fhir+xml"}},
                   {"headers": {"Accept": "text/html;q=0.9, application/xml;q=0.8"}}):
        r = fhir.get("/Observation?_count=5&_include=Observation:device", "t-all", **kwargs)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+xml")
        model: Any = get_fhir_model_class("Bundle").model_validate_xml(r.content)
        assert model.type == "searchset" and len(model.entry or []) >= 5
    r = fhir.get("/Observation/bg-1", params={"_format": "application/fhir+xml"})
    parsed: Any = get_fhir_model_class("Observation").model_validate_xml(r.content)
    assert parsed.id == "bg-1"


@pytest.mark.parametrize(("accept", "text"), [
    ("text/turtle", "Requested format not supported. Supported formats: "
                    "application/fhir+json, application/fhir+xml"),
    ("application/fhir+json; fhirVersion=3.0", "FHIR version not supported. This server "
                                                "supports FHIR R4 (version 4.0.1)"),
])
def test_unsupported_formats_are_406(fhir: Fhir, accept: str, text: str) -> None:
    r = fhir.get("/Observation", headers={"Accept": accept})
    assert r.status_code == 406
    assert r.json()["issue"][0] == {"severity": "error", "code": "not-supported",
                                    "diagnostics": text}
    assert fhir.get("/Observation?_format=turtle").status_code == 406
    ok = fhir.get("/Observation?_count=1", headers={"Accept": "application/fhir+json; "
                                                              "fhirVersion=4.0"})
    assert ok.status_code == 200


def test_paging_links_stay_stable_while_data_arrives(empty_store: Store) -> None:
    provision(empty_store, "p-1", "gw-1")
    meter = DeviceInfo(device_id="meter-x", kind=DeviceKind.BLOOD_GLUCOSE_METER,
                       manufacturer="Acme", model="Meter", serial_number="M-1")
    t0 = dt.datetime(2027, 3, 1, 8, tzinfo=dt.UTC)

    def readings(*hours: int) -> list[BloodGlucoseReading]:
        return [BloodGlucoseReading(device_id=meter.device_id, sequence=h, time=t0 +
                                    dt.timedelta(hours=h), glucose_mg_dl=100.0 + h)
                for h in hours]

    ingest(empty_store, "gw-1", meter, readings(10, 11, 12, 13, 14, 15, 16))
    with make_fhir(empty_store, t0 + dt.timedelta(days=2)) as fhir:
        first = fhir.bundle("/Observation?_count=3", "t-bg")
        seen = [o["effectiveDateTime"] for o in matches(first)]
        # Readings arrive before the first page and after everything: an offset would shift.
        ingest(empty_store, "gw-1", meter, readings(1, 2, 20, 21))
        bundle = first
        while True:
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not nxt:
                break
            url = urlsplit(nxt[0])
            bundle = fhir.bundle(url.path.removeprefix("/fhir") + "?" + url.query, "t-bg")
            seen += [o["effectiveDateTime"] for o in matches(bundle)]
    expected = [iso(t0 + dt.timedelta(hours=h)) for h in (10, 11, 12, 13, 14, 15, 16, 20, 21)]
    assert seen == expected
