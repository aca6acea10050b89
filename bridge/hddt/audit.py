"""Audit of every request/response pair (operational-requirements.md "Self-Logged Monitoring").

Entries go to the store's ``audit_log`` table keyed by pairing id (``subject_type``
"pairing", ``subject_id`` the pairing id), with the spec's log attributes in ``detail``.
Requests never wait for the database: entries are queued and a writer thread inserts them
in batches (one INSERT of many rows), at least every ``flush_interval_s``.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

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
    """Queue plus batch writer; :meth:`flush` waits until everything queued is stored."""

    def __init__(self, store: Store, *, interface_id: str, batch: int = 200,
                 flush_interval_s: float = 0.5) -> None:
        self.store = store
        self.interface_id = interface_id
        self.batch = batch
        self.flush_interval_s = flush_interval_s
        self._queue: queue.Queue[AuditEvent | threading.Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.written = 0
        self.failed = 0

    def record(self, event: AuditEvent) -> None:
        self._ensure_started()
        self._queue.put(event)

    def flush(self, timeout: float = 10.0) -> None:
        """Store every entry queued so far."""
        done = threading.Event()
        self._ensure_started()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(10.0)
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hddt-audit",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        pending: list[AuditEvent] = []
        waiters: list[threading.Event] = []
        stop = False
        first_at = 0.0
        while not stop:
            try:
                item = self._queue.get(timeout=self.flush_interval_s)
            except queue.Empty:
                item = False  # type: ignore[assignment]
            if item is None:
                stop = True
            elif isinstance(item, threading.Event):
                waiters.append(item)
            elif isinstance(item, AuditEvent):
                if not pending:
                    first_at = time.monotonic()
                pending.append(item)
                if (len(pending) < self.batch
                        and time.monotonic() - first_at < self.flush_interval_s):
                    continue
            # Drain what is already queued, then write one batch.
            while not stop and len(pending) < self.batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                elif isinstance(more, threading.Event):
                    waiters.append(more)
                else:
                    pending.append(more)
            self._write(pending)
            pending = []
            for waiter in waiters:
                waiter.set()
            waiters = []

    def _write(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        try:
            with self.store.begin() as conn:
                conn.execute(audit_log.insert(), [e.row(self.interface_id) for e in events])
            self.written += len(events)
        except Exception:
            # The audit must not take the interface down; the loss is counted and logged.
            self.failed += len(events)
            log.exception("could not write %d audit entries", len(events))
