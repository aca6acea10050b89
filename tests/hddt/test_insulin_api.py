"""The insulin extension over the interface: its own scope and codes, apart from the MIVs."""

from __future__ import annotations

import datetime as dt

from bridge.hddt.insulin import INSULIN_CODES, INSULIN_KINDS
from bridge.records import RecordKind
from tests.hddt.conftest import Fhir, included, matches


def instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def pump_records(fhir: Fhir) -> int:
    assert fhir.patient is not None
    _info, records = fhir.patient.of_kind("insulin-pump")
    return sum(RecordKind(r.KIND) in INSULIN_KINDS for r in records)


def test_insulin_only_with_its_own_scope(fhir: Fhir) -> None:
    mivs = matches(fhir.bundle("/Observation?_count=500", "t-all"))
    assert not any(o["id"].startswith("ins-") for o in mivs)
    ins = matches(fhir.bundle("/Observation?_count=500", "t-insulin"))
    assert ins and all(o["id"].startswith("ins-") for o in ins)
    assert len(ins) == pump_records(fhir)
    assert {(o["code"]["coding"][0]["system"], o["code"]["coding"][0]["code"])
            for o in ins} <= INSULIN_CODES
    everything = matches(fhir.bundle("/Observation?_count=500", "t-everything"))
    assert len(everything) == len(mivs) + len(ins)
    # One time order across the MIVs and the extension (daily totals, whose period starts
    # before the record's own time, left aside).
    starts = [instant(o.get("effectiveDateTime") or o["effectivePeriod"]["start"])
              for o in everything if not (o["id"].startswith("ins-")
                                          and "effectivePeriod" in o)]
    assert starts == sorted(starts)


def test_insulin_read_code_filter_and_device(fhir: Fhir) -> None:
    ins = matches(fhir.bundle("/Observation?_count=500&_include=Observation:device",
                              "t-insulin"))
    first = ins[0]
    assert fhir.get(f"/Observation/{first['id']}", "t-insulin").json() == first
    assert fhir.get(f"/Observation/{first['id']}", "t-all").status_code == 404
    coding = first["code"]["coding"][0]
    same = matches(fhir.bundle(f"/Observation?code={coding['system']}|{coding['code']}",
                               "t-insulin"))
    assert same and all(o["code"]["coding"][0]["code"] == coding["code"] for o in same)
    bundle = fhir.bundle("/Observation?_include=Observation:device", "t-insulin")
    (pump,) = included(bundle)
    assert pump["resourceType"] == "Device" and pump["type"]["coding"][0]["code"] == "702203005"
    assert fhir.get(f"/Device/{pump['id']}", "t-insulin").status_code == 200
    assert fhir.get(f"/Device/{pump['id']}", "t-all").status_code == 404
