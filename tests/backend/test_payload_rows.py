"""The canonical fast path (payload -> rows) against the full check.

The fast path may only accept what the full check accepts, with the very same rows; for
everything else :func:`classify` must reach the same decision and reason either way. Every
record kind is compared as the agent encodes it, then mutated payloads (missing, unknown and
retyped fields, other offsets, unsorted lists, hostile text, huge numbers) are run through
both paths.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.backend.ingest import Inbound, RecordsArrived, Rejected, classify
from bridge.backend.payload_rows import prepare_message, prepare_records
from bridge.backend.store import Store, cgm_readings, row_columns, write_rows
from bridge.messages import RecordsMessage, records_topic
from bridge.records import (
    Annunciation,
    AnnunciationEvent,
    AnnunciationStatus,
    BasalRateChange,
    BloodGlucoseReading,
    BolusPhase,
    BolusType,
    CgmReading,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
    MealContext,
    OperationalState,
    OperationalStateChange,
    ReservoirLevel,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyState,
    TherapyStateChange,
    TimeQuality,
    TotalDailyInsulin,
)
from tests.backend.postgres import PostgresServer, postgres_available, shared_server

T0 = dt.datetime(2027, 3, 1, 6, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2027, 3, 2, tzinfo=dt.UTC)
GW = "gw-a"
TOPIC = records_topic(GW)


def every_kind(device: str = "dev-1") -> tuple[Any, ...]:
    naive = dt.datetime(2027, 3, 1, 7, 0, 0, 123456)
    return (
        BloodGlucoseReading(device_id=device, time=T0, sequence=1, glucose_mg_dl=123.5,
                            meal=MealContext.FASTING, device_time=naive,
                            annunciations=frozenset({Annunciation.RESULT_TOO_HIGH,
                                                     Annunciation.BATTERY_LOW})),
        BloodGlucoseReading(device_id=device, time=T0, glucose_mg_dl=None),
        CgmReading(device_id=device, time=T0 + dt.timedelta(minutes=5), glucose_mg_dl=99.0,
                   trend_mg_dl_per_min=-1.5, quality_percent=100.0, session_start=T0,
                   time_offset_min=5,
                   annunciations=frozenset({Annunciation.CALIBRATION_REQUIRED}),
                   time_quality=frozenset({TimeQuality.IN_FUTURE,
                                           TimeQuality.DEVICE_CLOCK_CORRECTED})),
        CgmReading(device_id=device, time=T0 + dt.timedelta(minutes=5), sequence=7,
                   glucose_mg_dl=101.0),
        InsulinBolus(device_id=device, time=T0, sequence=3, bolus_id=9,
                     phase=BolusPhase.DELIVERED, bolus_type=BolusType.MULTIWAVE, fast_iu=1.5,
                     extended_iu=0.25, extended_duration_min=30),
        BasalRateChange(device_id=device, time=T0, sequence=4, rate_iu_per_h=0.8,
                        previous_rate_iu_per_h=None),
        TempBasalStart(device_id=device, time=T0, sequence=5,
                       temp_basal_type=TempBasalType.RELATIVE, value=120.0, duration_min=60),
        TempBasalStart(device_id=device, time=T0, sequence=6,
                       temp_basal_type=TempBasalType.ABSOLUTE, value=1.2, duration_min=60),
        TempBasalEnd(device_id=device, time=T0, device_time=naive, effective_duration_min=40,
                     canceled=True),
        TotalDailyInsulin(device_id=device, time=T0, sequence=8, day=dt.date(2027, 2, 28),
                          bolus_iu=20.5, basal_iu=18.25),
        ReservoirLevel(device_id=device, time=T0, sequence=9, remaining_iu=150.0),
        TherapyStateChange(device_id=device, time=T0, sequence=10, new_state=TherapyState.RUN,
                           previous_state=TherapyState.PAUSE),
        OperationalStateChange(device_id=device, time=T0, sequence=11,
                               new_state=OperationalState.READY),
        AnnunciationEvent(device_id=device, time=T0, sequence=12,
                          annunciation=Annunciation.OCCLUSION,
                          status=AnnunciationStatus.CONFIRMED, instance_id=4),
    )


def payload(records: tuple[Any, ...] | None = None, **device: Any) -> bytes:
    info = DeviceInfo(device_id="dev-1", kind=DeviceKind.INSULIN_PUMP, manufacturer="Example",
                      serial_number="SN-1", **device)
    return RecordsMessage(GW, info, records if records is not None else every_kind(),
                          sent_at=NOW).to_bytes()


def full(body: bytes) -> Any:
    return classify(Inbound(TOPIC, body, NOW), fast=False)


def test_every_record_kind_gives_the_full_checks_rows() -> None:
    body = payload()
    fast = prepare_records(body, GW)
    assert fast is not None, "the agent's own encoding must take the fast path"
    assert fast == prepare_message(RecordsMessage.from_bytes(body))
    assert len(fast.rows) == len(every_kind())
    decision = classify(Inbound(TOPIC, body, NOW))
    assert isinstance(decision, RecordsArrived) and decision.prepared == fast
    # The decoded message is still there for whoever asks.
    assert decision.message.records == every_kind()


def test_calibration_is_the_last_of_the_newest_readings() -> None:
    a = CgmReading(device_id="dev-1", time=T0, sequence=1, glucose_mg_dl=90.0,
                   annunciations=frozenset({Annunciation.CALIBRATION_REQUIRED}))
    b = CgmReading(device_id="dev-1", time=T0 + dt.timedelta(minutes=5), sequence=2,
                   glucose_mg_dl=90.0)
    c = CgmReading(device_id="dev-1", time=T0 + dt.timedelta(minutes=5), sequence=3,
                   glucose_mg_dl=90.0,
                   annunciations=frozenset({Annunciation.CALIBRATION_REQUIRED}))
    for records, state in (((a, b), "calibrated"), ((b, c, a), "calibration-required"),
                           ((c, b), "calibrated")):
        fast = prepare_records(payload(records), GW)
        assert fast is not None and fast.calibration == (b.time, state)


# --- mutations: both paths must agree -------------------------------------------------------

ODD_VALUES: list[Any] = [
    None, True, 0, -1, 1, 2**63, -(2**63) - 1, 1.5, -0.5, float("nan"), float("inf"), "",
    "x", "a\x00b", "é" * 200, [], ["calibration-required"], {}, "2027-03-01T06:00:00Z",
    "2027-03-01T07:00:00+01:00", "2027-03-01T06:00:00", "2027-03-01T06:00:00.5+00:00",
    "2027-03-01", "falling", "relative", "cgm-glucose", "dev-1",
]


def _mutate(doc: dict[str, Any], *, where: str, index: int, field: str, value: Any,
            action: str) -> None:
    if where == "envelope":
        target = doc
    elif where == "device":
        target = doc["device"]
    else:
        target = doc["records"][index % len(doc["records"])]
    names = sorted(target)
    name = field if action == "add" else names[(index * 7 + len(field)) % len(names)]
    if action == "drop":
        target.pop(name, None)
    elif action in {"set", "add"}:
        target[name] = value
    elif action == "shuffle" and isinstance(target.get(name), list):
        target[name] = list(reversed(target[name])) + target[name][:1]


@settings(max_examples=400, derandomize=True, deadline=None)
@given(where=st.sampled_from(["envelope", "device", "record"]),
       index=st.integers(0, 20),
       field=st.sampled_from(["kind", "time", "extra", "key", "device_id", "sequence"]),
       value=st.sampled_from(ODD_VALUES),
       action=st.sampled_from(["drop", "set", "add", "shuffle"]))
def test_mutated_payloads_reach_the_same_decision(where: str, index: int, field: str,
                                                  value: Any, action: str) -> None:
    doc = json.loads(payload())
    _mutate(doc, where=where, index=index, field=field, value=copy.deepcopy(value),
            action=action)
    body = json.dumps(doc).encode()
    slow = full(body)
    quick = classify(Inbound(TOPIC, body, NOW))
    assert type(quick) is type(slow)
    if isinstance(slow, Rejected):
        assert isinstance(quick, Rejected)
        assert (quick.reason, quick.detail) == (slow.reason, slow.detail)
    fast = prepare_records(body, GW)
    if fast is not None:
        assert isinstance(slow, RecordsArrived), slow
        assert fast == slow.prepared


@pytest.mark.parametrize("change", [
    lambda r: r.update(glucose_mg_dl=100),                     # an integer where a number is
    lambda r: r.update(time="2027-03-01T07:05:00+01:00"),      # another offset, same instant
    lambda r: r.update(time_quality=["in-future", "clock-jump"]),  # unsorted
    lambda r: r.pop("quality_percent"),                        # a default left out
    lambda r: r.update(kind=r.pop("kind")),                    # keys in another order
])
def test_non_canonical_but_valid_payloads_take_the_full_check(change: Any) -> None:
    doc = json.loads(payload())
    cgm = doc["records"][2]
    assert cgm["kind"] == "cgm-glucose"
    change(cgm)
    body = json.dumps(doc).encode()
    assert prepare_records(body, GW) is None
    decision = classify(Inbound(TOPIC, body, NOW))
    assert isinstance(decision, RecordsArrived) and len(decision.prepared.rows) == 14


def test_hostile_text_and_wrong_gateway_never_take_the_fast_path() -> None:
    assert prepare_records(payload(model="M\x00"), GW) is None
    assert prepare_records(payload(model="M" * 129), GW) is None
    assert prepare_records(payload(), "gw-b") is None
    assert prepare_records(b"\xff" + payload(), GW) is None
    assert prepare_records(b"[" * 100_000, GW) is None


# --- the PostgreSQL COPY path ------------------------------------------------------------------

@pytest.fixture
def pg_store(request: pytest.FixtureRequest) -> Any:
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not installed")
    server: PostgresServer = shared_server(request.config)
    if not server.running:
        server.start()
    with Store.open(server.url(server.create_database())) as store:
        yield store


def _cgm_rows(n: int, key_prefix: str = "dev-1|cgm-glucose|seq:") -> list[tuple[Any, ...]]:
    records = tuple(CgmReading(device_id="dev-1", time=T0 + dt.timedelta(minutes=i),
                               sequence=i, glucose_mg_dl=100.0) for i in range(n))
    prepared = prepare_records(payload(records), GW)
    assert prepared is not None
    rows = [("p-1", GW, prepared.batch_id, NOW, NOW, *values) for _, values in prepared.rows]
    return [(*r[:5], key_prefix + r[5].rsplit(":", 1)[1], *r[6:]) for r in rows]


def test_copy_inserts_once_and_counts_what_it_inserted(pg_store: Store) -> None:
    from bridge.backend import registry

    with pg_store.begin() as conn:
        registry.provision_patient(conn, "p-1", actor="test")
        registry.provision_gateway(conn, GW, patient_id="p-1", actor="test")
        registry.assign_device(conn, "dev-1", patient_id="p-1", actor="test")
    rows = _cgm_rows(30)
    with pg_store.begin() as conn:
        assert write_rows(conn, cgm_readings, rows[:20]) == 20
    with pg_store.begin() as conn:  # overlapping: only the 10 new ones
        assert write_rows(conn, cgm_readings, rows[10:]) == 10
    with pg_store.begin() as conn:
        stored = conn.execute(sa.select(cgm_readings.c.key, cgm_readings.c.record,
                                        cgm_readings.c.time)
                              .order_by(cgm_readings.c.sequence)).all()
    assert [k for k, _, _ in stored] == [r[5] for r in rows]
    assert stored[3].record["glucose_mg_dl"] == 100.0 and "key" not in stored[3].record
    assert stored[3].time == T0 + dt.timedelta(minutes=3)
    assert len(row_columns(cgm_readings)) == len(rows[0])


def test_copy_of_data_the_database_refuses_is_a_data_error(pg_store: Store) -> None:
    """A refused value must surface as SQLAlchemy's DataError, so the ingest isolates the
    message (instead of retrying forever as if the database were away)."""
    from bridge.backend import registry

    with pg_store.begin() as conn:
        registry.provision_patient(conn, "p-1", actor="test")
        registry.provision_gateway(conn, GW, patient_id="p-1", actor="test")
        registry.assign_device(conn, "dev-1", patient_id="p-1", actor="test")
    (row,) = _cgm_rows(1, key_prefix="k" * 300 + ":")
    with pytest.raises(sa.exc.DataError), pg_store.begin() as conn:
        write_rows(conn, cgm_readings, [row])
    with pg_store.begin() as conn:  # the connection is usable again
        assert write_rows(conn, cgm_readings, _cgm_rows(2)) == 2
