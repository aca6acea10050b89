"""One reader for the project's TOML files: typed getters that name the dotted key on every error.

The agent, backend, scenario and fleet files all follow one rule: the whole file is checked
before anything starts, every problem names the file and the dotted path of the bad key
(``devices[2].transport``), and a key nobody reads is refused, so a misspelt setting never
passes silently. :class:`TomlTable` does the reading; each module keeps its schema, its own
exception class (through an :data:`ErrorFactory`) and its established wording (through a
:class:`Wording` subclass, so messages users and tests already rely on stay the same).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, overload

#: Builds the exception for a bad key: ``(dotted key or "" for the whole file, message)``.
ErrorFactory = Callable[[str, str], Exception]

#: The kinds of value a getter expects; :meth:`Wording.expected` names them in messages.
Kind = Literal["string", "integer", "number", "boolean", "table", "array", "date"]

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_Self = TypeVar("_Self", bound="TomlTable")


@dataclass(frozen=True, slots=True)
class Bounds:
    """The range a number must lie in: ``lo``..``hi`` closed, the lower end open if
    ``lo_open``; ``why`` explains the range in the message (or is "")."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    why: str = ""

    def admit(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or value <= self.hi

    def too_low(self, value: float) -> bool:
        """Whether ``value`` fails the lower end (else it fails the upper)."""
        return self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))


class Wording:
    """How a module phrases each kind of failure. The defaults are the bridge's wording
    (``expected an integer 1..10, got 0``); a module subclasses this to keep its own texts."""

    names: ClassVar[Mapping[str, str]] = {
        "string": "a string", "integer": "an integer", "number": "a number",
        "boolean": "true or false", "table": "a table", "array": "an array",
        "date": "a date (YYYY-MM-DD)"}

    def describe(self, value: Any) -> str:
        """The refused value as shown after ``got``."""
        return repr(value)

    def expected(self, kind: Kind) -> str:
        """What a getter of ``kind`` expects (``a string``)."""
        return self.names[kind]

    def array_of_tables(self, key: str) -> str:
        """What an array-of-tables key expects."""
        return f"an array of tables ([[{key}]])"

    def missing(self, what: str) -> str:
        """A required key that is absent."""
        return f"missing; expected {what}"

    def wrong_type(self, what: str, value: Any) -> str:
        """A value of the wrong TOML type."""
        return f"expected {what}, got {self.describe(value)}"

    def choice_type(self, choices: Sequence[str]) -> str:
        """What a choice key expects when it is absent or not a string."""
        return " or ".join(repr(c) for c in choices)

    def not_a_choice(self, choices: Sequence[str], value: str) -> str:
        """A string that is none of the choices."""
        expected = (" or ".join(repr(c) for c in choices) if len(choices) <= 2
                    else "one of " + ", ".join(repr(c) for c in choices))
        return f"expected {expected}, got {value!r}"

    def out_of_range(self, kind: Literal["integer", "number"], value: float,
                     bounds: Bounds) -> str:
        """A number outside its bounds."""
        lo, hi, why = bounds.lo, bounds.hi, bounds.why
        if kind == "integer":
            if lo is None:
                return f"expected an integer <= {hi}{why}, got {value!r}"
            upper = f"..{hi}" if hi is not None else " or more"
            return f"expected an integer {lo}{upper}{why}, got {value!r}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if bounds.lo_open else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"<= {hi:g}")
        return f"expected a number {' and '.join(parts)}{why}, got {value!r}"

    def unknown_keys(self, table_key: str, unknown: Sequence[str],
                     known: Iterable[str]) -> tuple[str, str]:
        """``(dotted key, message)`` for keys the schema does not know; ``unknown`` is in
        document order, ``known`` the keys the schema reads."""
        first, *more = sorted(unknown)
        also = f" (also unknown: {', '.join(more)})" if more else ""
        return _join(table_key, first), "unknown key" + also


def _join(where: str, name: str) -> str:
    if not name:
        return where
    return f"{where}.{name}" if where else name


class TomlTable:
    """One TOML table being read: typed getters that name the dotted key on every error.

    Read every key the schema knows, then call :meth:`finish` to refuse the rest. Getters
    without a default (or with ``default=None`` where the result may be ``None``) treat the
    key as required or optional as their signature says; bounds are ``lo``/``hi`` (closed),
    ``lo_open=True`` makes the lower bound open.
    """

    def __init__(self, data: Mapping[str, Any], *, error: ErrorFactory, where: str = "",
                 wording: Wording | None = None) -> None:
        self.where = where
        self._data = data
        self._error = error
        self._wording = wording or Wording()
        #: Keys read so far; :meth:`finish` refuses the others.
        self.used: set[str] = set()

    # --- structure ---------------------------------------------------------------------

    @property
    def data(self) -> Mapping[str, Any]:
        """The table as parsed (read-only; reading through it does not mark keys as used)."""
        return self._data

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def key(self, name: str = "") -> str:
        """The dotted path of ``name`` in this table ("" for the table itself)."""
        return _join(self.where, name)

    def fail(self, name: str, message: str) -> Exception:
        """The caller's exception for key ``name`` ("" for the table itself); raise it."""
        return self._error(self.key(name), message)

    def _child(self: _Self, data: Mapping[str, Any], where: str) -> _Self:
        return type(self)(data, error=self._error, where=where, wording=self._wording)

    def _typed(self, name: str, types: tuple[type, ...], what: str, required: bool) -> Any:
        self.used.add(name)
        if name not in self._data:
            if required:
                raise self.fail(name, self._wording.missing(what))
            return None
        value = self._data[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise self.fail(name, self._wording.wrong_type(what, value))
        return value

    def raw(self, name: str) -> Any:
        """The value of ``name`` unchecked (``None`` if absent), for a module's own types."""
        self.used.add(name)
        return self._data.get(name)

    def remaining(self) -> dict[str, Any]:
        """Every key not read yet, marked as read (for pass-through option tables)."""
        rest = {k: v for k, v in self._data.items() if k not in self.used}
        self.used.update(rest)
        return rest

    def table(self: _Self, name: str, *, required: bool = False) -> _Self:
        """The sub-table ``name`` (empty if absent and not required)."""
        value = self._typed(name, (dict,), self._wording.expected("table"), required)
        return self._child(value or {}, self.key(name))

    def tables(self: _Self, name: str) -> list[_Self]:
        """The array of tables ``name`` (``[[name]]``); each item's key is ``name[i]``."""
        what = self._wording.array_of_tables(self.key(name))
        out = []
        for i, item in enumerate(self._typed(name, (list,), what, False) or []):
            where = f"{self.key(name)}[{i}]"
            if not isinstance(item, dict):
                raise self._error(where, self._wording.wrong_type(
                    self._wording.expected("table"), item))
            out.append(self._child(item, where))
        return out

    def array(self, name: str) -> list[Any] | None:
        """The array ``name`` (items unchecked), ``None`` if absent."""
        value = self._typed(name, (list,), self._wording.expected("array"), False)
        return None if value is None else list(value)

    def refuse_unknown(self, known: Iterable[str]) -> None:
        """Refuse every key outside ``known`` at once."""
        names = set(known)
        unknown = [k for k in self._data if k not in names]
        if unknown:
            key, message = self._wording.unknown_keys(self.where, unknown, sorted(names))
            raise self._error(key, message)

    def finish(self) -> None:
        """Refuse keys nobody read: a misspelt key must not be silently ignored."""
        self.refuse_unknown(self.used)

    # --- scalars -----------------------------------------------------------------------

    def text(self, name: str, default: str | None = None, *, allow_empty: bool = False) -> str:
        """A string; required when there is no ``default``; empty only if ``allow_empty``."""
        value = self._typed(name, (str,), self._wording.expected("string"), default is None)
        if value is None:
            assert default is not None
            return default
        if not value and not allow_empty:
            raise self.fail(name, "must not be empty")
        return str(value)

    def opt_text(self, name: str, *, allow_empty: bool = False) -> str | None:
        """A string, ``None`` if absent."""
        if name not in self._data:
            self.used.add(name)
            return None
        return self.text(name, "", allow_empty=allow_empty)

    def choice(self, name: str, choices: Sequence[str], default: str | None = None) -> str:
        """One of ``choices``; required when there is no ``default``."""
        value = self._typed(name, (str,), self._wording.choice_type(choices), default is None)
        if value is None:
            assert default is not None
            return default
        if value not in choices:
            raise self.fail(name, self._wording.not_a_choice(choices, value))
        return str(value)

    def _check_range(self, name: str, kind: Literal["integer", "number"], value: float,
                     bounds: Bounds) -> None:
        if not bounds.admit(value):
            raise self.fail(name, self._wording.out_of_range(kind, value, bounds))

    def number(self, name: str, default: float, *, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False, why: str = "") -> float:
        """A finite number (an integer is accepted) within the bounds."""
        value = self.opt_number(name, lo=lo, hi=hi, lo_open=lo_open, why=why)
        return default if value is None else value

    def opt_number(self, name: str, *, lo: float | None = None, hi: float | None = None,
                   lo_open: bool = False, why: str = "") -> float | None:
        """A finite number within the bounds, ``None`` if absent."""
        what = self._wording.expected("number")
        value = self._typed(name, (int, float), what, False)
        if value is None:
            return None
        if not math.isfinite(value):
            raise self.fail(name, self._wording.wrong_type(what, value))
        self._check_range(name, "number", value, Bounds(lo, hi, lo_open, why))
        return float(value)

    def positive(self, name: str, default: float) -> float:
        """A number > 0 (durations, intervals)."""
        return self.number(name, default, lo=0.0, lo_open=True)

    def integer(self, name: str, default: int, *, lo: int | None = None,
                hi: int | None = None, why: str = "") -> int:
        """An integer within ``lo``..``hi``; ``why`` explains the bounds in the message."""
        value = self.opt_integer(name, lo=lo, hi=hi, why=why)
        return default if value is None else value

    def opt_integer(self, name: str, *, lo: int | None = None, hi: int | None = None,
                    why: str = "") -> int | None:
        """An integer within the bounds, ``None`` if absent."""
        value = self._typed(name, (int,), self._wording.expected("integer"), False)
        if value is None:
            return None
        self._check_range(name, "integer", value, Bounds(lo, hi, False, why))
        return int(value)

    def boolean(self, name: str, default: bool) -> bool:
        """``true`` or ``false``."""
        value = self._typed(name, (bool,), self._wording.expected("boolean"), False)
        return default if value is None else bool(value)

    @overload
    def date(self, name: str, default: dt.date) -> dt.date: ...
    @overload
    def date(self, name: str, default: None = None) -> dt.date | None: ...

    def date(self, name: str, default: dt.date | None = None) -> dt.date | None:
        """A calendar date: a TOML local date or a ``YYYY-MM-DD`` string (not a date-time,
        whose time of day would be silently dropped)."""
        self.used.add(name)
        if name not in self._data:
            return default
        value = self._data[name]
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise self.fail(name, self._wording.wrong_type(self._wording.expected("date"), value))

    def zone(self, name: str, default: str) -> str:
        """An IANA time zone name known to this machine's zone database."""
        value = self.text(name, default)
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise self.fail(name, f"unknown time zone {value!r} (use an IANA name such as "
                                  "'Europe/Berlin')") from None
        return value

    def ident(self, name: str, default: str | None = None) -> str:
        """An identifier: 1-64 of ``[A-Za-z0-9._-]`` (gateway and client ids, device names)."""
        value = self.text(name, default)
        if not _ID.match(value):
            raise self.fail(name, f"expected 1-64 of [A-Za-z0-9._-], got {value!r}")
        return value

    @overload
    def path(self, name: str, base: Path, default: str) -> Path: ...
    @overload
    def path(self, name: str, base: Path, default: None = None) -> Path | None: ...

    def path(self, name: str, base: Path, default: str | None = None) -> Path | None:
        """A file path; ``~`` is expanded and a relative path is taken relative to ``base``
        (the configuration file's own folder)."""
        value = self.opt_text(name) if default is None else self.text(name, default)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
