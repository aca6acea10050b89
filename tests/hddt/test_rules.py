"""The remaining rules of the interface: Device and DeviceMetric, access errors, read-only,
rate limit and grace period, historic period, CapabilityStatement, audit log."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from bridge.backend.store import Store, list_audit
from bridge.hddt.access import AccessDenied, AccessGrant
from bridge.hddt.app import create_fhir_app
from bridge.hddt.settings import HddtSettings, SettingsError
from simulators.run import MANUFACTURER
from tests.hddt.conftest import (
    Fhir,
    SimulatedPatient,
    SyncClient,
    included,
    ingest,
    make_fhir,
    matches,
    new_store,
    provision,
    simulated,
)
from tests.hddt.helpers import assert_valid

SNOMED = "http://snomed.info/sct"


def devices(fhir: Fhir, query: str = "", token: str = "t-all") -> list[dict[str, Any]]:
    bundle = fhir.bundle("/Device" + query, token)
    assert_valid(bundle)
    return matches(bundle)


def test_device_search_shows_only_devices_behind_visible_observations(fhir: Fhir) -> None:
    found = devices(fhir)
    kinds = {d["type"]["coding"][0]["code"] for d in found}
    assert kinds == {"337414009", "700585005"}  # meter and CGM; the pump has no MIV
    assert {d["status"] for d in found} <= {"active", "unknown"}
    assert all(d["serialNumber"] and d["deviceName"][0]["name"] for d in found)
    assert all("patient" not in d for d in found)
    bg_only = devices(fhir, token="t-bg")
    assert [d["type"]["coding"][0]["code"] for d in bg_only] == ["337414009"]
    assert devices(fhir, token="t-cgm-only") == []  # no Device scope
    theirs = {d["id"] for d in devices(fhir, token="t-p2")}
    assert theirs and not theirs & {d["id"] for d in found}


@pytest.mark.parametrize(("query", "kinds"), [
    ("?device-name=virtual", {"337414009", "700585005"}),
    ("?device-name=Virtual%20CGM", {"700585005"}),
    ("?device-name:exact=virtual%20cgm%20cgms", set()),
    ("?device-name:contains=Meter", {"337414009"}),
    (f"?manufacturer={MANUFACTURER[:4]}", {"337414009", "700585005"}),
    ("?manufacturer=Nobody", set()),
    (f"?type={SNOMED}|700585005", {"700585005"}),
    ("?type=337414009,700585005", {"337414009", "700585005"}),
    ("?type=http://loinc.org|700585005", set()),
])
def test_device_search_parameters(fhir: Fhir, query: str, kinds: set[str]) -> None:
    assert {d["type"]["coding"][0]["code"] for d in devices(fhir, query)} == kinds


def test_device_read_id_and_refusals(fhir: Fhir) -> None:
    meter = devices(fhir, f"?type={SNOMED}|337414009")[0]
    assert devices(fhir, f"?_id={meter['id']}") == [meter]
    r = fhir.get(f"/Device/{meter['id']}")
    assert r.status_code == 200 and r.json() == meter
    assert fhir.get(f"/Device/{meter['id']}", "t-cgm").status_code == 404  # no BG scope
    assert fhir.get(f"/Device/{meter['id']}", "t-p2").status_code == 404
    assert fhir.get("/Device?patient=Patient/p-1").status_code == 400
    r = fhir.get(f"/Device/{meter['id']}/_history/1")
    assert r.status_code == 404
    assert r.json()["issue"][0]["diagnostics"] == (
        f"Version 1 is not valid for resource Device/{meter['id']}.")


def test_device_metric_search_read_and_include(fhir: Fhir) -> None:
    bundle = fhir.bundle("/DeviceMetric?_include=DeviceMetric:source")
    assert_valid(bundle)
    metrics = matches(bundle)
    assert {m["calibration"][0]["state"] for m in metrics} == {"calibrated"}
    assert {f"Device/{d['id']}" for d in included(bundle)} == {
        m["source"]["reference"] for m in metrics}
    cgm = devices(fhir, f"?type={SNOMED}|700585005")[0]
    (mine,) = matches(fhir.bundle(f"/DeviceMetric?source=Device/{cgm['id']}"))
    assert mine["type"]["coding"][0]["code"] == "160212"
    assert "time" in mine["calibration"][0]
    r = fhir.get(f"/DeviceMetric/{mine['id']}")
    assert r.status_code == 200 and r.json() == mine
    assert fhir.get(f"/DeviceMetric/{mine['id']}", "t-cgm-only").status_code == 404
    wrong_state = mine["id"].replace("-calibrated", "-calibration-required")
    assert fhir.get(f"/DeviceMetric/{wrong_state}").status_code == 404


def test_no_token_is_401_with_the_bearer_challenge(fhir: Fhir) -> None:
    r = fhir.get("/Observation", token=None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert r.json()["error"] == "invalid_token"
    r = fhir.get("/Observation", token="forged")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="The access token is not valid"')


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/Observation/bg-1"), ("DELETE", "/Observation/bg-1"), ("PATCH", "/Device/x"),
    ("POST", "/Observation"), ("POST", "/Device"), ("DELETE", "/DeviceMetric/dm-x"),
    ("POST", "/Observation/bg-1"),
])
def test_the_interface_is_read_only(fhir: Fhir, method: str, path: str) -> None:
    for token in ("t-all", None):
        r = fhir.request(method, path, token, json={"resourceType": "Observation"})
        assert r.status_code == 405, (method, path, r.text)
        issue = r.json()["issue"][0]
        assert issue["severity"] == "error" and "read-only" in issue["diagnostics"]


def test_unknown_resource_types_are_404(fhir: Fhir) -> None:
    r = fhir.get("/Patient/p-1")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_rate_limit_answers_429_with_retry_after(filled: tuple[Store, SimulatedPatient]
                                                 ) -> None:
    store, sim = filled
    settings = HddtSettings(rate_limit_per_minute=6, rate_limit_burst=3)
    with make_fhir(store, sim.end, settings) as fhir:
        assert [fhir.get("/Device").status_code for _ in range(3)] == [200] * 3
        r = fhir.get("/Device")
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 10
        assert r.json()["issue"][0] == {
            "severity": "error", "code": "throttled",
            "diagnostics": "Rate limit exceeded. Please retry after the specified time."}
        assert fhir.get("/Device", "t-bg").status_code == 200  # another pairing


def test_grace_period_between_data_requests(filled: tuple[Store, SimulatedPatient]) -> None:
    store, sim = filled
    settings = HddtSettings(rate_limit_per_minute=None, grace_period=dt.timedelta(minutes=10))
    with make_fhir(store, sim.end, settings) as fhir:
        assert fhir.get("/Observation?_count=1").status_code == 200
        r = fhir.get("/Observation?_count=1")
        assert r.status_code == 429 and 590 <= int(r.headers["retry-after"]) <= 600
        assert fhir.get("/Device").status_code == 200


def test_threads_and_chunk_cache_change_how_not_what(
        filled: tuple[Store, SimulatedPatient]) -> None:
    store, sim = filled
    answers = []
    for threads, cache in ((0, True), (2, False), (4, True)):
        settings = HddtSettings(rate_limit_per_minute=None, worker_threads=threads,
                                cell_cache=cache)
        with make_fhir(store, sim.end, settings) as fhir:
            for _ in range(2):  # the second search finds the chunks kept by the first
                bundle = fhir.bundle("/Observation?_count=30&_include=Observation:device")
                answers.append([e["resource"] for e in bundle["entry"]])
    assert len(answers[0]) > 30
    assert all(a == answers[0] for a in answers)


def test_settings_keep_the_spec_bounds() -> None:
    with pytest.raises(SettingsError):
        HddtSettings(historic_period=dt.timedelta(days=29))
    with pytest.raises(SettingsError):
        HddtSettings(grace_period=dt.timedelta(minutes=16))
    with pytest.raises(SettingsError):
        HddtSettings(cgm_chunk_span=dt.timedelta(minutes=7))
    with pytest.raises(SettingsError):
        HddtSettings(worker_threads=-1)


@pytest.mark.parametrize("status", [404, 410])
def test_historic_period(filled: tuple[Store, SimulatedPatient], status: int) -> None:
    store, sim = filled
    with make_fhir(store, sim.end, patient=sim) as now:
        some = matches(now.bundle("/Observation?_count=500"))
    later = sim.end + dt.timedelta(days=40)
    with make_fhir(store, later, HddtSettings(rate_limit_per_minute=None,
                                              expired_read_status=status)) as fhir:
        start = sim.start.strftime("%Y-%m-%d")
        bundle = fhir.bundle(f"/Observation?date=ge{start}")
        assert matches(bundle) == []
        (outcome,) = [e["resource"] for e in bundle["entry"]]
        assert outcome["issue"] == [{
            "severity": "warning", "code": "processing",
            "diagnostics": "Search includes a time range which is outside the historical "
                           "time range of this service. Potentially no matches found."}]
        assert "entry" not in fhir.bundle("/Observation")
        for obs in (some[0], some[-1]):
            r = fhir.get(f"/Observation/{obs['id']}")
            assert r.status_code == status
            text = r.json()["issue"][0]["diagnostics"]
            assert text == "Resource was deleted" if status == 410 else "historic" in text
        assert devices(fhir) == []


def test_capability_statement(fhir: Fhir) -> None:
    r = fhir.get("/metadata", token=None)
    assert r.status_code == 200
    doc = r.json()
    get_fhir_model_class("CapabilityStatement").model_validate(doc)
    assert doc["fhirVersion"] == "4.0.1" and doc["format"] == ["json", "xml"]
    resources = {res["type"]: res for res in doc["rest"][0]["resource"]}
    assert set(resources) == {"Observation", "Device", "DeviceMetric", "Bundle"}
    obs = resources["Observation"]
    assert {p["name"] for p in obs["searchParam"]} == {
        "code", "date", "value-quantity", "_id", "_lastUpdated"}
    assert obs["operation"][0]["name"] == "hddt-cgm-summary"
    assert {p["name"] for p in resources["Device"]["searchParam"]} == {
        "device-name", "type", "manufacturer", "_id"}
    xml = fhir.get("/metadata", token=None, params={"_format": "xml"})
    model: Any = get_fhir_model_class("CapabilityStatement").model_validate_xml(xml.content)
    assert model.fhirVersion == "4.0.1"


def test_every_request_is_audited_by_pairing(fhir: Fhir) -> None:
    marks = [uuid.uuid4().hex for _ in range(3)]
    ok = fhir.get("/Observation?_count=2", headers={"X-Request-ID": marks[0]})
    bad = fhir.get("/Observation?nope=1", headers={"X-Request-ID": marks[1]})
    anonymous = fhir.get("/Device", token=None, headers={"X-Request-ID": marks[2]})
    fhir.audit_flush()
    with fhir.store.read() as conn:
        entries = {e.detail["transaction_id"]: e for e in list_audit(conn, limit=10_000)
                   if e.detail and e.detail.get("transaction_id") in marks}
    first, second, third = (entries[m] for m in marks)
    assert (first.subject_type, first.subject_id, first.patient_id) == (
        "pairing", "pair-t-all", "p-1")
    assert first.detail["status"] == 200
    assert first.detail["data_volume_bytes"] == len(ok.content)
    assert first.detail["response_time_ms"] > 0
    assert first.action == "hddt-search-observation"
    assert second.detail["status"] == 400 and second.detail["error_code"] == "processing"
    assert second.detail["error_description"] == "Unknown search parameter nope"
    assert bad.status_code == 400 and anonymous.status_code == 401
    assert third.subject_id == "-" and third.detail["status"] == 401


def test_reads_survive_dropped_database_connections(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A read whose pooled PostgreSQL connection died (server restart, failover) runs once
    more on a fresh one instead of failing."""
    with new_store("postgresql", tmp_path, request) as store:
        provision(store, "p-1", "gw-1")
        sim = simulated()
        info, records = sim.of_kind("blood-glucose-meter")
        ingest(store, "gw-1", info, records)
        with make_fhir(store, sim.end) as fhir:
            assert fhir.get("/Observation?_count=1").status_code == 200
            with store.begin() as conn:
                killed = conn.exec_driver_sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                    "pid <> pg_backend_pid() AND datname = current_database()").scalar_one()
            assert killed >= 1
            r = fhir.get("/Observation?_count=1")
            assert r.status_code == 200, r.text
            assert len(matches(r.json())) == 1


class _Refusing:
    """A resolver refusing every request as the token checks of the authorization server do."""

    def __init__(self, description: str) -> None:
        self.description = description

    async def resolve(self, connection: Any) -> AccessGrant:
        raise AccessDenied(401, "invalid_token", self.description)


@pytest.mark.parametrize("description", [
    "Token is not a signed JWT", "Invalid token issuer", "The access token expired",
    "Token cannot be used yet"])
def test_token_refusals_as_error_codes_lists_them(empty_store: Store, description: str) -> None:
    app = create_fhir_app(empty_store, HddtSettings(), _Refusing(description),
                          base_url="https://ddr.example/fhir")
    client = SyncClient(app, "https://ddr.example")
    try:
        r = client.get("/Observation", headers={"Authorization": "Bearer x"})
    finally:
        client.close()
        app.state.hddt.close()
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        f'Bearer error="invalid_token", error_description="{description}"')
    assert r.json() == {"error": "invalid_token", "error_description": description}


def test_errors_in_xml_when_xml_is_asked_for(fhir: Fhir) -> None:
    r = fhir.get("/Observation?colour=blue&_format=xml")
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/fhir+xml")
    outcome: Any = get_fhir_model_class("OperationOutcome").model_validate_xml(r.content)
    assert outcome.issue[0].diagnostics == "Unknown search parameter colour"


def test_a_failure_inside_is_500_with_an_exception_outcome(empty_store: Store) -> None:
    provision(empty_store, "p-1", "gw-1")
    with empty_store.begin() as conn:  # a store broken underneath the server
        conn.exec_driver_sql("DROP TABLE glucose_readings")
    with make_fhir(empty_store, dt.datetime(2027, 3, 1, tzinfo=dt.UTC)) as fhir:
        r = fhir.get("/Observation?code=41653-7", "t-bg")
        assert r.status_code == 500
        issue = r.json()["issue"][0]
        assert issue["severity"] == "error" and issue["code"] == "exception"
        assert fhir.get("/metadata", token=None).status_code == 200  # still serving
