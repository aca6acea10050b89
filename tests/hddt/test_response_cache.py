"""The response cache of Observation searches: kept answers are served only while their
fingerprint (devices, rows in the searched range) and their age allow, so new readings and
device changes are visible at once; paging links stay right; memory is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest

from bridge.backend.store import devices
from bridge.hddt.response_cache import KeptAnswer, ResponseCache
from bridge.hddt.settings import HddtSettings, SettingsError
from bridge.records import CgmReading, DeviceInfo, DeviceKind
from tests.hddt.conftest import (
    GRANTS,
    Fhir,
    included,
    ingest,
    make_fhir,
    matches,
    new_store,
    provision,
)
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


#: The first hour, with the device and its DeviceMetric included.
HOUR = (f"/Observation?code=99504-3&date=ge{quote(z(at(0)))}&date=lt{quote(z(at(60)))}"
        "&_include=Observation:device&_include:iterate=DeviceMetric:source")


@pytest.fixture(params=["sqlite", "postgresql"])
def cgm(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Fhir]:
    """Sensor A with readings every 5 minutes from 10:00 to 10:50, now 10:52."""
    with new_store(request.param, tmp_path, request) as store:
        provision(store, "p-1", "gw-1")
        with make_fhir(store, at(52)) as fhir:
            send(fhir, *(reading(m, 100 + m) for m in range(0, 55, 5)))
            yield fhir


def reading(minute: float, value: float, device: DeviceInfo = A) -> CgmReading:
    return CgmReading(device_id=device.device_id, time=at(minute), glucose_mg_dl=value)


def send(fhir: Fhir, *records: CgmReading, device: DeviceInfo = A) -> None:
    ingest(fhir.store, "gw-1", device, records, received_at=fhir.clock.now)


def hits(fhir: Fhir) -> int:
    cache = fhir.app.state.hddt.answers.cache
    assert cache is not None
    return int(cache.hits)


def search(fhir: Fhir, path: str = HOUR) -> dict[str, Any]:
    bundle = fhir.bundle(path)
    assert_valid(bundle)
    return bundle


def data(bundle: dict[str, Any]) -> list[str]:
    return [m["valueSampledData"]["data"] for m in matches(bundle)]


def device_status(bundle: dict[str, Any], device: str = "Device") -> list[str]:
    return [r["status"] for r in included(bundle) if r["resourceType"] == device]


def test_a_repeated_search_is_served_from_the_cache_with_a_new_bundle_id(cgm: Fhir) -> None:
    first = search(cgm)
    before = hits(cgm)
    second = search(cgm)
    assert hits(cgm) == before + 1
    assert second["id"] != first["id"]
    assert {**second, "id": first["id"]} == first


def test_kept_answers_checked_in_the_worker_threads_too(cgm: Fhir) -> None:
    with make_fhir(cgm.store, cgm.clock.now, HddtSettings(
            rate_limit_per_minute=None, response_cache_check_on_loop=False)) as threaded:
        first = search(threaded)
        before = hits(threaded)
        assert data(search(threaded)) == data(first)
        assert hits(threaded) == before + 1
        send(threaded, reading(55, 99))
        assert data(search(threaded))[0].endswith(" 99")
        assert hits(threaded) == before + 1


def test_kept_answers_checked_on_a_blocking_connection_too(cgm: Fhir) -> None:
    with make_fhir(cgm.store, cgm.clock.now, HddtSettings(
            rate_limit_per_minute=None, response_cache_check_connections=0)) as blocking:
        assert blocking.app.state.hddt.answers.loop_reads is None
        first = search(blocking)
        before = hits(blocking)
        assert data(search(blocking)) == data(first)
        assert hits(blocking) == before + 1
        send(blocking, reading(55, 99))
        assert data(search(blocking))[0].endswith(" 99")
        assert hits(blocking) == before + 1


def test_a_lost_check_connection_never_serves_a_kept_answer(cgm: Fhir) -> None:
    with make_fhir(cgm.store, cgm.clock.now, HddtSettings(
            rate_limit_per_minute=None, response_cache_check_connections=1)) as one:
        reads = one.app.state.hddt.answers.loop_reads
        if one.store.engine.dialect.name != "postgresql":
            assert reads is None  # SQLite: checked on the loop's own read connection
            return
        search(one)
        before = hits(one)
        search(one)
        assert hits(one) == before + 1 and len(reads._connections) == 1
        # The database ends the check connection (a restart, a failover), a reading arrives.
        with one.store.begin() as conn:
            conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)",
                                 {"pid": reads._connections[0].info.backend_pid})
        send(one, reading(55, 99))
        assert data(search(one))[0].endswith(" 99")  # built again, never the kept answer
        assert hits(one) == before + 1 and reads.failures == 1 and not reads._connections
        search(one)  # a new connection checks the next use
        assert hits(one) == before + 2 and len(reads._connections) == 1


def test_a_reading_ingested_into_the_searched_range_is_visible_at_once(cgm: Fhir) -> None:
    assert data(search(cgm)) == [" ".join(str(100 + m) for m in range(0, 55, 5))]
    search(cgm)  # kept
    send(cgm, reading(55, 99))  # same clock: only the fingerprint can tell
    assert data(search(cgm)) == [" ".join(str(100 + m) for m in range(0, 55, 5)) + " 99"]


def test_a_reading_after_the_range_turns_the_chunk_final(cgm: Fhir) -> None:
    (chunk,) = matches(search(cgm))
    assert chunk["status"] == "preliminary"
    cgm.clock.now = at(52)
    send(cgm, reading(180, 140))  # far after the searched hour and its neighbours
    (chunk,) = matches(search(cgm))
    assert chunk["status"] == "final"


def test_a_device_status_change_is_visible_at_once(cgm: Fhir) -> None:
    assert device_status(search(cgm)) == ["active"]
    search(cgm)
    # The backend loses contact: only the device row changes.
    with cgm.store.begin() as conn:
        conn.execute(devices.update().where(devices.c.id == A.device_id)
                     .values(last_contact=at(0)))
    assert device_status(search(cgm)) == ["unknown"]


def test_a_new_sensor_retires_the_device_at_once(cgm: Fhir) -> None:
    assert device_status(search(cgm)) == ["active"]
    send(cgm, reading(240, 120, B), device=B)  # a newer sensor, hours after the range
    bundle = search(cgm)
    assert device_status(bundle) == ["inactive"]
    assert [m["status"] for m in matches(bundle)] == ["final"]


def test_time_alone_is_bounded_by_the_maximum_age(cgm: Fhir) -> None:
    assert device_status(search(cgm)) == ["active"]
    cgm.clock.now = at(52 + 45)  # past Delay-From-Real-Time, no data change
    assert device_status(search(cgm)) == ["unknown"]
    cgm.clock.now = at(52)  # a clock going back never revives a newer answer
    assert device_status(search(cgm)) == ["active"]


def test_paging_links_are_those_of_the_exact_query(cgm: Fhir) -> None:
    send(cgm, *(reading(m, 150) for m in range(60, 240, 5)))
    cgm.clock.now = at(242)
    path = "/Observation?code=99504-3&_count=2&_sort=date"
    first = search(cgm, path)
    again = search(cgm, path)
    link = {x["relation"]: x["url"] for x in again["link"]}
    assert link == {x["relation"]: x["url"] for x in first["link"]}
    assert link["self"].endswith(path.removeprefix("/Observation"))
    page2 = search(cgm, "/Observation?" + link["next"].split("?", 1)[1])
    ids = [m["id"] for m in matches(first) + matches(page2)]
    assert len(set(ids)) == 4
    # Another order of the same parameters is its own answer (its links repeat its order).
    other = search(cgm, "/Observation?_sort=date&_count=2&code=99504-3")
    assert [m["id"] for m in matches(other)] == ids[:2]
    assert next(x["url"] for x in other["link"] if x["relation"] == "self").endswith(
        "?_sort=date&_count=2&code=99504-3")


def test_scopes_and_formats_have_answers_of_their_own(cgm: Fhir) -> None:
    full = search(cgm)
    assert included(full)
    narrow = cgm.bundle(HOUR, token="t-cgm-only")  # no Device/DeviceMetric scopes
    assert matches(narrow) and not included(narrow)
    xml = cgm.get(HOUR + "&_format=xml")
    assert xml.status_code == 200 and "<Bundle" in xml.text
    before = hits(cgm)
    again = cgm.get(HOUR + "&_format=xml")
    assert hits(cgm) == before + 1

    def bundle_id(text: str) -> str:
        return text.split("<Bundle", 1)[1].split('<id value="', 1)[1].split('"', 1)[0]

    assert bundle_id(again.text) != bundle_id(xml.text)
    assert again.text.replace(bundle_id(again.text), "") == xml.text.replace(
        bundle_id(xml.text), "")


def test_searches_with_warnings_are_answered_but_not_kept(cgm: Fhir) -> None:
    path = "/Observation?code=99504-3,http://loinc.org|0000-0"
    first = cgm.bundle(path)
    before = hits(cgm)
    second = cgm.bundle(path)
    assert hits(cgm) == before
    assert matches(second) == matches(first)


def test_the_cache_switched_off(cgm: Fhir) -> None:
    with make_fhir(cgm.store, cgm.clock.now,
                   HddtSettings(rate_limit_per_minute=None, response_cache_bytes=0)) as off:
        assert off.app.state.hddt.answers.cache is None
        assert data(search(off)) == data(search(cgm))


def answer(size: int) -> KeptAnswer:
    return KeptAnswer((), T0, at(1), b"x" * size, b"", size)


def test_the_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    cache = ResponseCache(max_bytes=1000)
    cache.put("a", answer(400))
    cache.put("b", answer(400))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", answer(400))
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.bytes == 800 and cache.evictions == 1
    cache.put("big", answer(1001))  # larger than the whole cache: not kept
    assert cache.get("big") is None and len(cache) == 2
    cache.put("a", answer(100))  # replacing an entry releases its bytes
    assert cache.bytes == 500


def test_bad_cache_settings_are_refused() -> None:
    with pytest.raises(SettingsError, match="response cache"):
        HddtSettings(response_cache_bytes=-1)
    with pytest.raises(SettingsError, match="response cache"):
        HddtSettings(response_cache_max_age_s=-0.5)
    with pytest.raises(SettingsError, match="response_cache_check_connections"):
        HddtSettings(response_cache_check_connections=-1)


def test_the_fingerprint_changes_with_rows_in_the_range_only(cgm: Fhir) -> None:
    from bridge.hddt import data as hddt_data

    def fingerprint() -> tuple[Any, ...]:
        with cgm.store.read() as conn:
            return hddt_data.search_fingerprint(conn, "p-1", ["cgm_readings"], at(0), at(30))

    first = fingerprint()
    assert json.loads(first[0])[0] == 6  # readings at 0, 5, ... 25
    with cgm.store.read() as conn:
        (device,) = hddt_data.patient_devices(conn, "p-1")
    assert (device.first_cgm, device.last_cgm) == (at(0), at(50))
    send(cgm, reading(12, 90))
    second = fingerprint()
    assert json.loads(second[0])[0] == 7 and second[1] == first[1]  # same device edges
    send(cgm, reading(56, 90))  # after the range: the device's newest reading changes
    third = fingerprint()
    assert third[0] == second[0] and third[1] != second[1]


def test_concurrent_requests_share_one_check_and_a_cancelled_one_does_not_stop_it(
        cgm: Fhir) -> None:
    answers = cgm.app.state.hddt.answers
    if answers.loop_reads is None:
        return  # SQLite: checked on the loop's own read connection, one at a time
    search(cgm)  # kept
    query = parse_qsl(HOUR.split("?", 1)[1], keep_blank_values=True)
    s = cgm.app.state.hddt.observation_search(query)
    g = GRANTS["t-all"]

    async def burst() -> list[bytes | None]:
        first = asyncio.ensure_future(answers.kept_on_loop(g, s, query, variant=("json", False)))
        rest = [asyncio.ensure_future(answers.kept_on_loop(g, s, query,
                                                           variant=("json", False)))
                for _ in range(15)]
        await asyncio.sleep(0)  # every request is waiting for the same check
        first.cancel()  # its client went away
        with contextlib.suppress(asyncio.CancelledError):
            await first
        return list(await asyncio.gather(*rest))

    before_shared, before_hits = answers.shared_checks, hits(cgm)
    bodies = [b for b in asyncio.run(burst()) if b is not None]
    assert len(bodies) == 15
    assert {json.loads(b)["entry"][0]["resource"]["valueSampledData"]["data"]
            for b in bodies} == set(data(search(cgm))[:1])
    assert answers.shared_checks - before_shared == 15  # one query answered all 16
    assert hits(cgm) >= before_hits + 15
    assert not answers._checks  # nothing left behind

    # A request that starts after a commit gets a check that starts after it too.
    send(cgm, reading(55, 99))

    async def after() -> bytes | None:
        body: bytes | None = await answers.kept_on_loop(g, s, query, variant=("json", False))
        return body

    assert asyncio.run(after()) is None  # the kept answer no longer holds
    assert data(search(cgm))[0].endswith(" 99")
