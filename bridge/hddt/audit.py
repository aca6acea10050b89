"""Audit of every request/response pair (operational-requirements.md "Self-Logged Monitoring").

Entries go to the store's ``audit_log`` table keyed by pairing id (``subject_type``
"pairing", ``subject_id`` the pairing id), with the spec's log attributes in ``detail``.
Requests never wait for the database: entries are queued and a writer thread inserts them
in batches (one COPY on PostgreSQL, one INSERT of many rows on SQLite), at least every
``flush_interval_s``.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from bridge.backend.store import Store, audit_log, clean_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One request/response pair."""

    at: dt.datetime
    transaction_id: str
    pairing_id: str | None
    patient_id: str | None
    client_id: str | None
    interaction: str
    method: str
    url: str
    status: int
    response_time_ms: float
    data_volume_bytes: int
    error_code: str | None = None
    error_description: str | None = None

    def row(self, interface_id: str) -> dict[str, Any]:
        return {
            "at": self.at, "actor": clean_text(self.client_id or "anonymous", 128),
            "action": clean_text(f"hddt-{self.interaction}", 64), "subject_type": "pairing",
            "subject_id": clean_text(self.pairing_id or "-", 128),
            "patient_id": self.patient_id,
            "detail": {
                "timestamp": self.at.isoformat(), "transaction_id": self.transaction_id,
                "pairing_id": self.pairing_id, "interface_id": interface_id,
                "event_type": "Transfer" if self.status < 400 else "Error",
                "partner_id": self.client_id, "message": f"{self.method} {self.url}"[:1000],
                "status": self.status, "response_time_ms": round(self.response_time_ms, 3),
                "data_volume_bytes": self.data_volume_bytes, "error_code": self.error_code,
                "error_description": (None if self.error_description is None
                                      else self.error_description[:500]),
            },
        }


class AuditLog:
    """Queue plus batch writer; :meth:`flush` waits until everything queued is stored.

    Recording only appends to a deque (no lock, no wake-up): the writer thread sleeps until
    the flush interval ends, a batch is full or a flush is asked for, so it takes the
    interpreter from the requests a few times a second rather than once per request."""

    def __init__(self, store: Store, *, interface_id: str, batch: int = 200,
                 flush_interval_s: float = 0.5) -> None:
        self.store = store
        self.interface_id = interface_id
        self.batch = batch
        self.flush_interval_s = flush_interval_s
        self._pending: collections.deque[AuditEvent] = collections.deque()
        self._waiters: collections.deque[threading.Event] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.written = 0
        self.failed = 0

    def record(self, event: AuditEvent) -> None:
        self._ensure_started()
        self._pending.append(event)
        if len(self._pending) >= self.batch:
            self._wake.set()

    def flush(self, timeout: float = 10.0) -> None:
        """Store every entry queued so far."""
        done = threading.Event()
        self._ensure_started()
        self._waiters.append(done)
        self._wake.set()
        done.wait(timeout)

    def close(self) -> None:
        thread = self._thread
        if thread is not None:
            self._stop = True
            self._wake.set()
            thread.join(10.0)
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="hddt-audit",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stop = self._stop
            # Waiters first: every entry recorded before a flush() is pending by now.
            waiters = []
            while self._waiters:
                waiters.append(self._waiters.popleft())
            while self._pending:
                batch: list[AuditEvent] = []
                while self._pending and len(batch) < self.batch:
                    batch.append(self._pending.popleft())
                self._write(batch)
            for waiter in waiters:
                waiter.set()
            if stop:
                return

    def _write(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        try:
            rows = [e.row(self.interface_id) for e in events]
            with self.store.begin() as conn:
                if conn.dialect.name == "postgresql":
                    _copy(conn, rows)
                else:
                    conn.execute(audit_log.insert(), rows)
            self.written += len(events)
        except Exception:
            # The audit must not take the interface down; the loss is counted and logged.
            self.failed += len(events)
            log.exception("could not write %d audit entries", len(events))


_COLUMNS = ("at", "actor", "action", "subject_type", "subject_id", "patient_id", "detail")
_COPY_SQL = f"COPY {audit_log.name} ({', '.join(_COLUMNS)}) FROM STDIN"


def _copy(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: the batch by ``COPY`` (the writer shares the process with the requests;
    an executemany INSERT through SQLAlchemy cost them a fifth of their throughput, measured
    by bench/hddt_api.py)."""
    dbapi: Any = conn.connection.driver_connection
    with dbapi.cursor() as cur, cur.copy(_COPY_SQL) as copy:
        for row in rows:
            copy.write_row((*(row[c] for c in _COLUMNS[:-1]),
                            json.dumps(row["detail"], separators=(",", ":"))))
