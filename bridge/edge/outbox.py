"""The durable outbox: records waiting for the broker's acknowledgement, in SQLite (WAL).

Delivery contract at the edge:

* :meth:`Outbox.put_sync` stores the records of one sync, the driver's new sync state and
  the device's clock state in ONE transaction. A crash before the commit leaves the old sync
  state, so the next sync reads the same records again; a crash after it leaves everything
  stored. Either way nothing is lost.
* Every record is stored under its idempotency key, and every key ever stored is remembered
  (for ``key_retention``), so a record the device reports again — after a crash, an
  overlapping request, a re-paired device — is never queued twice, even after it was sent.
* :meth:`Outbox.peek` hands out the oldest records first; :meth:`Outbox.delete` removes them
  once the broker acknowledged them (QoS 1 PUBACK), never earlier.

Limits and the policy when they are reached: the queue holds at most ``max_rows`` records
and ``max_bytes`` bytes of record JSON, and a record waits at most ``ttl``. When a limit is
exceeded the OLDEST queued records are dropped (a newer reading is worth more to the patient
than an older one, and the device usually still holds the old ones). Every dropped record is
counted for its device, by reason (``cap`` or ``ttl``), and shown by ``agent status`` and in
the device's MQTT status. A row that cannot be decoded any more is dropped as ``invalid``.

The database is used from one thread at a time per :class:`Outbox` object; separate objects
(the ``agent status`` command) may read it while the agent writes, thanks to WAL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.devices.base import SyncState
from bridge.edge.clock import ClockState
from bridge.errors import BridgeError
from bridge.records import (
    AnyRecord,
    DeviceInfo,
    RecordError,
    device_info_from_json,
    record_from_json,
    record_to_json,
)

SCHEMA_VERSION = 1
#: Keys per DELETE statement (SQLite's default limit of bound parameters is far higher; this
#: keeps statements short).
_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Every idempotency key ever stored (until key retention prunes it): the duplicate guard.
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    stored_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_stored_at ON seen (stored_at);
-- Records waiting for a PUBACK, oldest first by seq.
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_device ON queue (device);
CREATE INDEX IF NOT EXISTS queue_stored_at ON queue (stored_at);
-- One row per configured device (by its configured name).
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    device_id TEXT,
    info TEXT,
    state TEXT NOT NULL DEFAULT '{}',
    clock TEXT NOT NULL DEFAULT '{}',
    last_sync REAL,
    records_synced INTEGER NOT NULL DEFAULT 0,
    syncs INTEGER NOT NULL DEFAULT 0,
    dropped_cap INTEGER NOT NULL DEFAULT 0,
    dropped_ttl INTEGER NOT NULL DEFAULT 0,
    dropped_invalid INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_at REAL
);
-- Device identity by device id (records name their device by id, not by configured name).
CREATE TABLE IF NOT EXISTS infos (
    device_id TEXT PRIMARY KEY,
    info TEXT NOT NULL
);
"""


class OutboxError(BridgeError):
    """The outbox database cannot be opened or is not an outbox of this version."""


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Queue limits: rows, bytes of record JSON, age; and how long keys are remembered."""

    max_rows: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    ttl: dt.timedelta = dt.timedelta(days=30)
    key_retention: dt.timedelta = dt.timedelta(days=90)

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_bytes < 1:
            raise ValueError("outbox limits must be positive")
        if self.ttl <= dt.timedelta(0) or self.key_retention < self.ttl:
            raise ValueError("ttl must be positive and key_retention at least ttl")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One queued record. ``device`` is the configured device name it was synced from."""

    key: str
    device: str
    record: AnyRecord
    size: int
    stored_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """Per-device counters, as ``agent status`` shows them."""

    name: str
    device_id: str | None
    last_sync: dt.datetime | None
    syncs: int
    records_synced: int
    queued: int
    dropped_cap: int
    dropped_ttl: int
    dropped_invalid: int
    errors: int
    last_error: str | None
    last_error_at: dt.datetime | None
    clock: ClockState

    @property
    def dropped(self) -> int:
        return self.dropped_cap + self.dropped_ttl + self.dropped_invalid

    def to_json(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {"name": self.name, "device_id": self.device_id, "last_sync": iso(self.last_sync),
                "syncs": self.syncs, "records_synced": self.records_synced,
                "queued": self.queued, "dropped": self.dropped,
                "dropped_cap": self.dropped_cap, "dropped_ttl": self.dropped_ttl,
                "dropped_invalid": self.dropped_invalid, "errors": self.errors,
                "last_error": self.last_error, "last_error_at": iso(self.last_error_at),
                "clock": self.clock.to_json()}


@dataclass(frozen=True, slots=True)
class OutboxStats:
    queued: int
    queued_bytes: int
    devices: Mapping[str, DeviceStats]

    def to_json(self) -> dict[str, Any]:
        return {"queued": self.queued, "queued_bytes": self.queued_bytes,
                "devices": {name: s.to_json() for name, s in self.devices.items()}}


def _instant(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)


class Outbox:
    """The SQLite outbox at ``path`` (created if missing unless ``create`` is false).

    ``clock`` returns the gateway's time as POSIX seconds (injectable for TTL tests).
    """

    def __init__(self, path: str | Path, limits: OutboxLimits | None = None, *,
                 clock: Callable[[], float] = time.time, create: bool = True) -> None:
        self.path = Path(path)
        self.limits = limits or OutboxLimits()
        self._clock = clock
        if not create and not self.path.exists():
            raise OutboxError(f"no outbox at {self.path}")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE, so a
            # writer takes the lock before reading what it will change.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL (in WAL mode): a transaction is atomic and survives a process crash; a
            # power cut may undo the last few commits, never half of one. That keeps the
            # contract: an undone sync also undoes its sync state, so the device is read
            # again; an undone delete only sends a record twice, which the backend ignores.
            # FULL would add an fsync per acknowledged batch, tens of ms on an SD card.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta (name, value) VALUES ('schema', ?)",
                                 (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise OutboxError(f"{self.path}: outbox schema {row[0]}, this agent "
                                  f"speaks {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise OutboxError(f"{self.path} is not an outbox database: {exc}") from None
        except OutboxError:
            self._db.close()
            raise

    # --- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _ensure_device(self, db: sqlite3.Connection, name: str) -> None:
        db.execute("INSERT OR IGNORE INTO devices (name) VALUES (?)", (name,))

    # --- writing ---------------------------------------------------------------------------

    def put_sync(self, device: str, records: Sequence[AnyRecord], state: SyncState,
                 clock: ClockState | None = None, *, info: DeviceInfo | None = None) -> int:
        """Store one sync of ``device`` (its configured name) atomically; returns how many
        records were new. Records whose key was stored before are skipped."""
        now = self._clock()
        state_json = json.dumps(dict(state), separators=(",", ":"), sort_keys=True)
        prepared = []
        for record in records:
            payload = json.dumps(record_to_json(record), separators=(",", ":"),
                                 ensure_ascii=False)
            prepared.append((record.idempotency_key(), payload))
        inserted = 0
        with self._tx() as db:
            self._ensure_device(db, device)
            for key, payload in prepared:
                cur = db.execute("INSERT OR IGNORE INTO seen (key, device, stored_at) "
                                 "VALUES (?, ?, ?)", (key, device, now))
                if cur.rowcount == 1:
                    db.execute("INSERT INTO queue (key, device, payload, size, stored_at) "
                               "VALUES (?, ?, ?, ?, ?)",
                               (key, device, payload, len(payload.encode()), now))
                    inserted += 1
            assignments = ["state = ?", "last_sync = ?", "syncs = syncs + 1",
                           "records_synced = records_synced + ?"]
            params: list[Any] = [state_json, now, inserted]
            if clock is not None:
                assignments.append("clock = ?")
                params.append(json.dumps(clock.to_json(), sort_keys=True))
            if info is not None:
                info_json = json.dumps(record_to_json(info), sort_keys=True)
                assignments += ["device_id = ?", "info = ?"]
                params += [info.device_id, info_json]
                db.execute("INSERT INTO infos (device_id, info) VALUES (?, ?) ON CONFLICT "
                           "(device_id) DO UPDATE SET info = excluded.info",
                           (info.device_id, info_json))
            db.execute(f"UPDATE devices SET {', '.join(assignments)} WHERE name = ?",
                       (*params, device))
            self._enforce(db, now)
        return inserted

    def record_error(self, device: str, message: str) -> None:
        """Count a failed sync of ``device`` and remember its message."""
        now = self._clock()
        with self._tx() as db:
            self._ensure_device(db, device)
            db.execute("UPDATE devices SET errors = errors + 1, last_error = ?, "
                       "last_error_at = ? WHERE name = ?", (message[:500], now, device))

    def delete(self, keys: Sequence[str]) -> int:
        """Remove acknowledged records; returns how many were still queued."""
        removed = 0
        with self._tx() as db:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += db.execute(f"DELETE FROM queue WHERE key IN ({marks})",
                                      chunk).rowcount
        return removed

    def drop_invalid(self, keys: Sequence[str]) -> int:
        """Drop queued records that can never be sent (they break the MQTT contract); each is
        counted as ``invalid`` for its device."""
        with self._tx() as db:
            rows: list[tuple[int, str]] = []
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                rows += db.execute(f"SELECT seq, device FROM queue WHERE key IN "
                                   f"({','.join('?' * len(chunk))})", chunk).fetchall()
            return self._count_drop(db, "invalid", rows)

    def expire(self) -> int:
        """Apply the TTL (and prune remembered keys); returns how many records were dropped."""
        with self._tx() as db:
            return self._enforce(db, self._clock())

    def _count_drop(self, db: sqlite3.Connection, reason: str,
                    rows: Sequence[tuple[int, str]]) -> int:
        column = {"cap": "dropped_cap", "ttl": "dropped_ttl", "invalid": "dropped_invalid"}[reason]
        per_device: dict[str, int] = {}
        for _, device in rows:
            per_device[device] = per_device.get(device, 0) + 1
        for i in range(0, len(rows), _CHUNK):
            chunk = [seq for seq, _ in rows[i:i + _CHUNK]]
            db.execute(f"DELETE FROM queue WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        for device, count in per_device.items():
            self._ensure_device(db, device)
            db.execute(f"UPDATE devices SET {column} = {column} + ? WHERE name = ?",
                       (count, device))
        return len(rows)

    def _enforce(self, db: sqlite3.Connection, now: float) -> int:
        limits = self.limits
        dropped = 0
        expired = db.execute("SELECT seq, device FROM queue WHERE stored_at < ? ORDER BY seq",
                             (now - limits.ttl.total_seconds(),)).fetchall()
        if expired:
            dropped += self._count_drop(db, "ttl", expired)
        # Keys of records that are neither queued nor recent are forgotten; a re-read that old
        # is rare, and the backend's unique keys catch it even then.
        db.execute("DELETE FROM seen WHERE stored_at < ? AND key NOT IN (SELECT key FROM queue)",
                   (now - limits.key_retention.total_seconds(),))
        rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue").fetchone()
        if rows <= limits.max_rows and size <= limits.max_bytes:
            return dropped
        excess_rows = max(0, rows - limits.max_rows)
        excess_bytes = max(0, size - limits.max_bytes)
        victims: list[tuple[int, str]] = []
        cursor = db.execute("SELECT seq, device, size FROM queue ORDER BY seq")
        for seq, device, row_size in cursor:
            if excess_rows <= 0 and excess_bytes <= 0:
                break
            victims.append((seq, device))
            excess_rows -= 1
            excess_bytes -= row_size
        cursor.close()
        return dropped + self._count_drop(db, "cap", victims)

    # --- reading ---------------------------------------------------------------------------

    def peek(self, batch_size: int) -> list[OutboxItem]:
        """The oldest ``batch_size`` queued records (left in place until :meth:`delete`)."""
        rows = self._db.execute("SELECT seq, key, device, payload, size, stored_at FROM queue "
                                "ORDER BY seq LIMIT ?", (batch_size,)).fetchall()
        items: list[OutboxItem] = []
        broken: list[tuple[int, str]] = []
        for seq, key, device, payload, size, stored_at in rows:
            try:
                record = record_from_json(json.loads(payload))
            except (ValueError, RecordError):
                broken.append((seq, device))
                continue
            items.append(OutboxItem(key, device, record, size,
                                    dt.datetime.fromtimestamp(stored_at, dt.UTC)))
        if broken:
            with self._tx() as db:
                self._count_drop(db, "invalid", broken)
        return items

    def sync_state(self, device: str) -> dict[str, Any]:
        """The driver's sync state stored with the last committed sync (empty at first)."""
        row = self._db.execute("SELECT state FROM devices WHERE name = ?", (device,)).fetchone()
        if row is None:
            return {}
        state = json.loads(row[0])
        return state if isinstance(state, dict) else {}

    def clock_state(self, device: str) -> ClockState:
        row = self._db.execute("SELECT clock FROM devices WHERE name = ?", (device,)).fetchone()
        return ClockState() if row is None else ClockState.from_json(json.loads(row[0]))

    def device_info(self, device_id: str) -> DeviceInfo | None:
        """The last identity stored for the device with this id (records name it)."""
        row = self._db.execute("SELECT info FROM infos WHERE device_id = ?",
                               (device_id,)).fetchone()
        if row is None:
            return None
        try:
            return device_info_from_json(json.loads(row[0]))
        except (ValueError, RecordError):
            return None

    def device_stats(self, device: str) -> DeviceStats:
        stats = self._device_rows(device)
        return stats.get(device) or DeviceStats(device, None, None, 0, 0, 0, 0, 0, 0, 0, None,
                                                None, ClockState())

    def _device_rows(self, name: str | None = None) -> dict[str, DeviceStats]:
        where = "" if name is None else " WHERE d.name = ?"
        rows = self._db.execute(
            "SELECT d.name, d.device_id, d.last_sync, d.syncs, d.records_synced, "
            "(SELECT COUNT(*) FROM queue q WHERE q.device = d.name), d.dropped_cap, "
            "d.dropped_ttl, d.dropped_invalid, d.errors, d.last_error, d.last_error_at, "
            f"d.clock FROM devices d{where} ORDER BY d.name",
            () if name is None else (name,)).fetchall()
        out = {}
        for (dev, device_id, last_sync, syncs, synced, queued, d_cap, d_ttl, d_invalid, errors,
             last_error, last_error_at, clock) in rows:
            try:
                clock_state = ClockState.from_json(json.loads(clock))
            except ValueError:
                clock_state = ClockState()
            out[dev] = DeviceStats(dev, device_id, _instant(last_sync), syncs, synced, queued,
                                   d_cap, d_ttl, d_invalid, errors, last_error,
                                   _instant(last_error_at), clock_state)
        return out

    def stats(self) -> OutboxStats:
        """Totals and per-device counters (a consistent snapshot)."""
        self._db.execute("BEGIN")
        try:
            rows, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue").fetchone()
            devices = self._device_rows()
        finally:
            self._db.execute("COMMIT")
        return OutboxStats(rows, size, devices)

    def seen_count(self) -> int:
        """How many idempotency keys are remembered (queued, sent or dropped)."""
        count: int = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
        return count
