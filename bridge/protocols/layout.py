"""Values laid out as a row of fields, declared once per message class.

Most messages of IDS 1.0 and of IEEE 11073-20601 are fields in wire order: unsigned integers
that carry a number, a code or a bit field, SFLOAT/FLOAT numbers, nested parts and, in the
Bluetooth services, fields present only while a bit of the value's ``flags`` is set. A value
class lists its fields once, in wire order, as a ``FIELDS`` tuple of :class:`Field`;
:func:`read_fields`, :func:`write_fields` and :func:`check_fields` then read, write and check
the value from that list (:class:`LaidOut` reads and writes a plain value), so each class
states only what differs: its field names, sizes, code tables and flag bits, and the
specification section in its docstring.

Byte order is the reader's and writer's: little-endian for Bluetooth, big-endian MDER for
IEEE 11073-20601 (see :mod:`bridge.protocols.wire`). Reading keeps reserved codes as plain
ints and reserved flag bits as they are, so every valid frame re-encodes byte-exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum, IntFlag
from functools import partial
from typing import Any, ClassVar, Self, overload

from bridge.errors import ValueOutOfRange
from bridge.protocols.codec import known
from bridge.protocols.mder_float import MderFloat, SFloat
from bridge.protocols.wire import Reader, Writer

#: The field whose bits say which optional fields are present.
FLAGS = "flags"


def check_optional(flags: int, bit: int, value: object, what: str) -> None:
    """An optional field is present exactly when its flag bit is set (so flags round-trip)."""
    if bool(flags & bit) != (value is not None):
        state = "set" if flags & bit else "clear"
        raise ValueOutOfRange(f"{what} must be {'present' if flags & bit else 'absent'} "
                              f"when its flag bit 0x{bit:02X} is {state}")


def check_uint(value: int | None, bits: int, what: str) -> None:
    if value is not None and not 0 <= value < 1 << bits:
        raise ValueOutOfRange(f"{what}={value} does not fit an unsigned {bits}-bit field")


def read_sfloat(r: Reader, what: str) -> SFloat:
    return SFloat.from_int(r.u16(what))


def write_sfloat(w: Writer, value: SFloat, what: str) -> None:
    if not isinstance(value, SFloat):
        raise ValueOutOfRange(f"{what} must be an SFloat, not {type(value).__name__}")
    w.u16(int(value), what)


class Field:
    """One field: the attribute that holds it, how messages name it (``what``, by default
    the attribute's words) and, for an optional field, the bit of ``flags`` that makes it
    present (``when``)."""

    __slots__ = ("attr", "what", "when")

    def __init__(self, attr: str, *, what: str | None = None, when: int | None = None) -> None:
        self.attr = attr
        self.what = attr.replace("_", " ") if what is None else what
        self.when = None if when is None else int(when)

    def read(self, r: Reader) -> Any:
        raise NotImplementedError

    def write(self, w: Writer, value: Any) -> None:
        raise NotImplementedError

    def check(self, value: Any) -> Any:
        """``value`` as the value keeps it, or ``ValueOutOfRange`` when it cannot be sent."""
        return value


def _as_is(value: int) -> int:
    return value


class Uint(Field):
    """An unsigned integer of ``size`` octets. With ``codes`` it is kept as a member of that
    IntEnum (a reserved code as a plain int) or as that IntFlag (reserved bits kept)."""

    __slots__ = ("_keep", "codes", "size")

    def __init__(self, attr: str, size: int, codes: type[IntEnum] | type[IntFlag] | None = None,
                 *, what: str | None = None, when: int | None = None) -> None:
        super().__init__(attr, what=what, when=when)
        self.size = size
        self.codes = codes
        self._keep: Callable[[int], Any] = (
            _as_is if codes is None else codes if issubclass(codes, IntFlag)
            else partial(known, codes))

    def read(self, r: Reader) -> Any:
        return self._keep(r.u8(self.what) if self.size == 1 else r.uint(self.size, self.what))

    def write(self, w: Writer, value: Any) -> None:
        w.uint(int(value), self.size, self.what)

    def check(self, value: Any) -> Any:
        check_uint(int(value), 8 * self.size, self.what)
        return self._keep(value)


class Sint(Field):
    """A two's-complement signed integer of ``size`` octets."""

    __slots__ = ("size",)

    def __init__(self, attr: str, size: int, *, what: str | None = None) -> None:
        super().__init__(attr, what=what)
        self.size = size

    def read(self, r: Reader) -> Any:
        return r.sint(self.size, self.what)

    def write(self, w: Writer, value: Any) -> None:
        w.sint(value, self.size, self.what)

    def check(self, value: Any) -> Any:
        half = 1 << (8 * self.size - 1)
        if not -half <= value < half:
            raise ValueOutOfRange(f"{self.what} {value} does not fit sint{8 * self.size}")
        return value


class SFloatField(Field):
    """An SFLOAT (IEEE 11073-20601 16-bit float), kept as :class:`SFloat` for byte-exactness."""

    __slots__ = ()

    def read(self, r: Reader) -> Any:
        return read_sfloat(r, self.what)

    def write(self, w: Writer, value: Any) -> None:
        write_sfloat(w, value, self.what)

    def check(self, value: Any) -> Any:
        if not isinstance(value, SFloat):
            raise ValueOutOfRange(f"{self.attr} must be an SFloat, not {type(value).__name__}")
        return value


class FloatField(Field):
    """A FLOAT (IEEE 11073-20601 32-bit float), kept as :class:`MderFloat`."""

    __slots__ = ()

    def read(self, r: Reader) -> Any:
        return MderFloat.from_int(r.u32(self.what))

    def write(self, w: Writer, value: Any) -> None:
        w.u32(int(value), self.what)

    def check(self, value: Any) -> Any:
        if not isinstance(value, MderFloat):
            raise ValueOutOfRange(f"{self.what} must be a FLOAT (MderFloat)")
        return value


class Part(Field):
    """A nested value read by ``read(r)`` and written by its own ``write(w)``."""

    __slots__ = ("parse",)

    def __init__(self, attr: str, parse: Callable[[Reader], Any], *,
                 what: str | None = None) -> None:
        super().__init__(attr, what=what)
        self.parse = parse

    def read(self, r: Reader) -> Any:
        return self.parse(r)

    def write(self, w: Writer, value: Any) -> None:
        value.write(w)


class Rest(Field):
    """Every byte to the end of the value, kept as they are (an operand not modelled)."""

    __slots__ = ()

    def read(self, r: Reader) -> Any:
        return r.rest()

    def write(self, w: Writer, value: Any) -> None:
        w.raw(value)

    def check(self, value: Any) -> Any:
        return bytes(value)


def u8(attr: str, codes: type[IntEnum] | type[IntFlag] | None = None, *,
       what: str | None = None, when: int | None = None) -> Uint:
    return Uint(attr, 1, codes, what=what, when=when)


def u16(attr: str, codes: type[IntEnum] | type[IntFlag] | None = None, *,
        what: str | None = None, when: int | None = None) -> Uint:
    return Uint(attr, 2, codes, what=what, when=when)


def u32(attr: str, *, what: str | None = None, when: int | None = None) -> Uint:
    return Uint(attr, 4, what=what, when=when)


def sfloat(attr: str, *, what: str | None = None, when: int | None = None) -> SFloatField:
    return SFloatField(attr, what=what, when=when)


class AsFloat:
    """A read-only attribute: the SFLOAT or FLOAT field ``attr`` as a float, in the unit the
    field carries (IU, IU/h, IU/mL)."""

    __slots__ = ("attr",)

    def __init__(self, attr: str) -> None:
        self.attr = attr

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None) -> float: ...

    def __get__(self, obj: object, owner: type[Any] | None = None) -> Self | float:
        return self if obj is None else float(getattr(obj, self.attr))


Fields = tuple[Field, ...]


def read_fields(r: Reader, fields: Fields) -> dict[str, Any]:
    """The fields in wire order, by attribute; an optional field whose flag bit is clear is
    left out (its attribute defaults to ``None``)."""
    values: dict[str, Any] = {}
    flags = 0
    for f in fields:
        if f.when is None or flags & f.when:
            value = values[f.attr] = f.read(r)
            if f.attr == FLAGS:
                flags = int(value)
    return values


def write_fields(w: Writer, value: Any, fields: Fields) -> None:
    for f in fields:
        field_value = getattr(value, f.attr)
        if field_value is not None:  # None only for an absent optional field
            f.write(w, field_value)


def check_fields(value: Any, fields: Fields) -> None:
    """Check each field of the frozen dataclass ``value`` and keep it in its canonical form
    (enum member, flag set); an optional field must be present exactly when flagged."""
    flags = int(getattr(value, FLAGS, 0))
    for f in fields:
        field_value = getattr(value, f.attr)
        if f.when is not None:
            check_optional(flags, f.when, field_value, f.attr)
            if field_value is None:
                continue
        kept = f.check(field_value)
        if kept is not field_value:
            object.__setattr__(value, f.attr, kept)


class LaidOut:
    """Base of a frozen dataclass made of exactly its ``FIELDS``, read and written in order.
    A subclass that also checks them on construction calls :func:`check_fields` in its
    ``__post_init__``."""

    __slots__ = ()

    FIELDS: ClassVar[Fields] = ()

    @classmethod
    def read(cls, r: Reader) -> Self:
        return cls(**read_fields(r, cls.FIELDS))

    def write(self, w: Writer) -> None:
        write_fields(w, self, self.FIELDS)
