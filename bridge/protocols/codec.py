"""What every codec module exposes, and how decoded values become JSON.

Each protocol module lists its message types in a module-level ``CODECS`` tuple. The registry
(:mod:`bridge.protocols.registry`) collects them, so the ``decode`` command, the fixture tests
and the robustness tests cover every message type without being told about it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum, Flag, IntEnum
from typing import Any, TypeVar, cast

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


@dataclass(frozen=True, slots=True)
class MessageCodec:
    """One decodable message type.

    ``name`` is what users type (``gls-measurement``); ``decode`` turns a whole frame into a
    value and raises only ``ProtocolError``; ``encode`` turns that value back into the same
    bytes (``bytes`` for value classes with ``__bytes__``).
    """

    name: str
    summary: str
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes] = bytes


_E = TypeVar("_E", bound=IntEnum)


def known(enum_cls: type[_E], value: int) -> _E | int:
    """The enum member for a defined code; reserved codes stay plain ints.

    Specifications reserve codes "for future use": a decoder keeps them rather than refusing
    the frame, so decode → encode stays byte-exact and newer devices still read.
    """
    member = enum_cls._value2member_map_.get(value)
    return cast(_E, member) if member is not None else int(value)


def flag_names(value: Flag) -> list[str]:
    """Names of the set bits, ``bitN`` for bits the specification reserves."""
    names: list[str] = []
    raw = int(value.value)
    cls = type(value)
    bit = 0
    while raw >> bit:
        if raw >> bit & 1:
            member = cls._value2member_map_.get(1 << bit)
            names.append(member.name if member is not None and member.name else f"bit{bit}")
        bit += 1
    return names


def to_json(value: Any) -> JsonValue:
    """Plain JSON for any decoded value: dataclasses become objects, flags lists of names."""
    if value is None or isinstance(value, bool | str):
        return value
    if callable(getattr(value, "to_json", None)):
        result: JsonValue = value.to_json()
        return result
    if isinstance(value, Flag):
        return list[JsonValue](flag_names(value))
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, int | float):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, JsonValue] = {"type": type(value).__name__}
        for f in dataclasses.fields(value):
            if f.metadata.get("json", True):
                out[f.name] = to_json(getattr(value, f.name))
        return out
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")
