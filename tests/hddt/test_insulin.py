"""Insulin delivery Observations (project extension) from real insulin_events rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.valueset import ValueSet

from bridge.backend import registry
from bridge.backend.store import Store, insert_rows, insulin_events, record_row
from bridge.hddt.access import NORMATIVE_MIVS, PROJECT_INSULIN_DELIVERY
from bridge.hddt.data import DeviceRow, fhir_device_key
from bridge.hddt.insulin import (
    INSULIN_CODES,
    INSULIN_KINDS,
    INSULIN_SCOPE,
    INSULIN_VALUE_SET,
    InsulinRowError,
    insulin_observation,
)
from bridge.hddt.observations import device_id
from bridge.hddt.profiles import check_resource
from bridge.records import (
    AnyRecord,
    BolusPhase,
    BolusType,
    InsulinBolus,
    RecordKind,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    record_from_json,
    record_to_json,
)
from simulators.physiology import standard_patients
from simulators.run import simulate_cohort

BASE = "https://bridge.example/fhir"
T0 = dt.datetime(2027, 7, 1, 8, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pump_records() -> list[AnyRecord]:
    result = simulate_cohort(standard_patients()[:1], "random-day", days=3, seed=3,
                             sensors=True, records=True, progress=None)
    assert result.devices is not None and result.devices[0].pump is not None
    # Round trip through the canonical JSON: the typed record the store keeps.
    return [record_from_json(record_to_json(r)) for r in result.devices[0].pump.records
            if r.KIND in INSULIN_KINDS]


def extra_records(device: str) -> list[AnyRecord]:
    """Variants the simulated pump does not produce every run."""
    return [
        InsulinBolus(device_id=device, time=T0, sequence=9001, bolus_id=77,
                     phase=BolusPhase.PROGRAMMED, bolus_type=BolusType.MULTIWAVE,
                     fast_iu=2.0, extended_iu=1.5, extended_duration_min=90),
        TempBasalStart(device_id=device, time=T0, sequence=9002,
                       temp_basal_type=TempBasalType.RELATIVE, value=70, duration_min=120),
        TempBasalEnd(device_id=device, time=T0 + dt.timedelta(hours=1), sequence=9003,
                     effective_duration_min=60, canceled=True),
    ]


@pytest.fixture
def rows(tmp_path: Path, pump_records: list[AnyRecord]) -> Iterator[list[dict[str, Any]]]:
    device = pump_records[0].device_id
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        with store.begin() as conn:
            registry.provision_patient(conn, "p-1", actor="test")
            registry.provision_gateway(conn, "gw-1", patient_id="p-1", actor="test")
            registry.assign_device(conn, device, patient_id="p-1", actor="test",
                                   gateway_id="gw-1")
            for record in [*pump_records, *extra_records(device)]:
                table, row = record_row(record, patient_id="p-1", gateway_id="gw-1",
                                        received_at=T0, inserted_at=store.clock.now())
                assert table is insulin_events
                insert_rows(conn, table, [row])
        with store.begin() as conn:
            found = [dict(r._mapping) for r in conn.execute(
                sa.select(insulin_events).order_by(insulin_events.c.id))]
        yield found


def test_every_insulin_record_kind_becomes_a_valid_observation(
        rows: list[dict[str, Any]]) -> None:
    kinds = {r["kind"] for r in rows}
    assert kinds == {k.value for k in INSULIN_KINDS}
    for row in rows:
        obs = insulin_observation(row, base_url=BASE)
        Observation.model_validate(obs)
        assert obs["id"] == f"ins-{row['id']}"
        assert obs["meta"]["source"] == BASE
        assert "profile" not in obs["meta"]  # no HDDT profile is claimed
        assert check_resource(obs) == []
        coding = obs["code"]["coding"][0]
        assert (coding["system"], coding["code"]) in INSULIN_CODES
        if row["mdc_code"] is not None:
            assert coding["code"] == str(row["mdc_code"])
        if "valueQuantity" in obs and row["value"] is not None:
            assert obs["valueQuantity"]["value"] == pytest.approx(row["value"])
            assert obs["valueQuantity"]["code"] == row["unit"]
        assert obs["category"][0]["coding"][0]["code"] == "phd"


def test_details_of_each_kind(rows: list[dict[str, Any]]) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(insulin_observation(row, base_url=BASE))
    programmed = next(o for o in by_kind["insulin-bolus"] if "effectivePeriod" in o)
    assert programmed["status"] == "preliminary"
    assert programmed["valueQuantity"] == {"value": 3.5, "unit": "[iU]",
                                           "system": "http://unitsofmeasure.org",
                                           "code": "[iU]"}
    assert programmed["effectivePeriod"] == {"start": "2027-07-01T08:00:00Z",
                                             "end": "2027-07-01T09:30:00Z"}
    relative = next(o for o in by_kind["temp-basal-start"]
                    if o["valueQuantity"]["code"] == "%")
    assert relative["valueQuantity"]["value"] == 70
    assert relative["effectivePeriod"]["end"] == "2027-07-01T10:00:00Z"
    tdi = by_kind["total-daily-insulin"][0]
    parts = [c["valueQuantity"]["value"] for c in tdi["component"]]
    assert sum(parts) == pytest.approx(tdi["valueQuantity"]["value"])
    assert len(tdi["effectivePeriod"]["start"]) == 10  # the pump's calendar day
    state = by_kind["therapy-state-change"][0]
    assert state["valueCodeableConcept"]["coding"][0]["code"] in {"run", "pause", "stop"}
    ended = by_kind["temp-basal-end"][0]
    assert {c["code"]["coding"][0]["code"] for c in ended["component"]} == {
        "temp-basal-duration", "canceled"}


def test_device_reference_matches_the_resource_server(rows: list[dict[str, Any]]) -> None:
    row = rows[0]
    device = DeviceRow(
        id=row["device_id"], key=fhir_device_key(row["device_id"]), kind="insulin-pump",
        manufacturer=None, model=None, serial_number=None,
        calibration_state=None, last_contact=None, first_seen=T0, first_cgm=None,
        last_cgm=None, first_bg=None, last_bg=None)
    obs = insulin_observation(row, base_url=BASE)
    assert obs["device"] == {"reference": f"Device/{device_id(device)}"}
    assert row["device_id"] not in str(obs)  # backend ids stay inside
    given = insulin_observation(row, base_url=BASE, device_reference="Device/x")
    assert given["device"] == {"reference": "Device/x"}


def test_value_set_and_scope_are_apart_from_the_mivs() -> None:
    ValueSet.model_validate(INSULIN_VALUE_SET)
    assert INSULIN_VALUE_SET["url"] == PROJECT_INSULIN_DELIVERY
    assert PROJECT_INSULIN_DELIVERY not in NORMATIVE_MIVS
    assert INSULIN_SCOPE == ("patient/Observation.rs?code:in=" + PROJECT_INSULIN_DELIVERY)
    mdc_codes = {c for s, c in INSULIN_CODES if s == "urn:iso:std:iso:11073:10101"}
    assert len(mdc_codes) == 4  # bolus, basal, temporary basal, reservoir
    assert all(not c[:1].isalpha() for c in mdc_codes)


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "annunciation"}, "kind annunciation is not insulin delivery"),
    ({"kind": "bogus"}, "unknown kind 'bogus'"),
    ({"record": "{not json"}, "record does not read back"),
    ({"record": {"kind": "insulin-bolus"}}, "record does not read back"),
    ({"kind": "reservoir-level"}, "differs from row kind"),
    ({"id": None}, "no integer id"),
])
def test_bad_rows_are_refused_clearly(rows: list[dict[str, Any]], change: dict[str, Any],
                                      message: str) -> None:
    row = next(r for r in rows if r["kind"] == RecordKind.INSULIN_BOLUS.value) | change
    with pytest.raises(InsulinRowError, match=message) as exc:
        insulin_observation(row, base_url=BASE)
    assert exc.value.row_id == row["id"]
