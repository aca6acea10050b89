"""MQTT ingest: gateway records and status into the store, acknowledged only after commit.

Delivery contract (docs/backend.md): the broker delivers at least once (QoS 1, persistent
sessions); a message is acknowledged (PUBACK) only after the transaction holding its
records has committed; the store ignores a record whose idempotency key it already has. So
a worker killed at any point, a broker restart or a database restart may cause
redeliveries, never a loss or a double row.

Pieces:

* :func:`classify` checks one message, with no I/O: topic of the v1 layout, size, the
  payload against the schema version it declares (:mod:`bridge.messages`), the payload's
  gateway against the topic's, and contents the database must never see (NUL and control
  characters, over-long strings, non-finite numbers, integers beyond 64 bits). A records
  payload in the agent's canonical form goes straight to rows instead
  (:mod:`bridge.backend.payload_rows`); anything else takes the full check.
* :class:`IngestProcessor` commits a batch of classified messages in ONE transaction:
  registry look-ups (unknown gateway, device of another patient), new devices attached to
  their gateway's patient, rows inserted with ``ON CONFLICT DO NOTHING`` (through COPY on
  PostgreSQL, :func:`bridge.backend.store.write_rows`), device and
  gateway status, CGM calibration state, and dead letters for every refused message. A
  batch the database refuses because of one message's data is split, and that message
  alone becomes a dead letter (``store-rejected``); errors a retry can cure are raised.
* :class:`IngestWorker` is one paho-mqtt client (``manual_ack=True``) on a shared
  subscription (``$share/<group>/hddt/v1/gw/+/records`` and the status topics), gathering
  messages into batches of up to ``batch_records`` records or ``batch_ms`` milliseconds,
  committing them (retrying with backoff while the database is away) and then acknowledging
  each message in the order it arrived. Acknowledgements are tied to the connection that
  delivered the message: after a reconnect the broker redelivers instead.

Every refused message is acknowledged too, after its dead letter is committed, so a bad
payload never loops. Nothing is ever published back to a gateway.

Dead-letter reasons: those of :class:`bridge.messages.PayloadError` (``oversized``,
``not-json``, ``wrong-schema``, ``unsupported-version``, ``invalid``) and
``too-deep`` (JSON nested beyond the parser's limit), ``invalid-topic``,
``gateway-mismatch`` (payload gateway ≠ topic gateway), ``device-mismatch`` (device status
payload ≠ topic), ``hostile-string`` (NUL/control characters or over-long text),
``out-of-range`` (non-finite number, integer beyond 64 bits, over-long key),
``unknown-gateway``, ``device-assigned-elsewhere``, ``store-rejected``, ``internal-error``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.backend.config import BackendConfig, IngestConfig
from bridge.backend.payload_rows import (
    MAX_RECORD_TEXT,
    PreparedRecords,
    prepare_message,
    prepare_records,
)
from bridge.backend.registry import auto_provision_gateway
from bridge.backend.store import (
    DEVICE_INFO_COLUMNS,
    ID_LEN,
    KEY_LEN,
    DeadLetter,
    Store,
    UtcDateTime,
    add_dead_letters,
    clean_text,
    devices,
    dialect_insert,
    gateways,
    is_transient,
    write_rows,
)
from bridge.messages import (
    MAX_PAYLOAD_BYTES,
    RECORDS_FILTER,
    STATUS_FILTERS,
    DeviceStatus,
    GatewayStatus,
    PayloadError,
    RecordsMessage,
    parse_topic,
)
from bridge.records import record_to_json

log = logging.getLogger(__name__)

_INT64 = 2**63


# --- classification (pure) -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    inbound: Inbound
    reason: str
    detail: str
    gateway_id: str | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to store (an empty retained message clearing a status topic)."""

    inbound: Inbound
    why: str


class RecordsArrived:
    """A records message that passed every check.

    Built either from a decoded :class:`RecordsMessage` (the full check) or from the rows
    the canonical fast path prepared (:mod:`bridge.backend.payload_rows`); each form is
    derived from the other on first use.
    """

    __slots__ = ("_message", "_prepared", "gateway_id", "inbound")

    def __init__(self, inbound: Inbound, gateway_id: str, message: RecordsMessage | None = None,
                 *, prepared: PreparedRecords | None = None) -> None:
        if message is None and prepared is None:
            raise ValueError("RecordsArrived needs the message or its prepared rows")
        self.inbound = inbound
        self.gateway_id = gateway_id
        self._message = message
        self._prepared = prepared

    @property
    def message(self) -> RecordsMessage:
        if self._message is None:  # the fast path accepts only what the full check accepts
            self._message = RecordsMessage.from_bytes(self.inbound.payload)
        return self._message

    @property
    def prepared(self) -> PreparedRecords:
        if self._prepared is None:
            self._prepared = prepare_message(self.message)
        return self._prepared

    @property
    def record_count(self) -> int:
        return len(self.prepared.rows)

    def __repr__(self) -> str:
        return (f"RecordsArrived(topic={self.inbound.topic!r}, gateway_id={self.gateway_id!r}, "
                f"records={self.record_count})")


@dataclass(frozen=True, slots=True)
class GatewayStatusArrived:
    inbound: Inbound
    gateway_id: str
    status: GatewayStatus


@dataclass(frozen=True, slots=True)
class DeviceStatusArrived:
    inbound: Inbound
    gateway_id: str
    status: DeviceStatus


Decision = Rejected | Ignored | RecordsArrived | GatewayStatusArrived | DeviceStatusArrived


class _Refuse(Exception):
    """Internal: why :func:`classify` refuses a message (never escapes this module)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def _check_text(value: str, where: str, limit: int) -> None:
    if len(value) > limit:
        raise _Refuse("hostile-string", f"{where} is {len(value)} characters long "
                                        f"(at most {limit})")
    for ch in value:
        if ch < " " or ch == "\x7f":
            raise _Refuse("hostile-string", f"{where} contains control character "
                                            f"U+{ord(ch):04X}")


def _check_plain(value: Any, where: str, text_limit: int) -> None:
    """Walk a JSON-like value: strings clean and bounded, numbers finite and 64-bit."""
    if isinstance(value, str):
        _check_text(value, where, text_limit)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise _Refuse("out-of-range", f"{where} = {value} does not fit 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Refuse("out-of-range", f"{where} = {value} is not a finite number")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_plain(v, f"{where}.{k}", text_limit)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", text_limit)


def _check_records(msg: RecordsMessage) -> None:
    """The hostile-content checks of a message decoded by the full check (the fast path
    applies the same bounds as it goes)."""
    _check_text(msg.batch_id, "batch_id", 64)
    device = record_to_json(msg.device)
    for name, limit in DEVICE_INFO_COLUMNS.items():
        value = device.get(name)
        if value is not None:
            _check_text(value, f"device.{name}", limit)
    for i, record in enumerate(msg.records):
        _check_plain(record_to_json(record), f"records[{i}]", MAX_RECORD_TEXT)
        key = record.idempotency_key()
        if len(key) > KEY_LEN:
            raise _Refuse("out-of-range", f"records[{i}] key is {len(key)} characters long")


def _topic_gateway(topic: str) -> str | None:
    """The gateway id of a topic, when the topic has a valid one (for dead letters)."""
    parts = topic.split("/")
    if len(parts) > 3:
        candidate = parts[3]
        if 1 <= len(candidate) <= ID_LEN and all(
                c.isascii() and (c.isalnum() or c in "._-") for c in candidate):
            return candidate
    return None


def classify(inbound: Inbound, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
             fast: bool = True) -> Decision:
    """Decide what one message is, without touching the database. Never raises.

    A records payload in the canonical form goes straight to rows
    (:func:`bridge.backend.payload_rows.prepare_records`); anything else, or everything
    with ``fast=False``, through the full check. Both reach the same decision.
    """
    gateway = _topic_gateway(inbound.topic)
    try:
        try:
            info = parse_topic(inbound.topic)
        except PayloadError as exc:
            raise _Refuse("invalid-topic", exc.detail) from None
        payload = inbound.payload
        if info.kind != "records" and not payload:
            return Ignored(inbound, "empty retained message (status cleared)")
        if len(payload) > max_payload_bytes:
            raise _Refuse("oversized", f"{len(payload)} bytes > {max_payload_bytes}")
        try:
            if info.kind == "records":
                prepared = prepare_records(payload, info.gateway_id) if fast else None
                if prepared is not None:
                    return RecordsArrived(inbound, info.gateway_id, prepared=prepared)
                message = RecordsMessage.from_bytes(payload)
                if message.gateway_id != info.gateway_id:
                    raise _Refuse("gateway-mismatch", f"payload of gateway "
                                                      f"{message.gateway_id!r} on the topic "
                                                      f"of {info.gateway_id!r}")
                _check_records(message)
                return RecordsArrived(inbound, info.gateway_id, message)
            if info.kind == "gateway-status":
                status = GatewayStatus.from_bytes(payload)
                if status.gateway_id != info.gateway_id:
                    raise _Refuse("gateway-mismatch", f"status of gateway "
                                                      f"{status.gateway_id!r} on the topic "
                                                      f"of {info.gateway_id!r}")
                return GatewayStatusArrived(inbound, info.gateway_id, status)
            device_status = DeviceStatus.from_bytes(payload)
            if device_status.device_id != info.device_id:
                raise _Refuse("device-mismatch", f"status of device "
                                                 f"{device_status.device_id!r} on the topic "
                                                 f"of {info.device_id!r}")
            _check_plain([device_status.records_synced, device_status.queued,
                          device_status.dropped, device_status.errors], "counters", 0)
            return DeviceStatusArrived(inbound, info.gateway_id, device_status)
        except PayloadError as exc:
            raise _Refuse(exc.reason, exc.detail) from None
        except RecursionError:
            raise _Refuse("too-deep", "JSON nested deeper than the parser allows") from None
        except OverflowError as exc:  # e.g. an instant that leaves the calendar in UTC
            raise _Refuse("out-of-range", str(exc)) from None
    except _Refuse as refusal:
        return Rejected(inbound, refusal.reason, refusal.detail, gateway)
    except Exception as exc:  # a payload must never stop the worker
        log.exception("unexpected error while checking a message on %r", inbound.topic[:200])
        return Rejected(inbound, "internal-error", f"{type(exc).__name__}: {exc}", gateway)


def record_count(decision: Decision) -> int:
    return decision.record_count if isinstance(decision, RecordsArrived) else 0


# --- committing a batch ----------------------------------------------------------------------

@dataclass(slots=True)
class BatchOutcome:
    """What one commit did."""

    messages: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    status_updates: int = 0
    dead_letters: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, other: BatchOutcome) -> None:
        self.messages += other.messages
        self.records += other.records
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.status_updates += other.status_updates
        self.dead_letters.update(other.dead_letters)


def is_poison(exc: BaseException) -> bool:
    """True when the database refused the DATA (so retrying the same batch cannot help)."""
    if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError):
        return True
    return (isinstance(exc, sa.exc.StatementError)
            and not isinstance(exc, sa.exc.DBAPIError)
            and isinstance(exc.orig, ValueError | TypeError | OverflowError))


def _later_param(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[Any]:
    """SQL for ``max(column, :name)`` with NULL as the smallest (safe under concurrency)."""
    value = sa.bindparam(name, type_=UtcDateTime())
    return sa.case((column.is_(None) | (column < value), value), else_=column)


class IngestProcessor:
    """Checks and commits batches of messages; no MQTT here (the bench and tests drive it
    directly)."""

    def __init__(self, store: Store, config: IngestConfig | None = None, *,
                 dead_letter_max_bytes: int = 64 * 1024) -> None:
        self.store = store
        self.config = config or IngestConfig()
        self.dead_letter_max_bytes = dead_letter_max_bytes

    def classify(self, inbound: Inbound) -> Decision:
        return classify(inbound, max_payload_bytes=self.config.max_payload_bytes)

    def ingest(self, inbound: Iterable[Inbound]) -> BatchOutcome:
        """Classify and commit, in one transaction (or raise a database error)."""
        return self.commit([self.classify(m) for m in inbound])

    def commit(self, decisions: Sequence[Decision]) -> BatchOutcome:
        """Commit ``decisions`` in one transaction. Raises when the database is unavailable
        (nothing committed: retry later, acknowledge nothing). A batch whose DATA the
        database refuses is committed message by message, the refused one as a dead
        letter."""
        if not decisions:
            return BatchOutcome()
        try:
            return self._commit_once(decisions)
        except Exception as exc:
            if not is_poison(exc):
                raise
            if len(decisions) > 1:
                log.warning("database refused a batch of %d messages (%s); committing them "
                            "one by one", len(decisions), type(exc).__name__)
                total = BatchOutcome()
                for decision in decisions:
                    total.add(self.commit([decision]))
                return total
            (decision,) = decisions
            log.error("database refused a message on %r: %s", decision.inbound.topic[:200],
                      exc)
            detail = f"{type(exc).__name__}: {getattr(exc, 'orig', exc)}"
            return self._commit_once([Rejected(decision.inbound, "store-rejected", detail,
                                               _topic_gateway(decision.inbound.topic))])

    def dead_letter(self, rejected: Rejected) -> DeadLetter:
        payload = rejected.inbound.payload
        cut = payload[:self.dead_letter_max_bytes]
        return DeadLetter(received_at=rejected.inbound.received_at,
                          topic=rejected.inbound.topic, gateway_id=rejected.gateway_id,
                          reason=rejected.reason, detail=rejected.detail, payload=cut,
                          payload_size=len(payload),
                          payload_sha256=hashlib.sha256(payload).hexdigest(),
                          truncated=len(cut) < len(payload))

    def _commit_once(self, decisions: Sequence[Decision]) -> BatchOutcome:
        with self.store.begin() as conn:
            return _Batch(self, conn, decisions).run()


class _Batch:
    """One transaction's worth of work; see :meth:`IngestProcessor.commit`."""

    def __init__(self, processor: IngestProcessor, conn: Connection,
                 decisions: Sequence[Decision]) -> None:
        self.p = processor
        self.conn = conn
        self.decisions = decisions
        self.now = processor.store.clock.now()
        self.outcome = BatchOutcome(messages=len(decisions))
        self.letters: list[DeadLetter] = []

    def reject(self, inbound: Inbound, reason: str, detail: str, gateway: str | None) -> None:
        self.letters.append(self.p.dead_letter(Rejected(inbound, reason, detail, gateway)))
        self.outcome.dead_letters[reason] += 1

    def _gateway_patients(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = self.conn.execute(sa.select(gateways.c.id, gateways.c.patient_id)
                                 .where(gateways.c.id.in_(wanted)))
        return {r.id: r.patient_id for r in rows}

    def _devices(self, ids: Iterable[str]) -> dict[str, str | None]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = self.conn.execute(sa.select(devices.c.id, devices.c.patient_id)
                                 .where(devices.c.id.in_(wanted)))
        return {r.id: r.patient_id for r in rows}

    def run(self) -> BatchOutcome:
        conn, now = self.conn, self.now
        live = [d for d in self.decisions
                if isinstance(d, RecordsArrived | GatewayStatusArrived | DeviceStatusArrived)]
        known = self._gateway_patients(d.gateway_id for d in live)
        missing = sorted({d.gateway_id for d in live} - set(known))
        if missing and self.p.config.auto_provision:
            for gateway_id in missing:
                auto_provision_gateway(conn, gateway_id, now=now)
            known = self._gateway_patients(d.gateway_id for d in live)

        # Devices seen for the first time: attached to their gateway's patient. Inserted
        # with ON CONFLICT DO NOTHING so concurrent workers cannot collide; the patient is
        # then read back, since a device provisioned ahead keeps its own.
        first_rows: dict[str, dict[str, Any]] = {}
        for d in live:
            if d.gateway_id not in known:
                continue
            if isinstance(d, RecordsArrived):
                device_id = d.prepared.device_id
                row = dict(d.prepared.device_row)
            elif isinstance(d, DeviceStatusArrived):
                device_id = d.status.device_id
                row = {"kind": None} | dict.fromkeys(DEVICE_INFO_COLUMNS)
            else:
                continue
            first_rows.setdefault(device_id, row | {
                "id": device_id, "gateway_id": d.gateway_id,
                "patient_id": known[d.gateway_id], "first_seen": now})
        device_patient = self._devices(first_rows)
        new = [first_rows[i] for i in sorted(first_rows) if i not in device_patient]
        if new:
            conn.execute(dialect_insert(conn, devices).on_conflict_do_nothing(
                index_elements=[devices.c.id]), new)
            device_patient = self._devices(first_rows)

        rows: dict[sa.Table, dict[str, tuple[Any, ...]]] = {}
        device_updates: dict[str, dict[str, Any]] = {}
        contact: dict[str, dt.datetime] = {}
        device_contact: dict[str, dt.datetime] = {}
        calibration: dict[str, tuple[dt.datetime, str]] = {}
        gateway_status: dict[str, GatewayStatus] = {}
        device_status: dict[str, tuple[str, DeviceStatus]] = {}

        for dec in self.decisions:
            inbound = dec.inbound
            if isinstance(dec, Rejected):
                self.letters.append(self.p.dead_letter(dec))
                self.outcome.dead_letters[dec.reason] += 1
                continue
            if isinstance(dec, Ignored):
                continue
            gw = dec.gateway_id
            if gw not in known:
                self.reject(inbound, "unknown-gateway",
                            f"gateway {gw!r} is not provisioned", gw)
                continue
            patient = known[gw]
            if isinstance(dec, GatewayStatusArrived):
                current = gateway_status.get(gw)
                if current is None or dec.status.at >= current.at:
                    gateway_status[gw] = dec.status
                contact[gw] = max(contact.get(gw, inbound.received_at), inbound.received_at)
                continue
            device_id = (dec.prepared.device_id if isinstance(dec, RecordsArrived)
                         else dec.status.device_id)
            owner = device_patient.get(device_id)
            if owner is not None and owner != patient:
                self.reject(inbound, "device-assigned-elsewhere",
                            f"device {device_id!r} belongs to another patient than gateway "
                            f"{gw!r}", gw)
                continue
            device_patient[device_id] = patient
            contact[gw] = max(contact.get(gw, inbound.received_at), inbound.received_at)
            device_contact[device_id] = max(device_contact.get(device_id, inbound.received_at),
                                             inbound.received_at)
            if isinstance(dec, DeviceStatusArrived):
                prev = device_status.get(device_id)
                if prev is None or dec.status.at >= prev[1].at:
                    device_status[device_id] = (gw, dec.status)
                device_updates.setdefault(device_id, {}).update(gateway_id=gw,
                                                                patient_id=patient)
                continue
            prepared = dec.prepared
            device_updates[device_id] = prepared.device_row | {
                "gateway_id": gw, "patient_id": patient}
            self.outcome.records += len(prepared.rows)
            # Row = the commit's context + the record's own values (store.row_columns);
            # the first row of a key repeated within the batch wins.
            context = (patient, gw, prepared.batch_id, inbound.received_at, now)
            for table, values in prepared.rows:
                bucket = rows.get(table)
                if bucket is None:
                    bucket = rows[table] = {}
                if values[0] not in bucket:
                    bucket[values[0]] = context + values
            if prepared.calibration is not None:
                prev_cal = calibration.get(device_id)
                if prev_cal is None or prepared.calibration[0] >= prev_cal[0]:
                    calibration[device_id] = prepared.calibration

        for table in sorted(rows, key=lambda t: t.name):
            self.outcome.inserted += write_rows(conn, table, list(rows[table].values()))
        self.outcome.duplicates = self.outcome.records - self.outcome.inserted

        # Registry updates: one statement per shape, executed for many parameter sets
        # (psycopg pipelines them: one round trip), always in id order so that concurrent
        # workers lock rows in the same order.
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for device_id in sorted(device_updates):
            update = device_updates[device_id]
            by_shape.setdefault(tuple(sorted(update)), []).append(
                {f"v_{k}": v for k, v in update.items()}
                | {"v_id": device_id, "v_contact": device_contact[device_id]})
        for shape, params in by_shape.items():
            conn.execute(devices.update().where(devices.c.id == sa.bindparam("v_id")).values(
                {name: sa.bindparam(f"v_{name}", type_=devices.c[name].type) for name in shape}
                | {"last_contact": _later_param(devices.c.last_contact, "v_contact")}), params)
        if calibration:
            when = sa.bindparam("v_when", type_=UtcDateTime())
            conn.execute(devices.update().where(
                (devices.c.id == sa.bindparam("v_id"))
                & (devices.c.calibration_at.is_(None) | (devices.c.calibration_at <= when)))
                .values(calibration_state=sa.bindparam("v_state"), calibration_at=when),
                [{"v_id": device_id, "v_when": when_, "v_state": state}
                 for device_id, (when_, state) in sorted(calibration.items())])
        for device_id, (_gw, status) in sorted(device_status.items()):
            conn.execute(devices.update().where(
                (devices.c.id == device_id)
                & (devices.c.status_at.is_(None) | (devices.c.status_at <= status.at)))
                .values(status=status.state.value, status_at=status.at,
                        last_sync=status.last_sync, records_synced=status.records_synced,
                        queued=status.queued, dropped=status.dropped, errors=status.errors,
                        last_error=None if status.last_error is None
                        else clean_text(status.last_error, 500)))
            self.outcome.status_updates += 1
        if contact:
            conn.execute(gateways.update().where(gateways.c.id == sa.bindparam("v_id")).values(
                last_contact=_later_param(gateways.c.last_contact, "v_contact")),
                [{"v_id": gw, "v_contact": contact[gw]} for gw in sorted(contact)])
        for gw, gw_status in sorted(gateway_status.items()):
            conn.execute(gateways.update().where(
                (gateways.c.id == gw)
                & (gateways.c.status_at.is_(None) | (gateways.c.status_at <= gw_status.at)))
                .values(status=gw_status.state.value, status_at=gw_status.at,
                        agent_version=clean_text(gw_status.agent_version, 64) or None))
            self.outcome.status_updates += 1
        add_dead_letters(conn, self.letters)
        return self.outcome


# --- the MQTT worker -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Delivery:
    inbound: Inbound
    decision: Decision
    mid: int
    qos: int
    generation: int


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker since it started (read them from any thread)."""

    messages: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    batches: int = 0
    acked: int = 0
    #: Messages of an earlier connection whose ack was skipped (the broker redelivers them).
    stale: int = 0
    commit_failures: int = 0
    connects: int = 0
    dead_letters: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Seconds spent checking messages (network thread) and committing batches.
    check_s: float = 0.0
    commit_s: float = 0.0


def subscription_filters(group: str, status_topics: bool = True) -> list[str]:
    """The worker's topic filters: records (and status) under ``$share/<group>/`` when a
    group is set."""
    filters = [RECORDS_FILTER, *(STATUS_FILTERS if status_topics else ())]
    return [f"$share/{group}/{f}" if group else f for f in filters]


class IngestWorker:
    """One ingest worker: a paho client and a thread that batches, commits and acks.

    ``start()`` returns at once (the client connects and reconnects in the background);
    ``wait_subscribed()`` waits for the SUBACK; ``stop()`` commits and acknowledges what has
    arrived, then disconnects. ``run_until(event)`` does all three for the command line.
    """

    def __init__(self, config: BackendConfig, store: Store | None = None, *,
                 client_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415

        self.config = config
        self._own_store = store is None
        self.store = store if store is not None else Store.open(config.store.url)
        self.processor = IngestProcessor(self.store, config.ingest,
                                         dead_letter_max_bytes=config.store.dead_letter_max_bytes)
        self.client_id = client_id or config.broker.client_id
        self.stats = WorkerStats()
        self.filters = subscription_filters(config.broker.shared_group,
                                            config.ingest.status_topics)
        self._queue: queue.Queue[_Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self._generation = 0
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None
        self._mqtt = mqtt
        self.client = self._make_client()

    # -- MQTT client --
    def _make_client(self) -> Any:
        mqtt = self._mqtt
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        b = self.config.broker
        if b.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        client.reconnect_delay_set(cast("int", b.reconnect_min_s),
                                   cast("int", b.reconnect_max_s))
        if b.tls is not None:
            client.tls_set(ca_certs=None if b.tls.ca is None else str(b.tls.ca),
                           certfile=None if b.tls.cert is None else str(b.tls.cert),
                           keyfile=None if b.tls.key is None else str(b.tls.key),
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(not b.tls.check_hostname)
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection of %s: %s", self.client_id, reason_code)
            return
        with self._lock:
            self._generation += 1
        self.stats.connects += 1
        log.info("%s connected to %s:%d (session present: %s)", self.client_id,
                 self.config.broker.host, self.config.broker.port,
                 getattr(flags, "session_present", "?"))
        if self.config.broker.protocol == "5":
            from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: PLC0415

            client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.filters])
        else:
            client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused subscriptions of %s: %s", self.client_id,
                      ", ".join(failed))
            return
        log.info("%s subscribed to %s", self.client_id, ", ".join(self.filters))
        self._subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        # From here on, acks of messages already received are skipped: their packet ids
        # mean nothing on the next connection, and the broker will redeliver them.
        with self._lock:
            self._generation += 1
        self._subscribed.clear()
        if not self._stop.is_set():
            log.warning("%s lost the broker connection (%s); reconnecting", self.client_id,
                        reason_code)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        inbound = Inbound(topic=message.topic, payload=bytes(message.payload),
                          received_at=dt.datetime.now(dt.UTC))
        with self._lock:
            generation = self._generation
        # Checked here, on the network thread, so that checking the next messages overlaps
        # with the commit thread waiting for the database (classify never raises).
        started = time.perf_counter()
        decision = self.processor.classify(inbound)
        self.stats.check_s += time.perf_counter() - started
        self._queue.put(_Delivery(inbound, decision, message.mid, message.qos, generation))

    # -- lifecycle --
    def start(self) -> None:
        b = self.config.broker
        if b.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
            from paho.mqtt.properties import Properties  # noqa: PLC0415

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = b.session_expiry_s
            props.ReceiveMaximum = b.receive_maximum
            self.client.connect_async(b.host, b.port, b.keepalive_s, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(b.host, b.port, b.keepalive_s)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name=f"ingest-{self.client_id}",
                                        daemon=True)
        self._thread.start()

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        return self._subscribed.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Commit and acknowledge what has arrived, then disconnect. If the database stays
        unavailable for ``timeout_s``, give up: those messages stay unacknowledged and the
        broker delivers them again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._abandon.set()
                self._thread.join(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
        if self._own_store:
            self.store.close()

    def run_until(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.wait(30.0):
                s = self.stats
                log.info("%s: %d messages, %d records stored, %d duplicates, %d dead "
                         "letters, %d commit failures", self.client_id, s.messages, s.inserted,
                         s.duplicates, sum(s.dead_letters.values()), s.commit_failures)
        finally:
            self.stop()

    # -- the batching loop --
    def _run(self) -> None:
        cfg = self.config.ingest
        window = cfg.batch_ms / 1000.0
        max_messages = max(1, self.config.broker.receive_maximum)
        pending: list[tuple[_Delivery, Decision]] = []
        records = 0
        first = 0.0
        while True:
            if pending:
                timeout = max(0.0, first + window - time.monotonic())
            else:
                if self._stop.is_set() and self._queue.empty():
                    return
                timeout = 0.1
            try:
                delivery = self._queue.get(timeout=timeout)
            except queue.Empty:
                pass
            else:
                decision = delivery.decision
                if not pending:
                    first = time.monotonic()
                pending.append((delivery, decision))
                records += record_count(decision)
            if pending and (records >= cfg.batch_records or len(pending) >= max_messages
                            or time.monotonic() - first >= window
                            or (self._stop.is_set() and self._queue.empty())):
                if not self._flush(pending):
                    return
                pending, records = [], 0

    def _flush(self, pending: list[tuple[_Delivery, Decision]]) -> bool:
        decisions = [d for _, d in pending]
        delay = self.config.ingest.retry_min_s
        started = time.perf_counter()
        while True:
            try:
                outcome = self.processor.commit(decisions)
                break
            except Exception as exc:
                self.stats.commit_failures += 1
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "%s could not commit %d messages (%s: %s); retrying in %.1f s",
                        self.client_id, len(decisions), type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "", delay)
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, self.config.ingest.retry_max_s)
        acked = stale = 0
        with self._lock:
            for delivery, _ in pending:  # in order of receipt
                if delivery.generation != self._generation:
                    stale += 1
                    continue
                if delivery.qos > 0:
                    self.client.ack(delivery.mid, delivery.qos)
                acked += 1
        s = self.stats
        s.commit_s += time.perf_counter() - started
        s.batches += 1
        s.messages += outcome.messages
        s.records += outcome.records
        s.inserted += outcome.inserted
        s.duplicates += outcome.duplicates
        s.dead_letters.update(outcome.dead_letters)
        s.acked += acked
        s.stale += stale
        return True


def run_worker(config: BackendConfig, stop: threading.Event, *,
               client_id: str | None = None) -> WorkerStats:
    """Run one worker until ``stop`` is set (``backend run``)."""
    worker = IngestWorker(config, client_id=client_id)
    with contextlib.suppress(KeyboardInterrupt):
        worker.run_until(stop)
    return worker.stats
