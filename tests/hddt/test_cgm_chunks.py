"""CGM chunks (retrieving-data.md "Continuous Measurements", measurement-cgm.md): fixed
span, preliminary → final, early close on calibration change and device change, gaps and
out-of-range values, temp-unknown, stable ids, and the spec's polling pattern."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from bridge.backend.store import Store
from bridge.hddt.observations import number
from bridge.records import Annunciation, CgmReading, DeviceInfo, DeviceKind
from tests.hddt.conftest import Fhir, ingest, make_fhir, matches, provision, simulated
from tests.hddt.helpers import assert_valid

T0 = dt.datetime(2027, 3, 1, 10, 0, tzinfo=dt.UTC)
A = DeviceInfo(device_id="cgm-a", kind=DeviceKind.CGM, manufacturer="Acme", model="Acme CGM",
               serial_number="SN-A")
B = DeviceInfo(device_id="cgm-b", kind=DeviceKind.CGM, manufacturer="Acme", model="Acme CGM",
               serial_number="SN-B")


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def z(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def reading(minute: float, value: float | None = 120.0, *, device: DeviceInfo = A,
            flags: frozenset[Annunciation] = frozenset()) -> CgmReading:
    return CgmReading(device_id=device.device_id, time=at(minute), glucose_mg_dl=value,
                      annunciations=flags)


@pytest.fixture
def cgm(empty_store: Store) -> Iterator[Fhir]:
    provision(empty_store, "p-1", "gw-1")
    with make_fhir(empty_store, at(0)) as fhir:
        yield fhir


def send(fhir: Fhir, *records: CgmReading, device: DeviceInfo = A) -> None:
    ingest(fhir.store, "gw-1", device, records, received_at=fhir.clock.now)


def chunks(fhir: Fhir, query: str = "") -> list[dict[str, Any]]:
    bundle = fhir.bundle("/Observation?code=99504-3&_count=500" + query)
    assert_valid(bundle)
    return matches(bundle)


def read(fhir: Fhir, ident: str) -> dict[str, Any]:
    r = fhir.get(f"/Observation/{ident}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    assert_valid(doc)
    return doc


def test_the_current_chunk_fills_and_turns_final(cgm: Fhir) -> None:
    cgm.clock.now = at(27)
    send(cgm, *(reading(m, 100 + m) for m in range(0, 30, 5)))
    (chunk,) = chunks(cgm)
    assert chunk["status"] == "preliminary"
    assert chunk["effectivePeriod"] == {"start": z(at(0)), "end": z(at(60))}  # the full span
    assert chunk["valueSampledData"]["data"] == "100 105 110 115 120 125"
    assert chunk["valueSampledData"]["period"] == 300_000
    cgm.clock.now = at(58)
    send(cgm, *(reading(m, 100 + m) for m in range(30, 60, 5)))
    again = read(cgm, chunk["id"])  # the same logical id, more data
    assert again["status"] == "preliminary"
    assert again["valueSampledData"]["data"].split() == [str(100 + m) for m in range(0, 60, 5)]
    cgm.clock.now = at(62)
    send(cgm, reading(60, 99))
    assert read(cgm, chunk["id"])["status"] == "final"
    after = chunks(cgm, f"&date=gt{quote(z(at(60) + dt.timedelta(seconds=1)))}")
    assert [c["status"] for c in after] == ["preliminary"]
    assert after[0]["effectivePeriod"]["start"] == z(at(60))


def test_a_calibration_change_closes_the_chunk_early(cgm: Fhir) -> None:
    required = frozenset({Annunciation.CALIBRATION_REQUIRED})
    cgm.clock.now = at(57)
    send(cgm, *(reading(m) for m in range(0, 30, 5)),
         *(reading(m, flags=required) for m in range(30, 60, 5)))
    first, second = chunks(cgm)
    assert (first["status"], first["effectivePeriod"]) == (
        "final", {"start": z(at(0)), "end": z(at(30))})
    assert (second["status"], second["effectivePeriod"]) == (
        "preliminary", {"start": z(at(30)), "end": z(at(60))})
    assert len(first["valueSampledData"]["data"].split()) == 6
    assert len(second["valueSampledData"]["data"].split()) == 6
    metrics = [read_metric(cgm, c["device"]["reference"]) for c in (first, second)]
    assert [m["calibration"][0]["state"] for m in metrics] == ["calibrated",
                                                                "calibration-required"]
    assert metrics[0]["source"] == metrics[1]["source"]
    cgm.clock.now = at(70)
    send(cgm, reading(65))
    assert read(cgm, second["id"])["status"] == "final"


def read_metric(fhir: Fhir, reference: str) -> dict[str, Any]:
    r = fhir.get(f"/{reference}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    assert_valid(doc)
    return doc


def test_a_new_sensor_closes_the_old_ones_chunk_and_device(cgm: Fhir) -> None:
    cgm.clock.now = at(31)
    send(cgm, *(reading(m) for m in range(0, 35, 5)))
    cgm.clock.now = at(90)
    send(cgm, *(reading(m, 140, device=B) for m in range(40, 95, 5)), device=B)
    old, new, newer = chunks(cgm, "&_include=Observation:device"
                                  "&_include:iterate=DeviceMetric:source")
    assert old["device"] != new["device"] == newer["device"]
    assert old["status"] == "final"
    assert old["effectivePeriod"] == {"start": z(at(0)), "end": z(at(40))}
    # The new sensor's chunk sits on the grid: its first slots (before it began) are empty.
    assert new["valueSampledData"]["data"].split()[:9] == ["E"] * 8 + ["140"]
    assert newer["status"] == "preliminary"
    devices = matches(cgm.bundle("/Device"))
    status = {d["serialNumber"]: d["status"] for d in devices}
    assert status == {"SN-A": "inactive", "SN-B": "active"}


def test_gaps_and_out_of_range_values(cgm: Fhir) -> None:
    cgm.clock.now = at(40)
    send(cgm, reading(0, 101.26), reading(5, 102),
         reading(15, None, flags=frozenset({Annunciation.BELOW_DEVICE_RANGE})),
         reading(20, None, flags=frozenset({Annunciation.ABOVE_DEVICE_RANGE})),
         reading(25, None), reading(35, 55))
    (chunk,) = chunks(cgm)
    data = chunk["valueSampledData"]
    assert data["data"] == "101.3 102 E L U E E 55"
    assert (data["lowerLimit"], data["upperLimit"]) == (40, 400)


def test_missing_data_is_temp_unknown_until_it_arrives(cgm: Fhir) -> None:
    cgm.clock.now = at(56)
    send(cgm, *(reading(m) for m in range(0, 60, 5)))
    cgm.clock.now = at(100)
    pending = chunks(cgm, f"&date=gt{quote(z(at(60)))}")
    assert [(c["status"], c["dataAbsentReason"]["coding"][0]["code"]) for c in pending] == [
        ("preliminary", "temp-unknown")]
    assert "valueSampledData" not in pending[0]
    device = matches(cgm.bundle("/Device"))[0]
    assert device["status"] == "unknown"  # no contact for longer than Delay-From-Real-Time
    ident = pending[0]["id"]
    send(cgm, *(reading(m) for m in range(60, 85, 5)))
    filled = read(cgm, ident)
    assert filled["status"] == "preliminary"
    assert len(filled["valueSampledData"]["data"].split()) == 5
    assert matches(cgm.bundle("/Device"))[0]["status"] == "active"
    send(cgm, reading(125))
    assert read(cgm, ident)["status"] == "final"


def test_chunk_ids_are_stable_and_unknown_ones_404(cgm: Fhir) -> None:
    cgm.clock.now = at(200)
    send(cgm, *(reading(m) for m in range(0, 180, 5)))
    ids = [c["id"] for c in chunks(cgm)]
    send(cgm, *(reading(m) for m in range(180, 200, 5)))
    assert [c["id"] for c in chunks(cgm)][:3] == ids[:3]
    assert cgm.get(f"/Observation/{ids[0]}x").status_code == 404
    assert cgm.get("/Observation/cgm-0000000000000000-1").status_code == 404


def values_of(chunk: dict[str, Any]) -> list[tuple[dt.datetime, str]]:
    data = chunk.get("valueSampledData")
    if data is None:
        return []
    start = dt.datetime.fromisoformat(chunk["effectivePeriod"]["start"])
    step = dt.timedelta(milliseconds=data["period"])
    return [(start + k * step, v) for k, v in enumerate(data["data"].split()) if v != "E"]


def test_the_polling_pattern_obtains_every_reading_exactly_once(empty_store: Store) -> None:
    """retrieving-data.md "Continuously Polling for New Data": re-read the current chunk
    while preliminary, then search ``date=gt[end + 1 s]``; data arrives in 15-minute
    batches meanwhile."""
    provision(empty_store, "p-1", "gw-1")
    sim = simulated()
    info, records = sim.of_kind("cgm")
    readings = [r for r in records if isinstance(r, CgmReading)]
    with make_fhir(empty_store, sim.start) as fhir:
        got, expected = poll(fhir, info, readings)
    assert len(got) == len(set(got)) == len(expected)
    assert sorted(got) == sorted(expected)


def poll(fhir: Fhir, info: DeviceInfo, readings: list[CgmReading]
         ) -> tuple[list[tuple[dt.datetime, str]], list[tuple[dt.datetime, str]]]:
    delivered = 0
    start = fhir.clock.now

    def tick() -> bool:
        """15 minutes pass; what was measured meanwhile arrives. False at the end."""
        nonlocal delivered
        fhir.clock.now += dt.timedelta(minutes=15)
        batch = [r for r in readings[delivered:] if r.time < fhir.clock.now]
        if batch:
            ingest(fhir.store, "gw-1", info, batch, received_at=fhir.clock.now)
            delivered += len(batch)
        return delivered < len(readings)

    tick()
    got: list[tuple[dt.datetime, str]] = []
    chunk = chunks(fhir, f"&date=ge{quote(z(start))}&_count=1")[0]
    running = True
    while running:
        while chunk["status"] == "preliminary" and running:
            running = tick()
            chunk = read(fhir, chunk["id"])
        if chunk["status"] != "final":
            break  # the data has ended while this chunk was open
        got += values_of(chunk)
        end = dt.datetime.fromisoformat(chunk["effectivePeriod"]["end"])
        following: list[dict[str, Any]] = []
        while not following and running:
            following = chunks(fhir, "&_count=1&date=gt" + quote(
                z(end + dt.timedelta(seconds=1))))
            if not following:
                running = tick()
        if following:
            chunk = following[0]
    if chunk["status"] == "preliminary":  # the data has ended: take the last, open chunk
        got += values_of(chunk)
    expected = []
    for r in readings:
        flags = r.annunciations
        text = ("L" if Annunciation.BELOW_DEVICE_RANGE in flags
                else "U" if Annunciation.ABOVE_DEVICE_RANGE in flags
                else "E" if r.glucose_mg_dl is None else str(number(r.glucose_mg_dl)))
        if text != "E":
            expected.append((r.time, text))
    return got, expected
