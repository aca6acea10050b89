"""The MQTT ingest: checks, batching, ack after commit, exactly-once storage.

Unit tests drive :func:`classify` and :class:`IngestProcessor` directly. The evidence tests
run REAL servers: a private Mosquitto 2 (MQTT 5, persistence, wide queues) and a private
PostgreSQL (tests/backend/postgres.py):

1. three workers on one shared subscription store every record exactly once and each
   handles part of the load;
2. worker processes (``python -m … backend run``) survive a SIGKILL of one worker, a broker
   restart and a database restart: stored records = records published, no duplicates;
3. hostile and malformed payloads end as dead letters with their reasons while valid
   traffic keeps flowing;
4. the embedded SQLite store works with the same ingest.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bridge.backend import registry
from bridge.backend.config import BackendConfig, IngestConfig, parse_config
from bridge.backend.ingest import (
    DeviceStatusArrived,
    GatewayStatusArrived,
    Ignored,
    Inbound,
    IngestProcessor,
    IngestWorker,
    RecordsArrived,
    Rejected,
    classify,
    subscription_filters,
)
from bridge.backend.store import (
    DATA_TABLES,
    Store,
    cgm_readings,
    count_records,
    dead_letters,
    devices,
)
from bridge.messages import (
    DeviceState,
    DeviceStatus,
    GatewayState,
    GatewayStatus,
    RecordsMessage,
    device_status_topic,
    gateway_status_topic,
    records_topic,
)
from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    CgmReading,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
)
from tests.backend.broker import Publisher, cgm_batch, ingest_broker, mosquitto_available
from tests.backend.postgres import PostgresServer, postgres_available, shared_server

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)

needs_mosquitto = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
needs_postgres = pytest.mark.skipif(not postgres_available(),
                                    reason="PostgreSQL server binaries not installed")


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest) -> PostgresServer:
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not installed")
    return shared_server(request.config)


@pytest.fixture
def pg_url(pg: PostgresServer) -> str:
    if not pg.running:
        pg.start()
    return pg.url(pg.create_database())


@pytest.fixture
def sqlite_store() -> Iterator[Store]:
    with Store.open("sqlite://") as store:
        yield store


def provision(store: Store, *pairs: tuple[str, str]) -> None:
    """Provision each (gateway, patient) pair."""
    with store.begin() as conn:
        for gateway, patient in pairs:
            if registry.get_patient(conn, patient) is None:
                registry.provision_patient(conn, patient, actor="test")
            registry.provision_gateway(conn, gateway, patient_id=patient, actor="test")


def rows_unlike_their_device(store: Store) -> list[tuple[str, str]]:
    """(table, key) of data rows whose patient or gateway copy differs from their device's
    row: the data tables hold no foreign key of their own for these copies (migration 0003),
    so the ingest must write them as the device has them."""
    out: list[tuple[str, str]] = []
    with store.begin() as conn:
        for table in DATA_TABLES:
            out += [(table.name, key) for key in conn.execute(
                sa.select(table.c.key).join(devices, devices.c.id == table.c.device_id)
                .where((table.c.patient_id != devices.c.patient_id)
                       | (table.c.gateway_id != devices.c.gateway_id)
                       | devices.c.patient_id.is_(None) | devices.c.gateway_id.is_(None)))
                .scalars()]
    return out


def inbound(topic: str, payload: bytes, at: dt.datetime = NOW) -> Inbound:
    return Inbound(topic, payload, at)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def make_config(store_url: str, port: int, *, client_id: str = "ingest-1",
                **ingest: Any) -> BackendConfig:
    return parse_config({
        "store": {"url": store_url, "dead_letter_max_bytes": 4096},
        "broker": {"url": f"mqtt://127.0.0.1:{port}", "client_id": client_id,
                   "receive_maximum": 500, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
                   "session_expiry_s": 3600},
        "ingest": {"batch_records": 200, "batch_ms": 50, "retry_min_s": 0.05,
                   "retry_max_s": 0.5} | ingest,
    }, "test.toml")


# --- payloads --------------------------------------------------------------------------------

def doc(gateway: str = "gw-a", device: str = "cgm-a", first: int = 0,
        count: int = 2) -> dict[str, Any]:
    payload, _ = cgm_batch(gateway, device, first, count)
    loaded: dict[str, Any] = json.loads(payload)
    return loaded


def dump(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def _forged_key() -> bytes:
    d = doc()
    d["records"][0]["key"] = "cgm-a|cgm-glucose|seq:999"
    return dump(d)


def _other_gateway() -> bytes:
    return cgm_batch("gw-b", "cgm-b", 0, 2)[0]


def _device_id(value: str) -> bytes:
    d = doc()
    d["device"]["device_id"] = value
    for r in d["records"]:
        r["device_id"] = value
        r["key"] = f"{value}|cgm-glucose|seq:{r['sequence']}"
    return dump(d)


def _device_field(name: str, value: str) -> bytes:
    d = doc()
    d["device"][name] = value
    return dump(d)


def _oversized() -> bytes:
    d = doc()
    d["padding"] = "x" * 300_000
    return dump(d)


def _version(v: object) -> bytes:
    d = doc()
    d["version"] = v
    return dump(d)


def _deep_in_record() -> bytes:
    d = doc()
    d["records"][0]["glucose_mg_dl"] = "@@"
    return dump(d).replace(b'"@@"', b"[" * 500 + b"]" * 500)


def _nan_trend() -> bytes:
    d = doc()
    d["records"][0]["trend_mg_dl_per_min"] = float("nan")
    return dump(d)


def _huge_sequence() -> bytes:
    d = doc()
    d["records"][0]["sequence"] = 10**30
    d["records"][0]["key"] = f"cgm-a|cgm-glucose|seq:{10**30}"
    return dump(d)


def _records_not_list() -> bytes:
    d = doc()
    d["records"] = {"0": d["records"][0]}
    return dump(d)


RECORDS_TOPIC_A = records_topic("gw-a")

#: (name, topic, payload, reason): each must become a dead letter with this reason.
HOSTILE: list[tuple[str, str, bytes, str]] = [
    ("malformed-json", RECORDS_TOPIC_A, b'{"schema": "hddt-bridge.records", "version": 1,',
     "not-json"),
    ("binary-garbage", RECORDS_TOPIC_A, bytes(range(256)), "not-json"),
    ("oversized", RECORDS_TOPIC_A, _oversized(), "oversized"),
    ("wrong-version", RECORDS_TOPIC_A, _version(2), "unsupported-version"),
    ("version-as-text", RECORDS_TOPIC_A, _version("1"), "unsupported-version"),
    ("wrong-schema", RECORDS_TOPIC_A,
     GatewayStatus("gw-a", GatewayState.ONLINE, NOW).to_bytes(), "wrong-schema"),
    ("not-an-object", RECORDS_TOPIC_A, b"[1, 2, 3]", "invalid"),
    ("records-not-a-list", RECORDS_TOPIC_A, _records_not_list(), "invalid"),
    ("forged-key", RECORDS_TOPIC_A, _forged_key(), "invalid"),
    ("other-gateways-records", RECORDS_TOPIC_A, _other_gateway(), "gateway-mismatch"),
    ("very-long-device-id", RECORDS_TOPIC_A, _device_id("d" * 5000), "invalid"),
    ("nul-in-device-id", RECORDS_TOPIC_A, _device_id("cgm\x00a"), "invalid"),
    ("nul-in-manufacturer", RECORDS_TOPIC_A, _device_field("manufacturer", "Evil\x00Corp"),
     "hostile-string"),
    ("very-long-model", RECORDS_TOPIC_A, _device_field("model", "M" * 20_000),
     "hostile-string"),
    ("deeply-nested-json", RECORDS_TOPIC_A, b"[" * 200_000, "too-deep"),
    ("nesting-inside-a-record", RECORDS_TOPIC_A, _deep_in_record(), "invalid"),
    ("nan-number", RECORDS_TOPIC_A, _nan_trend(), "out-of-range"),
    ("integer-beyond-64-bits", RECORDS_TOPIC_A, _huge_sequence(), "out-of-range"),
    ("gateway-status-of-another", gateway_status_topic("gw-a"),
     GatewayStatus("gw-b", GatewayState.ONLINE, NOW).to_bytes(), "gateway-mismatch"),
    ("device-status-of-another", device_status_topic("gw-a", "cgm-a"),
     DeviceStatus("cgm-z", DeviceState.CONNECTED, NOW).to_bytes(), "device-mismatch"),
    ("topic-with-invalid-gateway", f"hddt/v1/gw/{'g' * 100}/records", dump(doc()),
     "invalid-topic"),
]


@pytest.mark.parametrize(("name", "topic", "payload", "reason"), HOSTILE,
                         ids=[h[0] for h in HOSTILE])
def test_classify_refuses_with_a_reason(name: str, topic: str, payload: bytes,
                                        reason: str) -> None:
    decision = classify(inbound(topic, payload))
    assert isinstance(decision, Rejected), decision
    assert decision.reason == reason, decision.detail
    assert decision.detail
    expected_gateway = None if reason == "invalid-topic" else "gw-a"
    assert decision.gateway_id == expected_gateway


def test_instants_beyond_the_calendar_are_refused_not_raised() -> None:
    d = doc()
    d["sent_at"] = "0001-01-01T00:00:00+05:00"  # before year 1 once moved to UTC
    decision = classify(inbound(RECORDS_TOPIC_A, dump(d)))
    assert isinstance(decision, Rejected) and decision.reason in ("out-of-range", "invalid")


def test_classify_accepts_the_contract() -> None:
    payload, keys = cgm_batch("gw-a", "cgm-a", 0, 3)
    d = classify(inbound(RECORDS_TOPIC_A, payload))
    assert isinstance(d, RecordsArrived) and d.gateway_id == "gw-a"
    assert {r.idempotency_key() for r in d.message.records} == keys
    g = classify(inbound(gateway_status_topic("gw-a"),
                         GatewayStatus("gw-a", GatewayState.ONLINE, NOW, "1.0").to_bytes()))
    assert isinstance(g, GatewayStatusArrived)
    s = classify(inbound(device_status_topic("gw-a", "cgm-a"),
                         DeviceStatus("cgm-a", DeviceState.CONNECTED, NOW).to_bytes()))
    assert isinstance(s, DeviceStatusArrived)
    # Clearing a retained status is not an error.
    assert isinstance(classify(inbound(gateway_status_topic("gw-a"), b"")), Ignored)
    # A payload below the contract's limit but above a configured one.
    assert classify(inbound(RECORDS_TOPIC_A, payload),
                    max_payload_bytes=len(payload) - 1) == Rejected(
        inbound(RECORDS_TOPIC_A, payload), "oversized", f"{len(payload)} bytes > "
                                                         f"{len(payload) - 1}", "gw-a")


def test_subscriptions_are_shared_unless_no_group() -> None:
    assert subscription_filters("ingest") == [
        "$share/ingest/hddt/v1/gw/+/records", "$share/ingest/hddt/v1/gw/+/status",
        "$share/ingest/hddt/v1/gw/+/devices/+/status"]
    assert subscription_filters("", status_topics=False) == ["hddt/v1/gw/+/records"]


# --- the processor ---------------------------------------------------------------------------

def test_batch_stores_each_record_once(sqlite_store: Store) -> None:
    provision(sqlite_store, ("gw-a", "p-a"))
    p = IngestProcessor(sqlite_store)
    first, keys1 = cgm_batch("gw-a", "cgm-a", 0, 10)
    overlap, keys2 = cgm_batch("gw-a", "cgm-a", 5, 10)
    out = p.ingest([inbound(RECORDS_TOPIC_A, first), inbound(RECORDS_TOPIC_A, first),
                    inbound(RECORDS_TOPIC_A, overlap)])
    assert (out.messages, out.records, out.inserted, out.duplicates) == (3, 30, 15, 15)
    again = p.ingest([inbound(RECORDS_TOPIC_A, overlap)])
    assert (again.inserted, again.duplicates) == (0, 10)
    rows = sqlite_store.records(patient_id="p-a")
    assert {r.key for r in rows} == keys1 | keys2 and len(rows) == 15
    assert all(r.gateway_id == "gw-a" and r.loinc == "99504-3" for r in rows)
    assert rows[0].record == CgmReading(device_id="cgm-a", time=rows[0].record.time,
                                        sequence=0, glucose_mg_dl=80.0)


def test_every_record_kind_lands_in_its_table(sqlite_store: Store) -> None:
    provision(sqlite_store, ("gw-a", "p-a"))
    meter = DeviceInfo(device_id="meter-a", kind=DeviceKind.BLOOD_GLUCOSE_METER)
    pump = DeviceInfo(device_id="pump-a", kind=DeviceKind.INSULIN_PUMP)
    from bridge.records import AnnunciationEvent, BolusPhase

    messages = [
        RecordsMessage("gw-a", meter, (BloodGlucoseReading(
            device_id="meter-a", time=NOW, sequence=1, glucose_mg_dl=123.0),)),
        RecordsMessage("gw-a", pump, (
            InsulinBolus(device_id="pump-a", time=NOW, sequence=7, bolus_id=3,
                         phase=BolusPhase.DELIVERED, fast_iu=2.5),
            AnnunciationEvent(device_id="pump-a", time=NOW, sequence=8,
                              annunciation=Annunciation.RESERVOIR_LOW))),
    ]
    out = IngestProcessor(sqlite_store).ingest(
        [inbound(RECORDS_TOPIC_A, m.to_bytes()) for m in messages])
    assert out.inserted == 3
    assert sqlite_store.counts() == {"glucose_readings": 1, "cgm_readings": 0,
                                     "insulin_events": 1, "annunciations": 1}
    (bolus,) = sqlite_store.records(patient_id="p-a", device_id="pump-a",
                                    kinds=[InsulinBolus.KIND])
    assert (bolus.value, bolus.unit, bolus.table) == (2.5, "[iU]", "insulin_events")
    (bg,) = sqlite_store.records(patient_id="p-a", loinc="41653-7")
    assert (bg.value, bg.unit) == (123.0, "mg/dL")


def test_unknown_gateway_is_refused_unless_auto_provisioned(sqlite_store: Store) -> None:
    payload, keys = cgm_batch("gw-new", "cgm-n", 0, 3)
    out = IngestProcessor(sqlite_store).ingest([inbound(records_topic("gw-new"), payload)])
    assert out.inserted == 0 and out.dead_letters == {"unknown-gateway": 1}
    (letter,) = sqlite_store.dead_letters()
    assert (letter.gateway_id, letter.payload) == ("gw-new", payload)

    auto = IngestProcessor(sqlite_store, IngestConfig(auto_provision=True))
    assert auto.ingest([inbound(records_topic("gw-new"), payload)]).inserted == 3
    with sqlite_store.begin() as conn:
        gw = registry.get_gateway(conn, "gw-new")
        assert gw is not None and gw.auto_provisioned and gw.patient_id == "auto-gw-new"
        device = registry.get_device(conn, "cgm-n")
        assert device is not None and device.patient_id == "auto-gw-new"
    assert {r.key for r in sqlite_store.records(patient_id="auto-gw-new")} == keys
    assert [e.action for e in sqlite_store.audit_entries(patient_id="auto-gw-new")] == [
        "auto-provision-gateway"]


def test_devices_follow_their_gateways_patient(sqlite_store: Store) -> None:
    provision(sqlite_store, ("gw-a", "p-a"), ("gw-b", "p-b"))
    with sqlite_store.begin() as conn:
        registry.assign_device(conn, "cgm-b", patient_id="p-b", actor="test")
    p = IngestProcessor(sqlite_store)
    own, _ = cgm_batch("gw-a", "cgm-a", 0, 2)
    foreign, _ = cgm_batch("gw-a", "cgm-b", 0, 2)
    out = p.ingest([inbound(RECORDS_TOPIC_A, own), inbound(RECORDS_TOPIC_A, foreign)])
    assert out.inserted == 2 and out.dead_letters == {"device-assigned-elsewhere": 1}
    with sqlite_store.begin() as conn:
        device = registry.get_device(conn, "cgm-a")
        assert device is not None
        assert (device.patient_id, device.gateway_id, device.kind) == ("p-a", "gw-a", "cgm")
        assert device.manufacturer == "Example Medical" and device.last_contact == NOW
    assert sqlite_store.records(patient_id="p-b") == []
    # The same device from its own patient's gateway is accepted.
    from_b, _ = cgm_batch("gw-b", "cgm-b", 0, 2)
    assert p.ingest([inbound(records_topic("gw-b"), from_b)]).inserted == 2
    assert sum(sqlite_store.counts().values()) == 4
    assert rows_unlike_their_device(sqlite_store) == []


def test_cgm_calibration_state_follows_the_newest_reading(sqlite_store: Store) -> None:
    provision(sqlite_store, ("gw-a", "p-a"))
    info = DeviceInfo(device_id="cgm-a", kind=DeviceKind.CGM)

    def reading(minute: int, *flags: Annunciation) -> CgmReading:
        return CgmReading(device_id="cgm-a", time=NOW + dt.timedelta(minutes=minute),
                          sequence=minute, glucose_mg_dl=100.0, annunciations=frozenset(flags))

    def state() -> str | None:
        with sqlite_store.begin() as conn:
            device = registry.get_device(conn, "cgm-a")
            return None if device is None else device.calibration_state

    p = IngestProcessor(sqlite_store)
    p.ingest([inbound(RECORDS_TOPIC_A, RecordsMessage("gw-a", info, (
        reading(0), reading(5, Annunciation.CALIBRATION_REQUIRED))).to_bytes())])
    assert state() == "calibration-required"
    # An older reading arriving late does not override the newer state.
    p.ingest([inbound(RECORDS_TOPIC_A, RecordsMessage("gw-a", info, (reading(1),)).to_bytes())])
    assert state() == "calibration-required"
    p.ingest([inbound(RECORDS_TOPIC_A,
                      RecordsMessage("gw-a", info, (reading(10),)).to_bytes())])
    assert state() == "calibrated"


def test_status_topics_update_the_registry(sqlite_store: Store) -> None:
    provision(sqlite_store, ("gw-a", "p-a"))
    p = IngestProcessor(sqlite_store)
    early, late = NOW, NOW + dt.timedelta(minutes=1)
    p.ingest([
        inbound(gateway_status_topic("gw-a"),
                GatewayStatus("gw-a", GatewayState.ONLINE, late, "1.2.3").to_bytes()),
        inbound(device_status_topic("gw-a", "cgm-a"),
                DeviceStatus("cgm-a", DeviceState.ERROR, late, records_synced=5, errors=1,
                             last_error="link lost\x00").to_bytes(), late),
    ])
    # A retained status redelivered later but older than the stored one changes nothing.
    p.ingest([inbound(gateway_status_topic("gw-a"),
                      GatewayStatus("gw-a", GatewayState.OFFLINE, early).to_bytes())])
    with sqlite_store.begin() as conn:
        gw = registry.get_gateway(conn, "gw-a")
        assert gw is not None
        assert (gw.status, gw.status_at, gw.agent_version) == ("online", late, "1.2.3")
        assert gw.last_contact == late
        row = conn.execute(sa.select(devices).where(devices.c.id == "cgm-a")).mappings().one()
    assert (row["status"], row["records_synced"], row["errors"]) == ("error", 5, 1)
    assert row["last_error"] == "link lost\\x00" and row["patient_id"] == "p-a"


def test_dead_letters_keep_a_bounded_copy(sqlite_store: Store) -> None:
    p = IngestProcessor(sqlite_store, dead_letter_max_bytes=1000)
    payload = _oversized()
    p.ingest([inbound(RECORDS_TOPIC_A, payload)])
    (letter,) = sqlite_store.dead_letters()
    assert letter.reason == "oversized" and letter.truncated
    assert letter.payload == payload[:1000] and letter.payload_size == len(payload)
    assert letter.topic == RECORDS_TOPIC_A and letter.received_at == NOW


@needs_postgres
def test_data_the_database_refuses_is_isolated(pg_url: str) -> None:
    """A message that passes the checks but that PostgreSQL refuses (here: a manufacturer
    longer than its column, which only a direct caller can hand in) becomes a dead letter
    of its own; the rest of the batch is stored."""
    with Store.open(pg_url) as store:
        provision(store, ("gw-a", "p-a"))
        good, keys = cgm_batch("gw-a", "cgm-a", 0, 3)
        bad_message = RecordsMessage("gw-a", DeviceInfo(
            device_id="cgm-x", kind=DeviceKind.CGM, manufacturer="m" * 500), ())
        p = IngestProcessor(store)
        decisions = [p.classify(inbound(RECORDS_TOPIC_A, good)),
                     RecordsArrived(inbound(RECORDS_TOPIC_A, b"{}"), "gw-a", bad_message)]
        out = p.commit(decisions)
        assert out.inserted == 3 and out.dead_letters == {"store-rejected": 1}
        assert {r.key for r in store.records(patient_id="p-a")} == keys
        (letter,) = store.dead_letters()
        assert letter.reason == "store-rejected" and "too long" in letter.detail


# --- evidence on real servers ---------------------------------------------------------------

def _stored_keys(store: Store) -> list[str]:
    with store.begin() as conn:
        return [k for (k,) in conn.execute(sa.select(cgm_readings.c.key))]


@needs_mosquitto
def test_three_workers_split_the_load_and_store_once(pg_url: str, tmp_path: Path) -> None:
    with ingest_broker(tmp_path / "mq") as broker, contextlib.ExitStack() as stack:
        stores = [stack.enter_context(Store.open(pg_url)) for _ in range(3)]
        workers = [IngestWorker(make_config(pg_url, broker.port, client_id=f"ingest-{i}"),
                                store) for i, store in enumerate(stores)]
        store = stores[0]
        provision(store, ("gw-a", "p-a"), ("gw-b", "p-b"))
        try:
            for w in workers:
                w.start()
            assert all(w.wait_subscribed(10) for w in workers)
            expected: set[str] = set()
            with Publisher(broker.port) as pub:
                for i in range(120):
                    gw = "gw-a" if i % 2 else "gw-b"
                    payload, keys = cgm_batch(gw, f"cgm-{gw}", i * 10, 10)
                    expected |= keys
                    pub.records(gw, payload)
                    if i % 6 == 0:  # QoS 1 redelivery, as after a lost PUBACK
                        pub.records(gw, payload)
                assert pub.wait_acked() == []
            wait_for(lambda: store.counts()["cgm_readings"] >= len(expected), 30,
                     "all records stored")
            wait_for(lambda: sum(w.stats.messages for w in workers) == 140, 10,
                     "every message handled")
        finally:
            for w in workers:
                w.stop()
        stored = _stored_keys(store)
        assert len(stored) == len(set(stored)) == len(expected) == 1200
        assert set(stored) == expected
        handled = [w.stats.messages for w in workers]
        assert all(n > 0 for n in handled), handled
        assert sum(w.stats.inserted for w in workers) == 1200
        assert sum(w.stats.duplicates for w in workers) == 200
        assert sum(w.stats.acked for w in workers) == 140
        status = store.status()
        assert {g.gateway_id: g.devices for g in status.gateways} == {"gw-a": 1, "gw-b": 1}
        assert rows_unlike_their_device(store) == []


@needs_mosquitto
def test_nothing_is_acknowledged_before_its_commit(pg_url: str, tmp_path: Path) -> None:
    """A worker whose commits fail acknowledges nothing: after it stops, the broker
    delivers every message again to the same session, and all are stored."""
    with ingest_broker(tmp_path / "mq") as broker, Store.open(pg_url) as store:
        config = make_config(pg_url, broker.port, client_id="ingest-ack")
        failing = IngestWorker(config, store)
        provision(store, ("gw-a", "p-a"))
        attempts = collections.Counter[str]()

        def refuse(decisions: Any) -> Any:
            attempts["commit"] += 1
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is down"))

        failing.processor.commit = refuse  # type: ignore[method-assign]
        failing.start()
        assert failing.wait_subscribed(10)
        expected: set[str] = set()
        with Publisher(broker.port) as pub:
            for i in range(10):
                payload, keys = cgm_batch("gw-a", "cgm-a", i * 5, 5)
                expected |= keys
                pub.records("gw-a", payload)
            assert pub.wait_acked() == []
        wait_for(lambda: attempts["commit"] >= 2, 10, "commit attempts")
        failing.stop(timeout_s=0.5)
        assert failing.stats.acked == 0 and failing.stats.messages == 0
        assert store.counts()["cgm_readings"] == 0

        again = IngestWorker(config, store)
        again.start()
        try:
            wait_for(lambda: again.stats.inserted == 50, 20, "redelivered messages stored")
        finally:
            again.stop()
        assert set(_stored_keys(store)) == expected


def _worker_command() -> list[str]:
    """``python -m bridge backend run`` once the main command has ``backend``; until then the
    backend's own entry point, which has the same subcommands."""
    from bridge.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["backend", "run", "--config", "x.toml"])
    except SystemExit:
        return [sys.executable, "-m", "bridge.backend.cli", "backend", "run"]
    return [sys.executable, "-m", "bridge", "backend", "run"]


class WorkerProcess:
    def __init__(self, config: Path, client_id: str, logdir: Path) -> None:
        self.client_id = client_id
        self.log = logdir / f"{client_id}.log"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*_worker_command(), "--config", str(self.config), "--client-id",
                 self.client_id, "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def subscriptions(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"{self.client_id} subscribed to")

    def wait_subscribed(self, count: int, timeout_s: float = 20.0) -> None:
        wait_for(lambda: self.subscriptions() >= count, timeout_s,
                 f"{self.client_id} to subscribe (log: {self.log.read_text()[-2000:]})")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@needs_mosquitto
def test_crashes_and_restarts_lose_and_double_nothing(pg: PostgresServer, pg_url: str,
                                                      tmp_path: Path) -> None:
    """SIGKILL of one of three worker processes mid-stream, then a broker restart, then a
    PostgreSQL restart, then the killed worker back: stored records = published records,
    each once."""
    with ingest_broker(tmp_path / "mq") as broker:
        config = tmp_path / "backend.toml"
        config.write_text(f"""
[store]
url = "{pg_url}"
[broker]
url = "mqtt://127.0.0.1:{broker.port}"
receive_maximum = 200
session_expiry_s = 3600
reconnect_min_s = 0.05
reconnect_max_s = 0.5
[ingest]
batch_records = 100
batch_ms = 50
retry_min_s = 0.05
retry_max_s = 0.5
""", encoding="utf-8")
        with Store.open(pg_url) as store:
            provision(store, ("gw-a", "p-a"), ("gw-b", "p-b"))
        workers = [WorkerProcess(config, f"ingest-{i}", tmp_path) for i in range(3)]
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.wait_subscribed(1)
            expected: set[str] = set()
            total = 300
            with Publisher(broker.port) as pub:
                for i in range(total):
                    gw = "gw-a" if i % 2 else "gw-b"
                    payload, keys = cgm_batch(gw, f"cgm-{gw}", i * 5, 5)
                    expected |= keys
                    pub.records(gw, payload)
                    time.sleep(0.004)
                    if i == total // 4:
                        workers[1].kill()
                    elif i == total // 2:
                        broker.stop()
                        time.sleep(0.3)
                        broker.start()
                    elif i == 3 * total // 4:
                        pg.stop()
                        time.sleep(0.3)
                        pg.start()
                workers[1].start()
                workers[1].wait_subscribed(1)
                resent = pub.republish_unacked(timeout_s=30)
                assert pub.wait_acked() == []
            with Store.open(pg_url) as store:
                def done() -> bool:
                    return store.counts()["cgm_readings"] >= len(expected)

                try:
                    wait_for(done, 60, "every published record stored")
                finally:
                    stored = _stored_keys(store)
        finally:
            codes = [w.terminate() for w in workers]
        logs = "\n".join(w.log.read_text(errors="replace")[-3000:] for w in workers)
        assert len(stored) == len(set(stored)), "duplicate rows"
        assert set(stored) == expected, (len(expected - set(stored)), resent, logs)
        assert codes == [0, 0, 0], logs
        # The database restart was felt (a commit failed and was retried) and survived.
        assert "could not commit" in logs or any(
            "could not commit" in w.log.read_text(errors="replace") for w in workers)
        # The survivors saw the broker go away and came back (a reconnect, a new SUBACK).
        assert workers[0].subscriptions() >= 2 and workers[2].subscriptions() >= 2


@needs_mosquitto
def test_hostile_payloads_become_dead_letters_while_valid_ones_flow(
        pg_url: str, tmp_path: Path) -> None:
    with ingest_broker(tmp_path / "mq") as broker, Store.open(pg_url) as store:
        worker = IngestWorker(make_config(pg_url, broker.port, client_id="ingest-dl"), store)
        provision(store, ("gw-a", "p-a"), ("gw-b", "p-b"))
        with store.begin() as conn:
            registry.assign_device(conn, "cgm-taken", patient_id="p-b", actor="test")
        extra = [
            ("unknown-gateway", records_topic("gw-nobody"),
             cgm_batch("gw-nobody", "cgm-n", 0, 2)[0], "unknown-gateway"),
            ("device-of-another-patient", RECORDS_TOPIC_A,
             cgm_batch("gw-a", "cgm-taken", 0, 2)[0], "device-assigned-elsewhere"),
        ]
        cases = HOSTILE + extra
        worker.start()
        try:
            assert worker.wait_subscribed(10)
            expected: set[str] = set()
            with Publisher(broker.port) as pub:
                for i, (_name, topic, payload, _reason) in enumerate(cases):
                    good, keys = cgm_batch("gw-a", "cgm-a", i * 4, 4)
                    expected |= keys
                    pub.records("gw-a", good)
                    pub.publish(topic, payload)
                assert pub.wait_acked() == []

            def letters() -> int:
                with store.begin() as conn:
                    return int(conn.execute(sa.select(sa.func.count())
                                            .select_from(dead_letters)).scalar_one())

            wait_for(lambda: letters() >= len(cases)
                     and store.counts()["cgm_readings"] >= len(expected), 30,
                     "dead letters and valid records")
            assert worker._thread is not None and worker._thread.is_alive()
        finally:
            worker.stop()
        assert set(_stored_keys(store)) == expected
        got = collections.Counter(d.reason for d in store.dead_letters(limit=1000))
        assert got == collections.Counter(reason for *_, reason in cases)
        by_topic_payload = {(d.topic, d.payload_sha256): d for d in store.dead_letters(limit=1000)}
        import hashlib

        for name, topic, payload, reason in cases:
            letter = by_topic_payload[(topic, hashlib.sha256(payload).hexdigest())]
            assert letter.reason == reason, name
            assert letter.payload == payload[:4096] and letter.payload_size == len(payload)
            assert letter.truncated == (len(payload) > 4096)
            assert letter.received_at <= dt.datetime.now(dt.UTC)
            expected_gw = {"invalid-topic": None, "unknown-gateway": "gw-nobody"}.get(
                reason, "gw-a")
            assert letter.gateway_id == expected_gw, name
        assert worker.stats.acked == worker.stats.messages == len(cases) * 2


@needs_mosquitto
def test_embedded_sqlite_store_with_the_same_ingest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'backend.sqlite'}"
    with ingest_broker(tmp_path / "mq") as broker:
        # The worker opens (and creates) the store itself, as `backend run` does.
        worker = IngestWorker(make_config(url, broker.port, auto_provision=True))
        worker.start()
        try:
            assert worker.wait_subscribed(10)
            expected: set[str] = set()
            with Publisher(broker.port) as pub:
                for i in range(20):
                    payload, keys = cgm_batch("pi-demo", "cgm-demo", i * 10, 10)
                    expected |= keys
                    pub.records("pi-demo", payload)
                pub.publish(gateway_status_topic("pi-demo"),
                            GatewayStatus("pi-demo", GatewayState.ONLINE).to_bytes())
                pub.records("pi-demo", cgm_batch("pi-demo", "cgm-demo", 0, 10)[0])
                assert pub.wait_acked() == []
            wait_for(lambda: worker.stats.messages == 22, 20, "all messages")
        finally:
            worker.stop()
        with Store.open(url) as store:
            assert set(_stored_keys(store)) == expected
            with store.begin() as conn:
                assert count_records(conn)["cgm_readings"] == 200
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            assert mode == "wal"
            status = store.status()
            (gw,) = status.gateways
            assert (gw.gateway_id, gw.status, gw.auto_provisioned) == ("pi-demo", "online", True)


def test_worker_config_defaults_follow_the_contract() -> None:
    config = make_config("sqlite://", 1883)
    assert config.broker.protocol == "5" and config.broker.shared_group == "ingest"
    assert config.ingest.max_payload_bytes == 256 * 1024


@needs_mosquitto
def test_mqtt_311_worker_without_shared_subscription(tmp_path: Path) -> None:
    """The set-up for a broker with neither MQTT 5 nor shared subscriptions (the embedded
    demo broker): protocol 3.1.1, a plain subscription, one worker; still ack after commit."""
    config = parse_config({
        "store": {"path": "b.sqlite"},
        "broker": {"url": "mqtt://127.0.0.1:1", "protocol": "3.1.1", "shared_group": "",
                   "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "ingest": {"auto_provision": True, "batch_ms": 20}}, "t.toml", tmp_path)
    with ingest_broker(tmp_path / "mq") as broker:
        config = dataclasses.replace(config, broker=dataclasses.replace(config.broker,
                                                                        port=broker.port))
        worker = IngestWorker(config)
        worker.start()
        try:
            assert worker.wait_subscribed(10)
            assert worker.filters[0] == "hddt/v1/gw/+/records"
            with Publisher(broker.port) as pub:
                for i in range(5):
                    pub.records("pi-demo", cgm_batch("pi-demo", "cgm-d", i * 3, 3)[0])
                assert pub.wait_acked() == []
            wait_for(lambda: worker.stats.inserted == 15, 10, "records stored")
            assert worker.stats.acked == 5
        finally:
            worker.stop()
