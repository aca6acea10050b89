"""The store on both engines: migrations, idempotent inserts, queries, status, retention.

Every test that is not about one engine runs on SQLite and on a private PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import bridge.auth.tables  # noqa: F401  (its tables join the store's metadata)
from bridge.backend import registry
from bridge.backend.migrations import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from bridge.backend.store import (
    DeadLetter,
    Store,
    StoreError,
    UtcClock,
    add_dead_letters,
    cgm_readings,
    check_retention_days,
    clean_text,
    create_engine,
    insert_rows,
    is_transient,
    metadata,
    record_row,
)
from bridge.records import (
    BloodGlucoseReading,
    CgmReading,
    RecordKind,
    TempBasalStart,
    TempBasalType,
    TimeQuality,
)
from tests.backend.postgres import PostgresServer, postgres_available, shared_server

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest) -> PostgresServer:
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not installed")
    return shared_server(request.config)


def _fresh_pg(pg: PostgresServer) -> str:
    if not pg.running:
        pg.start()
    return pg.url(pg.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'backend.sqlite'}"
    return _fresh_pg(request.getfixturevalue("pg"))


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store.open(url) as s:
        with s.begin() as conn:
            registry.provision_patient(conn, "p-1", actor="test")
            registry.provision_gateway(conn, "gw-1", patient_id="p-1", actor="test")
            registry.assign_device(conn, "cgm-1", patient_id="p-1", actor="test",
                                   gateway_id="gw-1")
            registry.assign_device(conn, "meter-1", patient_id="p-1", actor="test",
                                   gateway_id="gw-1")
        yield s


def cgm(n: int, *, time: dt.datetime = NOW) -> CgmReading:
    return CgmReading(device_id="cgm-1", time=time + dt.timedelta(minutes=5 * n), sequence=n,
                      glucose_mg_dl=100.0 + n)


def insert(store: Store, *records: CgmReading | BloodGlucoseReading | TempBasalStart,
           received: dt.datetime = NOW) -> int:
    with store.begin() as conn:
        total = 0
        for r in records:
            table, row = record_row(r, patient_id="p-1", gateway_id="gw-1",
                                    received_at=received, inserted_at=store.clock.now())
            total += len(insert_rows(conn, table, [row]))
        return total


# --- migrations ------------------------------------------------------------------------------

def test_migrations_create_exactly_the_declared_schema(url: str) -> None:
    with Store.open(url) as store:
        assert current_revision(store.engine) == head_revision() == "0004"
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(
                conn, opts={"compare_type": True}), metadata)
        assert diff == []
        # Running them again changes nothing.
        assert upgrade_to_head(store.engine) == "0004"


def test_migrations_go_down_and_up_again(tmp_path: Path) -> None:
    from alembic import command

    engine = create_engine(f"sqlite:///{tmp_path}/m.sqlite")
    try:
        upgrade_to_head(engine)
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        assert current_revision(engine) is None
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == ["alembic_version"]
        upgrade_to_head(engine)
        assert current_revision(engine) == "0004"
    finally:
        engine.dispose()


def _data_foreign_keys(store: Store) -> dict[str, list[str]]:
    with store.engine.connect() as conn:
        inspector = sa.inspect(conn)
        return {t: sorted(fk["constrained_columns"][0] for fk in inspector.get_foreign_keys(t))
                for t in ("glucose_readings", "cgm_readings", "insulin_events",
                          "annunciations")}


def test_data_tables_keep_only_the_device_key_and_0003_goes_down(store: Store) -> None:
    from alembic import command

    assert insert(store, cgm(1), cgm(2)) == 2
    assert set(map(tuple, _data_foreign_keys(store).values())) == {("device_id",)}
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert set(map(tuple, _data_foreign_keys(store).values())) == {
        ("device_id", "gateway_id", "patient_id")}
    assert store.counts()["cgm_readings"] == 2
    upgrade_to_head(store.engine)
    assert set(map(tuple, _data_foreign_keys(store).values())) == {("device_id",)}
    assert [r.record for r in store.records(patient_id="p-1")] == [cgm(1), cgm(2)]


def test_concurrent_starts_migrate_once(pg: PostgresServer) -> None:
    url = _fresh_pg(pg)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Store.open(url).close()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = create_engine(url)
    try:
        assert current_revision(engine) == "0004"
    finally:
        engine.dispose()


def test_unreachable_database_is_a_clear_error(pg: PostgresServer) -> None:
    with pytest.raises(StoreError, match="cannot open the database"):
        Store.open(f"postgresql+psycopg://nobody@127.0.0.1:{pg.port + 1}/none")
    with pytest.raises(StoreError, match="unsupported database"):
        create_engine("mysql://x@localhost/db")
    with pytest.raises(StoreError, match="not a database URL"):
        create_engine("::")


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/w.sqlite") as store, store.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


# --- rows ------------------------------------------------------------------------------------

def test_duplicates_are_ignored_by_key(store: Store) -> None:
    assert insert(store, cgm(0), cgm(1)) == 2
    assert insert(store, cgm(1), cgm(2)) == 1
    with store.begin() as conn:
        table, row = record_row(cgm(3), patient_id="p-1", gateway_id="gw-1",
                                received_at=NOW, inserted_at=NOW)
        # The same key twice within one statement is stored once too.
        assert insert_rows(conn, table, [row, row]) == [row["key"]]
    assert store.counts()["cgm_readings"] == 4


def test_rows_keep_codes_units_and_times(store: Store) -> None:
    bg = BloodGlucoseReading(device_id="meter-1", time=NOW, sequence=9, glucose_mg_dl=99.5,
                             device_time=dt.datetime(2027, 3, 1, 13, 0),
                             time_quality=frozenset({TimeQuality.DEVICE_CLOCK_CORRECTED}))
    temp = TempBasalStart(device_id="cgm-1", time=NOW, sequence=1,
                          temp_basal_type=TempBasalType.RELATIVE, value=80.0, duration_min=60)
    insert(store, bg, temp)
    (stored_bg,) = store.records(patient_id="p-1", kinds=[RecordKind.BLOOD_GLUCOSE])
    assert stored_bg.record == bg
    assert (stored_bg.loinc, stored_bg.value, stored_bg.unit) == ("41653-7", 99.5, "mg/dL")
    assert stored_bg.mdc_code is not None and stored_bg.record.time.tzinfo is dt.UTC
    with store.begin() as conn:
        row = conn.execute(sa.text("SELECT device_time, time_quality FROM glucose_readings")
                           ).one()
    assert str(row[0]).startswith("2027-03-01 13:00:00") and row[1] == "device-clock-corrected"
    (stored_temp,) = store.records(patient_id="p-1", kinds=[RecordKind.TEMP_BASAL_START])
    assert (stored_temp.value, stored_temp.unit, stored_temp.loinc) == (80.0, "%", None)


def test_queries_by_patient_code_and_time(store: Store) -> None:
    insert(store, *(cgm(n) for n in range(12)))
    first_hour = store.records(patient_id="p-1", loinc="99504-3", start=NOW,
                               end=NOW + dt.timedelta(hours=1))
    assert [r.record.sequence for r in first_hour] == list(range(12))
    later = store.records(patient_id="p-1", start=NOW + dt.timedelta(minutes=30))
    assert [r.record.sequence for r in later] == [6, 7, 8, 9, 10, 11]
    assert store.records(patient_id="p-1", loinc="41653-7") == []
    assert store.records(patient_id="somebody-else") == []
    assert len(store.records(patient_id="p-1", limit=3)) == 3
    # _lastUpdated: rows inserted at or after an instant.
    marker = store.clock.now()
    insert(store, cgm(20))
    assert [r.record.sequence for r in store.records(patient_id="p-1",
                                                     updated_since=marker)] == [20]


def test_naive_instants_are_refused(store: Store) -> None:
    with pytest.raises(sa.exc.StatementError), store.begin() as conn:
        conn.execute(cgm_readings.update().values(received_at=dt.datetime(2027, 1, 1)))


def test_clock_never_goes_backwards() -> None:
    clock = UtcClock()
    values = [clock.now() for _ in range(1000)]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_text_is_made_storable() -> None:
    assert clean_text("a\x00b\x1fc\td", 100) == "a\\x00b\\x1fc\td"
    assert clean_text("x" * 50, 10) == "x" * 9 + "…"


def test_transient_errors_are_told_apart() -> None:
    op = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    data = sa.exc.DataError("INSERT", {}, Exception("value too long"))
    assert is_transient(op) and not is_transient(data)
    assert not is_transient(ValueError("x"))


# --- status and retention --------------------------------------------------------------------

def test_status_reports_rate_lag_and_dead_letters(store: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    insert(store, cgm(0), cgm(1), received=now - dt.timedelta(seconds=5))
    with store.begin() as conn:
        add_dead_letters(conn, [DeadLetter(now, "hddt/v1/gw/gw-1/records", "gw-1", reason,
                                           "detail", b"{}", 2, "0" * 64, False)
                                for reason in ("invalid", "invalid", "not-json")])
    status = store.status(now)
    assert status.records_last_minute == 2
    assert status.lag_s is not None and 4.0 <= status.lag_s <= 6.0
    assert status.dead_letters_by_reason == {"invalid": 2, "not-json": 1}
    (gw,) = status.gateways
    assert (gw.gateway_id, gw.patient_id, gw.status, gw.devices) == ("gw-1", "p-1", "unknown", 2)
    assert store.status(now + dt.timedelta(minutes=2)).records_last_minute == 0
    doc = status.to_json()
    assert doc["records_total"]["cgm_readings"] == 2 and doc["gateways"][0]["devices"] == 2


def test_purge_deletes_what_is_older_than_the_retention(store: Store) -> None:
    old = NOW - dt.timedelta(days=40)
    insert(store, cgm(100, time=old), cgm(101, time=old), cgm(0), cgm(1))
    with store.begin() as conn:
        add_dead_letters(conn, [DeadLetter(old, "t", None, "not-json", "", b"", 0, "0" * 64,
                                           False)])
    dry = store.purge(retention_days=30, dead_letter_retention_days=30, now=NOW, dry_run=True)
    assert dry == {"glucose_readings": 0, "cgm_readings": 2, "insulin_events": 0,
                   "annunciations": 0, "dead_letters": 1}
    assert store.counts()["cgm_readings"] == 4
    assert store.purge(retention_days=30, dead_letter_retention_days=30, now=NOW) == dry
    assert [r.record.time for r in store.records(patient_id="p-1")] == [
        NOW, NOW + dt.timedelta(minutes=5)]
    assert store.dead_letters() == []


@pytest.mark.parametrize("days", [0, 7, 29.9, float("nan")])
def test_retention_below_30_days_is_refused(days: float) -> None:
    with pytest.raises(StoreError, match="at least 30"):
        check_retention_days(days)
    assert check_retention_days(30) == dt.timedelta(days=30)
