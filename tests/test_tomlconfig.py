"""The shared TOML table reader: every getter's error names the dotted key, unknown keys are
refused, and each caller keeps its own exception class and wording."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from bridge.errors import BridgeError
from bridge.tomlconfig import Bounds, TomlTable, Wording


class BadKey(BridgeError):
    """The test's own error type: the reader must raise what the caller's factory builds."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


DOC = tomllib.loads("""
name = "gw-1"
[outer.inner]
text = "x"
empty = ""
count = 7
ratio = 0.5
flag = true
day = 2027-07-01
stamp = 2027-07-01T08:00:00
zone = "Europe/Berlin"
mode = "ble"
list = [1, 2]
[[outer.items]]
a = 1
""")


def reader(data: dict[str, Any] | None = None, wording: Wording | None = None) -> TomlTable:
    return TomlTable(DOC if data is None else data, error=BadKey, wording=wording)


def inner() -> TomlTable:
    return reader().table("outer").table("inner")


def fails(call: Callable[[], object]) -> BadKey:
    with pytest.raises(BadKey) as info:
        call()
    return info.value


# --- values that are read ----------------------------------------------------------------

def test_getters_return_typed_values_and_defaults(tmp_path: Path) -> None:
    t = inner()
    assert t.text("text") == "x"
    assert t.text("absent", "d") == "d"
    assert t.opt_text("absent") is None
    assert t.text("empty", allow_empty=True) == ""
    assert t.integer("count", 1, lo=1, hi=10) == 7
    assert t.opt_integer("absent") is None
    assert t.number("ratio", 1.0, lo=0, hi=1) == 0.5
    assert t.number("count", 1.0) == 7.0 and isinstance(t.number("count", 1.0), float)
    assert t.positive("absent", 3.0) == 3.0
    assert t.boolean("flag", False) is True
    assert t.date("day") == dt.date(2027, 7, 1)
    assert t.date("absent", dt.date(2000, 1, 1)) == dt.date(2000, 1, 1)
    assert t.zone("zone", "UTC") == "Europe/Berlin"
    assert t.choice("mode", ("ble", "serial")) == "ble"
    assert t.array("list") == [1, 2]
    assert t.path("text", tmp_path) == tmp_path / "x"
    assert t.path("absent", tmp_path) is None
    assert t.path("absent", tmp_path, "/abs/file") == Path("/abs/file")
    assert reader().ident("name") == "gw-1"


def test_tables_name_each_item_by_index() -> None:
    items = reader().table("outer").tables("items")
    assert [i.where for i in items] == ["outer.items[0]"]
    assert items[0].integer("a", 0) == 1
    assert reader().tables("absent") == []


# --- every getter names the dotted key ----------------------------------------------------

CASES: list[tuple[str, Callable[[TomlTable], object], str]] = [
    ("count", lambda t: t.text("count"), "expected a string, got 7"),
    ("nothing", lambda t: t.text("nothing"), "missing; expected a string"),
    ("empty", lambda t: t.text("empty"), "must not be empty"),
    ("empty", lambda t: t.opt_text("empty"), "must not be empty"),
    ("mode", lambda t: t.choice("mode", ("a", "b")), "expected 'a' or 'b', got 'ble'"),
    ("mode", lambda t: t.choice("mode", ("a", "b", "c")),
     "expected one of 'a', 'b', 'c', got 'ble'"),
    ("gone", lambda t: t.choice("gone", ("a", "b")), "missing; expected 'a' or 'b'"),
    ("count", lambda t: t.integer("count", 1, lo=1, hi=5), "expected an integer 1..5, got 7"),
    ("count", lambda t: t.integer("count", 1, lo=8), "expected an integer 8 or more, got 7"),
    ("count", lambda t: t.integer("count", 1, lo=8, why=" (a week)"),
     "expected an integer 8 or more (a week), got 7"),
    ("ratio", lambda t: t.integer("ratio", 1), "expected an integer, got 0.5"),
    ("flag", lambda t: t.integer("flag", 1), "expected an integer, got True"),
    ("ratio", lambda t: t.number("ratio", 1.0, lo=0.5, lo_open=True),
     "expected a number > 0.5, got 0.5"),
    ("ratio", lambda t: t.number("ratio", 1.0, lo=1), "expected a number >= 1, got 0.5"),
    ("ratio", lambda t: t.number("ratio", 1.0, hi=0.25), "expected a number <= 0.25, got 0.5"),
    ("text", lambda t: t.number("text", 1.0), "expected a number, got 'x'"),
    ("flag", lambda t: t.number("flag", 1.0), "expected a number, got True"),
    ("text", lambda t: t.boolean("text", True), "expected true or false, got 'x'"),
    ("text", lambda t: t.date("text"), "expected a date (YYYY-MM-DD), got 'x'"),
    ("stamp", lambda t: t.date("stamp"), "expected a date (YYYY-MM-DD), got datetime"),
    ("text", lambda t: t.zone("text", "UTC"), "unknown time zone 'x'"),
    ("zone", lambda t: t.ident("zone"), "expected 1-64 of [A-Za-z0-9._-], got 'Europe/Berlin'"),
    ("count", lambda t: t.path("count", Path()), "expected a string, got 7"),
    ("text", lambda t: t.table("text"), "expected a table, got 'x'"),
    ("absent", lambda t: t.table("absent", required=True), "missing; expected a table"),
    ("text", lambda t: t.tables("text"),
     "expected an array of tables ([[outer.inner.text]]), got 'x'"),
    ("list[0]", lambda t: t.tables("list"), "expected a table, got 1"),
    ("text", lambda t: t.array("text"), "expected an array, got 'x'"),
]


@pytest.mark.parametrize(("name", "call", "message"), CASES,
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_each_getter_names_the_dotted_key(name: str, call: Callable[[TomlTable], object],
                                          message: str) -> None:
    error = fails(lambda: call(inner()))
    assert error.key == f"outer.inner.{name}"
    assert error.message.startswith(message)
    assert str(error) == f"outer.inner.{name}: {error.message}"


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    error = fails(lambda: reader({"x": value}).number("x", 1.0))
    assert error.key == "x" and error.message.startswith("expected a number, got")


def test_fail_builds_the_callers_error_for_a_key_or_the_table() -> None:
    def key_of(error: Exception) -> str:
        assert isinstance(error, BadKey)
        return error.key

    t = inner()
    assert key_of(t.fail("count", "too many")) == "outer.inner.count"
    assert key_of(t.fail("", "the table")) == "outer.inner"
    assert key_of(reader().fail("", "the whole file")) == ""


# --- unknown keys ---------------------------------------------------------------------------

def test_finish_refuses_keys_nobody_read() -> None:
    t = reader({"known": 1, "zeta": 2, "alpha": 3})
    t.integer("known", 0)
    error = fails(t.finish)
    assert error.key == "alpha"
    assert error.message == "unknown key (also unknown: zeta)"
    sub = reader({"s": {"typo": 1}}).table("s")
    error = fails(sub.finish)
    assert (error.key, error.message) == ("s.typo", "unknown key")


def test_finish_passes_when_every_key_was_read() -> None:
    t = reader({"a": 1, "b": {"c": 2}, "d": [{"e": 1}]})
    t.integer("a", 0)
    t.table("b").remaining()
    t.tables("d")
    t.finish()
    t2 = reader({"raw": object()})
    t2.raw("raw")
    t2.finish()


def test_remaining_hands_over_what_was_not_read() -> None:
    t = reader({"own": 1, "x": 2, "y": "z"})
    t.integer("own", 0)
    assert t.remaining() == {"x": 2, "y": "z"}
    t.finish()


def test_refuse_unknown_checks_a_declared_schema_at_once() -> None:
    t = reader({"a": 1, "b": 2})
    t.refuse_unknown({"a", "b", "c"})
    error = fails(lambda: reader({"a": 1, "b": 2}).refuse_unknown({"a"}))
    assert (error.key, error.message) == ("b", "unknown key")


# --- a caller's own wording ---------------------------------------------------------------

class Terse(Wording):
    names: ClassVar[Mapping[str, str]] = {**Wording.names, "integer": "a whole number"}

    def describe(self, value: Any) -> str:
        return type(value).__name__

    def missing(self, what: str) -> str:
        return "required"

    def out_of_range(self, kind: Literal["integer", "number"], value: float,
                     bounds: Bounds) -> str:
        side = "low" if bounds.too_low(value) else "high"
        return f"{kind} too {side}"

    def unknown_keys(self, table_key: str, unknown: Sequence[str],
                     known: Iterable[str]) -> tuple[str, str]:
        return table_key, f"unknown {list(unknown)}, allowed {sorted(known)}"


def test_a_wording_subclass_rephrases_without_changing_the_checks() -> None:
    t = reader({"n": 5, "s": "x", "t": {"z": 1, "a": 2}}, wording=Terse())
    assert fails(lambda: t.integer("s", 0)).message == "expected a whole number, got str"
    assert fails(lambda: t.text("gone")).message == "required"
    assert fails(lambda: t.integer("n", 0, lo=6)).message == "integer too low"
    assert fails(lambda: t.number("n", 0, hi=4)).message == "number too high"
    sub = t.table("t")
    error = fails(lambda: sub.refuse_unknown({"a"}))
    assert (error.key, error.message) == ("t", "unknown ['z'], allowed ['a']")
