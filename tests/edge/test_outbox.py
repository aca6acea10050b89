"""The SQLite outbox: atomic sync commits, no duplicate keys, FIFO, cap and TTL drop policy."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.edge.clock import ClockState
from bridge.edge.outbox import Outbox, OutboxError, OutboxLimits
from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind

T0 = dt.datetime(2027, 1, 4, 7, 0, tzinfo=dt.UTC)
INFO = DeviceInfo(device_id="meter-1", kind=DeviceKind.BLOOD_GLUCOSE_METER, serial_number="S1")


def reading(seq: int, device_id: str = "meter-1") -> BloodGlucoseReading:
    return BloodGlucoseReading(device_id=device_id, time=T0 + dt.timedelta(minutes=seq),
                               sequence=seq, device_time=dt.datetime(2027, 1, 4, 8, 0)
                               + dt.timedelta(minutes=seq), glucose_mg_dl=90.0 + seq % 50)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_put_sync_stores_records_state_clock_and_info_together(tmp_path: Path) -> None:
    clock = ClockState(offset=dt.timedelta(minutes=-3), observed_at=T0, source="current-time")
    with Outbox(tmp_path / "o.sqlite") as ob:
        assert ob.sync_state("kitchen") == {}
        assert ob.put_sync("kitchen", [reading(1), reading(2)], {"last_seq": 2}, clock,
                           info=INFO) == 2
        assert ob.sync_state("kitchen") == {"last_seq": 2}
        assert ob.clock_state("kitchen") == clock
        assert ob.device_info("meter-1") == INFO
        items = ob.peek(10)
        assert [i.record for i in items] == [reading(1), reading(2)]
        assert [i.key for i in items] == [r.idempotency_key() for r in (reading(1), reading(2))]
        assert items[0].key.startswith("meter-1|blood-glucose|seq:1@")
        assert {i.device for i in items} == {"kitchen"}
        stats = ob.stats()
        assert stats.queued == 2
        dev = stats.devices["kitchen"]
        assert (dev.device_id, dev.records_synced, dev.queued, dev.syncs) == ("meter-1", 2, 2, 1)
        assert dev.last_sync is not None
    # The WAL journal is what lets `agent status` read while the agent writes.
    with sqlite3.connect(tmp_path / "o.sqlite") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_reread_record_is_never_queued_twice_even_after_delivery(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        assert ob.put_sync("kitchen", [reading(i) for i in range(1, 6)], {"n": 5}) == 5
        ob.delete([i.key for i in ob.peek(3)])
        # The device answers an overlapping request (records 3..8): only 6..8 are new, and
        # 1..3 stay gone although they were delivered and deleted.
        assert ob.put_sync("kitchen", [reading(i) for i in range(3, 9)], {"n": 8}) == 3
        assert [i.record.sequence for i in ob.peek(100)] == [4, 5, 6, 7, 8]
        assert ob.stats().devices["kitchen"].records_synced == 8
        assert ob.seen_count() == 8
        # Duplicates inside one sync are stored once as well.
        assert ob.put_sync("kitchen", [reading(20), reading(20)], {"n": 20}) == 1


def test_a_failed_commit_leaves_nothing_behind(tmp_path: Path) -> None:
    class Unserialisable(dict[str, object]):
        pass

    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put_sync("kitchen", [reading(1)], {"n": 1})
        with pytest.raises(TypeError):
            ob.put_sync("kitchen", [reading(2)], {"n": object()})
        assert ob.sync_state("kitchen") == {"n": 1}
        assert [i.record.sequence for i in ob.peek(10)] == [1]


def test_cap_drops_the_oldest_and_counts_per_device(tmp_path: Path) -> None:
    limits = OutboxLimits(max_rows=10)
    with Outbox(tmp_path / "o.sqlite", limits) as ob:
        ob.put_sync("a", [reading(i, "dev-a") for i in range(6)], {})
        ob.put_sync("b", [reading(i, "dev-b") for i in range(6)], {})
        queued = ob.peek(100)
        assert len(queued) == 10
        # Oldest first: two of device a's records went.
        assert [(i.device, i.record.sequence) for i in queued][:4] == [
            ("a", 2), ("a", 3), ("a", 4), ("a", 5)]
        stats = ob.stats()
        assert (stats.devices["a"].dropped_cap, stats.devices["b"].dropped_cap) == (2, 0)
        assert stats.devices["a"].dropped == 2
        # A dropped record is not queued again when the device reports it again.
        assert ob.put_sync("a", [reading(0, "dev-a")], {}) == 0


def test_byte_cap(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", OutboxLimits(max_bytes=2000)) as ob:
        ob.put_sync("a", [reading(i) for i in range(20)], {})
        stats = ob.stats()
        assert stats.queued_bytes <= 2000
        assert stats.devices["a"].dropped_cap == 20 - stats.queued
        assert [i.record.sequence for i in ob.peek(100)] == list(range(20 - stats.queued, 20))


def test_ttl_drops_what_waited_too_long(tmp_path: Path) -> None:
    clock = FakeClock()
    limits = OutboxLimits(ttl=dt.timedelta(hours=1), key_retention=dt.timedelta(hours=2))
    with Outbox(tmp_path / "o.sqlite", limits, clock=clock) as ob:
        ob.put_sync("a", [reading(1), reading(2)], {})
        clock.now += 1800
        ob.put_sync("a", [reading(3)], {})
        clock.now += 1801
        assert ob.expire() == 2
        assert [i.record.sequence for i in ob.peek(10)] == [3]
        assert ob.stats().devices["a"].dropped_ttl == 2
        # Keys are remembered past the TTL (key retention), then forgotten.
        assert ob.put_sync("a", [reading(1)], {}) == 0
        clock.now += 7300
        ob.expire()  # record 3 passes its TTL; all three keys pass their retention
        assert ob.seen_count() == 0
        assert ob.put_sync("a", [reading(2)], {}) == 1


def test_errors_are_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.record_error("a", "DeviceTimeout: no answer")
        ob.record_error("a", "DeviceDisconnected: link lost")
        s = ob.device_stats("a")
        assert (s.errors, s.last_error) == (2, "DeviceDisconnected: link lost")
        assert ob.device_stats("never-seen").errors == 0


def test_undecodable_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put_sync("a", [reading(1), reading(2)], {})
    with sqlite3.connect(tmp_path / "o.sqlite") as raw:
        raw.execute("UPDATE queue SET payload = '{\"kind\": \"nonsense\"}' WHERE key = ?",
                    (reading(1).idempotency_key(),))
    with Outbox(tmp_path / "o.sqlite") as ob:
        assert [i.record.sequence for i in ob.peek(10)] == [2]
        assert ob.stats().devices["a"].dropped_invalid == 1
        assert ob.drop_invalid([ob.peek(1)[0].key]) == 1
        assert ob.stats().devices["a"].dropped_invalid == 2


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="no outbox"):
        Outbox(tmp_path / "missing.sqlite", create=False)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="not an outbox"):
        Outbox(junk)
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put_sync("a", [], {})
    with sqlite3.connect(tmp_path / "o.sqlite") as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    with pytest.raises(OutboxError, match="schema 99"):
        Outbox(tmp_path / "o.sqlite")
    with pytest.raises(ValueError):
        OutboxLimits(ttl=dt.timedelta(days=2), key_retention=dt.timedelta(days=1))


def test_a_second_reader_sees_commits_while_the_writer_is_open(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as writer, \
            Outbox(tmp_path / "o.sqlite", create=False) as reader:
        writer.put_sync("a", [reading(1)], {"n": 1})
        assert reader.stats().devices["a"].queued == 1
        writer.delete([writer.peek(1)[0].key])
        assert reader.stats().queued == 0


def test_process_killed_mid_transaction_keeps_the_last_commit(tmp_path: Path) -> None:
    # A writer killed between INSERT and COMMIT: SQLite's journal rolls the half-done sync
    # back, so records and sync state both stay at the last commit.
    db = tmp_path / "o.sqlite"
    with Outbox(db) as ob:
        ob.put_sync("a", [reading(1)], {"n": 1})
    script = textwrap.dedent(f"""
        import os, sqlite3
        db = sqlite3.connect({str(db)!r}, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO seen VALUES ('x', 'a', 0)")
        db.execute("INSERT INTO queue (key, device, payload, size, stored_at) "
                   "VALUES ('x', 'a', '{{}}', 2, 0)")
        db.execute("UPDATE devices SET state = '{{\\"n\\": 2}}' WHERE name = 'a'")
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, timeout=30)
    assert proc.returncode == -9
    with Outbox(db) as ob:
        assert ob.sync_state("a") == {"n": 1}
        assert [i.key for i in ob.peek(10)] == [reading(1).idempotency_key()]
        assert ob.seen_count() == 1


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(syncs=st.lists(st.lists(st.integers(0, 40), max_size=15), max_size=8),
       acks=st.lists(st.integers(0, 10), max_size=8), cap=st.integers(5, 30))
def test_property_every_key_is_queued_at_most_once_and_accounted(
        tmp_path_factory: pytest.TempPathFactory, syncs: list[list[int]], acks: list[int],
        cap: int) -> None:
    path = tmp_path_factory.mktemp("prop") / "o.sqlite"
    delivered: list[str] = []
    first_stored: list[str] = []
    inserted_total = 0
    with Outbox(path, OutboxLimits(max_rows=cap)) as ob:
        for i, seqs in enumerate(syncs):
            inserted_total += ob.put_sync("a", [reading(s) for s in seqs], {"i": i})
            for s in seqs:
                key = reading(s).idempotency_key()
                if key not in first_stored:
                    first_stored.append(key)
            if i < len(acks):
                batch = [item.key for item in ob.peek(acks[i])]
                ob.delete(batch)
                delivered += batch
        queued = [item.key for item in ob.peek(10_000)]
        stats = ob.stats().devices.get("a")
        distinct = {reading(s).idempotency_key() for seqs in syncs for s in seqs}
        # Nothing twice: not on the wire from the outbox, not in the queue.
        assert len(delivered) == len(set(delivered))
        assert len(queued) == len(set(queued)) <= cap
        assert not set(delivered) & set(queued)
        # Nothing unaccounted: every distinct key is delivered, queued or counted as dropped.
        assert inserted_total == len(distinct)
        dropped = 0 if stats is None else stats.dropped_cap
        assert len(delivered) + len(queued) + dropped == len(distinct)
        # FIFO: what is queued is in first-stored order.
        assert queued == [k for k in first_stored if k in set(queued)]
