"""Patient isolation, as a property over many patients and DiGAs: whatever pairings and
consents exist, no access token reads another patient's data or a MIV it was not granted,
through any endpoint of the resource server (HDDT security-and-privacy.md "Authorization of
the DiGA", smart-scopes.md "Enforcement of SMART Scopes").

Each patient's readings carry a value of their own, so every resource a token gets back can
be traced to its patient. A reference map (every Observation, Device and DeviceMetric id of
each patient, by MIV) comes from one full-scope pairing per patient; each drawn pairing must
then see only ids of its own patient and its granted MIVs, and every other id must answer
404 to it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.hddt.access import SCOPE_DEVICE, SCOPE_DEVICE_METRIC
from bridge.hddt.settings import HddtSettings
from tests.auth.data import seed_glucose
from tests.auth.harness import (
    ALL_GLUCOSE,
    BG,
    CGM,
    DIGA_A,
    DIGA_B,
    Sandbox,
    bearer,
    running_sandbox,
)

DIGA_C = "urn:diga:bfarm:10007"
PATIENTS = tuple(f"p{i}" for i in range(6))
VALUES = {p: 100.0 + 10 * i for i, p in enumerate(PATIENTS)}
REGISTERED = {DIGA_A: ALL_GLUCOSE, DIGA_B: ALL_GLUCOSE, DIGA_C: (BG, SCOPE_DEVICE)}
CODE_OF = {BG: "41653-7", CGM: "99504-3"}
NOW = dt.datetime.now(dt.UTC)


@dataclass
class Reference:
    """What each patient has, by resource id."""

    observations: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (p, code)
    devices: dict[str, str] = field(default_factory=dict)  # "Device/x" -> patient
    patients_of: dict[str, set[str]] = field(default_factory=dict)


def bundle(box: Sandbox, client_id: str, token: str, path: str,
           **params: str) -> list[dict[str, Any]]:
    response = box.diga(client_id).get(f"{box.fhir_url}/{path}", headers=bearer(token),
                                       params={"_count": "500", **params})
    assert response.status_code == 200, response.text
    assert "next" not in {link["relation"] for link in response.json().get("link", [])}
    return [e["resource"] for e in response.json().get("entry", [])
            if e["resource"]["resourceType"] != "OperationOutcome"]


def observations_of(box: Sandbox, client_id: str, token: str) -> list[dict[str, Any]]:
    return bundle(box, client_id, token, "Observation",
                  _include="Observation:device", **{"_include:iterate": "DeviceMetric:source"})


def readings(resource: dict[str, Any]) -> set[float]:
    if "valueQuantity" in resource:
        return {float(resource["valueQuantity"]["value"])}
    data = resource.get("valueSampledData", {}).get("data", "")
    return {float(x) for x in data.split() if x not in ("E", "L", "U")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, Reference]]:
    # No rate limit here: the property makes many requests per pairing on purpose.
    hddt = HddtSettings(rate_limit_per_minute=None)
    with running_sandbox(tmp_path_factory.mktemp("isolation"), patients=PATIENTS,
                         digas=REGISTERED, hddt_settings=hddt) as box:
        for patient in PATIENTS:
            seed_glucose(box.store, patient, value=VALUES[patient], now=NOW)
        ref = Reference()
        for patient in PATIENTS:
            token = box.pair(DIGA_A, patient)["access_token"]
            for resource in observations_of(box, DIGA_A, token):
                key = f"{resource['resourceType']}/{resource['id']}"
                if resource["resourceType"] == "Observation":
                    assert readings(resource) <= {VALUES[patient]}
                    ref.observations[resource["id"]] = (
                        patient, resource["code"]["coding"][0]["code"])
                else:
                    assert ref.devices.get(key, patient) == patient
                    ref.devices[key] = patient
        assert {p for p, _ in ref.observations.values()} == set(PATIENTS)
        assert len(ref.devices) >= 2 * len(PATIENTS)
        yield box, ref


pairings = st.lists(
    st.tuples(st.sampled_from(sorted(REGISTERED)), st.sampled_from(PATIENTS),
              st.sets(st.sampled_from(ALL_GLUCOSE), min_size=1)),
    min_size=4, max_size=8)


@settings(max_examples=4, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
@given(drawn=pairings)
def test_no_token_reads_another_patient_or_an_ungranted_miv(
        world: tuple[Sandbox, Reference], drawn: list[tuple[str, str, set[str]]]) -> None:
    box, ref = world
    for client_id, patient, wanted in drawn:
        allowed = set(REGISTERED[client_id])
        asked = sorted(wanted & allowed) or [sorted(allowed)[0]]
        tokens = box.pair(client_id, patient, scopes=asked)
        granted = set(tokens["scope"].split())
        assert granted == set(asked)
        token = tokens["access_token"]
        codes = {CODE_OF[s] for s in granted if s in CODE_OF}

        seen = observations_of(box, client_id, token)
        for resource in seen:
            key = f"{resource['resourceType']}/{resource['id']}"
            if resource["resourceType"] == "Observation":
                assert ref.observations[resource["id"]] == (
                    patient, resource["code"]["coding"][0]["code"])
                assert resource["code"]["coding"][0]["code"] in codes
                assert readings(resource) <= {VALUES[patient]}
            else:
                assert ref.devices[key] == patient
        expected = {i for i, (p, c) in ref.observations.items() if p == patient and c in codes}
        assert {r["id"] for r in seen if r["resourceType"] == "Observation"} == expected

        for path, scope in (("Device", SCOPE_DEVICE), ("DeviceMetric", SCOPE_DEVICE_METRIC)):
            response = box.diga(client_id).get(f"{box.fhir_url}/{path}",
                                               headers=bearer(token))
            if scope not in granted:
                assert response.status_code in (403, 404) or not [
                    e for e in response.json().get("entry", [])
                    if e["resource"]["resourceType"] == path], response.text
                continue
            assert response.status_code == 200, response.text
            for entry in response.json().get("entry", []):
                item = entry["resource"]
                if item["resourceType"] == path:
                    assert ref.devices[f"{path}/{item['id']}"] == patient

        # Reads: only the patient's own resources of granted MIVs answer.
        for obs_id, (owner, code) in ref.observations.items():
            response = box.diga(client_id).get(f"{box.fhir_url}/Observation/{obs_id}",
                                               headers=bearer(token))
            visible = owner == patient and code in codes
            assert response.status_code == (200 if visible else 404), (obs_id, owner, code)
        for key, owner in ref.devices.items():
            if owner == patient:
                continue
            response = box.diga(client_id).get(f"{box.fhir_url}/{key}", headers=bearer(token))
            assert response.status_code in (403, 404), key

        # The CGM summary only for a CGM grant, and over the patient's own values.
        summary = box.diga(client_id).post(
            f"{box.fhir_url}/Observation/$hddt-cgm-summary", headers={
                **bearer(token), "Content-Type": "application/fhir+json"},
            json={"resourceType": "Parameters", "parameter": []})
        if CGM not in granted:
            assert summary.status_code == 403, summary.text
        else:
            assert summary.status_code == 200, summary.text
            text = summary.text
            for other, value in VALUES.items():
                if other != patient:
                    assert f'"value":{value:g},' not in text.replace(" ", "")
