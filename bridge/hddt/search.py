"""Search parameters of the resource server (ddr-diga-api.md "Search Parameters").

Parses the query of an Observation, Device or DeviceMetric search into value objects:
tokens (``system|code``, ``|code``, ``code``; comma = OR, repetition = AND), dates with
every prefix of FHIR R4 search.html (eq ne gt lt ge le sa eb ap) over partial dates, the
implicit precision range of numbers for ``value-quantity``, ``_include`` and
``_include:iterate``, ``_sort``, ``_count`` and the paging cursor. Anything else is
answered 400 as error-codes.md says; ``subject``/``patient`` too, since the patient comes
from the access token only (retrieving-data.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from bridge.hddt import outcome

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
#: Parameters every search understands (format and paging).
COMMON = ("_format", "_pretty", "_count", "_cursor", "_id")
OBSERVATION_PARAMS = (*COMMON, "code", "date", "_lastUpdated", "value-quantity",
                      "valueQuantity", "_include", "_include:iterate", "_sort")
DEVICE_PARAMS = (*COMMON, "device-name", "device-name:exact", "device-name:contains", "type",
                 "manufacturer", "manufacturer:exact", "manufacturer:contains")
DEVICE_METRIC_PARAMS = (*COMMON, "source", "type", "_include")
#: Patient-selecting parameters refused with 400 (the token decides the patient).
PATIENT_PARAMS = frozenset({"subject", "patient"})

OBSERVATION_DEVICE_INCLUDES = frozenset({
    "Observation:device", "Observation:device:DeviceMetric", "Observation:device:Device"})
DEVICE_METRIC_SOURCE_INCLUDES = frozenset({"DeviceMetric:source", "DeviceMetric:source:Device"})

_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)
_MAX = dt.datetime.max.replace(tzinfo=dt.UTC)


def split_or(value: str) -> list[str]:
    """Comma-separated alternatives; ``\\,`` is a literal comma (search.html escaping)."""
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


# --- tokens ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    """``system|code`` (system given), ``|code`` (system ""), ``code`` (system None: any)."""

    system: str | None
    code: str

    def matches(self, system: str, code: str) -> bool:
        if self.code != code:
            return False
        return self.system is None or self.system == system

    @property
    def text(self) -> str:
        return self.code if self.system is None else f"{self.system}|{self.code}"


def parse_token(name: str, value: str) -> Token:
    system, bar, code = value.partition("|")
    if not bar:
        system, code = "", value
        token = Token(None, code)
    else:
        token = Token(system, code)
    if not token.code or "|" in token.code:
        raise outcome.invalid_parameter(name, value, "expected [system]|code or code")
    return token


# --- dates -----------------------------------------------------------------------------------

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-?(?P<m>\d{2})(?:-?(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")


@dataclass(frozen=True, slots=True)
class DateParam:
    """One date value: its prefix and the half-open range ``[lo, hi)`` its precision implies."""

    prefix: str
    lo: dt.datetime
    hi: dt.datetime
    text: str

    def matches(self, lo: dt.datetime, hi: dt.datetime, now: dt.datetime) -> bool:
        """Whether a target range ``[lo, hi)`` (a point: ``hi = lo + 1 µs``) matches
        (search.html "Prefixes" on ranges)."""
        inside = self.lo <= lo and hi <= self.hi
        p = self.prefix
        if p == "eq":
            return inside
        if p == "ne":
            return not inside
        if p == "gt":
            return hi > self.hi
        if p == "lt":
            return lo < self.lo
        if p == "ge":
            return hi > self.hi or inside
        if p == "le":
            return lo < self.lo or inside
        if p == "sa":
            return lo >= self.hi
        if p == "eb":
            return hi <= self.lo
        # ap: overlap with the value widened by 10 % of its distance from now (at least a day).
        slack = max(abs(now - self.lo) / 10, dt.timedelta(days=1))
        return lo < self.hi + slack and hi > self.lo - slack

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """Smallest ``[lo, hi)`` outside of which no point target can match (ap, ne: all)."""
        p = self.prefix
        if p in ("gt", "sa"):
            return self.hi, _MAX
        if p == "ge":
            return self.lo, _MAX
        if p in ("lt", "eb"):
            return _MIN, self.lo
        if p == "le":
            return _MIN, self.hi
        if p == "eq":
            return self.lo, self.hi
        return _MIN, _MAX


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2].isalpha():
        prefix = value[:2]
        if prefix not in PREFIXES:
            raise outcome.invalid_date(value, f"unknown prefix {prefix!r}")
        return prefix, value[2:]
    return "eq", value


def parse_date(value: str) -> DateParam:
    """A date parameter value (prefix + partial date or dateTime) or a 400 FhirError.

    Besides the FHIR forms the compact ``YYYYMMDD`` of the spec's own examples is read
    (retrieving-data.md ``date=gt20250912``). A time without zone is UTC."""
    prefix, text = _split_prefix(value.strip())
    m = _DATE.match(text)
    if m is None:
        raise outcome.invalid_date(value)
    try:
        year = int(m["y"])
        if m["m"] is None:
            lo = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
            return DateParam(prefix, lo, lo.replace(year=year + 1), value)
        month = int(m["m"])
        if m["d"] is None:
            lo = dt.datetime(year, month, 1, tzinfo=dt.UTC)
            hi = (lo.replace(year=year + 1, month=1) if month == 12
                  else lo.replace(month=month + 1))
            return DateParam(prefix, lo, hi, value)
        day = int(m["d"])
        if m["H"] is None:
            lo = dt.datetime(year, month, day, tzinfo=dt.UTC)
            return DateParam(prefix, lo, lo + dt.timedelta(days=1), value)
        tz = dt.UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
            tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
        local = dt.datetime(year, month, day, int(m["H"]), int(m["M"]),
                            int(m["S"] or 0), tzinfo=tz)
        if m["S"] is None:
            step = dt.timedelta(minutes=1)
        elif m["f"] is None:
            step = dt.timedelta(seconds=1)
        else:
            digits = m["f"][:6]
            local = local.replace(microsecond=int(digits.ljust(6, "0")))
            step = dt.timedelta(microseconds=10 ** (6 - len(digits)))
    except ValueError as exc:
        raise outcome.invalid_date(value, str(exc)) from None
    lo = local.astimezone(dt.UTC)
    return DateParam(prefix, lo, lo + step, value)


def parse_dates(values: Sequence[str]) -> list[list[DateParam]]:
    """Repetitions (AND) of comma lists (OR); a range that cannot hold anything is a 400."""
    groups = [[parse_date(v) for v in split_or(value)] for value in values]
    lo, hi = _MIN, _MAX
    for group in groups:
        if len(group) == 1:
            g_lo, g_hi = group[0].bounds()
            lo, hi = max(lo, g_lo), min(hi, g_hi)
    if lo >= hi:
        raise outcome.invalid_date("&".join(values), "the end lies before the start")
    return groups


def date_window(groups: Sequence[Sequence[DateParam]]) -> tuple[dt.datetime, dt.datetime]:
    """``[lo, hi)`` outside of which no point can match all ``groups``."""
    lo, hi = _MIN, _MAX
    for group in groups:
        g_lo = min(p.bounds()[0] for p in group)
        g_hi = max(p.bounds()[1] for p in group)
        lo, hi = max(lo, g_lo), min(hi, g_hi)
    return lo, hi


def dates_match(groups: Sequence[Sequence[DateParam]], lo: dt.datetime, hi: dt.datetime,
                now: dt.datetime) -> bool:
    return all(any(p.matches(lo, hi, now) for p in group) for group in groups)


# --- quantities ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class QuantityParam:
    """``[prefix]number[|system|code]``; ``lo``/``hi`` the implicit precision range."""

    prefix: str
    value: float
    lo: float
    hi: float
    system: str | None
    code: str | None
    text: str

    def matches(self, value: float, now_unused: object = None) -> bool:
        p = self.prefix
        if p == "eq":
            return self.lo <= value < self.hi
        if p == "ne":
            return not self.lo <= value < self.hi
        if p in ("gt", "sa"):
            return value > self.value
        if p in ("lt", "eb"):
            return value < self.value
        if p == "ge":
            return value >= self.value
        if p == "le":
            return value <= self.value
        slack = abs(self.value) * 0.1  # ap: within 10 % (search.html)
        return self.value - slack <= value <= self.value + slack


def parse_quantity(name: str, value: str) -> QuantityParam:
    number, *rest = value.split("|")
    prefix = "eq"
    if len(number) > 2 and number[:2].isalpha():
        prefix, number = number[:2], number[2:]
        if prefix not in PREFIXES:
            raise outcome.invalid_parameter(name, value, f"unknown prefix {prefix!r}")
    try:
        dec = Decimal(number)
    except InvalidOperation:
        raise outcome.invalid_parameter(name, value, "not a number") from None
    if not dec.is_finite():
        raise outcome.invalid_parameter(name, value, "not a finite number")
    if rest and len(rest) != 2:
        raise outcome.invalid_parameter(name, value, "expected number|system|code")
    exponent = dec.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    system = rest[0] if rest and rest[0] else None
    code = rest[1] if rest and rest[1] else None
    return QuantityParam(prefix, float(dec), float(dec - half), float(dec + half), system,
                         code, value)


# --- paging cursor ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cursor:
    """A keyset position: entries strictly after (``forward``) or before ``key``."""

    key: tuple[str, int, str]
    forward: bool

    def encode(self) -> str:
        raw = json.dumps([list(self.key), self.forward], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            (when, rank, ident), forward = json.loads(raw)
            if not (isinstance(when, str) and isinstance(rank, int) and isinstance(ident, str)
                    and isinstance(forward, bool)):
                raise ValueError("bad cursor fields")
        except (ValueError, TypeError):
            raise outcome.invalid_parameter("_cursor", text, "not a paging link of this "
                                                             "server") from None
        return cls((when, rank, ident), forward)


# --- whole searches --------------------------------------------------------------------------

@dataclass(slots=True)
class Paging:
    count: int
    cursor: Cursor | None = None


@dataclass(slots=True)
class ObservationSearch:
    """An Observation search as asked (the grant's implicit filters come on top)."""

    codes: list[list[Token]] = field(default_factory=list)
    dates: list[list[DateParam]] = field(default_factory=list)
    last_updated: list[list[DateParam]] = field(default_factory=list)
    values: list[list[QuantityParam]] = field(default_factory=list)
    ids: list[set[str]] = field(default_factory=list)
    include_device: bool = False
    include_source: bool = False
    descending: bool = False
    paging: Paging = field(default_factory=lambda: Paging(50))


@dataclass(slots=True)
class DeviceSearch:
    ids: list[set[str]] = field(default_factory=list)
    names: list[list[tuple[str, str]]] = field(default_factory=list)  # (mode, text)
    manufacturers: list[list[tuple[str, str]]] = field(default_factory=list)
    types: list[list[Token]] = field(default_factory=list)
    paging: Paging = field(default_factory=lambda: Paging(50))


@dataclass(slots=True)
class DeviceMetricSearch:
    ids: list[set[str]] = field(default_factory=list)
    sources: list[set[str]] = field(default_factory=list)
    types: list[list[Token]] = field(default_factory=list)
    include_source: bool = False
    paging: Paging = field(default_factory=lambda: Paging(50))


def _check_names(params: Sequence[tuple[str, str]], known: Sequence[str]) -> None:
    for name, _value in params:
        base = name.split(":", 1)[0]
        if base in PATIENT_PARAMS:
            raise outcome.patient_parameter(name)
        if name not in known:
            raise outcome.unknown_parameter(name, sorted({k.split(":")[0] for k in known}))


def _paging(params: Sequence[tuple[str, str]], default: int, maximum: int) -> Paging:
    paging = Paging(default)
    for name, value in params:
        if name == "_count":
            if not value.isdigit():
                raise outcome.invalid_parameter("_count", value, "expected a whole number >= 0")
            paging.count = min(int(value), maximum)
        elif name == "_cursor":
            paging.cursor = Cursor.decode(value)
    return paging


def _ids(values: Iterable[str]) -> list[set[str]]:
    return [set(split_or(v)) for v in values]


def _values(params: Sequence[tuple[str, str]], *names: str) -> list[str]:
    return [v for n, v in params if n in names]


def parse_observation_search(params: Sequence[tuple[str, str]], *, default_count: int,
                             max_count: int) -> ObservationSearch:
    _check_names(params, OBSERVATION_PARAMS)
    s = ObservationSearch(paging=_paging(params, default_count, max_count))
    s.codes = [[parse_token("code", t) for t in split_or(v)] for v in _values(params, "code")]
    s.dates = parse_dates(_values(params, "date"))
    s.last_updated = parse_dates(_values(params, "_lastUpdated"))
    s.values = [[parse_quantity("value-quantity", q) for q in split_or(v)]
                for v in _values(params, "value-quantity", "valueQuantity")]
    s.ids = _ids(_values(params, "_id"))
    for value in _values(params, "_include"):
        if value in OBSERVATION_DEVICE_INCLUDES:
            s.include_device = True
        elif value in DEVICE_METRIC_SOURCE_INCLUDES:
            # Without :iterate it applies to the matches only (Observations): nothing to add.
            pass
        else:
            raise outcome.invalid_include(value)
    for value in _values(params, "_include:iterate"):
        if value in DEVICE_METRIC_SOURCE_INCLUDES:
            s.include_source = True
        elif value in OBSERVATION_DEVICE_INCLUDES:
            s.include_device = True
        else:
            raise outcome.invalid_include(value)
    sorts = _values(params, "_sort")
    if len(sorts) > 1:
        raise outcome.invalid_parameter("_sort", ",".join(sorts), "give _sort once")
    for value in sorts:
        if value not in ("date", "-date"):
            raise outcome.invalid_parameter("_sort", value, "supported: date, -date")
        s.descending = value == "-date"
    return s


def _strings(name: str, params: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out = []
    for pname, value in params:
        if pname.split(":", 1)[0] == name:
            mode = pname.partition(":")[2] or "starts"
            out.append([(mode, v) for v in split_or(value)])
    return out


def parse_device_search(params: Sequence[tuple[str, str]], *, default_count: int,
                        max_count: int) -> DeviceSearch:
    _check_names(params, DEVICE_PARAMS)
    return DeviceSearch(
        ids=_ids(_values(params, "_id")), names=_strings("device-name", params),
        manufacturers=_strings("manufacturer", params),
        types=[[parse_token("type", t) for t in split_or(v)] for v in _values(params, "type")],
        paging=_paging(params, default_count, max_count))


def parse_device_metric_search(params: Sequence[tuple[str, str]], *, default_count: int,
                               max_count: int) -> DeviceMetricSearch:
    _check_names(params, DEVICE_METRIC_PARAMS)
    s = DeviceMetricSearch(
        ids=_ids(_values(params, "_id")),
        sources=[{x.removeprefix("Device/") for x in split_or(v)}
                 for v in _values(params, "source")],
        types=[[parse_token("type", t) for t in split_or(v)] for v in _values(params, "type")],
        paging=_paging(params, default_count, max_count))
    for value in _values(params, "_include"):
        if value not in DEVICE_METRIC_SOURCE_INCLUDES:
            raise outcome.invalid_include(value)
        s.include_source = True
    return s


def string_matches(conditions: Sequence[Sequence[tuple[str, str]]], value: str | None) -> bool:
    """FHIR string search: starts-with, case-insensitive by default; ``:exact``,
    ``:contains``."""
    for group in conditions:
        if value is None:
            return False
        folded = value.casefold()
        ok = False
        for mode, text in group:
            if mode == "exact":
                ok = ok or value == text
            elif mode == "contains":
                ok = ok or text.casefold() in folded
            else:
                ok = ok or folded.startswith(text.casefold())
        if not ok:
            return False
    return True
