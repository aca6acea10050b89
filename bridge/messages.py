"""The MQTT contract between the edge agent and the manufacturer backend, version 1.

Topics (``{gw}`` is the gateway id, ``{dev}`` a device id; both ``[A-Za-z0-9._-]``, 1–64):

=====================================  =====  ========  =========================================
topic                                  QoS    retained  payload
=====================================  =====  ========  =========================================
``hddt/v1/gw/{gw}/records``            1      no        :class:`RecordsMessage` (a batch)
``hddt/v1/gw/{gw}/status``             1      yes       :class:`GatewayStatus` (also the will)
``hddt/v1/gw/{gw}/devices/{dev}/status`` 1    yes       :class:`DeviceStatus`
=====================================  =====  ========  =========================================

There is deliberately no topic from the backend to a gateway: nothing the backend says can reach
a device (medical safety: no downlink for device control at all).

Payloads are UTF-8 JSON objects carrying ``"schema"`` and ``"version"``; a receiver validates
against the version the payload declares and refuses unknown versions. Every record carries its
idempotency key, so the backend can ignore duplicates from QoS 1 redelivery.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bridge.errors import BridgeError
from bridge.records import (
    AnyRecord,
    DeviceInfo,
    RecordError,
    device_info_from_json,
    record_from_json,
    record_to_json,
    utc,
)

TOPIC_ROOT = "hddt/v1/gw"
VERSION = 1
RECORDS_SCHEMA = "hddt-bridge.records"
GATEWAY_STATUS_SCHEMA = "hddt-bridge.gateway-status"
DEVICE_STATUS_SCHEMA = "hddt-bridge.device-status"
#: Largest payload either side accepts; a batch is split well below it.
MAX_PAYLOAD_BYTES = 256 * 1024
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class PayloadError(BridgeError):
    """A payload or topic that breaks this contract. ``reason`` is short and machine-readable
    (``oversized``, ``not-json``, ``wrong-schema``, ``unsupported-version``, ``invalid``)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise PayloadError("invalid", f"{what} {value!r} must be 1-64 of [A-Za-z0-9._-]")
    return value


def records_topic(gateway_id: str) -> str:
    return f"{TOPIC_ROOT}/{check_id(gateway_id, 'gateway id')}/records"


def gateway_status_topic(gateway_id: str) -> str:
    return f"{TOPIC_ROOT}/{check_id(gateway_id, 'gateway id')}/status"


def device_status_topic(gateway_id: str, device_id: str) -> str:
    return (f"{TOPIC_ROOT}/{check_id(gateway_id, 'gateway id')}/devices/"
            f"{check_id(device_id, 'device id')}/status")


#: Subscription filters for the backend (``$share/<group>/`` is prepended for shared ingest).
RECORDS_FILTER = f"{TOPIC_ROOT}/+/records"
STATUS_FILTERS = (f"{TOPIC_ROOT}/+/status", f"{TOPIC_ROOT}/+/devices/+/status")


@dataclass(frozen=True, slots=True)
class TopicInfo:
    gateway_id: str
    kind: str  # "records" | "gateway-status" | "device-status"
    device_id: str | None = None


def parse_topic(topic: str) -> TopicInfo:
    parts = topic.split("/")
    if parts[:3] != TOPIC_ROOT.split("/"):
        raise PayloadError("invalid", f"topic {topic!r} is not under {TOPIC_ROOT}/")
    rest = parts[3:]
    if len(rest) == 2 and rest[1] in ("records", "status"):
        kind = "records" if rest[1] == "records" else "gateway-status"
        return TopicInfo(check_id(rest[0], "gateway id"), kind)
    if len(rest) == 4 and rest[1] == "devices" and rest[3] == "status":
        return TopicInfo(check_id(rest[0], "gateway id"), "device-status",
                         check_id(rest[2], "device id"))
    raise PayloadError("invalid", f"topic {topic!r} is not part of the v1 layout")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load(payload: bytes, schema: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("not-json", str(exc)) from None
    if not isinstance(doc, dict):
        raise PayloadError("invalid", "payload must be a JSON object")
    if doc.get("schema") != schema:
        raise PayloadError("wrong-schema", f"expected schema {schema!r}, got "
                                           f"{doc.get('schema')!r}")
    if doc.get("version") != VERSION:
        raise PayloadError("unsupported-version",
                           f"{schema} version {doc.get('version')!r}; this side speaks {VERSION}")
    return doc


def _instant(doc: Mapping[str, Any], key: str) -> dt.datetime:
    value = doc.get(key)
    if not isinstance(value, str):
        raise PayloadError("invalid", f"{key} must be an ISO 8601 string")
    try:
        return utc(dt.datetime.fromisoformat(value))
    except (ValueError, OverflowError, RecordError):
        raise PayloadError("invalid", f"{key} {value!r} is not an ISO 8601 instant with "
                                      "a zone") from None


def _dump(doc: Mapping[str, Any]) -> bytes:
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", f"{len(data)} bytes > {MAX_PAYLOAD_BYTES}; send "
                                        "fewer records per message")
    return data


@dataclass(frozen=True, slots=True)
class RecordsMessage:
    """One batch of records from one device of one gateway."""

    gateway_id: str
    device: DeviceInfo
    records: tuple[AnyRecord, ...]
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent_at: dt.datetime = field(default_factory=_now)

    def to_bytes(self) -> bytes:
        check_id(self.gateway_id, "gateway id")
        check_id(self.device.device_id, "device id")
        records = []
        for r in self.records:
            if r.device_id != self.device.device_id:
                raise PayloadError("invalid", f"record of {r.device_id!r} in a batch of "
                                              f"{self.device.device_id!r}")
            records.append(record_to_json(r) | {"key": r.idempotency_key()})
        return _dump({"schema": RECORDS_SCHEMA, "version": VERSION,
                      "gateway_id": self.gateway_id, "batch_id": self.batch_id,
                      "sent_at": utc(self.sent_at).isoformat(),
                      "device": record_to_json(self.device), "records": records})

    @classmethod
    def from_bytes(cls, payload: bytes) -> RecordsMessage:
        doc = _load(payload, RECORDS_SCHEMA)
        gateway_id = check_id(doc.get("gateway_id"), "gateway id")  # type: ignore[arg-type]
        batch_id = doc.get("batch_id")
        if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= 64:
            raise PayloadError("invalid", "batch_id must be a string of 1-64 characters")
        raw_records = doc.get("records")
        if not isinstance(raw_records, list):
            raise PayloadError("invalid", "records must be a list")
        try:
            device = device_info_from_json(doc.get("device"))  # type: ignore[arg-type]
            check_id(device.device_id, "device id")
            records = []
            for i, raw in enumerate(raw_records):
                if not isinstance(raw, dict):
                    raise PayloadError("invalid", f"records[{i}] must be an object")
                key = raw.get("key")
                record = record_from_json({k: v for k, v in raw.items() if k != "key"})
                if record.device_id != device.device_id:
                    raise PayloadError("invalid", f"records[{i}] belongs to device "
                                                  f"{record.device_id!r}, not {device.device_id!r}")
                if key != record.idempotency_key():
                    raise PayloadError("invalid", f"records[{i}].key {key!r} does not match "
                                                  "the record")
                records.append(record)
        except RecordError as exc:
            raise PayloadError("invalid", str(exc)) from None
        return cls(gateway_id, device, tuple(records), batch_id, _instant(doc, "sent_at"))


class GatewayState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """Retained on the gateway's status topic; the ``offline`` form is the MQTT will."""

    gateway_id: str
    state: GatewayState
    at: dt.datetime = field(default_factory=_now)
    agent_version: str = ""

    def to_bytes(self) -> bytes:
        return _dump({"schema": GATEWAY_STATUS_SCHEMA, "version": VERSION,
                      "gateway_id": check_id(self.gateway_id, "gateway id"),
                      "state": self.state.value, "at": utc(self.at).isoformat(),
                      "agent_version": self.agent_version})

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayStatus:
        doc = _load(payload, GATEWAY_STATUS_SCHEMA)
        try:
            state = GatewayState(str(doc.get("state")))
        except ValueError:
            raise PayloadError("invalid", f"state {doc.get('state')!r}") from None
        return cls(check_id(doc.get("gateway_id"), "gateway id"),  # type: ignore[arg-type]
                   state, _instant(doc, "at"), str(doc.get("agent_version", "")))


class DeviceState(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Retained per device: what the gateway last saw of it (for the maker's dashboards)."""

    device_id: str
    state: DeviceState
    at: dt.datetime = field(default_factory=_now)
    last_sync: dt.datetime | None = None
    records_synced: int = 0
    queued: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str | None = None

    def to_bytes(self) -> bytes:
        return _dump({"schema": DEVICE_STATUS_SCHEMA, "version": VERSION,
                      "device_id": check_id(self.device_id, "device id"),
                      "state": self.state.value, "at": utc(self.at).isoformat(),
                      "last_sync": None if self.last_sync is None
                      else utc(self.last_sync).isoformat(),
                      "records_synced": self.records_synced, "queued": self.queued,
                      "dropped": self.dropped, "errors": self.errors,
                      "last_error": self.last_error})

    @classmethod
    def from_bytes(cls, payload: bytes) -> DeviceStatus:
        doc = _load(payload, DEVICE_STATUS_SCHEMA)
        try:
            state = DeviceState(str(doc.get("state")))
        except ValueError:
            raise PayloadError("invalid", f"state {doc.get('state')!r}") from None
        counters: dict[str, int] = {}
        for key in ("records_synced", "queued", "dropped", "errors"):
            value = doc.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PayloadError("invalid", f"{key} must be a non-negative integer")
            counters[key] = value
        last_error = doc.get("last_error")
        if last_error is not None and not isinstance(last_error, str):
            raise PayloadError("invalid", "last_error must be a string or null")
        return cls(check_id(doc.get("device_id"), "device id"),  # type: ignore[arg-type]
                   state, _instant(doc, "at"),
                   None if doc.get("last_sync") is None else _instant(doc, "last_sync"),
                   last_error=last_error, **counters)


def batches(records: Sequence[AnyRecord], size: int) -> list[tuple[AnyRecord, ...]]:
    """Split records into batches of at most ``size`` (the agent's records per message)."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return [tuple(records[i:i + size]) for i in range(0, len(records), size)]
