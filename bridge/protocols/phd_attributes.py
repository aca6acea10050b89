"""IEEE 11073-20601 MDER building blocks and the attribute types a glucose manager reads.

MDER (IEEE 11073-20601 Annex F) is big-endian with no tags: an INT-U16 is two bytes, an
OCTET STRING (and an ``ANY DEFINED BY``, and the content of a CHOICE) is an INT-U16 byte length
followed by the bytes, and a ``SEQUENCE OF`` carries both an element count and a byte length
before its elements (Annex F). Every nested length must agree with what it encloses: a
length or count that disagrees with its content is a :class:`~bridge.errors.MalformedFrame`,
while a frame that simply ends too early (the outermost APDU length is larger than the bytes
received) stays a :class:`~bridge.errors.TruncatedFrame`, so a transport can wait for more.

An attribute travels as an AVA-Type (attribute-id, attribute-value OCTET STRING). :class:`Ava`
keeps the value bytes as received (byte-exact) and decodes the attribute types listed in
``ATTRIBUTE_TYPES`` on demand; the decoder still parses every known attribute once while
reading, so a malformed value is refused at the frame, not later in the manager.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Self, TypeVar

from bridge.errors import MalformedFrame, TruncatedFrame, ValueOutOfRange
from bridge.protocols.codec import JsonValue, MessageCodec, known, to_json
from bridge.protocols.mdc import (
    ActionCode,
    AttrId,
    DevSpecProfile,
    Dim,
    NotiCode,
    ObjClass,
    Partition,
    PhdDm,
    Scada,
)
from bridge.protocols.mder_float import MderFloat, SFloat
from bridge.protocols.wire import Reader, Writer

T = TypeVar("T")




def mder_reader(data: bytes) -> Reader:
    """A reader in MDER byte order (IEEE 11073-20601 Annex F: big-endian)."""
    return Reader(data, "big")


def mder_writer() -> Writer:
    return Writer("big")


# ------------------------------------------------------------------------------------------------
# MDER length-delimited parts (IEEE 11073-20601 Annex F)
# ------------------------------------------------------------------------------------------------


def within(r: Reader, length: int, what: str, parse: Callable[[Reader], T]) -> T:
    """Parse exactly ``length`` bytes at ``r`` with ``parse``.

    The content must fill the length exactly: MDER gives every nested part its own length, so a
    part that needs more bytes than its length, or leaves bytes over, means the lengths lie.
    Running past the end of the whole frame before that is left as ``TruncatedFrame``.
    """
    sub = r.sub(length, what)
    try:
        value = parse(sub)
    except TruncatedFrame as exc:
        raise MalformedFrame(
            f"{what} (length {length}) is too short for its content: {exc.reason}",
            r.data, exc.offset) from None
    if sub.remaining:
        raise MalformedFrame(
            f"{what} (length {length}) has {sub.remaining} byte(s) after its content",
            r.data, sub.offset)
    return value


def read_octet_string(r: Reader, what: str) -> bytes:
    """OCTET STRING: INT-U16 length, then the bytes (Annex F)."""
    n = r.u16(f"{what} length")
    return r.take(n, what)


def write_octet_string(w: Writer, data: bytes, what: str = "octet string") -> None:
    w.u16(len(data), f"{what} length").raw(data)


def read_any(r: Reader, what: str, parse: Callable[[Reader], T]) -> T:
    """ANY DEFINED BY / CHOICE content: INT-U16 length, then exactly that much content."""
    n = r.u16(f"{what} length")
    return within(r, n, what, parse)


def write_any(w: Writer, write: Callable[[Writer], None], what: str = "content") -> None:
    body = mder_writer()
    write(body)
    write_octet_string(w, bytes(body), what)


def read_sequence(r: Reader, what: str, read_item: Callable[[Reader], T]) -> tuple[T, ...]:
    """SEQUENCE OF: count INT-U16, length INT-U16, then ``count`` elements filling ``length``."""
    count = r.u16(f"{what} count")
    length = r.u16(f"{what} length")

    def parse(sub: Reader) -> tuple[T, ...]:
        return tuple(read_item(sub) for _ in range(count))

    return within(r, length, f"{what} of {count} element(s)", parse)


def write_sequence(w: Writer, items: Sequence[T], write_item: Callable[[Writer, T], None],
                   what: str = "sequence") -> None:
    body = mder_writer()
    for item in items:
        write_item(body, item)
    w.u16(len(items), f"{what} count").u16(len(body.parts), f"{what} length").raw(bytes(body))


def _text(data: bytes) -> str:
    """Readable form of a printable OCTET STRING; other bytes show as escapes (nothing is lost)."""
    return data.decode("ascii", "backslashreplace")


# ------------------------------------------------------------------------------------------------
# AbsoluteTime (IEEE 11073-20601 Annex A: BCD-8 fields)
# ------------------------------------------------------------------------------------------------

_ABS_FIELDS = ("century", "year", "month", "day", "hour", "minute", "second", "sec_fractions")


@dataclass(frozen=True, slots=True)
class AbsoluteTime:
    """AbsoluteTime: eight INT-U8 fields, each holding two BCD digits (00…99).

    ``sec_fractions`` are hundredths of a second. Any two-digit BCD values are accepted so that a
    device clock survives a round trip; :meth:`to_datetime` refuses non-calendar values.
    """

    century: int
    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    sec_fractions: int = 0

    SIZE: ClassVar[int] = 8

    def __post_init__(self) -> None:
        for name in _ABS_FIELDS:
            value = getattr(self, name)
            if not 0 <= value <= 99:
                raise ValueOutOfRange(f"AbsoluteTime {name}={value} is not two BCD digits")

    def _fields(self) -> tuple[int, ...]:
        return (self.century, self.year, self.month, self.day, self.hour, self.minute,
                self.second, self.sec_fractions)

    @classmethod
    def read(cls, r: Reader) -> Self:
        start = r.offset
        raw = r.take(cls.SIZE, "AbsoluteTime")
        digits: list[int] = []
        for i, byte in enumerate(raw):
            hi, lo = byte >> 4, byte & 0x0F
            if hi > 9 or lo > 9:
                raise ValueOutOfRange(
                    f"AbsoluteTime {_ABS_FIELDS[i]} byte 0x{byte:02X} is not BCD", r.data,
                    start + i)
            digits.append(hi * 10 + lo)
        return cls(*digits)

    def write(self, w: Writer) -> None:
        w.raw(bytes((v // 10) << 4 | v % 10 for v in self._fields()))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = mder_reader(data)
        value = cls.read(r)
        r.expect_end("AbsoluteTime")
        return value

    def __bytes__(self) -> bytes:
        w = mder_writer()
        self.write(w)
        return bytes(w)

    @property
    def full_year(self) -> int:
        return self.century * 100 + self.year

    @classmethod
    def from_datetime(cls, value: dt.datetime) -> Self:
        """The wall-clock time of ``value`` (any tzinfo is ignored: the field has none)."""
        return cls(value.year // 100, value.year % 100, value.month, value.day, value.hour,
                   value.minute, value.second, value.microsecond // 10_000)

    def to_datetime(self) -> dt.datetime:
        """The naive wall-clock time; ``ValueOutOfRange`` if the fields are not a calendar time."""
        try:
            return dt.datetime(self.full_year, self.month, self.day, self.hour, self.minute,
                               self.second, self.sec_fractions * 10_000)
        except ValueError as exc:
            raise ValueOutOfRange(f"AbsoluteTime {self} is not a calendar time: {exc}") from None

    def __str__(self) -> str:
        return (f"{self.century:02d}{self.year:02d}-{self.month:02d}-{self.day:02d}"
                f"T{self.hour:02d}:{self.minute:02d}:{self.second:02d}.{self.sec_fractions:02d}")

    def to_json(self) -> str:
        return str(self)


# ------------------------------------------------------------------------------------------------
# Nomenclature-bearing types
# ------------------------------------------------------------------------------------------------

_TERM_ENUMS: dict[int, tuple[type[IntEnum], ...]] = {
    Partition.OBJ_INFRA: (ObjClass, AttrId, NotiCode, ActionCode),
    Partition.SCADA: (Scada,),
    Partition.DIM: (Dim,),
    Partition.PHD_DM: (PhdDm,),
    Partition.INFRA: (DevSpecProfile,),
}


def term_name(partition: int, code: int) -> str | None:
    """The MDC reference id of a (partition, term) pair this project knows, else ``None``."""
    for enum_cls in _TERM_ENUMS.get(partition, ()):
        member = enum_cls._value2member_map_.get(code)
        if member is not None:
            return member.name
    return None


@dataclass(frozen=True, slots=True)
class TypeCode:
    """TYPE ::= SEQUENCE { partition NomPartition, code OID-Type } (IEEE 11073-20601 Annex A)."""

    partition: Partition | int
    code: int

    @classmethod
    def of(cls, partition: int, code: int) -> Self:
        return cls(known(Partition, partition), code)

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls.of(r.u16("TYPE partition"), r.u16("TYPE code"))

    def write(self, w: Writer) -> None:
        w.u16(self.partition, "TYPE partition").u16(self.code, "TYPE code")

    @property
    def mdc(self) -> int:
        """The 32-bit context-free code (partition << 16 | term) used in FHIR codings."""
        return int(self.partition) << 16 | self.code

    @property
    def name(self) -> str | None:
        return term_name(self.partition, self.code)

    def to_json(self) -> JsonValue:
        return {"type": "TypeCode", "partition": to_json(self.partition), "code": self.code,
                "name": self.name}


@dataclass(frozen=True, slots=True)
class AttrValMapEntry:
    """AttrValMapEntry ::= SEQUENCE { attribute-id OID-Type, attribute-len INT-U16 }."""

    attribute_id: AttrId | int
    attribute_len: int

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(known(AttrId, r.u16("attribute-id")), r.u16("attribute-len"))

    def write(self, w: Writer) -> None:
        w.u16(self.attribute_id, "attribute-id").u16(self.attribute_len, "attribute-len")


@dataclass(frozen=True, slots=True)
class AttrValMap:
    """Attribute-Value-Map: which attributes, in which order and size, fill obs-val-data."""

    entries: tuple[AttrValMapEntry, ...]

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_sequence(r, "AttrValMap", AttrValMapEntry.read))

    def write(self, w: Writer) -> None:
        write_sequence(w, self.entries, lambda w2, e: e.write(w2), "AttrValMap")


class MetricSpecSmall(IntFlag):
    """MetricSpecSmall BITS-16 (IEEE 11073-20601 Annex A); ASN.1 bit 0 is the top bit."""

    MSS_AVAIL_INTERMITTENT = 0x8000
    MSS_AVAIL_STORED_DATA = 0x4000
    MSS_UPD_APERIODIC = 0x2000
    MSS_MSMT_APERIODIC = 0x1000
    MSS_MSMT_PHYS_EV_ID = 0x0800
    MSS_MSMT_BTB_METRIC = 0x0400
    MSS_ACC_MANAGER_INITIATED = 0x0080
    MSS_ACC_AGENT_INITIATED = 0x0040
    MSS_CAT_MANUAL = 0x0008
    MSS_CAT_SETTING = 0x0004
    MSS_CAT_CALCULATION = 0x0002


@dataclass(frozen=True, slots=True)
class SystemModel:
    """SystemModel ::= SEQUENCE { manufacturer OCTET STRING, model-number OCTET STRING }."""

    manufacturer: bytes
    model_number: bytes

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_octet_string(r, "manufacturer"), read_octet_string(r, "model-number"))

    def write(self, w: Writer) -> None:
        write_octet_string(w, self.manufacturer, "manufacturer")
        write_octet_string(w, self.model_number, "model-number")

    def to_json(self) -> JsonValue:
        return {"type": "SystemModel", "manufacturer": _text(self.manufacturer),
                "model_number": _text(self.model_number)}


class ProdSpecType(IntEnum):
    """ProdSpecEntry.spec-type (IEEE 11073-20601 Annex A)."""

    UNSPECIFIED = 0
    SERIAL_NUMBER = 1
    PART_NUMBER = 2
    HW_REVISION = 3
    SW_REVISION = 4
    FW_REVISION = 5
    PROTOCOL_REVISION = 6
    PROD_SPEC_GMDN = 7


@dataclass(frozen=True, slots=True)
class ProdSpecEntry:
    """ProdSpecEntry ::= SEQUENCE { spec-type, component-id PrivateOid, prod-spec OCTET STRING }."""

    spec_type: ProdSpecType | int
    component_id: int
    prod_spec: bytes

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(known(ProdSpecType, r.u16("spec-type")), r.u16("component-id"),
                   read_octet_string(r, "prod-spec"))

    def write(self, w: Writer) -> None:
        w.u16(self.spec_type, "spec-type").u16(self.component_id, "component-id")
        write_octet_string(w, self.prod_spec, "prod-spec")

    def to_json(self) -> JsonValue:
        return {"type": "ProdSpecEntry", "spec_type": to_json(self.spec_type),
                "component_id": self.component_id, "prod_spec": _text(self.prod_spec)}


@dataclass(frozen=True, slots=True)
class ProductionSpec:
    """ProductionSpec ::= SEQUENCE OF ProdSpecEntry."""

    entries: tuple[ProdSpecEntry, ...]

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_sequence(r, "ProductionSpec", ProdSpecEntry.read))

    def write(self, w: Writer) -> None:
        write_sequence(w, self.entries, lambda w2, e: e.write(w2), "ProductionSpec")

    def get(self, spec_type: ProdSpecType) -> bytes | None:
        return next((e.prod_spec for e in self.entries if e.spec_type == spec_type), None)


@dataclass(frozen=True, slots=True)
class TypeVer:
    """TypeVer ::= SEQUENCE { type OID-Type, version INT-U16 } (a device specialisation)."""

    type_id: DevSpecProfile | int  # "type" in the ASN.1; renamed so JSON keeps its class key
    version: int

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(known(DevSpecProfile, r.u16("type")), r.u16("version"))

    def write(self, w: Writer) -> None:
        w.u16(self.type_id, "type").u16(self.version, "version")


@dataclass(frozen=True, slots=True)
class TypeVerList:
    """TypeVerList ::= SEQUENCE OF TypeVer (MDC_ATTR_SYS_TYPE_SPEC_LIST)."""

    entries: tuple[TypeVer, ...]

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(read_sequence(r, "TypeVerList", TypeVer.read))

    def write(self, w: Writer) -> None:
        write_sequence(w, self.entries, lambda w2, e: e.write(w2), "TypeVerList")


# ------------------------------------------------------------------------------------------------
# Attribute types by attribute id (IEEE 11073-20601 clause 6, Annex A)
# ------------------------------------------------------------------------------------------------

AttributeValue = (TypeCode | AttrValMap | MetricSpecSmall | SFloat | MderFloat | AbsoluteTime
                  | SystemModel | ProductionSpec | TypeVerList | bytes | int)


@dataclass(frozen=True, slots=True)
class AttributeType:
    """How one attribute's value is laid out. ``size`` is fixed for the types that can sit in
    an Attribute-Value-Map (obs-val-data carries no lengths, so their size must be known)."""

    name: str
    kind: type | tuple[type, ...]
    read: Callable[[Reader], Any]
    write: Callable[[Writer, Any], None]
    size: int | None = None


def _read_u16(r: Reader) -> int:
    return r.u16("INT-U16 attribute")


def _write_u16(w: Writer, value: Any) -> None:
    w.u16(int(value), "INT-U16 attribute")


def _read_sfloat(r: Reader) -> SFloat:
    return SFloat.from_int(r.u16("SFLOAT-Type"))


def _read_float(r: Reader) -> MderFloat:
    return MderFloat.from_int(r.u32("FLOAT-Type"))


def _write_number(w: Writer, value: Any) -> None:
    w.raw(value.to_bytes("big"))


def _write_value(w: Writer, value: Any) -> None:
    value.write(w)


def _read_sys_id(r: Reader) -> bytes:
    return read_octet_string(r, "system-id")


def _write_sys_id(w: Writer, value: Any) -> None:
    write_octet_string(w, value, "system-id")


_TYPE = AttributeType("TYPE", TypeCode, TypeCode.read, _write_value, 4)
_U16 = AttributeType("INT-U16", int, _read_u16, _write_u16, 2)
_ABS = AttributeType("AbsoluteTime", AbsoluteTime, AbsoluteTime.read, _write_value, 8)

ATTRIBUTE_TYPES: dict[int, AttributeType] = {
    AttrId.MDC_ATTR_ID_TYPE: _TYPE,
    AttrId.MDC_ATTR_SYS_TYPE: _TYPE,
    AttrId.MDC_ATTR_ID_HANDLE: _U16,
    AttrId.MDC_ATTR_SOURCE_HANDLE_REF: _U16,
    AttrId.MDC_ATTR_DEV_CONFIG_ID: _U16,
    AttrId.MDC_ATTR_ENUM_OBS_VAL_SIMP_OID: _U16,
    AttrId.MDC_ATTR_VAL_BATT_CHARGE: _U16,
    AttrId.MDC_ATTR_UNIT_CODE: AttributeType(
        "OID-Type (unit)", int, lambda r: known(Dim, r.u16("unit code")), _write_u16, 2),
    AttrId.MDC_ATTR_METRIC_SPEC_SMALL: AttributeType(
        "MetricSpecSmall", int, lambda r: MetricSpecSmall(r.u16("MetricSpecSmall")),
        _write_u16, 2),
    AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP: AttributeType(
        "AttrValMap", AttrValMap, AttrValMap.read, _write_value),
    AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: AttributeType(
        "SFLOAT-Type", SFloat, _read_sfloat, _write_number, 2),
    AttrId.MDC_ATTR_NU_VAL_OBS_SIMP: AttributeType(
        "FLOAT-Type", MderFloat, _read_float, _write_number, 4),
    AttrId.MDC_ATTR_TIME_STAMP_ABS: _ABS,
    AttrId.MDC_ATTR_TIME_ABS: _ABS,
    AttrId.MDC_ATTR_SYS_ID: AttributeType("OCTET STRING", bytes, _read_sys_id, _write_sys_id),
    AttrId.MDC_ATTR_ID_MODEL: AttributeType(
        "SystemModel", SystemModel, SystemModel.read, _write_value),
    AttrId.MDC_ATTR_ID_PROD_SPECN: AttributeType(
        "ProductionSpec", ProductionSpec, ProductionSpec.read, _write_value),
    AttrId.MDC_ATTR_SYS_TYPE_SPEC_LIST: AttributeType(
        "TypeVerList", TypeVerList, TypeVerList.read, _write_value),
}


def _attr_name(attribute_id: int) -> str:
    member = AttrId._value2member_map_.get(attribute_id)
    return member.name if member is not None else f"attribute {attribute_id}"


def decode_attribute(attribute_id: int, raw: bytes) -> AttributeValue:
    """The typed value of an attribute (raw bytes for attribute ids without a type here)."""
    spec = ATTRIBUTE_TYPES.get(attribute_id)
    if spec is None:
        return raw
    r = mder_reader(raw)
    value: AttributeValue = spec.read(r)
    r.expect_end(_attr_name(attribute_id))
    return value


def encode_attribute(attribute_id: int, value: AttributeValue) -> bytes:
    """The attribute-value bytes of a typed value (``bytes`` pass through for unknown ids)."""
    spec = ATTRIBUTE_TYPES.get(attribute_id)
    if spec is None:
        if not isinstance(value, bytes):
            raise ValueOutOfRange(
                f"{_attr_name(attribute_id)} has no known type; give its value as bytes")
        return value
    if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
        raise ValueOutOfRange(
            f"{_attr_name(attribute_id)} takes a {spec.name}, not {type(value).__name__}")
    w = mder_writer()
    spec.write(w, value)
    return bytes(w)


def fixed_size(attribute_id: int) -> int | None:
    """The encoded size of an attribute of fixed layout (``None`` when it varies or is unknown)."""
    spec = ATTRIBUTE_TYPES.get(attribute_id)
    return spec.size if spec is not None else None


def read_attribute_in(r: Reader, attribute_id: int, length: int) -> bytes:
    """Take ``length`` bytes of an attribute value at ``r``, checking a known type fits them.

    Parsing happens on the frame's own reader so that errors name the frame offset.
    """
    start = r.offset
    spec = ATTRIBUTE_TYPES.get(attribute_id)
    if spec is None:
        return r.take(length, _attr_name(attribute_id))
    within(r, length, _attr_name(attribute_id), spec.read)
    return r.data[start:start + length]


@dataclass(frozen=True, slots=True)
class Ava:
    """AVA-Type ::= SEQUENCE { attribute-id OID-Type, attribute-value ANY DEFINED BY id }.

    ``value`` is the attribute-value content as on the wire; :attr:`decoded` is its typed form.
    """

    attribute_id: AttrId | int
    value: bytes

    @classmethod
    def of(cls, attribute_id: int, value: AttributeValue) -> Self:
        """An AVA from a typed value, e.g. ``Ava.of(AttrId.MDC_ATTR_UNIT_CODE, Dim.MDC_...)``."""
        return cls(known(AttrId, attribute_id), encode_attribute(attribute_id, value))

    @classmethod
    def read(cls, r: Reader) -> Self:
        attribute_id = r.u16("attribute-id")
        length = r.u16("attribute-value length")
        return cls(known(AttrId, attribute_id), read_attribute_in(r, attribute_id, length))

    def write(self, w: Writer) -> None:
        w.u16(self.attribute_id, "attribute-id")
        write_octet_string(w, self.value, "attribute-value")

    @property
    def decoded(self) -> AttributeValue:
        return decode_attribute(self.attribute_id, self.value)

    def to_json(self) -> JsonValue:
        known_type = self.attribute_id in ATTRIBUTE_TYPES
        return {"type": "Ava", "attribute_id": to_json(self.attribute_id),
                "value": self.value.hex(),
                "decoded": to_json(self.decoded) if known_type else None}


@dataclass(frozen=True, slots=True)
class AttributeList:
    """AttributeList ::= SEQUENCE OF AVA-Type, with typed look-ups by attribute id."""

    items: tuple[Ava, ...] = ()

    @classmethod
    def of(cls, values: Mapping[int, AttributeValue] | None = None,
           *pairs: tuple[int, AttributeValue]) -> Self:
        """Build from typed values, in the order given (a mapping first, then pairs)."""
        items = [Ava.of(k, v) for k, v in (values or {}).items()]
        items += [Ava.of(k, v) for k, v in pairs]
        return cls(tuple(items))

    @classmethod
    def read(cls, r: Reader, what: str = "AttributeList") -> Self:
        return cls(read_sequence(r, what, Ava.read))

    def write(self, w: Writer) -> None:
        write_sequence(w, self.items, lambda w2, a: a.write(w2), "AttributeList")

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = mder_reader(data)
        value = cls.read(r)
        r.expect_end("AttributeList")
        return value

    def __bytes__(self) -> bytes:
        w = mder_writer()
        self.write(w)
        return bytes(w)

    def __iter__(self) -> Iterator[Ava]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, attribute_id: object) -> bool:
        return any(a.attribute_id == attribute_id for a in self.items)

    def raw(self, attribute_id: int) -> bytes | None:
        """The first value bytes of ``attribute_id``, or ``None`` when absent."""
        return next((a.value for a in self.items if a.attribute_id == attribute_id), None)

    def get(self, attribute_id: int) -> AttributeValue | None:
        """The first typed value of ``attribute_id``, or ``None`` when absent."""
        raw = self.raw(attribute_id)
        return None if raw is None else decode_attribute(attribute_id, raw)

    def to_json(self) -> JsonValue:
        return [a.to_json() for a in self.items]


CODECS = (
    MessageCodec("phd-absolute-time",
                 "IEEE 11073-20601 AbsoluteTime, 8 BCD bytes (century … sec-fractions)",
                 AbsoluteTime.from_bytes),
    MessageCodec("phd-attribute-list",
                 "IEEE 11073-20601 AttributeList (SEQUENCE OF AVA-Type), MDER",
                 AttributeList.from_bytes),
)
