"""From a v1 records payload straight to data rows, without building record objects.

The ingest's full check (:meth:`bridge.messages.RecordsMessage.from_bytes`, then the hostile
content checks of :mod:`bridge.backend.ingest`) builds one dataclass per record through a
generic, type-hint driven decoder; at tens of thousands of records per second that is most
of the ingest's time. Almost every payload, though, is exactly what
:meth:`RecordsMessage.to_bytes` writes: every field present, instants in their canonical
ISO 8601 form in UTC, numbers of the declared type, annunciation and time-quality lists
sorted, a record's keys in their order. :func:`prepare_records` recognises that canonical
form field by field and turns it into the rows the store writes.

It only ever ACCEPTS: whatever it is not certain of (a missing or unknown field, an instant
with another offset, an integer where a number is declared, a value out of range, any
exception at all) makes it return ``None``, and the caller runs the full check, which then
accepts or refuses with its own reason. So the acceptance rules and the refusal reasons
stay those of the full check; a test compares both paths on mutated payloads.

:func:`prepare_message` gives the same :class:`PreparedRecords` for a message decoded by the
full check.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sqlalchemy as sa

from bridge.backend.store import (
    DEVICE_INFO_COLUMNS,
    KEY_LEN,
    RECORD_COLUMNS,
    TABLE_OF_KIND,
    annunciations,
    cgm_readings,
    device_info_row,
    glucose_readings,
    record_values,
)
from bridge.messages import MAX_PAYLOAD_BYTES, RECORDS_SCHEMA, VERSION, RecordsMessage
from bridge.records import (
    CODINGS,
    RECORD_TYPES,
    Annunciation,
    CgmReading,
    DeviceInfo,
    DeviceKind,
    RecordKind,
    TempBasalType,
)

#: Longest text accepted in a record (record fields are ids, enum values and timestamps);
#: the same bound as the ingest's hostile-content check.
MAX_RECORD_TEXT = 128
_INT64 = 2**63
_ZERO = dt.timedelta(0)
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CALIBRATION_REQUIRED = Annunciation.CALIBRATION_REQUIRED.value
_RECORD_AT = RECORD_COLUMNS.index("record")


@dataclass(frozen=True, slots=True)
class PreparedRecords:
    """One records message, checked, as the store writes it.

    ``rows`` holds, per record in payload order, its table and its values in the order of
    ``RECORD_COLUMNS + EXTRA_COLUMNS[table]`` (:mod:`bridge.backend.store`), the record
    itself as canonical JSON text; the commit puts patient, gateway, batch and instants in
    front. ``calibration`` is the CGM
    calibration state of the message's newest reading (the last one of the newest time).
    """

    device_id: str
    device_row: dict[str, Any]
    batch_id: str
    rows: tuple[tuple[sa.Table, tuple[Any, ...]], ...]
    calibration: tuple[dt.datetime, str] | None


def record_json_text(document: Mapping[str, Any]) -> str:
    """The ``record`` column as :func:`bridge.backend.store.write_rows` takes it: JSON text,
    serialised here, on the thread that checks messages, rather than in the commit."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _with_json_text(table: sa.Table, values: tuple[Any, ...]) -> tuple[sa.Table, tuple[Any, ...]]:
    at = _RECORD_AT
    return table, (*values[:at], record_json_text(values[at]), *values[at + 1:])


def prepare_message(message: RecordsMessage) -> PreparedRecords:
    """The rows of a message decoded by the full check."""
    rows = tuple(_with_json_text(*record_values(r)) for r in message.records)
    calibration: tuple[dt.datetime, str] | None = None
    for record in message.records:
        if isinstance(record, CgmReading) and (calibration is None
                                               or record.time >= calibration[0]):
            state = ("calibration-required"
                     if Annunciation.CALIBRATION_REQUIRED in record.annunciations
                     else "calibrated")
            calibration = (record.time, state)
    return PreparedRecords(message.device.device_id, device_info_row(message.device),
                           message.batch_id, rows, calibration)


# --- field specs, derived from the record classes ----------------------------------------

_STR, _INT, _FLOAT, _BOOL, _ENUM, _ENUM_SET, _AWARE, _NAIVE, _DATE = range(9)
#: The one naive instant of a record: the device's own wall-clock time.
_NAIVE_FIELDS = frozenset({"device_time"})


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    code: int
    optional: bool
    allowed: frozenset[str] = frozenset()
    #: Must be >= 0 (the record's ``__post_init__`` refuses negatives).
    non_negative: bool = False


#: Numeric fields each record class refuses when negative (``_check_nonneg`` and the
#: sequence check in :mod:`bridge.records`).
_NON_NEGATIVE: Mapping[RecordKind, frozenset[str]] = {
    RecordKind.BLOOD_GLUCOSE: frozenset({"glucose_mg_dl"}),
    RecordKind.CGM_GLUCOSE: frozenset({"glucose_mg_dl"}),
    RecordKind.INSULIN_BOLUS: frozenset({"fast_iu", "extended_iu", "extended_duration_min"}),
    RecordKind.BASAL_RATE_CHANGE: frozenset({"rate_iu_per_h", "previous_rate_iu_per_h"}),
    RecordKind.TEMP_BASAL_START: frozenset({"value", "duration_min"}),
    RecordKind.TOTAL_DAILY_INSULIN: frozenset({"bolus_iu", "basal_iu"}),
    RecordKind.RESERVOIR_LEVEL: frozenset({"remaining_iu"}),
}


def _field(name: str, tp: Any, non_negative: bool) -> _Field:
    optional = False
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) != len(typing.get_args(tp))
        (tp,) = args
    if typing.get_origin(tp) is frozenset:
        (inner,) = typing.get_args(tp)
        return _Field(name, _ENUM_SET, optional, frozenset(m.value for m in inner))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _Field(name, _ENUM, optional, frozenset(m.value for m in tp))
    code = {str: _STR, int: _INT, float: _FLOAT, bool: _BOOL, dt.date: _DATE}.get(tp)
    if tp is dt.datetime:
        code = _NAIVE if name in _NAIVE_FIELDS else _AWARE
    if code is None:  # pragma: no cover - a new field type needs a rule here first
        raise TypeError(f"no fast check for field {name!r} of type {tp!r}")
    return _Field(name, code, optional, non_negative=non_negative or name == "sequence")


@dataclass(frozen=True, slots=True)
class _KindSpec:
    kind: str
    fields: tuple[_Field, ...]
    #: The keys of a canonical record object, in the order ``RecordsMessage.to_bytes``
    #: writes them: "kind", the fields, "key" (so the stored JSON text is the same too).
    keys: list[str]
    table: sa.Table
    mdc: int | None
    loinc: str | None
    unit: str


def _spec(kind: RecordKind) -> _KindSpec:
    cls = RECORD_TYPES[kind]
    hints = typing.get_type_hints(cls)
    nonneg = _NON_NEGATIVE.get(kind, frozenset())
    fields = tuple(_field(f.name, hints[f.name], f.name in nonneg)
                   for f in dataclasses.fields(cls))
    coding = CODINGS[kind]
    return _KindSpec(kind.value, fields, ["kind", *(f.name for f in fields), "key"],
                     TABLE_OF_KIND[kind], coding.mdc, coding.loinc, coding.ucum)


_SPECS: Mapping[str, _KindSpec] = {k.value: _spec(k) for k in RecordKind}
_DEVICE_FIELDS = frozenset(f.name for f in dataclasses.fields(DeviceInfo))
_DEVICE_KINDS = frozenset(k.value for k in DeviceKind)


class _NotCanonical(Exception):
    """Internal: leave this payload to the full check."""


def _text_ok(value: str, limit: int) -> bool:
    return len(value) <= limit and _CONTROL.search(value) is None


def _aware(value: Any, cache: dict[str, dt.datetime]) -> dt.datetime:
    """A canonical UTC instant (``datetime.isoformat()`` of a UTC datetime)."""
    if type(value) is not str:
        raise _NotCanonical
    parsed = cache.get(value)
    if parsed is None:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.utcoffset() != _ZERO or parsed.isoformat() != value:
            raise _NotCanonical
        if parsed.tzinfo is not dt.UTC:
            parsed = parsed.astimezone(dt.UTC)
        cache[value] = parsed
    return parsed


def _check_value(f: _Field, v: Any, cache: dict[str, dt.datetime]) -> Any:
    """The Python value of one canonical field (raises :class:`_NotCanonical`)."""
    if v is None:
        if f.optional:
            return None
        raise _NotCanonical
    code = f.code
    if code == _FLOAT:
        if type(v) is not float or not math.isfinite(v) or (f.non_negative and v < 0):
            raise _NotCanonical
        return v
    if code == _AWARE:
        return _aware(v, cache)
    if code == _ENUM:
        if type(v) is not str or v not in f.allowed:
            raise _NotCanonical
        return v
    if code == _INT:
        if type(v) is not int or not -_INT64 <= v < _INT64 or (f.non_negative and v < 0):
            raise _NotCanonical
        return v
    if code == _ENUM_SET:
        if type(v) is not list:
            raise _NotCanonical
        allowed = f.allowed
        previous = ""
        for item in v:  # sorted, no repeats: as record_to_json writes a frozenset
            if type(item) is not str or item not in allowed or item <= previous:
                raise _NotCanonical
            previous = item
        return v
    if code == _NAIVE:
        if type(v) is not str:
            raise _NotCanonical
        naive = dt.datetime.fromisoformat(v)
        if naive.tzinfo is not None or naive.isoformat() != v:
            raise _NotCanonical
        return naive
    if code == _STR:
        if type(v) is not str or not _text_ok(v, MAX_RECORD_TEXT):
            raise _NotCanonical
        return v
    if code == _BOOL:
        if type(v) is not bool:
            raise _NotCanonical
        return v
    if code == _DATE:
        if type(v) is not str or dt.date.fromisoformat(v).isoformat() != v:
            raise _NotCanonical
        return v
    raise _NotCanonical  # pragma: no cover


def _key(spec: _KindSpec, raw: Mapping[str, Any]) -> str:
    """The idempotency key, as :meth:`bridge.records.Record.idempotency_key` builds it from
    the canonical strings (the instants are already their own ``isoformat()``)."""
    device_id = raw["device_id"]
    if (spec.table is cgm_readings and raw["session_start"] is not None
            and raw["time_offset_min"] is not None):
        return (f"{device_id}|{spec.kind}|"
                f"session:{raw['session_start']}+{raw['time_offset_min']}")
    sequence, device_time = raw["sequence"], raw["device_time"]
    if sequence is not None:
        ident = f"seq:{sequence}"
        if device_time is not None:
            ident += f"@{device_time}"
    elif device_time is not None:
        ident = f"dt:{device_time}"
    else:
        ident = f"utc:{raw['time']}"
    return f"{device_id}|{spec.kind}|{ident}"


def _value_and_unit(spec: _KindSpec, v: Mapping[str, Any]) -> tuple[float | None, str]:
    """Mirror of ``bridge.backend.store._value_and_unit`` on checked field values."""
    kind = spec.kind
    if kind in ("blood-glucose", "cgm-glucose"):
        return v["glucose_mg_dl"], spec.unit
    if kind == "insulin-bolus":
        return v["fast_iu"] + v["extended_iu"], spec.unit
    if kind == "basal-rate-change":
        return v["rate_iu_per_h"], spec.unit
    if kind == "temp-basal-start":
        relative = v["temp_basal_type"] == TempBasalType.RELATIVE.value
        return v["value"], "%" if relative else spec.unit
    if kind == "total-daily-insulin":
        return v["bolus_iu"] + v["basal_iu"], spec.unit
    if kind == "reservoir-level":
        return v["remaining_iu"], spec.unit
    return None, spec.unit


def _extra(spec: _KindSpec, v: Mapping[str, Any]) -> tuple[Any, ...]:
    """Mirror of the per-table columns of ``bridge.backend.store.record_values``."""
    table = spec.table
    if table is cgm_readings:
        return (v["trend_mg_dl_per_min"], v["quality_percent"], ",".join(v["annunciations"]),
                v["session_start"], v["time_offset_min"])
    if table is glucose_readings:
        return (v["sample_type"], v["sample_location"], v["meal"],
                ",".join(v["annunciations"]))
    if table is annunciations:
        return (v["annunciation"], v["status"], v["instance_id"])
    return (spec.kind,)


def _record(raw: Any, device_id: str, cache: dict[str, dt.datetime]
            ) -> tuple[_KindSpec, tuple[Any, ...], dict[str, Any]]:
    if type(raw) is not dict:
        raise _NotCanonical
    spec = _SPECS.get(raw.get("kind"))  # type: ignore[arg-type]
    if spec is None or list(raw) != spec.keys or raw["device_id"] != device_id:
        raise _NotCanonical
    values = {f.name: _check_value(f, raw[f.name], cache) for f in spec.fields}
    if spec.table is cgm_readings:
        quality = values["quality_percent"]
        if quality is not None and not 0 <= quality <= 100:
            raise _NotCanonical
    key = raw.pop("key")
    if type(key) is not str or len(key) > KEY_LEN or key != _key(spec, raw):
        raise _NotCanonical
    value, unit = _value_and_unit(spec, values)
    row = (key, device_id, values["time"], values["device_time"], values["sequence"],
           ",".join(raw["time_quality"]), spec.mdc, spec.loinc, value, unit,
           record_json_text(raw), *_extra(spec, values))
    return spec, row, values


def _device(raw: Any) -> tuple[str, dict[str, Any]]:
    if type(raw) is not dict or not raw.keys() <= _DEVICE_FIELDS:
        raise _NotCanonical
    device_id, kind = raw.get("device_id"), raw.get("kind")
    if type(device_id) is not str or not _ID.fullmatch(device_id) or kind not in _DEVICE_KINDS:
        raise _NotCanonical
    row: dict[str, Any] = {"kind": kind}
    for name, limit in DEVICE_INFO_COLUMNS.items():
        value = raw.get(name)
        if value is not None and (type(value) is not str or not _text_ok(value, limit)):
            raise _NotCanonical
        row[name] = value
    return device_id, row


def prepare_records(payload: bytes, gateway_id: str) -> PreparedRecords | None:
    """The rows of a canonical records payload published under ``gateway_id``'s topic, or
    ``None`` when the payload is anything else (the full check then decides)."""
    try:
        return _prepare(payload, gateway_id)
    except Exception:  # anything unexpected goes to the full check
        return None


def _prepare(payload: bytes, gateway_id: str) -> PreparedRecords:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _NotCanonical
    doc = json.loads(payload.decode("utf-8"))
    if (type(doc) is not dict or doc.get("schema") != RECORDS_SCHEMA
            or type(doc.get("version")) is not int or doc["version"] != VERSION
            or doc.get("gateway_id") != gateway_id or not _ID.fullmatch(gateway_id)):
        raise _NotCanonical
    batch_id = doc.get("batch_id")
    if type(batch_id) is not str or not 1 <= len(batch_id) <= 64 \
            or not _text_ok(batch_id, 64):
        raise _NotCanonical
    sent_at = doc.get("sent_at")
    if type(sent_at) is not str:
        raise _NotCanonical
    parsed = dt.datetime.fromisoformat(sent_at)
    if parsed.utcoffset() is None:
        raise _NotCanonical
    parsed.astimezone(dt.UTC)  # an instant that leaves the calendar in UTC is refused
    raw_records = doc.get("records")
    if type(raw_records) is not list:
        raise _NotCanonical
    device_id, device_row = _device(doc.get("device"))
    cache: dict[str, dt.datetime] = {}
    rows = []
    calibration: tuple[dt.datetime, str] | None = None
    for raw in raw_records:
        spec, row, values = _record(raw, device_id, cache)
        rows.append((spec.table, row))
        if spec.table is cgm_readings:
            when = values["time"]
            if calibration is None or when >= calibration[0]:
                state = ("calibration-required" if _CALIBRATION_REQUIRED
                         in values["annunciations"] else "calibrated")
                calibration = (when, state)
    return PreparedRecords(device_id, device_row, batch_id, tuple(rows), calibration)


__all__ = ["MAX_RECORD_TEXT", "PreparedRecords", "prepare_message", "prepare_records"]
